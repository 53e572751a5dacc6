"""`convert --type mixed` over the whole palette, and `--like PRESET`, on tiny models made here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from tritpack_gguf.cli import main as cli_main
from tritpack_gguf.convert import ConvertOptions, convert, preset_size
from tritpack_gguf.converters.policy import min_bpw, palette
from tritpack_gguf.converters.policy import tensor_bytes as tensor_bytes_of
from tritpack_gguf.converters.reader import GGUFFile
from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file
from tritpack_gguf.errors import TritpackError

# rows of 256 and 768: the 256-superblock K- and i-quants fit every matrix, as on most real models
SHAPE = Shape(n_embd=256, n_ff=768, n_layer=2, n_head=4, n_head_kv=2, n_ctx=256)


@pytest.fixture(scope="module")
def model(tmp_path_factory, patched_build) -> Path:
    d = tmp_path_factory.mktemp("mixed")
    return make_llama(d / "m256.gguf", vocab_file(patched_build.source_dir), SHAPE, seed=11)


@pytest.fixture(scope="module")
def imatrix(model, patched_build, tmp_path_factory) -> Path:
    """llama-imatrix's own file for the tiny model, over a text made here."""
    d = tmp_path_factory.mktemp("imat")
    text = d / "text.txt"
    text.write_text(" ".join(f"the {w} of the house was {i} and" for i, w in
                             enumerate(["door", "roof", "garden", "kitchen", "window"] * 120)))
    out = d / "imatrix.gguf"
    lib = Path(patched_build.lib_dir)
    subprocess.run([str(lib / "llama-imatrix"), "-m", str(model), "-f", str(text), "-c", "128", "--chunks", "4",
                    "-t", "2", "-o", str(out)], check=True, capture_output=True, env={"LD_LIBRARY_PATH": str(lib)})
    return out


def quantize(patched_build, src: Path, out: Path, preset: str, imatrix: Path | None = None) -> Path:
    lib = Path(patched_build.lib_dir)
    cmd = [str(lib / "llama-quantize")] + (["--imatrix", str(imatrix)] if imatrix else []) + [str(src), str(out), preset]
    subprocess.run(cmd, check=True, capture_output=True, env={"LD_LIBRARY_PATH": str(lib)})
    return out


def tensor_bytes(path: Path) -> int:
    return sum(t.nbytes for t in GGUFFile(path).tensors)


def generate(path: Path) -> int:
    import tritpack_gguf

    llm = tritpack_gguf.load(path, n_ctx=64, n_threads=1, n_batch=32, seed=1)
    try:
        return llm("Hello", max_tokens=4, temperature=0.0)["usage"]["completion_tokens"]
    finally:
        llm.close()


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q2_K", "Q6_K"])
def test_like_is_the_presets_true_size_and_the_mix_fits_in_it(model, patched_build, ggml, tmp_path, preset):
    stock = quantize(patched_build, model, tmp_path / f"{preset}.gguf", preset)
    # the budget is exactly what llama-quantize wrote, tensor by tensor
    budget, types = preset_size(model, preset.lower(), None, ggml.lib_dir)
    assert budget == tensor_bytes(stock)
    assert types == {t.name: t.type.name for t in GGUFFile(stock).tensors}
    r = convert(model, ConvertOptions(type="mixed", like=preset, output=tmp_path / "mix.gguf", threads=2))
    out = GGUFFile(r.output)
    assert r.size_after == tensor_bytes(r.output) <= budget
    assert r.size_after >= 0.97 * budget, "the budget should be nearly spent"
    assert out.get("tritpack.like") == preset and out.get("tritpack.type") == "mixed"
    used = {t.type for t in out.tensors if t.type != Q.F32}
    assert used - {Q.TP1, Q.TP4}, f"no stock type chosen at all: {used}"
    # the mix measured lower (weighted) error than the preset's own types would have: at least the
    # per-tensor cosine the report gives is plausible for the size
    assert all(t.cos > 0.9 for t in r.tensors if t.quantize), [(t.name, t.cos) for t in r.tensors if t.quantize]
    assert generate(r.output) == 4


def test_with_an_imatrix_the_i_quants_join_and_the_file_runs(model, imatrix, patched_build, tmp_path):
    stock = quantize(patched_build, model, tmp_path / "Q3_K_M.gguf", "Q3_K_M", imatrix)
    budget = tensor_bytes(stock)
    r = convert(model, ConvertOptions(type="mixed", like="Q3_K_M", imatrix=imatrix, output=tmp_path / "mix.gguf",
                                      threads=2))
    assert r.size_after == tensor_bytes(r.output) <= budget
    # every matrix measured the i-quants below 4 bits too (they need the imatrix); without one, not
    counts = {t.name: int(t.reason.split(" of ")[1].split()[0]) for t in r.tensors if t.tier}
    plain = convert(model, ConvertOptions(type="mixed", like="Q3_K_M", dry_run=True))
    counts_plain = {t.name: int(t.reason.split(" of ")[1].split()[0]) for t in plain.tensors if t.tier}
    assert counts["blk.0.ffn_up.weight"] == counts_plain["blk.0.ffn_up.weight"] + 5
    assert generate(r.output) == 4
    # just above the smallest mix, the matrices take the stock 2- and 3-bit types beside TP1
    src = GGUFFile(model)
    smallest = sum(p.dst_bytes for p in plain.tensors if not p.tier) + sum(
        min(tensor_bytes_of(qt, src.tensor(p.name))
            for qt in palette(src.tensor(p.name).row_length, p.name != "token_embd.weight", min_bpw(p.name, False)))
        for p in plain.tensors if p.tier)
    q2k = preset_size(model, "Q2_K", imatrix, Path(patched_build.lib_dir))[0]
    low = convert(model, ConvertOptions(type="mixed", budget=smallest + (q2k - smallest) // 10, imatrix=imatrix,
                                        output=tmp_path / "low.gguf", threads=2))
    low_types = {t.dst_type for t in low.tensors if t.tier}
    assert low_types & {"Q2_K", "Q3_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"}, low_types
    assert generate(low.output) == 4


def test_a_bad_preset_is_one_clear_error(model, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    rc = cli_main(["convert", str(model), "--type", "mixed", "--like", "Q4_K_X", "-o", str(out)])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("tritpack-gguf: error:")]
    assert rc != 0 and len(errors) == 1 and "unknown preset 'Q4_K_X'" in errors[0] and "Q4_K_M" in err, err
    assert "Traceback" not in err and not out.exists()
    rc = cli_main(["convert", str(model), "--like", "Q4_K_M", "-o", str(out)])
    assert rc != 0 and "apply to --type mixed" in capsys.readouterr().err
    with pytest.raises(TritpackError, match="unknown preset"):
        convert(model, ConvertOptions(type="mixed", like="Q9_K", dry_run=True))
    with pytest.raises(TritpackError, match="not --budget and --like"):
        convert(model, ConvertOptions(type="mixed", like="Q4_K_M", budget=10**6, dry_run=True))
    assert not out.exists()


def test_like_with_imatrix_auto_sizes_the_preset_with_that_imatrix(model, tmp_path):
    # --imatrix auto resolves to a file (made once, cached): llama-quantize's dry run gets that file, not "auto"
    r = convert(model, ConvertOptions(type="mixed", like="Q3_K_M", imatrix="auto", dry_run=True, threads=2))
    assert r.imatrix and r.size_after > 0
    assert any(t.tier for t in r.tensors)
