"""TP1 in numpy: the bit-exact twin of ggml_kernels/tp1.c (quantize, dequantize, alpha search).

TP1 stores balanced trits {-1, 0, +1} times one fp16 scale per block of 64 weights, in 15 bytes
(13 bytes of base-3 packed trits, then the fp16 scale little endian): 1.875 bits per weight. The
layout is documented in ggml_kernels/tritpack-common.h.

Quantizing a block x (importance weights w, all 1 without an imatrix), as the C code does:

    a     = |x|
    tau   = alpha * mean(a)                            (float64)
    keep  = a > tau  or  a == max(a)                   (a non-zero block never becomes all zero)
    trit  = sign(x) where keep else 0
    scale = sum_keep(w a) / sum_keep(w)                (the plain mean if sum_keep(w) <= 0)
    d     = fp16(min(float32(scale), 65504))
    (an all-zero block: d = 0, and negative zeros keep their sign bit through code 0)

Every sum is formed in the C code's order so that the results agree bit for bit: inside a block,
eight lanes l = 0..7 add elements 8*i + l (i = 0..7) in order and are combined as
((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); across blocks, sums run block by block in row-major order.

NaN or Inf in the input (or the imatrix) raises NonFiniteInputError, a ValueError.

TPQ16 is what TP1's CPU dot product multiplies with: activations as int16 with a float32 scale per 64
(132 bytes a block), the twin of quantize_row_tpq16_ref / dequantize_row_tpq16 in tp1.c.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TP1", "TPQ16", "NonFiniteInputError", "DEFAULT_ALPHA"]

#: tritpack-quants.h TRITPACK_TP1_DEFAULT_ALPHA. Measured on N(0, 1) weights (2M samples): the cosine
#: peaks at alpha ~0.76 (0.90244); 0.75 is within 5e-5 of it and lies on the search's 1/32 lattice.
DEFAULT_ALPHA = 0.75

_MAX_SCALE = np.float32(65504.0)  # largest finite fp16; scales are clamped to it
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint16)

# element e of a block -> (byte m, trit n) of its slot, see tritpack-common.h
_E = np.arange(64)
_BYTE = np.where(_E % 16 <= 12, _E % 16, 3 * (_E // 16) + _E % 16 - 13)
_PLANE = np.where(_E % 16 <= 12, _E // 16, 4)
# slot (byte m, trit n) -> element, and which slots are used (byte 12's fifth trit is not)
_SLOT_ELEM = np.full((13, 5), -1, dtype=np.int64)
_SLOT_ELEM[_BYTE, _PLANE] = _E

# alpha search lattice (tp1.c: TP1_ALPHA_DEN, coarse m = 16, 24, ..., 56, then +-4, +-2, +-1)
_ALPHA_DEN = 32
_COARSE = tuple(range(16, 57, 8))


class NonFiniteInputError(ValueError):
    """The data to quantize (or its imatrix) holds NaN or Inf: TP1 cannot represent it."""


def _check_finite(a: np.ndarray, what: str) -> None:
    if not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a.ravel()))
        raise NonFiniteInputError(
            f"TP1: {what} contains {bad.size} NaN/Inf value(s) (first at flat index {bad[0]}); "
            "TP1 can only quantize finite values")


def _alpha32(alpha: float) -> np.float32:
    """tp1.c tp1_sanitize_alpha, except that NaN, Inf and negative alphas are errors here."""
    a = float(alpha)
    if not math.isfinite(a) or a < 0.0:
        raise ValueError(f"TP1: alpha must be a finite number >= 0, got {alpha!r}")
    a32 = np.float32(a)
    return a32 if a32 <= np.float32(64.0) else np.float32(64.0)


def _lane_sum(v: np.ndarray) -> np.ndarray:
    """(n, 64) float64 -> (n,): tp1.c's in-block summation order (eight lanes, then a fixed tree)."""
    v = v.reshape(-1, 8, 8)  # [block, i, lane]: element 8*i + lane
    acc = np.zeros((v.shape[0], 8), dtype=np.float64)
    for i in range(8):
        acc = acc + v[:, i, :]
    return ((acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3])) + ((acc[:, 4] + acc[:, 5]) + (acc[:, 6] + acc[:, 7]))


def _seq_sum(v: np.ndarray) -> float:
    """Sequential float64 sum starting from 0.0 (tp1.c's running sums across blocks)."""
    if v.size == 0:
        return 0.0
    return float(np.cumsum(np.concatenate((np.zeros(1), v.astype(np.float64))))[-1])


def _weights(imatrix, n_blocks: int) -> np.ndarray | None:
    if imatrix is None:
        return None
    w = np.asarray(imatrix, dtype=np.float32)
    if w.shape == (64,):
        w = np.broadcast_to(w, (n_blocks, 64))
    if w.shape != (n_blocks, 64):
        raise ValueError(f"TP1: imatrix has shape {w.shape}, expected (64,) or ({n_blocks}, 64)")
    _check_finite(w, "imatrix")
    return w


class _Prep:
    """tp1.c tp1_prep for many blocks: |x| (float32 and float64), its lane-order sum and max."""

    def __init__(self, blocks: np.ndarray):
        self.a = np.abs(blocks)
        self.a64 = self.a.astype(np.float64)
        self.sum = _lane_sum(self.a64)
        self.amax = self.a.max(axis=1) if blocks.shape[0] else np.zeros(0, np.float32)
        self.nonzero = self.amax > 0

    def keep(self, alpha: np.float32) -> tuple[np.ndarray, np.ndarray]:
        tau = np.float64(alpha) * (self.sum * 0.015625)
        keep = (self.a64 > tau[:, None]) | (self.a == self.amax[:, None])
        return keep & self.nonzero[:, None], tau

    def scale(self, keep: np.ndarray, w: np.ndarray | None):
        """tp1.c tp1_block_scale: (fp16 scale bits as float16, A = sum w a, W = sum w) per block."""
        if w is None:
            A = _lane_sum(np.where(keep, self.a64, 0.0))
            W = _lane_sum(np.where(keep, 1.0, 0.0))
        else:
            w64 = w.astype(np.float64)
            A = _lane_sum(np.where(keep, w64 * self.a64, 0.0))
            W = _lane_sum(np.where(keep, w64, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            d = A / W
            fallback = ~(W > 0.0)
            if w is not None and fallback.any():
                Au = _lane_sum(np.where(keep, self.a64, 0.0))
                Wu = _lane_sum(np.where(keep, 1.0, 0.0))
                d = np.where(fallback, Au / Wu, d)
        df = d.astype(np.float32)
        df = np.where(df <= _MAX_SCALE, df, _MAX_SCALE)  # NaN -> max, as in C
        h = np.where(self.nonzero, df, np.float32(0)).astype(np.float16)
        return h, A, W


def _pack(codes: np.ndarray) -> np.ndarray:
    """(n, 64) codes 0..2 -> (n, 13) bytes (tp1.c tp1_pack)."""
    n = codes.shape[0]
    slots = np.ones((n, 13, 5), dtype=np.int32)  # unused slot: code 1
    used = _SLOT_ELEM >= 0
    slots[:, used] = codes[:, _SLOT_ELEM[used]]
    v = np.zeros((n, 13), dtype=np.int32)
    for t in range(5):
        v = v * 3 + slots[:, :, t]
    return ((v * 256 + 242) // 243).astype(np.uint8)


class TP1:
    """Numpy reference of the TP1 kernels (gguf-py quants.py style). Bit-exact with ggml_kernels/tp1.c."""

    name = "TP1"
    block_size = 64
    type_size = 15
    default_alpha = DEFAULT_ALPHA

    # --- blocks

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, alpha: float = DEFAULT_ALPHA,
                        imatrix: np.ndarray | None = None) -> np.ndarray:
        """(n_blocks, 64) float32 -> (n_blocks, 15) uint8. C twin: tp1_quantize_block in tp1.c
        (tritpack_quantize_tp1 per block; quantize_row_tp1_ref with alpha = DEFAULT_ALPHA, no imatrix).
        imatrix: (64,) or (n_blocks, 64) importance weights, or None."""
        blocks = np.ascontiguousarray(blocks, dtype=np.float32).reshape(-1, cls.block_size)
        _check_finite(blocks, "input")
        a32 = _alpha32(alpha)
        w = _weights(imatrix, blocks.shape[0])
        p = _Prep(blocks)
        keep, _ = p.keep(a32)
        h, _, _ = p.scale(keep, w)
        codes = np.where(keep, np.where(blocks > 0, 2, 0), 1).astype(np.int32)
        # all-zero blocks: code 0 (d * -1 with d = 0) keeps a negative zero's sign bit
        codes = np.where(~p.nonzero[:, None] & np.signbit(blocks), 0, codes)
        out = np.empty((blocks.shape[0], cls.type_size), dtype=np.uint8)
        out[:, :13] = _pack(codes)
        out[:, 13:15] = h.astype("<f2").view(np.uint8).reshape(-1, 2)
        return out

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 15) uint8 -> (n_blocks, 64) float32. C twin: dequantize_row_tp1."""
        blocks = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, cls.type_size)
        q = blocks[:, :13].astype(np.uint16)
        d = blocks[:, 13:15].copy().view("<f2").astype(np.float32)  # (n, 1)
        codes = np.empty((blocks.shape[0], 64), dtype=np.int64)
        for n in range(5):
            c = (((q * _POW3[n]) & 0xFF) * 3) >> 8
            m = np.arange(13) if n < 4 else np.arange(12)
            codes[:, _SLOT_ELEM[m, n]] = c[:, m]
        vals = np.array([-1.0, 0.0, 1.0], dtype=np.float32)[codes]
        return d * vals

    # --- rows

    @classmethod
    def _blocks_of(cls, x2d: np.ndarray) -> tuple[np.ndarray, int, int]:
        x = np.ascontiguousarray(x2d, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] % cls.block_size:
            raise ValueError(f"TP1: expected rows of a multiple of {cls.block_size} values, got shape {x.shape}")
        return x.reshape(-1, cls.block_size), x.shape[0], x.shape[1]

    @classmethod
    def _row_weights(cls, imatrix, nrows: int, n_per_row: int) -> np.ndarray | None:
        if imatrix is None:
            return None
        w = np.asarray(imatrix, dtype=np.float32)
        if w.shape != (n_per_row,):
            raise ValueError(f"TP1: imatrix has shape {w.shape}, expected ({n_per_row},)")
        nb = n_per_row // cls.block_size
        return np.broadcast_to(w.reshape(1, nb, cls.block_size), (nrows, nb, cls.block_size)).reshape(-1, cls.block_size)

    @classmethod
    def quantize(cls, x2d: np.ndarray, alpha: float = DEFAULT_ALPHA, imatrix: np.ndarray | None = None) -> np.ndarray:
        """(nrows, n_per_row) float32 -> (nrows, n_per_row/64*15) uint8.
        C twin: tritpack_quantize_tp1(src, dst, nrows, n_per_row, imatrix, alpha) (and
        quantize_row_tp1_ref for the default alpha without imatrix). imatrix: (n_per_row,) or None."""
        blocks, nrows, n = cls._blocks_of(x2d)
        w = cls._row_weights(imatrix, nrows, n)
        return cls.quantize_blocks(blocks, alpha, w).reshape(nrows, -1)

    @classmethod
    def dequantize(cls, data: np.ndarray, n_per_row: int) -> np.ndarray:
        """(nrows, n_per_row/64*15) uint8 -> (nrows, n_per_row) float32. C twin: dequantize_row_tp1."""
        data = np.ascontiguousarray(data, dtype=np.uint8)
        if n_per_row % cls.block_size:
            raise ValueError(f"TP1: n_per_row {n_per_row} is not a multiple of {cls.block_size}")
        return cls.dequantize_blocks(data.reshape(-1, cls.type_size)).reshape(-1, n_per_row)

    @classmethod
    def evaluate_alphas(cls, x2d: np.ndarray, alphas, imatrix: np.ndarray | None = None) -> list[tuple[float, float, float]]:
        """[(alpha, cosine, weighted squared error)] of quantizing x2d with each alpha. C twin:
        tp1_eval_pass in tp1.c (cosine and error of the actual fp16-scaled result, imatrix-weighted)."""
        blocks, nrows, n = cls._blocks_of(x2d)
        _check_finite(blocks, "input")
        w = cls._row_weights(imatrix, nrows, n)
        if w is not None:
            _check_finite(w, "imatrix")
        p = _Prep(blocks)
        x64 = blocks.astype(np.float64)
        sq = x64 * x64
        xx = _seq_sum(_lane_sum(sq if w is None else w.astype(np.float64) * sq))
        nz = p.nonzero
        out = []
        for alpha in alphas:
            a32 = _alpha32(alpha)
            keep, _ = p.keep(a32)
            h, A, W = p.scale(keep, w)
            d = h.astype(np.float32).astype(np.float64)
            dot = _seq_sum((d * A)[nz])
            yy = _seq_sum(((d * d) * W)[nz])
            if xx > 0.0:
                cos = dot / math.sqrt(xx * yy) if yy > 0.0 else 0.0
            else:
                cos = 1.0
            err = (xx - 2.0 * dot) + yy
            out.append((float(a32), cos, err))
        return out

    @classmethod
    def search_alpha(cls, x2d: np.ndarray, imatrix: np.ndarray | None = None,
                     target_cos: float = 0.0) -> tuple[float, float]:
        """(alpha, cosine). C twin: tritpack_tp1_search_alpha(src, nrows, n_per_row, imatrix,
        target_cos, &out_cos). Alphas on the lattice m/32: m = 16, 24, ..., 56, then the best -/+ 4,
        2, 1. target_cos <= 0: the largest cosine; else the smallest weighted squared error among the
        alphas evaluated that reach target_cos (the largest cosine if none does)."""
        cands: list[tuple[int, float, float]] = []

        def run(ms):
            res = cls.evaluate_alphas(x2d, [np.float32(m) / np.float32(_ALPHA_DEN) for m in ms], imatrix)
            for m, (_, cos, err) in zip(ms, res):
                cands.append((m, cos, err))

        run(list(_COARSE))
        best = 0
        for i in range(len(cands)):
            if cands[i][1] > cands[best][1]:
                best = i
        for step in (4, 2, 1):
            mb = cands[best][0]
            ms = ([mb - step] if mb - step >= 1 else []) + [mb + step]
            start = len(cands)
            run(ms)
            for i in range(start, len(cands)):
                if cands[i][1] > cands[best][1]:
                    best = i
        pick = best
        t32 = float(np.float32(target_cos))
        if t32 > 0.0:
            found = -1
            for i, (_, cos, err) in enumerate(cands):
                if cos >= t32 and (found < 0 or err < cands[found][2]):
                    found = i
            if found >= 0:
                pick = found
        m, cos, _ = cands[pick]
        return float(np.float32(m) / np.float32(_ALPHA_DEN)), float(np.float32(cos))

    @classmethod
    def quantize_searched(cls, x2d: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        """Search alpha on all of x2d, then quantize. C twin: quantize_tp1 (llama-quantize's entry,
        ggml_quantize_chunk), which does this per chunk of rows it is handed."""
        alpha, _ = cls.search_alpha(x2d, imatrix)
        return cls.quantize(x2d, alpha, imatrix)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf (halves away from zero), exactly: floor(|v|) plus one where the fraction is >= 1/2."""
    a = np.abs(v)
    f = np.floor(a)
    return np.copysign(f + np.floor(2 * (a - f)), v)


class TPQ16:
    """Numpy twin of TP1's activation type (tritpack-common.h block_tpq16). Bit-exact with tp1.c."""

    name = "TPQ16"
    block_size = 64
    type_size = 132

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 64) float32 -> (n_blocks, 132) uint8. C twin: quantize_row_tpq16_ref."""
        x = np.ascontiguousarray(blocks, dtype=np.float32).reshape(-1, cls.block_size)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            amax = np.fmax.reduce(np.abs(x), axis=1, initial=np.float32(0))  # fmaxf: NaN ignored
            d = (amax / np.float32(32767)).astype(np.float32)
            inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
            v = np.fmin(np.fmax(x * inv[:, None], np.float32(-32767)), np.float32(32767))
        q = _roundf(v).astype(np.int16)
        out = np.empty((x.shape[0], cls.type_size), dtype=np.uint8)
        out[:, :4] = d.astype("<f4").view(np.uint8).reshape(-1, 4)
        out[:, 4:] = q.astype("<i2").view(np.uint8).reshape(-1, 128)
        return out

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, 132) uint8 -> (n_blocks, 64) float32. C twin: dequantize_row_tpq16."""
        b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, cls.type_size)
        d = b[:, :4].copy().view("<f4").astype(np.float32)
        with np.errstate(invalid="ignore"):  # d = Inf times q = 0: NaN, as in C
            return d * b[:, 4:].copy().view("<i2").astype(np.float32)
