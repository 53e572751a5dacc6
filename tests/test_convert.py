"""`tritpack-gguf convert` / `export` on tiny models made here."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from tritpack_gguf.cli import main as cli_main
from tritpack_gguf.convert import ConvertOptions, convert, parse_size
from tritpack_gguf.converters.policy import bpw
from tritpack_gguf.converters.reader import GGUFFile
from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file
from tritpack_gguf.errors import TritpackError
from tritpack_gguf.export import export_gguf


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def models(tmp_path_factory, patched_build):
    d = tmp_path_factory.mktemp("models")
    vocab = vocab_file(patched_build.source_dir)
    return {
        "gauss": make_llama(d / "gauss.gguf", vocab, seed=3),
        "tern": make_llama(d / "tern.gguf", vocab, seed=4, ternary=True, dtype=Q.F16),
        "tern256": make_llama(d / "tern256.gguf", vocab, Shape(n_embd=256, n_ff=512, n_head=4, n_head_kv=4),
                              seed=5, ternary=True, dtype=Q.F16),
        "dir": d,
    }


def values(g, f: GGUFFile, name: str) -> np.ndarray:
    return f.float32(f.tensor(name), g)


def test_tp4_default_name_types_and_keys(models, ggml, tmp_path):
    src = models["gauss"]
    before = sha(src)
    r = convert(src, ConvertOptions(type="tp4", output=tmp_path / "g-TP4.gguf"))
    assert sha(src) == before, "the input was modified"
    out = GGUFFile(r.output)
    inp = GGUFFile(src)
    # every key carried over (file type changed, tritpack.* added)
    missing = set(inp.fields) - set(out.fields)
    assert not missing, missing
    for key, field in inp.fields.items():  # and unchanged, arrays (the tokenizer) included
        if key != "general.file_type":
            assert out.fields[key].types == field.types, key
            assert out.fields[key].contents() == field.contents(), key
    assert len(inp.get("tokenizer.ggml.tokens")) > 1000
    assert out.get("general.file_type") == 81
    assert out.get("tritpack.source_sha256") == before
    types = {t.name: t.type for t in out.tensors}
    assert types["blk.0.attn_q.weight"] == Q.TP4 and types["blk.1.ffn_down.weight"] == Q.TP4
    assert types["blk.0.attn_norm.weight"] == Q.F32          # 1-D kept
    assert types["output.weight"] == Q.Q8_0                  # rows of 128: Q6_K does not fit
    assert types["token_embd.weight"] == Q.Q8_0
    # measured quality is reported and plausible for a 4.5-bit type
    tp4 = [t for t in r.tensors if t.dst_type == "TP4"]
    assert tp4 and all(t.cos > 0.99 for t in tp4), [(t.name, t.cos) for t in tp4]
    assert r.size_after == sum(t.nbytes for t in out.tensors)
    # the values in the file are what the report measured
    x = values(ggml, inp, "blk.0.ffn_up.weight")
    y = values(ggml, out, "blk.0.ffn_up.weight")
    cos = float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))
    rep = next(t for t in r.tensors if t.name == "blk.0.ffn_up.weight")
    assert abs(cos - rep.cos) < 1e-5


def test_default_output_name_and_refusals(models, tmp_path):
    import shutil

    src = tmp_path / "m.gguf"
    shutil.copy(models["gauss"], src)
    r = convert(src, ConvertOptions(type="tp1"))
    assert Path(r.output) == tmp_path / "m-TP1.gguf" and Path(r.output).is_file()
    with pytest.raises(TritpackError, match="output exists"):
        convert(src, ConvertOptions(type="tp1"))
    assert convert(src, ConvertOptions(type="tp1", force=True)).output
    with pytest.raises(TritpackError, match="overwrite the input"):
        convert(src, ConvertOptions(type="tp1", output=src, force=True))
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-TP1.gguf", "m.gguf"]


def test_tp1_alpha_recorded_and_searched(models, tmp_path):
    r = convert(models["gauss"], ConvertOptions(type="tp1", output=tmp_path / "a.gguf", target_cos=0.8))
    out = GGUFFile(r.output)
    names, alphas = out.get("tritpack.alpha.tensors"), out.get("tritpack.alpha.values")
    tp1 = [t.name for t in r.tensors if t.dst_type == "TP1"]
    assert names == tp1 and len(alphas) == len(tp1)
    assert all(0.0 < a < 4.0 for a in alphas)
    fixed = convert(models["gauss"], ConvertOptions(type="tp1", output=tmp_path / "b.gguf", alpha=1.25))
    assert all(t.alpha == 1.25 for t in fixed.tensors if t.dst_type == "TP1")
    # a fixed alpha far from the searched one loses quality
    best = {t.name: t.cos for t in convert(models["gauss"], ConvertOptions(type="tp1", output=tmp_path / "c.gguf")).tensors}
    worse = convert(models["gauss"], ConvertOptions(type="tp1", output=tmp_path / "d.gguf", alpha=2.5))
    assert all(t.cos < best[t.name] for t in worse.tensors if t.dst_type == "TP1")


def test_ternary_f16_becomes_tp1_losslessly_whatever_the_target(models, ggml, tmp_path):
    r = convert(models["tern"], ConvertOptions(type="tp4", output=tmp_path / "t.gguf"))
    lossless = [t for t in r.tensors if t.lossless]
    assert len(lossless) == 14  # 7 matrices x 2 layers
    inp, out = GGUFFile(models["tern"]), GGUFFile(r.output)
    for t in lossless:
        assert out.tensor(t.name).type == Q.TP1
        x, y = values(ggml, inp, t.name), values(ggml, out, t.name)
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), t.name


@pytest.mark.parametrize("type_", ["tp1", "tp4"])
def test_reported_figures_match_the_written_file(models, ggml, tmp_path, type_):
    # the C pass measures while it quantizes (TP1 without an imatrix never decodes its own blocks):
    # its cos / SNR / RMSE must be what the written file dequantizes to, tensor by tensor
    r = convert(models["gauss"], ConvertOptions(type=type_, output=tmp_path / f"m-{type_}.gguf"))
    inp, out = GGUFFile(models["gauss"]), GGUFFile(r.output)
    checked = 0
    for p in r.tensors:
        if not p.quantize:
            continue
        x = values(ggml, inp, p.name).astype(np.float64).ravel()
        y = values(ggml, out, p.name).astype(np.float64).ravel()
        e = x - y
        assert p.cos == pytest.approx(x @ y / np.sqrt((x @ x) * (y @ y)), abs=2e-7), p.name
        assert p.rmse == pytest.approx(np.sqrt(e @ e / e.size), rel=1e-5), p.name
        assert p.snr_db == pytest.approx(10 * np.log10((x @ x) / (e @ e)), abs=1e-3), p.name
        checked += 1
    assert checked >= 14
    assert any(p.dst_type == type_.upper() for p in r.tensors)


def test_one_non_ternary_value_outside_the_sampled_rows_is_not_lossless(models, tmp_path):
    # the planner checks sample rows first, then the whole tensor: a value off the ternary grid in a
    # row the samples skip must still keep the tensor out of the lossless TP1 path
    src = tmp_path / "almost.gguf"
    data = bytearray(models["tern"].read_bytes())
    t = GGUFFile(models["tern"]).tensor("blk.0.ffn_up.weight")
    assert t.type == Q.F16 and t.n_rows > 16
    at = t.offset + 2 * (3 * t.row_length + 5)
    data[at:at + 2] = np.float16(0.1234).tobytes()
    src.write_bytes(bytes(data))
    r = convert(src, ConvertOptions(type="tp4", output=tmp_path / "a.gguf"))
    plans = {p.name: p for p in r.tensors}
    assert not plans["blk.0.ffn_up.weight"].lossless and plans["blk.0.ffn_up.weight"].dst_type == "TP4"
    assert plans["blk.0.ffn_down.weight"].lossless and plans["blk.0.ffn_down.weight"].dst_type == "TP1"


def test_tq1_0_and_tq2_0_inputs_become_tp1_exactly(models, ggml, patched_build, tmp_path):
    for qt in ("TQ1_0", "TQ2_0"):
        tq = tmp_path / f"m-{qt}.gguf"
        subprocess.run([str(Path(patched_build.lib_dir) / "llama-quantize"), str(models["tern256"]), str(tq), qt],
                       check=True, capture_output=True)
        src = GGUFFile(tq)
        tq_tensors = [t.name for t in src.tensors if t.type == Q[qt]]
        assert tq_tensors, f"llama-quantize made no {qt} tensors"
        r = convert(tq, ConvertOptions(type="tp4", output=tmp_path / f"o-{qt}.gguf"))
        out = GGUFFile(r.output)
        for name in tq_tensors:
            assert out.tensor(name).type == Q.TP1, name
            x, y = values(ggml, src, name), values(ggml, out, name)
            assert np.array_equal(x, y), (qt, name)
        assert {t.name for t in r.tensors if t.lossless} >= set(tq_tensors)


def test_stock_quantized_inputs(models, patched_build, tmp_path):
    for qt in ("Q8_0", "Q4_K_M", "BF16"):
        q = tmp_path / f"g-{qt}.gguf"
        subprocess.run([str(Path(patched_build.lib_dir) / "llama-quantize"), str(models["gauss"]), str(q), qt],
                       check=True, capture_output=True)
        r = convert(q, ConvertOptions(type="tp4", output=tmp_path / f"o-{qt}.gguf"))
        assert r.type_counts().get("TP4", 0) == 14, (qt, r.type_counts())


def _lowest_mix(warm) -> int:
    """Bytes of the smallest mix, from a --type tp4 plan: tiered matrices TP4 -> TP1 (36 -> 15 bytes
    a block), the token embedding/output Q8_0 -> TP4 (68 -> 36 bytes per 64 weights), the rest kept."""
    total = 0
    for t in warm.tensors:
        if t.dst_type == "TP4":
            total += t.dst_bytes * 15 // 36
        elif t.name in ("token_embd.weight", "output.weight") and t.dst_type == "Q8_0":
            total += t.dst_bytes * 36 // 68
        else:
            total += t.dst_bytes
    return total


def test_mixed_meets_budget_with_several_tiers(models, tmp_path):
    warm = convert(models["gauss"], ConvertOptions(type="tp4", dry_run=True))
    lowest = _lowest_mix(warm)
    assert lowest < 0.6 * warm.size_after
    # halfway between every matrix TP1 and every matrix TP4 (embedding/output TP4 in both): the
    # matrices are small enough to meet it closely
    matrices = sum(t.dst_bytes for t in warm.tensors if t.dst_type == "TP4")
    budget = lowest + (matrices - matrices * 15 // 36) // 2
    r = convert(models["gauss"], ConvertOptions(type="mixed", budget=budget, output=tmp_path / "mx.gguf"))
    assert r.size_after <= budget and GGUFFile(r.output).path.stat().st_size > 0
    assert r.bpw == pytest.approx(8 * budget / r.n_weights, rel=0.02)
    tiers = {t.tier for t in r.tensors if t.tier}
    assert len(tiers) >= 2, tiers
    with pytest.raises(TritpackError, match="below the smallest mix"):
        convert(models["gauss"], ConvertOptions(type="mixed", budget=lowest - 1, output=tmp_path / "no.gguf"))
    assert not (tmp_path / "no.gguf").exists()


def test_mixed_embedding_and_output_are_tiered_but_never_ternary(models, tmp_path):
    warm = convert(models["gauss"], ConvertOptions(type="tp4", dry_run=True))
    lowest = _lowest_mix(warm)
    emb_out = {"token_embd.weight", "output.weight"} & {t.name for t in warm.tensors}
    assert emb_out
    # the smallest mix: every matrix TP1, the embedding/output at 4.5 bits (TP4, IQ4_NL or Q4_0)
    r = convert(models["gauss"], ConvertOptions(type="mixed", budget=lowest, output=tmp_path / "low.gguf"))
    assert r.size_after == lowest
    types = {t.name: t.type for t in GGUFFile(r.output).tensors}
    for name in emb_out:
        assert types[name] in (Q.TP4, Q.IQ4_NL, Q.Q4_0), name
    assert types["blk.0.attn_q.weight"] == Q.TP1
    # a generous budget upgrades the embedding/output first or later, never below 4 bits
    for budget in ((warm.size_after + lowest) // 2, 4 * warm.n_weights):
        r = convert(models["gauss"], ConvertOptions(type="mixed", budget=budget, dry_run=True))
        for t in r.tensors:
            if t.name in emb_out:
                assert bpw(Q[t.dst_type]) >= 4.0 and t.tier == t.dst_type, (budget, t)
    assert {t.dst_type for t in r.tensors if t.name in emb_out} == {"F16"}   # the top of the palette


def test_dry_run_writes_nothing_and_keep_keeps(models, tmp_path):
    out = tmp_path / "dry.gguf"
    r = convert(models["gauss"], ConvertOptions(type="tp4", output=out, dry_run=True, keep=["blk.1.ffn_*"]))
    assert not out.exists() and r.dry_run
    kept = {t.name for t in r.tensors if t.reason.startswith("kept (--keep")}
    assert kept == {"blk.1.ffn_gate.weight", "blk.1.ffn_up.weight", "blk.1.ffn_down.weight"}


def test_export_tp1_to_q4_0_is_exact(models, ggml, tmp_path):
    tp1 = convert(models["gauss"], ConvertOptions(type="tp1", output=tmp_path / "x-TP1.gguf")).output
    q4 = tmp_path / "x-Q4_0.gguf"
    rep = export_gguf(tp1, q4, "q4_0")
    a, b = GGUFFile(tp1), GGUFFile(q4)
    n = 0
    for t in a.tensors:
        if t.type == Q.TP1:
            assert b.tensor(t.name).type == Q.Q4_0
            x, y = values(ggml, a, t.name), values(ggml, b, t.name)
            assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), t.name
            n += 1
    assert n == 14 and all("exact" in how for how in rep.converted.values() if how.startswith("TP1"))
    assert b.get("general.file_type") == 2 and not any(k.startswith("tritpack.") for k in b.fields)


@pytest.mark.parametrize("damage", ["truncated", "not_gguf", "nan", "inf_unsampled_row"])
def test_bad_input_clear_error_no_output(models, tmp_path, damage, capsys):
    src = tmp_path / "bad.gguf"
    data = bytearray(models["gauss"].read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "not_gguf":
        data[:4] = b"GGML"
    elif damage == "nan":
        f = GGUFFile(models["gauss"])
        t = f.tensor("blk.1.attn_k.weight")
        data[t.offset + 4 * 70: t.offset + 4 * 71] = np.float32(np.nan).tobytes()
    else:  # a row the planner's samples skip: found by the C pass while writing
        f = GGUFFile(models["gauss"])
        t = f.tensor("blk.1.attn_k.weight")
        assert t.type == Q.F32 and t.row_length == 128
        at = t.offset + 4 * (3 * 128 + 5)
        data[at:at + 4] = np.float32(-np.inf).tobytes()
    src.write_bytes(bytes(data))
    before = sha(src)
    rc = cli_main(["convert", str(src), "-o", str(tmp_path / "out.gguf")])
    err = capsys.readouterr().err
    assert rc != 0
    errors = [l for l in err.splitlines() if l.startswith("tritpack-gguf: error:")]
    assert len(errors) == 1 and str(src) in errors[0], err
    assert "Traceback" not in err
    if damage == "nan":
        assert "blk.1.attn_k.weight" in err and "NaN" in err
    if damage == "inf_unsampled_row":
        assert "blk.1.attn_k.weight" in err and "row 3, column 5" in err, err
    assert not (tmp_path / "out.gguf").exists()
    assert sha(src) == before
    assert [p.name for p in tmp_path.iterdir()] == ["bad.gguf"]


def test_cli_json_report(models, tmp_path):
    out = tmp_path / "j.gguf"
    r = subprocess.run([sys.executable, "-m", "tritpack_gguf.cli", "convert", str(models["gauss"]), "-o", str(out),
                        "--type", "tp1", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["output"] == str(out) and doc["size_after"] == sum(t["dst_bytes"] for t in doc["tensors"])
    assert {t["name"] for t in doc["tensors"]} == {t.name for t in GGUFFile(models["gauss"]).tensors}
    assert all(t["cos"] is not None for t in doc["tensors"] if t["quantize"])
    # the CLI starts the source's hash before it loads the converter: the digest must still be the file's
    assert GGUFFile(out).get("tritpack.source_sha256") == sha(models["gauss"])


def test_cli_starts_without_the_heavy_modules():
    # `tritpack-gguf convert` hashes the source on the second core while numpy, gguf and the converter
    # load; that only helps if importing the CLI does not load them first
    code = ("import sys, tritpack_gguf.cli; "
            "print(sorted(m for m in ('numpy', 'gguf', 'tritpack_gguf.convert', 'tritpack_gguf.evaluate', "
            "'tritpack_gguf.verify', 'tritpack_gguf.demo') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


def test_a_started_hash_of_another_file_is_not_used(models, tmp_path):
    from tritpack_gguf.digest import SourceHash

    other = SourceHash(models["tern"])
    r = convert(models["gauss"], ConvertOptions(type="tp1", output=tmp_path / "h.gguf"), source_hash=other)
    assert GGUFFile(r.output).get("tritpack.source_sha256") == sha(models["gauss"])
    assert other._stop.is_set()


def test_parse_size():
    assert parse_size("2.5GB") == 2_500_000_000 and parse_size("1GiB") == 1 << 30 and parse_size("700MB") == 700_000_000
    with pytest.raises(TritpackError):
        parse_size("lots")
