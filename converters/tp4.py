"""TP4: numpy reference of the 4-bit learned-codebook type (bit-exact twin of ggml_kernels/tp4.c).

Block of 64 weights, 36 bytes (4.5 bits per weight), see ggml_kernels/tritpack-common.h:

    d[2]   fp16 block scale D, little endian
    sc[2]  16-bit little-endian field: bits 0..3 codebook index k (0..15),
           bits 4+3i..6+3i the scale code of sub-block i (16 weights each, i = 0..3)
    qs[32] 4-bit indices: byte j holds element j (low nibble) and element 32+j (high nibble)

    weight[16i+j] = D * S[code_i] * CB[k][q]     S = {4, 5, 6, 7, -4, -5, -6, -7}

CB is the table of 16 learned int8 codebooks in ggml_kernels/tp4-codebooks.h, written by
converters/tp4_fit.py. This module reads the table from that header (the same file the C and CUDA
kernels compile), so there is one source of truth.

Quantization (quantize_row_tp4_ref / quantize_tp4 in C) for one block, with importance w
(block_weights: the weights' own magnitude 1 + x^2/(2 ms), ms the block's mean square, or the imatrix
entries of the block's columns times its square root):
  1. every codebook k: every sub-block i: for both signs (the sub-block's largest-magnitude value
     mapped onto CB[k][0] or onto CB[k][15]) and the scale tries TP4_TRY, assign each weight to the
     nearest entry (a 512-entry lookup table per codebook) and keep the least-squares scale
     sigma_i = Sxq/Sqq of the try with the largest gain Sxq^2/Sqq; the codebook's score is the
     sum of its sub-blocks' gains;
  2. the TP4_NBEST codebooks with the best scores: for D = |sigma_max|/m, m = 7, 6, 5, 4, round
     sigma_i/D to the nearest signed scale in S, reassign all 64 weights, take the least-squares D
     and its gain; keep the best (codebook, scales, D);
  3. D goes to fp16, and the weights are reassigned with the stored scale.
Sums are float64 with exact products (float32 w*x times a small integer), added as four running
sums over j = 4u + r, each in index order, then (s0 + s1) + (s2 + s3), exactly as in tp4.c, so C
and numpy agree bit for bit regardless of FMA contraction or vectorization.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from .sources import candidates, find_source_root

QK_TP4 = 64
TP4_NSUB = 4                      # sub-blocks of 16
TP4_NCB = 16                      # codebooks in the table
TP4_SCALES = np.array([4, 5, 6, 7, -4, -5, -6, -7], dtype=np.int64)   # sub-block scale code -> value
TP4_TRY = (1.0, 0.9375, 1.0625)  # scale tries of step 1 (multipliers of the inverse scale, exact in fp32)
TP4_SIGMA_MUL = 2.0               # weights w = 1 + x^2/(TP4_SIGMA_MUL * mean square of the block)
TP4_NBEST = 4                     # codebooks that go through the joint scale search (step 2)
TP4_MAG = (7, 6, 5, 4)            # step 2: magnitudes given to the largest sub-block scale
TP4_EPS = np.float32(1e-30)       # sub-blocks whose largest magnitude is below this count as zero

_HEADER_NAME = "tp4-codebooks.h"


def _header_path() -> Path:
    """ggml_kernels/tp4-codebooks.h of the build's sources (a checkout, or the wheel's package data)."""
    root = find_source_root()
    if root is None or not (root / "ggml_kernels" / _HEADER_NAME).is_file():
        raise FileNotFoundError(f"{_HEADER_NAME} not found under "
                                f"{', '.join(str(r / 'ggml_kernels') for r in candidates())}")
    return root / "ggml_kernels" / _HEADER_NAME


def parse_codebook_header(text: str) -> np.ndarray:
    """The (16, 16) int8 codebook table of tp4-codebooks.h's `tp4_codebooks` array."""
    m = re.search(r"tp4_codebooks\s*\[[^\]]*\]\s*\[[^\]]*\]\s*=\s*\{(.*?)\};", text, re.S)
    if not m:
        raise ValueError("tp4_codebooks table not found in the header")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    vals = [int(v) for v in re.findall(r"-?\d+", body)]
    if len(vals) != TP4_NCB * 16:
        raise ValueError(f"tp4_codebooks has {len(vals)} values, expected {TP4_NCB * 16}")
    return np.array(vals, dtype=np.int8).reshape(TP4_NCB, 16)


def nearest_lut(codebooks: np.ndarray) -> np.ndarray:
    """(K, 512) uint8: entry t of codebook k is the index of the entry nearest to v for every v with
    floor(2v) = t - 256 (ties go up), the table tp4_nearest of the header."""
    cb = np.asarray(codebooks, dtype=np.int64)
    mid2 = cb[:, 1:] + cb[:, :-1]                      # twice the midpoints, integers
    u2 = np.arange(512, dtype=np.int64) - 256          # twice the start of each bin
    return (mid2[:, None, :] <= u2[None, :, None]).sum(-1).astype(np.uint8)


@lru_cache(maxsize=None)
def _table() -> tuple[np.ndarray, np.ndarray]:
    cb = parse_codebook_header(_header_path().read_text())
    return cb, nearest_lut(cb)


def codebooks() -> np.ndarray:
    """The compiled codebook table (16, 16) int8, read from ggml_kernels/tp4-codebooks.h."""
    return _table()[0].copy()


def _sum4(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis (a multiple of 4 long) as tp4.c does: four running sums over the
    elements j = 4u + r (r = 0..3, each in index order), then (s0 + s1) + (s2 + s3).
    np.sum would add pairwise."""
    p = np.cumsum(a.reshape(a.shape[:-1] + (-1, 4)), axis=-2)[..., -1, :]
    return (p[..., 0] + p[..., 1]) + (p[..., 2] + p[..., 3])


def _bin(x: np.ndarray, is2: np.ndarray) -> np.ndarray:
    """Index into a 512-entry nearest table: (int)(clamp(x*is2, -256, 255) + 256) in float32."""
    v = x * is2                                                    # float32, one rounding
    v = np.minimum(np.maximum(v, np.float32(-256.0)), np.float32(255.0))
    return (v + np.float32(256.0)).astype(np.int64)


def block_weights(x: np.ndarray, im: np.ndarray | None) -> np.ndarray:
    """The importance of each weight of blocks (n, 64) (tp4.c's tp4_weights): the weights' own
    magnitude, w = 1 + x^2/(2 ms) with ms the block's mean square (proportional to 2 ms + x^2), times
    sqrt of that under imatrix entries im: w = im * sqrt(1 + x^2/(2 ms)). Squares are exact in
    float64 and added as _sum4 adds; division and sqrt are correctly rounded, so C agrees."""
    x64 = x.astype(np.float64)
    x2 = x64 * x64
    ms = TP4_SIGMA_MUL * (_sum4(x2) / QK_TP4)
    pos = ms > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(pos[:, None], 1.0 + x2 / np.where(pos, ms, 1.0)[:, None], 1.0)
    if im is None:
        return v.astype(np.float32)
    return (np.asarray(im, dtype=np.float32) * np.sqrt(v).astype(np.float32)).astype(np.float32)


def quantize_core(x: np.ndarray, w: np.ndarray | None, cbt: np.ndarray, lut: np.ndarray,
                  nbest: int = TP4_NBEST, tries: tuple[float, ...] = TP4_TRY, weigh: bool = True):
    """Blocks (n, 64) float32 -> (d fp16 as uint16 (n,), k (n,), codes (n, 4), q (n, 64)).

    The algorithm of tp4.c's tp4_quantize_block with an explicit codebook table. tp4_fit.py fits
    the table with it as it was fitted: plain squared error (weigh=False: w used as given, or 1)
    and one scale try (tries=(1.0,)), so the committed table stays its output."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    K = cbt.shape[0]
    cbi = cbt.astype(np.int64)
    xs = x.reshape(n, TP4_NSUB, 16)
    if weigh:
        ws = block_weights(x, w).reshape(n, TP4_NSUB, 16)
    elif w is None:
        ws = np.ones_like(xs)
    else:
        ws = np.ascontiguousarray(w, dtype=np.float32).reshape(n, TP4_NSUB, 16)
    wx64 = (ws * xs).astype(np.float64)            # float32 product, then exact in float64
    w64 = ws.astype(np.float64)

    # largest magnitude of each sub-block (first one on ties)
    imax = np.argmax(np.abs(xs), axis=-1)
    mx = np.take_along_axis(xs, imax[..., None], -1)[..., 0]
    live = np.abs(mx) >= TP4_EPS
    with np.errstate(divide="ignore"):
        inv = np.where(live, np.float32(1.0) / np.where(live, mx, np.float32(1.0)), np.float32(0.0))

    # step 1: per codebook, per sub-block scale search
    score = np.zeros((K, n))
    sig = np.zeros((K, n, TP4_NSUB))
    for k in range(K):
        G = np.zeros((n, TP4_NSUB))
        sg = np.zeros((n, TP4_NSUB))
        for ext in (cbi[k, 0], cbi[k, 15]):
            for h in tries:
                is2 = np.float32(2 * ext * h) * inv                 # float32
                c = cbi[k][lut[k][_bin(xs, is2[..., None])]]
                sxq = _sum4(wx64 * c)
                sqq = _sum4(w64 * (c * c))
                ok = live & (sqq > 0)
                sq = np.where(ok, sqq, 1.0)
                g = np.where(ok, sxq * sxq / sq, 0.0)
                better = ok & (g > G)
                G = np.where(better, g, G)
                sg = np.where(better, sxq / sq, sg)
        score[k] = G[:, 0] + G[:, 1] + G[:, 2] + G[:, 3]
        sig[k] = sg

    # rank codebooks: best score first, lowest index on ties
    order = np.argsort(-score, axis=0, kind="stable")[:nbest]         # (nbest, n)

    best_g = np.zeros(n)
    best_d = np.zeros(n)
    best_k = np.zeros(n, dtype=np.int64)
    best_codes = np.zeros((n, TP4_NSUB), dtype=np.int64)
    rows = np.arange(n)
    for r in range(order.shape[0]):
        k = order[r]
        sg = sig[k, rows]                                             # (n, 4)
        ia = np.argmax(np.abs(sg), axis=-1)
        smax = np.abs(np.take_along_axis(sg, ia[:, None], -1)[:, 0])
        valid = smax > 0
        for m in TP4_MAG:
            D = np.where(valid, smax, 1.0) / m
            rr = sg / D[:, None]
            a = np.abs(rr)
            mag = np.where(a < 4.5, 4, np.where(a < 5.5, 5, np.where(a < 6.5, 6, 7)))
            codes = (mag - 4) | np.where(rr < 0, 4, 0)
            s = TP4_SCALES[codes]                                     # (n, 4)
            is2 = (2.0 / (D[:, None] * s)).astype(np.float32)
            q = lut[k[:, None, None], _bin(xs, is2[..., None])]
            mq = s[..., None] * cbi[k[:, None, None], q]             # (n, 4, 16) integers
            sxm = _sum4((wx64 * mq).reshape(n, 64))
            smm = _sum4((w64 * (mq * mq)).reshape(n, 64))
            ok = valid & (smm > 0)
            sm = np.where(ok, smm, 1.0)
            g = np.where(ok, sxm * sxm / sm, 0.0)
            better = ok & (g > best_g)
            best_g = np.where(better, g, best_g)
            best_d = np.where(better, sxm / sm, best_d)
            best_k = np.where(better, k, best_k)
            best_codes = np.where(better[:, None], codes, best_codes)

    # step 3: fp16 scale and final assignment
    d16 = np.clip(best_d.astype(np.float32), np.float32(-65504.0), np.float32(65504.0)).astype(np.float16)
    df = d16.astype(np.float32)
    zero = (best_g <= 0) | (df == 0)
    d16 = np.where(zero, np.float16(0), d16)
    s = TP4_SCALES[best_codes]
    with np.errstate(divide="ignore", over="ignore"):
        den = df.astype(np.float64)[:, None] * s
        is2 = np.where(zero[:, None], 0.0, 2.0 / np.where(den == 0, 1.0, den)).astype(np.float32)
    q = lut[best_k[:, None, None], _bin(xs, is2[..., None])].reshape(n, 64).astype(np.uint8)
    q[zero] = 0
    best_k = np.where(zero, 0, best_k)
    best_codes = np.where(zero[:, None], 0, best_codes)
    return d16.view(np.uint16), best_k, best_codes, q


def pack_blocks(d16: np.ndarray, k: np.ndarray, codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    n = d16.shape[0]
    out = np.zeros((n, 36), dtype=np.uint8)
    out[:, 0:2] = d16.astype("<u2").view(np.uint8).reshape(n, 2)
    sc = k.astype(np.uint32)
    for i in range(TP4_NSUB):
        sc = sc | (codes[:, i].astype(np.uint32) << (4 + 3 * i))
    out[:, 2] = sc & 0xFF
    out[:, 3] = sc >> 8
    q = q.astype(np.uint8)
    out[:, 4:] = q[:, :32] | (q[:, 32:] << 4)
    return out


def unpack_blocks(blocks: np.ndarray):
    b = np.ascontiguousarray(blocks, dtype=np.uint8)
    d = b[:, 0:2].copy().view("<f2")[:, 0].astype(np.float32)
    sc = b[:, 2].astype(np.uint32) | (b[:, 3].astype(np.uint32) << 8)
    k = (sc & 15).astype(np.int64)
    codes = np.stack([(sc >> (4 + 3 * i)) & 7 for i in range(TP4_NSUB)], axis=1).astype(np.int64)
    qs = b[:, 4:]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int64)
    return d, k, codes, q


class TP4:
    """gguf-py quants.py style numpy reference of TP4 (ggml type 81)."""

    block_size = QK_TP4
    type_size = 36

    @classmethod
    def _check(cls, blocks: np.ndarray) -> np.ndarray:
        blocks = np.asarray(blocks, dtype=np.float32)
        if blocks.ndim != 2 or blocks.shape[1] != QK_TP4:
            raise ValueError(f"expected (n, {QK_TP4}) blocks, got {blocks.shape}")
        if not np.isfinite(blocks).all():
            raise ValueError("TP4 cannot quantize NaN or Inf values")
        return blocks

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        """(n, 64) float32 -> (n, 36) uint8. C twin: quantize_tp4 (imatrix given per block here,
        shape (n, 64) or (64,)) and quantize_row_tp4_ref (imatrix None)."""
        x = cls._check(blocks)
        w = None
        if imatrix is not None:
            w = np.broadcast_to(np.asarray(imatrix, dtype=np.float32), x.shape)
            if not np.isfinite(w).all():
                raise ValueError("TP4 importance weights must be finite")
        cbt, lut = _table()
        d16, k, codes, q = quantize_core(x, w, cbt, lut)
        return pack_blocks(d16, k, codes, q)

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """(n, 36) uint8 -> (n, 64) float32. C twin: dequantize_row_tp4."""
        blocks = np.asarray(blocks, dtype=np.uint8)
        if blocks.ndim != 2 or blocks.shape[1] != cls.type_size:
            raise ValueError(f"expected (n, {cls.type_size}) bytes, got {blocks.shape}")
        d, k, codes, q = unpack_blocks(blocks)
        cbt = _table()[0].astype(np.float32)
        s = TP4_SCALES[codes].astype(np.float32)                      # (n, 4)
        ds = d[:, None] * s                                           # float32, as in C
        vals = cbt[k[:, None], q]                                     # (n, 64)
        return (np.repeat(ds, 16, axis=1) * vals).astype(np.float32)

    @classmethod
    def quantize(cls, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        """Rows (nrows, n_per_row) float32 -> (nrows, n_per_row/64*36) uint8. C twin: quantize_tp4
        (imatrix: one float per column, or None)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] % QK_TP4:
            raise ValueError(f"rows must be 2-D with a multiple of {QK_TP4} columns, got {x.shape}")
        nrows, n = x.shape
        w = None
        if imatrix is not None:
            im = np.asarray(imatrix, dtype=np.float32)
            if im.shape != (n,):
                raise ValueError(f"imatrix has shape {im.shape}, expected ({n},)")
            w = np.broadcast_to(im.reshape(1, n // QK_TP4, QK_TP4), (nrows, n // QK_TP4, QK_TP4)).reshape(-1, QK_TP4)
        q = cls.quantize_blocks(x.reshape(-1, QK_TP4), w)
        return q.reshape(nrows, n // QK_TP4 * cls.type_size)

    @classmethod
    def dequantize(cls, data: np.ndarray, n_per_row: int) -> np.ndarray:
        """(nrows, row_bytes) uint8 -> (nrows, n_per_row) float32. C twin: dequantize_row_tp4."""
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim == 1:
            data = data.reshape(1, -1)
        nb = n_per_row // QK_TP4
        if n_per_row % QK_TP4 or data.shape[1] != nb * cls.type_size:
            raise ValueError(f"{data.shape[1]} bytes per row do not hold {n_per_row} TP4 values")
        y = cls.dequantize_blocks(data.reshape(-1, cls.type_size))
        return y.reshape(data.shape[0], n_per_row)
