#!/usr/bin/env python3
"""Which tensors cost TP4 the most (issue 22): one class of matrices at a time.

    .venv/bin/python bench/tp4_tensor_cost.py [--chunks 16] [--imatrix FILE] [--threads N]

SmolLM2-135M-Instruct's F16 (tritpack_gguf.models.fetch_default_model) is converted with
`tritpack-gguf convert --type tp4` once per class of matrices (attn_q, attn_k, attn_v, attn_output,
ffn_gate, ffn_up, ffn_down, and the tied token embedding), every other tensor kept as it is (F16, with
`--keep`), and each file is measured against the F16 with `tritpack_gguf.evaluate.evaluate` over the
quality table's text (Pride and Prejudice, ctx 512); the whole TP4 file (the converter's default
policy: the tied embedding Q8_0) is measured beside them. For each class: its share of the weights,
the KL divergence it alone causes, the converter's signal-to-noise ratio over the class (from its
report), and the kurtosis of the class's weights (heavy tails are what a 16-level codebook spends its
levels on). Writes bench/results/tp4-tensor-cost.md and .json. Work files go to
$TRITPACK_BENCH_DIR (default $TRITPACK_HOME/bench-quality)/tensor-cost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

from tritpack_gguf import evaluate as E  # noqa: E402
from tritpack_gguf.convert import ConvertOptions, convert  # noqa: E402
from tritpack_gguf.converters.reader import GGUFFile  # noqa: E402
from tritpack_gguf.ggml_lib import load_ggml  # noqa: E402
from tritpack_gguf.models import fetch_default_model  # noqa: E402
from tritpack_gguf.paths import tritpack_home  # noqa: E402

CORPUS = Path(os.environ.get("TRITPACK_CORPUS", ROOT.parent / "shared" / "corpus"))
EVAL_TEXT = CORPUS / "prideprejudice.txt"
CTX = 512
CLASSES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "token_embd")


def class_of(name: str) -> str | None:
    for c in CLASSES:
        if f".{c}." in name or name.startswith(c + "."):
            return c
    return None


def weight_facts(f16: Path) -> dict[str, dict]:
    """Per class: weight count and the excess kurtosis of its weights (each row's mean removed)."""
    out: dict[str, dict] = {}
    g = GGUFFile(f16)
    ggml = load_ggml()
    for t in g.tensors:
        c = class_of(t.name)
        if c is None or t.is_1d:
            continue
        x = g.float32(t, ggml).astype(np.float64)
        x = x - x.mean(axis=1, keepdims=True)
        m2, m4 = float((x ** 2).mean()), float((x ** 4).mean())
        d = out.setdefault(c, {"weights": 0, "m2": 0.0, "m4": 0.0, "tensors": 0})
        d["weights"] += x.size
        d["m2"] += m2 * x.size
        d["m4"] += m4 * x.size
        d["tensors"] += 1
        g.release(t)
    for d in out.values():
        m2, m4 = d.pop("m2") / d["weights"], d.pop("m4") / d["weights"]
        d["kurtosis"] = m4 / (m2 * m2) - 3.0
    return out


def input_stats(f16: Path) -> dict[str, dict]:
    """Per class, from the automatic imatrix (the mean square of each input column over the package's
    calibration text, imatrix_auto.py, cached): the mean input energy and how uneven it is (the
    largest column's over the median column's, averaged over the class's tensors)."""
    from tritpack_gguf.converters.imatrix import load_imatrix
    from tritpack_gguf.digest import sha256_file
    from tritpack_gguf.imatrix_auto import auto_imatrix

    path, _ = auto_imatrix(f16, sha256_file(f16), load_ggml().lib_dir)
    out: dict[str, list] = {}
    for name, w in load_imatrix(path).items():
        c = class_of(name if name.endswith(".weight") else name + ".weight")
        if c is not None:
            w = np.asarray(w, dtype=np.float64)
            out.setdefault(c, []).append((float(w.mean()), float(w.max() / max(np.median(w), 1e-30))))
    return {c: {"energy": float(np.mean([e for e, _ in v])), "peak": float(np.mean([k for _, k in v]))}
            for c, v in out.items()}


def snr_of(report, cls: str | None) -> float | None:
    """Weighted mean SNR (dB, over each tensor's weights) of the quantized tensors of `cls` (None: all)."""
    num = den = 0.0
    for t in report.tensors:
        if t.quantize and t.snr_db is not None and (cls is None or class_of(t.name) == cls):
            n = math.prod(t.shape)
            num += t.snr_db * n
            den += n
    return num / den if den else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--imatrix", default=None, help="an imatrix file (default: none, the plain TP4 question)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the .md from the .json (the input figures computed if missing)")
    args = ap.parse_args()
    if args.report_only:
        rows = json.loads((RESULTS / "tp4-tensor-cost.json").read_text())
        if any(r.get("kurtosis") is not None and r.get("input_energy") is None and r["class"] != "token_embd"
               for r in rows):
            stats = input_stats(fetch_default_model()["f16"])
            for r in rows:
                r["input_energy"] = stats.get(r["class"], {}).get("energy")
                r["input_peak"] = stats.get(r["class"], {}).get("peak")
        meta = rows[-1].get("meta", {})
        write(rows, argparse.Namespace(chunks=meta.get("chunks", args.chunks), imatrix=meta.get("imatrix")),
              meta.get("seconds", 0.0), rows[-1]["weights"])
        return 0
    t_start = time.monotonic()
    work = Path(os.environ.get("TRITPACK_BENCH_DIR", tritpack_home() / "bench-quality")) / "tensor-cost"
    work.mkdir(parents=True, exist_ok=True)
    f16 = fetch_default_model()["f16"]
    facts = weight_facts(f16)
    for c, st in input_stats(f16).items():
        facts[c].update(st)
    total_w = sum(d["weights"] for d in facts.values())
    rows = []
    for cls in (*CLASSES, None):
        label = cls or "all (the TP4 file)"
        out = work / f"tp4-only-{cls or 'all'}.gguf"
        keep = [] if cls is None else [f"*{c}*" for c in CLASSES if c != cls]
        print(f"[{label}] converting", file=sys.stderr, flush=True)
        rep = convert(f16, ConvertOptions(type="tp4", output=out, keep=keep, force=True, threads=args.threads,
                                          imatrix=args.imatrix or "none"))
        if cls == "token_embd" and not any(t.quantize and class_of(t.name) == "token_embd" for t in rep.tensors):
            raise SystemExit("the token embedding was not quantized")
        print(f"[{label}] evaluating", file=sys.stderr, flush=True)
        ev = E.evaluate(out, f16, EVAL_TEXT, ctx=CTX, chunks=args.chunks, threads=args.threads)
        types: dict[str, int] = {}
        for t in rep.tensors:
            if class_of(t.name) == (cls or class_of(t.name)) and t.quantize:
                types[t.dst_type] = types.get(t.dst_type, 0) + 1
        rows.append({"class": label, "weights": facts[cls]["weights"] if cls else total_w,
                     "kurtosis": facts[cls]["kurtosis"] if cls else None, "snr_db": snr_of(rep, cls),
                     "input_energy": facts[cls].get("energy") if cls else None,
                     "input_peak": facts[cls].get("peak") if cls else None,
                     "types": types, "kld": ev.kld_mean, "kld_err": ev.kld_mean_err, "kld_p99": ev.kld_p99,
                     "same_top": ev.same_top, "ppl": ev.perplexity, "base_ppl": ev.base_perplexity,
                     "size": rep.size_after})
        out.unlink(missing_ok=True)
    write(rows, args, time.monotonic() - t_start, total_w)
    return 0


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _ratio(parts: list[dict], key: str) -> str:
    """ffn_down's `key` over the mean of the other matrices' (the token embedding has no input)."""
    down = next((r.get(key) for r in parts if r["class"] == "ffn_down"), None)
    rest = [r.get(key) for r in parts if r["class"] not in ("ffn_down", "token_embd") and r.get(key)]
    return f"{down / np.mean(rest):.1f}x" if down and rest else "(no imatrix figures)"


def heads_of(f16: Path) -> dict:
    g = GGUFFile(f16)
    arch = g.architecture
    h, kv = g.get(f"{arch}.attention.head_count"), g.get(f"{arch}.attention.head_count_kv")
    return {"head": h, "kv": kv, "per_kv": h // kv if h and kv else None}


def write(rows: list[dict], args, seconds: float, total_w: int) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows[-1]["meta"] = {"chunks": args.chunks, "imatrix": args.imatrix, "seconds": seconds}
    (RESULTS / "tp4-tensor-cost.json").write_text(json.dumps(rows, indent=1) + "\n")
    whole = rows[-1]
    parts = rows[:-1]
    s = sum(r["kld"] for r in parts)
    lines = [
        "# Which tensors cost TP4 the most (SmolLM2-135M-Instruct, no imatrix)" if not args.imatrix else
        "# Which tensors cost TP4 the most (SmolLM2-135M-Instruct, with an imatrix)",
        "",
        f"Generated by `bench/tp4_tensor_cost.py --chunks {args.chunks}"
        + (f" --imatrix {Path(args.imatrix).name}" if args.imatrix else "") + f"` ({time.strftime('%Y-%m-%d')}; "
        f"{platform.machine()}, {os.cpu_count()} cores; {seconds / 60:.0f} min). Each row: the F16 file with only "
        "that class of tensors converted to TP4 (every other tensor kept F16 with `--keep`), against the F16 "
        f"over `prideprejudice.txt`, ctx {CTX}, {args.chunks} chunks (llama-perplexity's KL divergence, as in "
        "quality.md). Kurtosis: excess kurtosis of the class's weights (each row's mean removed; a Gaussian is 0). "
        "SNR: the converter's signal-to-noise ratio over the class's weights. Input energy and peak/median: "
        "from the automatic imatrix (the mean square of each input column over the package's calibration "
        "text, not the evaluation text): the class's mean, and its largest column over its median one.",
        "",
        "| class | share of weights | tensors made TP4 | excess kurtosis | SNR (dB) | input energy | input peak/median | mean KLD | share of the sum | 99% KLD | same top token |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(parts, key=lambda r: -r["kld"]):
        lines.append(f"| {r['class']} | {100 * r['weights'] / total_w:.1f}% | "
                     f"{', '.join(f'{k} {v}' for k, v in r['types'].items())} | {r['kurtosis']:.2f} | "
                     f"{r['snr_db']:.2f} | {_g(r.get('input_energy'))} | {_g(r.get('input_peak'))} | "
                     f"{r['kld']:.5f} ± {r['kld_err']:.5f} | {100 * r['kld'] / s:.0f}% | "
                     f"{r['kld_p99']:.4f} | {100 * r['same_top']:.2f}% |")
    lines += [
        f"| sum of the rows | 100% | | | | | | {s:.5f} | 100% | | |",
        f"| **the whole TP4 file** (embedding Q8_0) | 100% | "
        f"{', '.join(f'{k} {v}' for k, v in whole['types'].items())} | | {whole['snr_db']:.2f} | | | "
        f"{whole['kld']:.5f} ± {whole['kld_err']:.5f} | | {whole['kld_p99']:.4f} | {100 * whole['same_top']:.2f}% |",
        "",
    ]
    heads = heads_of(fetch_default_model()["f16"])
    ranked = sorted(parts, key=lambda r: -r["kld"])
    a, b = ranked[0], ranked[1]
    snrs = [r["snr_db"] for r in parts if r["class"] != "token_embd"]
    lines += [
        "## Reading",
        "",
        f"- The classes' costs add up: the sum of the rows ({s:.5f}) is the whole file's divergence "
        f"({whole['kld']:.5f}) within {100 * abs(s - whole['kld']) / whole['kld']:.0f}%, so each row is that class's share.",
        f"- **{a['class']}** ({100 * a['weights'] / total_w:.1f}% of the weights) and **{b['class']}** "
        f"({100 * b['weights'] / total_w:.1f}%) cost the most: {100 * (a['kld'] + b['kld']) / s:.0f}% of the divergence "
        f"together.",
        f"- Not because TP4 quantizes them worse: the SNR of every class of matrices is within "
        f"{min(snrs):.1f} to {max(snrs):.1f} dB, and the kurtosis (heavy tails) does not order the costs. "
        "It is what their errors do downstream. An error in `attn_q`/`attn_k` only moves the attention "
        "weights, damped by the softmax; an error in `attn_v` is carried linearly (weighted, then mapped by "
        "`attn_output`) into the residual stream, and with grouped-query attention each V row serves "
        f"{heads.get('per_kv', '?')} query heads here ({heads.get('head', '?')} heads, {heads.get('kv', '?')} "
        f"for keys and values). `ffn_down` multiplies the gated activations: its inputs have "
        f"{_ratio(parts, 'input_energy')} the mean energy of the other matrices' and a peak column "
        f"{_ratio(parts, 'input_peak')} as far above the median, so the same relative weight error "
        "becomes a larger output error. "
        "llama-quantize's Q4_K_M spends its extra bits exactly there (Q6_K on `attn_v` and on half of "
        "the `ffn_down` tensors), for the same reasons.",
        "- What closes the gap to Q4_K_M without an imatrix: the same bits in the same places, which "
        "`--type mixed --like Q4_K_M` does from measured error (quality.md: 0.91x Q4_K_M's divergence at "
        "its size, no imatrix); or an imatrix, which weights these tensors' errors by what the model "
        "uses (the default when the source model fits in memory).",
        "",
    ]
    (RESULTS / "tp4-tensor-cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
