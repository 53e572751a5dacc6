"""TP1 kernels: the C code in the patched ggml against its numpy twin (converters/tp1.py), bit for bit,
lossless round trips of ternary data, the alpha search, and the CPU dot products."""

from __future__ import annotations

import ctypes as C
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tritpack_gguf.converters.tp1 import DEFAULT_ALPHA, TP1, TPQ16, NonFiniteInputError

TP1_ID = 80    # TRITPACK_TYPE_TP1
TPQ16_ID = 82  # TRITPACK_TYPE_TPQ16, TP1's CPU activations
Q8_0_ID = 8

# vec_dot tolerance: |C - exact| <= DOT_RTOL * sum_i |x_i * y_i| (float64, on the dequantized TP1 row and
# the dequantized TPQ16 activations). The kernels sum exact int32 block products and round only in
# float32 scale/accumulate steps (measured error ~4e-8); 1e-5 leaves ample room and still fails on any
# wrong trit (one wrong trit changes the sum by >= 1/n of sum |x*y| for these sizes).
DOT_RTOL = 1e-5

SHAPES = [(3, 576), (7, 128), (1, 64), (5, 1536)]


# --- C access --------------------------------------------------------------------------------------

def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


@pytest.fixture(scope="module")
def c_tp1(ggml):
    """The exported TP1 entry points of libggml-base / libggml-cpu."""
    b = ggml.base   # its signatures are declared once, in tritpack_gguf.ggml_lib

    class API:
        @staticmethod
        def quantize(x, alpha, imatrix=None):
            x = _f32(x)
            out = np.empty((x.shape[0], x.shape[1] // 64 * 15), dtype=np.uint8)
            im = None if imatrix is None else _f32(imatrix)
            n = b.tritpack_quantize_tp1(x.ctypes.data, out.ctypes.data, x.shape[0], x.shape[1],
                                        None if im is None else im.ctypes.data, alpha)
            assert n == out.nbytes
            return out

        @staticmethod
        def quantize_ref(x):
            x = _f32(x)
            out = np.empty((x.shape[0], x.shape[1] // 64 * 15), dtype=np.uint8)
            b.quantize_row_tp1_ref(x.ctypes.data, out.ctypes.data, x.size)
            return out

        @staticmethod
        def search(x, imatrix=None, target_cos=0.0):
            x = _f32(x)
            im = None if imatrix is None else _f32(imatrix)
            cos = C.c_float()
            a = b.tritpack_tp1_search_alpha(x.ctypes.data, x.shape[0], x.shape[1],
                                            None if im is None else im.ctypes.data, target_cos, C.byref(cos))
            return a, cos.value

        @staticmethod
        def quantize_tpq16(y):
            y = _f32(y).ravel()
            out = np.empty(y.size // 64 * 132, dtype=np.uint8)
            b.quantize_row_tpq16_ref(y.ctypes.data, out.ctypes.data, y.size)
            return out

        @staticmethod
        def vec_dot(name, xrow, yq, n):
            xrow = np.ascontiguousarray(xrow, dtype=np.uint8)
            s = np.zeros(1, dtype=np.float32)
            ggml.vec_dot_fn(name)(n, s.ctypes.data, 0, xrow.ctypes.data, 0, yq.ctypes.data, 0, 1)
            return float(s[0])

    return API


def _cases():
    """(name, x, imatrix): finite data of many kinds, several seeds, odd row counts."""
    for seed in range(3):
        r = np.random.default_rng(seed)
        for nrows, n in SHAPES:
            yield f"gauss-s{seed}-{nrows}x{n}", r.standard_normal((nrows, n)).astype(np.float32), None
            yield (f"t3-imatrix-s{seed}-{nrows}x{n}", (r.standard_t(3, (nrows, n)) * 0.02).astype(np.float32),
                   r.gamma(0.5, 2.0, n).astype(np.float32))
    r = np.random.default_rng(100)
    x = r.standard_normal((4, 256)).astype(np.float32)
    x[1] = 0.0
    x[2, :64] = 0.0
    x[3, 64:128] = -0.0
    yield "some-zero-blocks", x, None
    im = r.random(256).astype(np.float32)
    im[:64] = 0.0      # a block whose importance is all zero: falls back to the plain mean
    im[100:110] = 0.0
    yield "some-zero-blocks-imatrix-with-zeros", x, im
    yield "huge-1e4", (r.standard_normal((3, 576)) * 1e4).astype(np.float32), None
    yield "tiny-1e-6", (r.standard_normal((3, 576)) * 1e-6).astype(np.float32), None
    yield "beyond-fp16-1e6", (r.standard_normal((3, 192)) * 1e6).astype(np.float32), None
    yield "small-integers", r.integers(-3, 4, (7, 192)).astype(np.float32), None
    yield "threshold-boundary", _threshold_boundary(), None
    ties = np.tile(np.repeat(np.float32([1.0, 1.5, 2.0, -1.0, -1.5, -2.0]), [11, 10, 11, 11, 10, 11]), (2, 1))
    yield "threshold-ties", ties, None  # mean 1.5: alpha 1 puts tau exactly on the 1.5s


def _threshold_boundary() -> np.ndarray:
    """Blocks whose element w sits within float32 rounding of tau = 0.75 * mean|x|: 62 ones, a 3 and w,
    with w stepping through the float32 neighbours of the tie point 48.75 / 63.25. Any deviation from
    the C code's float64 threshold flips some of these."""
    w_star = np.float32(48.75 / 63.25)
    ws = w_star + np.arange(-128, 128, dtype=np.float32) * np.spacing(w_star)
    blocks = np.ones((ws.size, 64), dtype=np.float32)
    blocks[:, 5] = 3.0
    blocks[:, 17] = ws
    blocks[1::2] *= -1.0
    return blocks.reshape(4, -1)


CASES = list(_cases())


# --- quantize / dequantize: C == numpy, bit for bit ------------------------------------------------

@pytest.mark.parametrize("name,x,im", CASES, ids=[c[0] for c in CASES])
def test_quantize_and_dequantize_match_numpy(c_tp1, ggml, name, x, im):
    n = x.shape[1]
    for alpha in (0.0, 0.5, DEFAULT_ALPHA, 1.0, 1.3, 3.0):
        q_c = c_tp1.quantize(x, alpha, im)
        q_np = TP1.quantize(x, alpha, im)
        assert q_c.shape == q_np.shape == (x.shape[0], n // 64 * 15)
        diff = np.argwhere(q_c != q_np)
        assert diff.size == 0, f"{name} alpha={alpha}: first differing bytes at {diff[:4].tolist()}"
        y_c = ggml.dequantize(TP1_ID, q_c, n)
        y_np = TP1.dequantize(q_c, n)
        assert np.array_equal(y_c.view(np.uint32), y_np.view(np.uint32)), name
        assert np.isfinite(y_c).all()
    if name == "threshold-ties":  # strictly greater than tau: the 1.5s (== tau at alpha 1) are dropped
        y = TP1.dequantize(TP1.quantize(x, 1.0), n)
        assert (y[np.abs(x) == 1.5] == 0).all() and (y[np.abs(x) == 2.0] != 0).all()
    if im is None:  # from_float_ref: the default alpha, no imatrix
        assert np.array_equal(c_tp1.quantize_ref(x), TP1.quantize(x))
    # llama-quantize's entry (alpha searched on the chunk) through ggml_quantize_chunk
    assert np.array_equal(ggml.quantize_chunk(TP1_ID, x, im), TP1.quantize_searched(x, im)), name


def test_dequantize_arbitrary_bytes_matches_numpy(ggml):
    # any 13 trit bytes and any finite scale decode the same way in C and numpy
    r = np.random.default_rng(7)
    q = r.integers(0, 256, (50, 15), dtype=np.uint8)
    d = (r.standard_normal(50) * 10.0 ** r.uniform(-6, 4, 50)).astype(np.float16)
    q[:, 13:15] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    y_c = ggml.dequantize(TP1_ID, q.reshape(5, -1), 640)
    y_np = TP1.dequantize(q.reshape(5, -1), 640)
    assert np.array_equal(y_c.view(np.uint32), y_np.view(np.uint32))


def test_quantization_error_is_sane():
    r = np.random.default_rng(11)
    x = r.standard_normal((16, 1024)).astype(np.float32)
    y = TP1.dequantize(TP1.quantize(x), 1024)
    cos = float(np.sum(x.astype(np.float64) * y) / math.sqrt(np.sum(x.astype(np.float64) ** 2) * np.sum(y.astype(np.float64) ** 2)))
    assert 0.89 < cos < 0.92  # ternary with a per-64 scale on Gaussian data: ~0.90
    # every nonzero block keeps at least its largest weight
    assert (np.abs(y.reshape(-1, 64)).max(axis=1) > 0).all()
    # beyond fp16's range the scale saturates at 65504 rather than becoming inf
    big = TP1.quantize((x[:2] * 1e6).astype(np.float32))
    assert np.isfinite(TP1.dequantize(big, 1024)).all()


# --- lossless ternary data ---------------------------------------------------------------------------

def _ternary(seed: int, nrows: int, n: int, per_block: bool) -> np.ndarray:
    r = np.random.default_rng(seed)
    nb = n // 64
    s = np.abs(r.standard_normal((nrows, nb)) * 10.0 ** r.uniform(-7.5, 4.5, (nrows, nb))).clip(0, 65504).astype(np.float16)
    s[0, :] = np.float16(65504.0)
    s[1, :] = np.float16(6e-8)      # fp16 subnormal
    s[2, :] = np.float16(1e-6)
    s[3, :] = np.float16(1e4)
    if not per_block:
        s[:] = s[:, :1]             # one scale per row: coarser than a block
    t = r.integers(-1, 2, (nrows, n)).astype(np.float32)
    t[4, :64] = 0.0                 # an all-zero block
    t[5] = 0.0
    t[5, ::64] = 1.0                # a single nonzero per block
    t[6] = -1.0                     # a block with no zeros
    return (t.reshape(nrows, nb, 64) * s.astype(np.float32)[:, :, None]).reshape(nrows, n).astype(np.float32)


@pytest.mark.parametrize("per_block", [True, False], ids=["scale-per-block", "scale-per-row"])
def test_ternary_data_round_trips_bit_for_bit(c_tp1, ggml, per_block):
    x = _ternary(5, 24, 576, per_block)
    assert set(np.unique(np.sign(x))) == {-1.0, 0.0, 1.0}
    r = np.random.default_rng(6)
    im = r.gamma(0.3, 1.0, 576).astype(np.float32)
    im[::7] = 0.0
    for alpha in (0.0, 0.3, DEFAULT_ALPHA, 0.999, 1.0, 2.0, 64.0):
        for w in (None, im):
            q = c_tp1.quantize(x, alpha, w)
            y = ggml.dequantize(TP1_ID, q, 576)
            assert np.array_equal(y.view(np.uint32), x.view(np.uint32)), (alpha, w is None)
            assert np.array_equal(TP1.quantize(x, alpha, w), q)
    for w in (None, im):
        q = ggml.quantize_chunk(TP1_ID, x, w)  # searched alpha
        assert np.array_equal(ggml.dequantize(TP1_ID, q, 576).view(np.uint32), x.view(np.uint32))
        alpha, cos = c_tp1.search(x, w)
        assert cos == 1.0 and (alpha, cos) == TP1.search_alpha(x, w)


def test_negative_zeros_survive_in_zero_blocks(ggml):
    x = np.zeros((1, 128), dtype=np.float32)
    x[0, 3] = -0.0
    x[0, 64:] = np.linspace(-1, 1, 64, dtype=np.float32)
    y = ggml.dequantize(TP1_ID, TP1.quantize(x), 128)
    assert np.array_equal(y[0, :64].view(np.uint32), x[0, :64].view(np.uint32))


# --- non-finite input --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_is_rejected(bad):
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    x[1, 77] = bad
    assert issubclass(NonFiniteInputError, ValueError)
    with pytest.raises(NonFiniteInputError, match="NaN/Inf"):
        TP1.quantize(x)
    with pytest.raises(ValueError):
        TP1.quantize_blocks(x.reshape(-1, 64), 0.5)
    with pytest.raises(NonFiniteInputError):
        TP1.search_alpha(x)
    im = np.ones(128, dtype=np.float32)
    im[5] = bad
    with pytest.raises(NonFiniteInputError, match="imatrix"):
        TP1.quantize(np.ones((2, 128), dtype=np.float32), 0.5, im)
    with pytest.raises(ValueError, match="alpha"):
        TP1.quantize(np.ones((2, 128), dtype=np.float32), float("nan"))


# --- alpha search --------------------------------------------------------------------------------------

def _cosine(x, y, w=None) -> float:
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    w = np.ones(x.shape[1]) if w is None else w.astype(np.float64)
    return float(np.sum(w * x * y) / math.sqrt(np.sum(w * x * x) * np.sum(w * y * y)))


def test_alpha_search_matches_numpy_and_reports_the_true_cosine(c_tp1, ggml):
    r = np.random.default_rng(21)
    gauss = r.standard_normal((32, 576)).astype(np.float32)
    heavy = (r.standard_t(3, (32, 576)) * 0.05).astype(np.float32)
    im = r.gamma(0.5, 2.0, 576).astype(np.float32)
    for x, w in ((gauss, None), (heavy, None), (heavy, im)):
        a_c, cos_c = c_tp1.search(x, w)
        assert (a_c, cos_c) == TP1.search_alpha(x, w)
        # the reported cosine is that of the actual quantized tensor, imatrix-weighted
        y = ggml.dequantize(TP1_ID, c_tp1.quantize(x, a_c, w), 576)
        assert abs(cos_c - _cosine(x, y, w)) < 1e-6
        # the searched alpha does at least as well as every coarse grid point and the default
        for alpha in (0.5, DEFAULT_ALPHA, 1.0, 1.5):
            y_a = ggml.dequantize(TP1_ID, c_tp1.quantize(x, alpha, w), 576)
            assert cos_c >= _cosine(x, y_a, w) - 1e-6
        a_t, cos_t = c_tp1.search(x, w, 0.5)  # reachable target: smallest error among those reaching it
        assert (a_t, cos_t) == TP1.search_alpha(x, w, 0.5) and cos_t >= 0.5
        assert c_tp1.search(x, w, 0.999) == (a_c, cos_c)  # unreachable: the best cosine
    a_g, cos_g = c_tp1.search(gauss)
    assert 0.65 <= a_g <= 0.85 and 0.895 < cos_g < 0.91  # Gaussian: the default 0.75 is near optimal
    a_h, _ = c_tp1.search(heavy)
    assert a_h > a_g  # heavier tails want a higher threshold


def test_default_alpha_is_best_for_gaussian_weights():
    x = np.random.default_rng(3).standard_normal((64, 1024)).astype(np.float32)
    res = {round(a, 5): cos for a, cos, _ in TP1.evaluate_alphas(x, [0.625, 0.6875, 0.75, 0.8125, 0.875])}
    assert max(res, key=res.get) == DEFAULT_ALPHA


# --- CPU dot products ------------------------------------------------------------------------------

def _dequant_tpq16(yq: np.ndarray) -> np.ndarray:
    return TPQ16.dequantize_blocks(yq).astype(np.float64).ravel()


def _tpq16_cases():
    r = np.random.default_rng(16)
    yield "gauss", r.standard_normal(576).astype(np.float32)
    yield "outliers", (r.standard_t(2, 1536) * 10.0 ** r.uniform(-3, 3, 1536)).astype(np.float32)
    yield "huge-tiny", np.concatenate([r.standard_normal(64) * 1e30, r.standard_normal(64) * 1e-30]).astype(np.float32)
    halves = np.empty(64, dtype=np.float32)
    halves[0] = 32767.0  # max 32767: d = 1, so q = x, and the halves round away from zero (roundf)
    halves[1:] = np.arange(-31, 32, dtype=np.float32) + np.float32(0.5)
    yield "halves", halves
    z = r.standard_normal(192).astype(np.float32)
    z[64:128] = 0.0
    z[130] = -0.0
    yield "zero-block", z
    yield "subnormal", np.full(64, 1e-40, dtype=np.float32) * r.choice([-1, 1], 64).astype(np.float32)
    inf = r.standard_normal(128).astype(np.float32)
    inf[5], inf[70] = np.inf, np.nan
    yield "inf-nan", inf


@pytest.mark.parametrize("case", [c[0] for c in _tpq16_cases()])
def test_tpq16_c_and_numpy_agree_bit_for_bit(c_tp1, ggml, case):
    y = dict(_tpq16_cases())[case]
    got = c_tp1.quantize_tpq16(y)
    want = TPQ16.quantize_blocks(y.reshape(-1, 64)).ravel()
    assert np.array_equal(got, want), np.flatnonzero(got != want)[:8]
    assert np.array_equal(ggml.quantize_activations(TP1_ID, y), got)  # the CPU from_float TP1's mul_mat uses
    back = ggml.dequantize(TPQ16_ID, got[None], y.size)[0]
    assert np.array_equal(back.view(np.uint32), TPQ16.dequantize_blocks(got).ravel().view(np.uint32))
    if np.isfinite(y).all():
        # error at most half a step (d/2, plus 1% for the float32 rounding of 1/d and d * q, up to 32767
        # ulps of a step each) where d is a normal float; a block below 32767 * FLT_MIN gets a
        # subnormal d (its 1/d overflows) and comes back within its own maximum
        d = got.reshape(-1, 132)[:, :4].copy().view("<f4").ravel().astype(np.float64)
        err = np.abs(back.astype(np.float64) - y).reshape(-1, 64)
        amax = np.abs(y.astype(np.float64)).reshape(-1, 64).max(axis=1)
        normal = d >= np.finfo(np.float32).tiny
        assert (err[normal] <= d[normal, None] * 0.51).all()
        assert (err[~normal] <= amax[~normal, None]).all()
        assert ggml.validate_row_data(TPQ16_ID, got)
    else:
        assert not ggml.validate_row_data(TPQ16_ID, got)  # the Inf block has d = Inf


def test_tp1_multiplies_with_16_bit_activations(ggml):
    # the point of TPQ16: exact ternary weights times activations with outlier channels lose far less
    # than with 8-bit (Q8_0) activations
    r = np.random.default_rng(7)
    n = 2048
    w = (r.integers(-1, 2, (1, n)) * 0.02).astype(np.float32)
    xq = ggml.quantize_chunk(TP1_ID, w)
    xd = ggml.dequantize(TP1_ID, xq, n)[0].astype(np.float64)
    assert np.array_equal(xd, w[0].astype(np.float16).astype(np.float64))  # the weights are exact
    assert ggml.cpu.ggml_get_type_traits_cpu(TP1_ID).contents.vec_dot_type == TPQ16_ID
    err16, err8 = [], []
    for _ in range(20):
        y = (r.standard_normal(n) * np.where(r.random(n) < 0.01, 30.0, 1.0)).astype(np.float32)
        exact = float(np.dot(xd, y))
        scale = float(np.sum(np.abs(xd * y)))
        err16.append(abs(ggml.vec_dot(TP1_ID, xq[0], y) - exact) / scale)
        y8 = ggml.dequantize(Q8_0_ID, ggml.quantize_chunk(Q8_0_ID, y[None]), n)[0].astype(np.float64)
        err8.append(abs(float(np.dot(xd, y8)) - exact) / scale)
    assert max(err16) < 1e-4 and np.mean(err16) < np.mean(err8) / 50, (max(err16), np.mean(err16), np.mean(err8))


def test_tpq16_dot_product(c_tp1):
    r = np.random.default_rng(3)
    a, b = r.standard_normal(576).astype(np.float32), (r.standard_normal(576) * 1e3).astype(np.float32)
    qa, qb = c_tp1.quantize_tpq16(a), c_tp1.quantize_tpq16(b)
    exact = float(np.dot(_dequant_tpq16(qa), _dequant_tpq16(qb)))
    scale = float(np.sum(np.abs(_dequant_tpq16(qa) * _dequant_tpq16(qb))))
    assert abs(c_tp1.vec_dot("ggml_vec_dot_tpq16_tpq16", qa, qb, 576) - exact) <= DOT_RTOL * scale


@pytest.mark.parametrize("n", [64, 128, 576, 1536])
def test_vec_dot_simd_and_generic_agree_with_exact_dot(c_tp1, ggml, n):
    r = np.random.default_rng(n)
    for trial in range(12):
        x = (r.standard_normal((1, n)) * 10.0 ** r.uniform(-3, 3)).astype(np.float32)
        y = (r.standard_normal(n) * 10.0 ** r.uniform(-3, 3)).astype(np.float32)
        if trial == 0:
            y = np.abs(y)  # all positive activations: no cancellation
        xq = c_tp1.quantize(x, DEFAULT_ALPHA)[0]
        yq = ggml.quantize_activations(TP1_ID, y)
        xd = ggml.dequantize(TP1_ID, xq[None], n)[0].astype(np.float64)
        yd = _dequant_tpq16(yq)
        exact = float(np.dot(xd, yd))
        scale = float(np.sum(np.abs(xd * yd)))
        assert scale > 0
        simd = ggml.vec_dot(TP1_ID, xq, y)  # the traits' kernel (AVX2 where built with it)
        direct = c_tp1.vec_dot("ggml_vec_dot_tp1_tpq16", xq, yq, n)
        generic = c_tp1.vec_dot("ggml_vec_dot_tp1_tpq16_generic", xq, yq, n)
        assert simd == direct
        for got in (simd, generic):
            assert abs(got - exact) <= DOT_RTOL * scale, (n, trial, got, exact)


def test_vec_dot_reads_nothing_past_the_row(c_tp1, ggml):
    # rows placed so that they end exactly at a page followed by an inaccessible page
    import mmap
    libc = C.CDLL(None)
    libc.mprotect.argtypes = [C.c_void_p, C.c_size_t, C.c_int]
    pg = mmap.PAGESIZE
    buf = mmap.mmap(-1, 2 * pg, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = C.addressof(C.c_char.from_buffer(buf))
    assert libc.mprotect(base + pg, pg, 0) == 0  # PROT_NONE
    try:
        r = np.random.default_rng(4)
        for n in (64, 128, 576):
            x = r.standard_normal((1, n)).astype(np.float32)
            y = r.standard_normal(n).astype(np.float32)
            xq = c_tp1.quantize(x, DEFAULT_ALPHA)[0]
            yq = ggml.quantize_activations(TP1_ID, y)
            want = c_tp1.vec_dot("ggml_vec_dot_tp1_tpq16_generic", xq, yq, n)
            at = base + pg - xq.size
            C.memmove(at, xq.ctypes.data, xq.size)
            s = np.zeros(1, dtype=np.float32)
            for name in ("ggml_vec_dot_tp1_tpq16", "ggml_vec_dot_tp1_tpq16_generic"):
                getattr(ggml.cpu, name)(n, s.ctypes.data, 0, at, 0, yq.ctypes.data, 0, 1)
                assert abs(float(s[0]) - want) <= 1e-5 * abs(want) + 1e-6
    finally:
        libc.mprotect(base + pg, pg, mmap.PROT_READ | mmap.PROT_WRITE)


_BOTH_PATHS = r"""
import hashlib, numpy as np
from gguf import GGMLQuantizationType as Q
from tritpack_gguf.convert import Quantizer
from tritpack_gguf.converters.gguf_types import TYPE_TP1
from tritpack_gguf.converters.metrics import ErrorStats
from tritpack_gguf.ggml_lib import load_ggml
q = Quantizer(load_ggml(), 2)
r = np.random.default_rng(11)
h = hashlib.sha256()
for x in (r.standard_normal((37, 576)).astype(np.float32), (r.standard_t(3, (9, 1536)) * 1e-3).astype(np.float32)):
    im = r.gamma(0.5, 2.0, x.shape[1]).astype(np.float32)
    for w in (None, im):
        h.update(repr(q.search_alpha(x, w, None)).encode() + repr(q.search_alpha(x, w, 0.9)).encode())
        h.update(q.quantize(TYPE_TP1.qtype, x, w, 0.8).tobytes())
    for src_t, raw in ((Q.F32, x), (Q.F16, x.astype(np.float16))):
        out = np.empty((x.shape[0], x.shape[1] // 64 * 15), np.uint8)
        st = ErrorStats()
        q.convert_rows(src_t, raw.view(np.uint8).reshape(x.shape[0], -1), TYPE_TP1.qtype, x.shape[1], None, 0.7, out, st)
        h.update(out.tobytes() + repr(st.as_dict()).encode())
q.close()
print(h.hexdigest())
"""


def test_avx2_and_baseline_x86_paths_give_the_same_bits():
    # ggml-base is built for the baseline ISA and picks 256-bit lane sums and the F16C conversion at run
    # time; the twin tests above check whichever this CPU runs. TRITPACK_X86_BASELINE=1 forces the
    # baseline ones: the quantized bytes, the searched alphas and the measured sums must not change.
    runs = {}
    for base in ("0", "1"):
        env = {**os.environ, "TRITPACK_X86_BASELINE": base}
        r = subprocess.run([sys.executable, "-c", _BOTH_PATHS], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        runs[base] = r.stdout.strip()
    assert len(runs["0"]) == 64 and runs["0"] == runs["1"]


def test_default_alpha_is_written_once_on_each_side():
    """The numpy twin's DEFAULT_ALPHA (which convert uses too) is the C define."""
    import re

    from tritpack_gguf.paths import source_root

    header = (source_root() / "ggml_kernels" / "tritpack-quants.h").read_text()
    m = re.search(r"#define\s+TRITPACK_TP1_DEFAULT_ALPHA\s+([0-9.]+)f", header)
    assert m and float(m.group(1)) == DEFAULT_ALPHA
