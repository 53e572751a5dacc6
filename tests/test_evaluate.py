"""`eval` on tiny models made here: finite perplexity, KL divergence ~0 of a model against itself and
> 0 against a TP1 conversion, the base cache, ternary -> TP1 lossless, embeddings, and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from gguf import GGMLQuantizationType as Q
from typer.testing import CliRunner

from tritpack_gguf import evaluate as E
from tritpack_gguf.cli.evaluate import eval_command
from tritpack_gguf.convert import ConvertOptions, convert
from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file
from tritpack_gguf.errors import TritpackError

CTX, CHUNKS = 64, 4
WORDS = ("the of and to a in that it was her his she he not be with for had you as but my on at this "
         "have by which all so were they mister lady house letter sister said would could").split()


@pytest.fixture(scope="module")
def models(tmp_path_factory, patched_build):
    d = tmp_path_factory.mktemp("eval")
    vocab = vocab_file(patched_build.source_dir)
    shape = Shape(n_embd=128, n_ff=256, n_layer=1, n_head=4, n_head_kv=2, n_ctx=256)
    gauss = make_llama(d / "gauss.gguf", vocab, shape, seed=11, dtype=Q.F16)
    tern = make_llama(d / "tern.gguf", vocab, shape, seed=12, ternary=True, dtype=Q.F16)
    tp1 = d / "gauss-TP1.gguf"
    convert(gauss, ConvertOptions(type="tp1", output=tp1, force=True))
    tern_tp1 = d / "tern-TP1.gguf"
    convert(tern, ConvertOptions(type="tp1", output=tern_tp1, force=True,
                                 keep=["token_embd.weight", "output.weight"]))
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(6, 14))).capitalize() + "." for _ in range(200)]
    text = d / "text.txt"
    text.write_text("\n\n".join(" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)))
    return {"dir": d, "gauss": gauss, "tp1": tp1, "tern": tern, "tern_tp1": tern_tp1, "text": text}


def _eval(models, name, base="gauss", **kw):
    kw.setdefault("ctx", CTX)
    kw.setdefault("chunks", CHUNKS)
    return E.evaluate(models[name], models[base], models["text"], cache_dir=models["dir"] / "cache", **kw)


def test_self_is_zero_and_base_is_cached(models):
    r = _eval(models, "gauss")
    assert r.kind == "perplexity"
    assert r.chunks == CHUNKS and r.tokens == CHUNKS * CTX
    assert math.isfinite(r.perplexity) and r.perplexity > 1
    assert r.base_perplexity == pytest.approx(r.perplexity, rel=1e-4)
    assert abs(r.kld_mean) < 1e-4 and abs(r.kld_p99) < 1e-3
    assert r.same_top == pytest.approx(1.0)
    assert r.bpw == pytest.approx(8.0 * E.file_stats(models["gauss"]).tensor_bytes / r.n_weights)
    again = _eval(models, "gauss")
    assert again.base_cached and again.base_cache == r.base_cache
    assert again.kld_mean == pytest.approx(r.kld_mean, abs=1e-6)


def test_tp1_costs_something(models):
    r = _eval(models, "tp1")
    assert math.isfinite(r.perplexity)
    assert r.kld_mean > 1e-3 and r.kld_p99 >= r.kld_median > 0
    assert 0.0 <= r.same_top < 1.0
    assert r.bpw < E.file_stats(models["gauss"]).bpw


def test_ternary_model_is_lossless_in_tp1(models):
    r = _eval(models, "tern_tp1", base="tern")
    assert r.types.get("TP1", 0) > 0
    assert abs(r.kld_mean) < 1e-4
    assert r.same_top > 0.99


def test_short_text_fails_clearly(models, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(TritpackError, match="llama-perplexity"):
        E.evaluate(models["gauss"], models["gauss"], short, ctx=CTX, chunks=CHUNKS, cache_dir=tmp_path)


def test_too_few_tokens_for_statistics(models):
    with pytest.raises(TritpackError, match="at least 100"):
        _eval(models, "tp1", chunks=2)


def test_parse_kld_output():
    out = """Mean PPL(Q)                   :  22.287463 ±   0.929764
Mean PPL(base)                :  20.195201 ±   0.858852
Mean PPL(Q)/PPL(base)         :   1.103602 ±   0.008879
Mean    KLD:   0.104114 ±   0.001701
Maximum KLD:   2.046541
99.0%   KLD:   0.510299
Median  KLD:   0.080622
Same top p: 80.221 ± 0.624 %
"""
    r = E.parse_kld_output(out)
    assert r["perplexity"] == pytest.approx(22.287463) and r["perplexity_err"] == pytest.approx(0.929764)
    assert r["kld_mean"] == pytest.approx(0.104114) and r["kld_p99"] == pytest.approx(0.510299)
    assert r["same_top"] == pytest.approx(0.80221) and r["ppl_ratio"] == pytest.approx(1.103602)
    # a model that computes NaN: glibc prints "-nan", and it is reported, not taken for missing output
    nan = E.parse_kld_output("Mean    KLD:       -nan ±   0.000000\nMedian  KLD:        nan\n")
    assert math.isnan(nan["kld_mean"]) and math.isnan(nan["kld_median"])


def test_sentences_of():
    s = E.sentences_of("It is a truth universally acknowledged. Yes!\n\nMr. Bennet made\nno answer at all? Fine", 10)
    assert s == ["It is a truth universally acknowledged.", "Mr. Bennet made no answer at all?"]
    assert E.sentences_of("one two three four. " * 10, 3) == ["one two three four."] * 3


def test_embedding_mode(models):
    same = _eval(models, "gauss", embedding=True, sentences=8)
    assert same.kind == "embedding" and same.sentences == 8
    assert same.cos_min > 0.9999
    lossy = _eval(models, "tp1", embedding=True, sentences=8)
    assert lossy.cos_mean < 1.0 - 1e-6 and lossy.cos_min <= lossy.cos_mean


def test_command_json(models):
    app = typer.Typer()
    app.command()(eval_command)
    r = CliRunner().invoke(app, [str(models["tp1"]), "--base", str(models["gauss"]), "--text", str(models["text"]),
                                 "--ctx", str(CTX), "--chunks", str(CHUNKS), "--json"],
                           env={"TRITPACK_HOME": str(models["dir"] / "home")})
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["kind"] == "perplexity" and d["kld_mean"] > 0 and d["chunks"] == CHUNKS
