"""Fit TP4's table of 16 codebooks and write ggml_kernels/tp4-codebooks.h.

    python converters/tp4_fit.py            # fit (about two minutes) and rewrite the header
    python converters/tp4_fit.py --check    # fit and compare with the committed header (exit 1 if not equal)

The committed header is exactly what this prints: the fit is deterministic (fixed seeds, float64
sums in a fixed order, no BLAS), and the header holds nothing but the table, the nearest-entry
lookup table derived from it and the fixed text below. tests/test_tp4.py checks cheaply that the
header re-renders identically from its own table and that the training data still hashes to the
recorded value; `--check` (or TP4_FULL_FIT=1 for the test) reruns the whole fit.

Method: generalized Lloyd over blocks of 64. Training blocks come from several families (Gaussian,
Student-t with 4 and 6 degrees of freedom, Laplace, and Gaussian with per-position log-normal
scales standing in for outlier channels of real weight matrices), each scaled to unit RMS over the
family so that within a family high-energy blocks weigh more, as they do in a tensor's squared
error. Each iteration quantizes every block with the reference quantizer (converters/tp4.py, the
bit-exact twin of the C kernel, with the candidate table), then moves every codebook entry to the
least-squares value over the weights assigned to it (x*e/e^2 summed, e = D*S[code] the decoded
scale), and rounds the table to int8 (sorted, most negative entry -127, strictly increasing).
The table with the lowest training error over the iterations is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

try:  # as part of the package, or as a script next to tp4.py
    from . import tp4
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tp4  # type: ignore[no-redef]

SEED = 20240917
BLOCKS_PER_FAMILY = 8192
ITERATIONS = 20                  # the table is a fixed point from iteration 17 on
FAMILIES = ("gauss", "t4", "t6", "laplace", "colscaled")
IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float64)

HEADER = Path(__file__).resolve().parent.parent / "ggml_kernels" / "tp4-codebooks.h"


def training_data() -> np.ndarray:
    """(len(FAMILIES) * BLOCKS_PER_FAMILY, 64) float32 training blocks, deterministic."""
    out = []
    for i, fam in enumerate(FAMILIES):
        r = np.random.default_rng([SEED, i])
        shape = (BLOCKS_PER_FAMILY, 64)
        if fam == "gauss":
            x = r.standard_normal(shape)
        elif fam == "t4":
            x = r.standard_t(4, shape)
        elif fam == "t6":
            x = r.standard_t(6, shape)
        elif fam == "laplace":
            x = r.laplace(size=shape)
        elif fam == "colscaled":
            x = r.standard_normal(shape) * np.exp(0.5 * r.standard_normal(shape))
        else:  # pragma: no cover
            raise ValueError(fam)
        x = x / np.sqrt(np.mean(x * x))
        out.append(x.astype(np.float32))
    return np.concatenate(out)


def data_fingerprint(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype="<f4").tobytes()).hexdigest()[:16]


def canonical_int8(cb: np.ndarray) -> np.ndarray:
    """One float codebook -> int8: sorted, most negative entry -127, strictly increasing."""
    c = np.sort(np.asarray(cb, dtype=np.float64))
    if abs(c[-1]) > abs(c[0]):
        c = -c[::-1]
    ci = np.rint(c * (127.0 / abs(c[0]))).astype(np.int64)
    ci = np.clip(ci, -127, 127)
    for j in range(1, 16):
        if ci[j] <= ci[j - 1]:
            ci[j] = ci[j - 1] + 1
    if ci[-1] > 127:  # pragma: no cover - not reached by the fit
        raise ValueError("codebook does not fit int8")
    return ci.astype(np.int8)


def initial_table() -> np.ndarray:
    base = IQ4NL / 127.0
    return np.array([canonical_int8(np.sign(base) * np.abs(base) ** p) for p in np.linspace(0.8, 1.4, tp4.TP4_NCB)])


def block_errors(x: np.ndarray, cbt: np.ndarray, res) -> tuple[np.ndarray, np.ndarray]:
    d16, k, codes, q = res
    d = d16.view(np.float16).astype(np.float32)
    s = tp4.TP4_SCALES[codes].astype(np.float32)
    e = np.repeat(d[:, None] * s, 16, axis=1)                       # decoded scale per weight
    y = e * cbt.astype(np.float32)[k[:, None], q]
    return ((x.astype(np.float64) - y) ** 2).sum(1), e


def fit(verbose: bool = True) -> np.ndarray:
    x = training_data()
    energy = float((x.astype(np.float64) ** 2).sum())
    cbt = initial_table()
    best, best_err = cbt.copy(), np.inf
    for it in range(ITERATIONS):
        lut = tp4.nearest_lut(cbt)
        res = tp4.quantize_core(x, None, cbt, lut, tries=(1.0,), weigh=False)
        err, e = block_errors(x, cbt, res)
        tot = float(err.sum()) / energy
        if verbose:
            use = np.bincount(res[1], minlength=tp4.TP4_NCB)
            print(f"iteration {it:2d}: relative error {tot:.6f}, use {use.tolist()}", flush=True)
        if tot < best_err:
            best, best_err = cbt.copy(), tot
        # Lloyd update of every entry of every codebook
        k = np.repeat(res[1], 64)
        q = res[3].astype(np.int64).ravel()
        idx = k * 16 + q
        xe = (x.astype(np.float64) * e).ravel()
        ee = (e.astype(np.float64) ** 2).ravel()
        num = np.bincount(idx, xe, tp4.TP4_NCB * 16).reshape(-1, 16)
        den = np.bincount(idx, ee, tp4.TP4_NCB * 16).reshape(-1, 16)
        cur = cbt.astype(np.float64)
        for r in range(tp4.TP4_NCB):
            got = den[r] > 0
            if got.sum() < 2:        # (almost) unused codebook: keep it
                continue
            # entries that got no weight keep their value (same units: e was decoded with this table)
            row = np.where(got, num[r] / np.where(got, den[r], 1.0), cur[r])
            cbt[r] = canonical_int8(row)
    # order: lightest tails first (largest inner entries relative to the extremes)
    key = -(np.abs(best.astype(np.int64)).sum(1))
    order = np.argsort(key, kind="stable")
    if verbose:
        print(f"kept table with relative training error {best_err:.6f}")
    return best[order]


def render_header(table: np.ndarray) -> str:
    table = np.asarray(table, dtype=np.int8)
    lut = tp4.nearest_lut(table)
    rows = ",\n".join("    {" + ", ".join(f"{int(v):4d}" for v in row) + "}" for row in table)
    lrows = []
    for row in lut:
        chunks = [", ".join(f"{int(v):2d}" for v in row[i:i + 32]) for i in range(0, 512, 32)]
        lrows.append("    {\n        " + ",\n        ".join(chunks) + "\n    }")
    lut_text = ",\n".join(lrows)
    return f"""// TP4 codebook table. GENERATED by converters/tp4_fit.py: do not edit; rerun the script instead.
// fit: seed {SEED}, {BLOCKS_PER_FAMILY} blocks of 64 per family ({", ".join(FAMILIES)}), {ITERATIONS} Lloyd iterations
// training data sha256/16: {data_fingerprint(training_data())}
//
{_MEASUREMENTS}
#pragma once

#include <stdint.h>

#define TP4_NCODEBOOKS 16

// Storage qualifier of the table: empty for C; CUDA code defines it (e.g. as __device__) first.
#ifndef TP4_TABLE_QUALIFIER
#define TP4_TABLE_QUALIFIER
#endif

// 16 codebooks of 16 sorted int8 entries; a TP4 weight is d * scale[code] * tp4_codebooks[k][q].
static TP4_TABLE_QUALIFIER const int8_t tp4_codebooks[TP4_NCODEBOOKS][16] = {{
{rows}
}};

#ifndef __CUDACC__
// Quantizer only: tp4_nearest[k][t] is the index of the entry of codebook k nearest to every v with
// floor(2*v) == t - 256 (v in codebook units, clamped to [-128, 128); ties go to the upper entry).
// Derived from tp4_codebooks (tests/test_tp4.py checks it).
static const uint8_t tp4_nearest[TP4_NCODEBOOKS][512] = {{
{lut_text}
}};
#endif
"""


_MEASUREMENTS = """\
// Layout (tritpack-common.h): fp16 d, 4-bit codebook index, four signed 3-bit scales s in
// {+-4,5,6,7} for sub-blocks of 16, 64 4-bit indices: 36 bytes per 64 weights = 4.5 bpw.
//
// Measurements behind it: relative squared error sum((x-y)^2)/sum(x^2) on 8192 fixed-seed blocks of
// N(0,1) / Student-t(4), best-of search (numpy prototype), the 32 bits beyond the indices split as:
//   2 fp16 scales per 32, IQ4_NL codebook, least-squares search        0.00539 / 0.00804
//   fp16 + 2 x 4-bit signed scales (+-4..11) per 32, IQ4_NL codebook    0.00550 / 0.00824
//   fp16 + 4 x 3-bit signed scales per 16, IQ4_NL codebook               0.00477 / 0.00721
//     same with unsigned scales 4..7 (no per-sub-block sign)            0.01866 / 0.02687
//     scale sets +-{3..6} / +-{5..8} / +-{8,10,12,15}: .00517/.00703, .00484/.00751, .00517/.00715
//   fp16 + 6-bit index into 64 learned codebooks + 2 x 5-bit signed (+-8..15) per 32:
//                                                                        0.00440 / 0.00527
//   fp16 + 4-bit index into 16 learned codebooks + 4 x 3-bit signed per 16 (chosen):
//                                                                        0.00405 / 0.00492
// Search effort of the shipped quantizer (tp4.c) with this table: score all 16 codebooks with one
// scale try per sign, joint scale search on the best TP4_NBEST: NBEST 1: 0.00446/0.00545,
// 2: 0.00430/0.00520, 4 (shipped): 0.00421/0.00506, 16: 0.00417/0.00499; 5 tries instead of 1
// gain 1%. Test matrices of tests/test_tp4.py (256 x 4096, seed 2024), plain / importance-weighted:
//             TP4      Q4_0     IQ4_NL   IQ4_XS
//   N(0,1)    0.00426  0.00739  0.00580  0.00589     imatrix: 0.00249  0.00509  0.00401  0.00413
//   t(4)      0.00519  0.01344  0.00876  0.00894     imatrix: 0.00327  0.01028  0.00627  0.00656
// Real weights, SmolLM2-135M-Instruct F16 (8 attention/FFN tensors; not in the fit, which uses only
// the synthetic families): TP4 0.0032-0.0037, IQ4_NL 0.0055-0.0069, Q4_0 0.0071-0.0099, IQ4_XS 0.0057
// (ffn_down only: the other rows are 576 wide, not a multiple of 256).
// Quantization (one thread, AMD EPYC Zen 4): about 32 MB/s of float input vs 20-23 MB/s for IQ4_XS
// and IQ4_NL; the AVX2 dot product with Q8_0 runs at IQ4_XS's bytes per second (0.167 vs 0.157 us
// per 4096-row, 4.5 vs 4.25 bpw) and beats IQ4_NL (0.179 us).
//"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="fit and compare with the committed header")
    ap.add_argument("--out", type=Path, default=HEADER, help="header to write (default: the repo's)")
    ap.add_argument("--rerender", action="store_true", help="re-render the header from its own table, no fit")
    args = ap.parse_args(argv)
    if args.rerender:
        table = tp4.parse_codebook_header(args.out.read_text())
    else:
        table = fit(verbose=True)
    text = render_header(table)
    if args.check:
        same = HEADER.read_text() == text
        print("header matches the fit" if same else "header DIFFERS from the fit")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
