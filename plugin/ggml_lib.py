"""ctypes access to the patched ggml: quantize, dequantize and dot products through the C kernels.

The converter uses the C quantizers through here (the numpy references in converters/ are for the
tests), and the tests use it to compare C with numpy bit for bit.
"""

from __future__ import annotations

import ctypes as C
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from .errors import TritpackError
from .paths import library_dir

_to_float_t = C.CFUNCTYPE(None, C.c_void_p, C.c_void_p, C.c_int64)
_from_float_t = C.CFUNCTYPE(None, C.c_void_p, C.c_void_p, C.c_int64)
_vec_dot_t = C.CFUNCTYPE(None, C.c_int, C.c_void_p, C.c_size_t, C.c_void_p, C.c_size_t, C.c_void_p,
                         C.c_size_t, C.c_int)


class _TypeTraits(C.Structure):
    _fields_ = [("type_name", C.c_char_p), ("blck_size", C.c_int64), ("blck_size_interleave", C.c_int64),
                ("type_size", C.c_size_t), ("is_quantized", C.c_bool),
                ("to_float", C.c_void_p), ("from_float_ref", C.c_void_p)]


class ConvertStats(C.Structure):
    """tritpack_convert_stats (tritpack-quants.h)."""
    _fields_ = [("sxx", C.c_double), ("syy", C.c_double), ("sxy", C.c_double), ("see", C.c_double),
                ("n", C.c_int64), ("bad_row", C.c_int64), ("bad_col", C.c_int64), ("exact", C.c_int32),
                ("pad", C.c_int32)]


# tritpack_convert_rows' return codes (tritpack-quants.h)
CONVERT_NONFINITE, CONVERT_INVALID, CONVERT_UNSUPPORTED, CONVERT_NOMEM = 1, 2, 3, 4

# our exported entry points beyond ggml's own API: name -> (restype, argtypes); see tritpack-quants.h
_P = C.c_void_p
_TRITPACK_BASE = {
    "tritpack_quantize_tp1": (C.c_size_t, [_P, _P, C.c_int64, C.c_int64, _P, C.c_float]),
    "tritpack_tp1_search_alpha": (C.c_float, [_P, C.c_int64, C.c_int64, _P, C.c_float, C.POINTER(C.c_float)]),
    "tritpack_convert_rows": (C.c_int, [C.c_int, _P, C.c_int, _P, C.c_int64, C.c_int64, _P, C.c_float,
                                        C.POINTER(ConvertStats)]),
    "quantize_row_tp1_ref": (None, [_P, _P, C.c_int64]),
    "quantize_row_tp4_ref": (None, [_P, _P, C.c_int64]),
    "quantize_row_tpq16_ref": (None, [_P, _P, C.c_int64]),
    "quantize_row_q8_0_ref": (None, [_P, _P, C.c_int64]),   # ggml's own (TP4's activations)
}
# the CPU repack of libggml-cpu (tritpack-gemm.c; absent from a stock library)
_TRITPACK_CPU = {
    "ggml_tritpack_can_repack": (C.c_bool, [C.c_int, C.c_int64, C.c_int64]),
    "ggml_tritpack_repack": (None, [C.c_int, _P, _P, C.c_int64, C.c_int64]),
    "ggml_tritpack_mul_mat": (None, [C.c_int, C.c_int64, C.c_int64, _P, C.c_int64, _P, _P, C.c_bool]),
}
# ggml_vec_dot_* of libggml-cpu (named ones: the dispatching kernels and their generic twins)
_VEC_DOT_ARGS = [C.c_int, _P, C.c_size_t, _P, C.c_size_t, _P, C.c_size_t, C.c_int]


class _TypeTraitsCPU(C.Structure):
    _fields_ = [("from_float", C.c_void_p), ("vec_dot", C.c_void_p), ("vec_dot_type", C.c_int),
                ("nrows", C.c_int64)]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


@lru_cache(maxsize=None)
def tritpack_version_of(lib_dir: Path) -> str | None:
    """The tritpack_version() marker of the libggml-base in `lib_dir`, or None for a stock build."""
    lib = C.CDLL(str(lib_dir / "libggml-base.so"))
    try:
        fn = lib.tritpack_version
    except AttributeError:
        return None
    fn.restype = C.c_char_p
    return fn().decode()


@dataclass
class GGML:
    lib_dir: Path
    base: C.CDLL
    cpu: C.CDLL

    def __post_init__(self) -> None:
        b, c = self.base, self.cpu
        b.ggml_get_type_traits.restype = C.POINTER(_TypeTraits)
        b.ggml_get_type_traits.argtypes = [C.c_int]
        c.ggml_get_type_traits_cpu.restype = C.POINTER(_TypeTraitsCPU)
        c.ggml_get_type_traits_cpu.argtypes = [C.c_int]
        b.ggml_quantize_chunk.restype = C.c_size_t
        b.ggml_quantize_chunk.argtypes = [C.c_int, C.c_void_p, C.c_void_p, C.c_int64, C.c_int64, C.c_int64, C.c_void_p]
        b.ggml_quantize_init.restype = None
        b.ggml_quantize_init.argtypes = [C.c_int]
        b.ggml_quantize_requires_imatrix.restype = C.c_bool
        b.ggml_quantize_requires_imatrix.argtypes = [C.c_int]
        b.ggml_type_name.restype = C.c_char_p
        b.ggml_type_name.argtypes = [C.c_int]
        b.ggml_validate_row_data.restype = C.c_bool
        b.ggml_validate_row_data.argtypes = [C.c_int, C.c_void_p, C.c_size_t]
        for lib, table in ((b, _TRITPACK_BASE), (c, _TRITPACK_CPU)):
            for name, (res, args) in table.items():
                fn = getattr(lib, name, None)   # absent from a stock library
                if fn is not None:
                    fn.restype, fn.argtypes = res, args
        c.ggml_cpu_init()

    # --- type facts
    def traits(self, t: int) -> _TypeTraits:
        if not 0 <= t < self.type_count:
            raise TritpackError(f"ggml type {t} is out of range for this library")
        return self.base.ggml_get_type_traits(t).contents

    @cached_property
    def type_count(self) -> int:
        """GGML_TYPE_COUNT of this library, from tritpack_type_count() (tritpack.c). ggml itself has
        no getter: a stock library (or a patched one older than the getter) is taken to have the
        pinned llama.cpp's 43 types, or our 83 (TP1=80, TP4=81, TPQ16=82) when patched."""
        fn = getattr(self.base, "tritpack_type_count", None)
        if fn is not None:
            fn.restype, fn.argtypes = C.c_int, []
            return int(fn())
        return 83 if self.is_patched else 43

    @property
    def is_patched(self) -> bool:
        return tritpack_version_of(self.lib_dir) is not None

    def knows(self, t: int) -> bool:
        return 0 <= t < self.type_count and self.traits(t).blck_size > 0

    def requires_imatrix(self, t: int) -> bool:
        """ggml refuses to quantize `t` without an importance matrix (IQ2_XXS, IQ2_XS, IQ1_S)."""
        return t < self.type_count and bool(self.base.ggml_quantize_requires_imatrix(t))

    def type_name(self, t: int) -> str:
        self.traits(t)  # range check
        return self.base.ggml_type_name(t).decode()

    def block_size(self, t: int) -> int:
        return self.traits(t).blck_size

    def type_size(self, t: int) -> int:
        return self.traits(t).type_size

    def row_size(self, t: int, n: int) -> int:
        return self.type_size(t) * n // self.block_size(t)

    # --- kernels
    def quantize_chunk(self, t: int, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        """ggml_quantize_chunk over a 2-D float32 array; returns uint8 (nrows, row_bytes)."""
        x = _f32(np.atleast_2d(x))
        nrows, n = x.shape
        if n % self.block_size(t):
            raise TritpackError(f"rows of {n} are not a multiple of {self.type_name(t)}'s block of {self.block_size(t)}")
        out = np.empty((nrows, self.row_size(t, n)), dtype=np.uint8)
        im = None if imatrix is None else _f32(imatrix)
        if im is not None and im.shape != (n,):
            raise TritpackError(f"imatrix has shape {im.shape}, expected ({n},)")
        written = self.base.ggml_quantize_chunk(t, x.ctypes.data, out.ctypes.data, 0, nrows, n,
                                                None if im is None else im.ctypes.data)
        assert written == out.nbytes, (written, out.nbytes)
        return out

    def dequantize(self, t: int, data: np.ndarray, n: int | None = None) -> np.ndarray:
        """The type's to_float over `data` (uint8, rows of whole blocks); float32 of the same row count."""
        data = np.ascontiguousarray(data, dtype=np.uint8)
        rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
        per_row = rows.shape[1] // self.type_size(t) * self.block_size(t)
        if n is not None and n != per_row:
            raise TritpackError(f"{rows.shape[1]} bytes per row hold {per_row} values, not {n}")
        out = np.empty((rows.shape[0], per_row), dtype=np.float32)
        fn = _to_float_t(self.traits(t).to_float)
        fn(rows.ctypes.data, out.ctypes.data, out.size)
        return out if data.ndim > 1 else out[0]

    def vec_dot(self, t: int, x_row: np.ndarray, y: np.ndarray) -> float:
        """CPU vec_dot of one quantized row with float activations, quantized first to the type's
        vec_dot_type by that type's CPU from_float, as ggml's mul_mat does."""
        tc = self.cpu.ggml_get_type_traits_cpu(t).contents
        y = _f32(y).ravel()
        yq = self.quantize_activations(t, y)
        x_row = np.ascontiguousarray(x_row, dtype=np.uint8)
        s = np.zeros(1, dtype=np.float32)
        _vec_dot_t(tc.vec_dot)(y.size, s.ctypes.data, 0, x_row.ctypes.data, 0, yq.ctypes.data, 0, 1)
        return float(s[0])

    def quantize_activations(self, t: int, y: np.ndarray) -> np.ndarray:
        """y quantized to `t`'s vec_dot_type (what vec_dot sees), as bytes."""
        vt = self.cpu.ggml_get_type_traits_cpu(t).contents.vec_dot_type
        y = _f32(y).ravel()
        yq = np.empty(self.row_size(vt, y.size), dtype=np.uint8)
        _from_float_t(self.cpu.ggml_get_type_traits_cpu(vt).contents.from_float)(y.ctypes.data, yq.ctypes.data, y.size)
        return yq

    def validate_row_data(self, t: int, data: np.ndarray) -> bool:
        data = np.ascontiguousarray(data, dtype=np.uint8)
        return bool(self.base.ggml_validate_row_data(t, data.ctypes.data, data.nbytes))

    def activations_ref(self, t: int, y: np.ndarray) -> np.ndarray:
        """y quantized by the reference quantizer of our type `t`'s activations (TP1: TPQ16, TP4: Q8_0),
        as bytes: what the plain vec_dot and the repacked kernels multiply with."""
        fn = {80: self.base.quantize_row_tpq16_ref, 81: self.base.quantize_row_q8_0_ref}[t]
        vt = self.cpu.ggml_get_type_traits_cpu(t).contents.vec_dot_type
        y = _f32(y).ravel()
        yq = np.empty(self.row_size(vt, y.size), dtype=np.uint8)
        fn(y.ctypes.data, yq.ctypes.data, y.size)
        return yq

    # --- the CPU repack (tritpack-gemm.c): TP1/TP4 rows in tiles of 8 for the GEMV/GEMM kernels
    def can_repack(self, t: int, n_per_row: int, nrows: int) -> bool:
        return bool(self.cpu.ggml_tritpack_can_repack(t, n_per_row, nrows))

    def repack(self, t: int, q: np.ndarray, nrows: int, n: int) -> np.ndarray:
        """Quantized rows (uint8) in the repacked tile layout."""
        q = np.ascontiguousarray(q, dtype=np.uint8)
        out = np.empty_like(q)
        self.cpu.ggml_tritpack_repack(t, out.ctypes.data, q.ctypes.data, nrows, n)
        return out

    def repacked_mul_mat(self, t: int, packed: np.ndarray, n: int, nrows: int, y: np.ndarray,
                         simd: bool = True) -> np.ndarray:
        """dst[c, i] = repacked row i . column c of y (ncols, n), on one thread (simd False: the generic
        C kernels)."""
        y = _f32(np.atleast_2d(y))
        dst = np.full((y.shape[0], nrows), np.nan, dtype=np.float32)
        self.cpu.ggml_tritpack_mul_mat(t, n, nrows, packed.ctypes.data, y.shape[0], y.ctypes.data,
                                       dst.ctypes.data, simd)
        return dst

    def vec_dot_fn(self, name: str):
        """A named CPU vec_dot of libggml-cpu (e.g. ggml_vec_dot_tp1_tpq16_generic) with its signature."""
        fn = getattr(self.cpu, name)
        fn.restype, fn.argtypes = None, _VEC_DOT_ARGS
        return fn

    def cpu_features(self) -> list[str]:
        feats = []
        for name in ("sse3", "ssse3", "avx", "avx2", "f16c", "fma", "avx_vnni", "avx512", "avx512_vbmi",
                     "avx512_vnni", "avx512_bf16", "amx_int8", "neon", "arm_fma", "fp16_va", "dotprod",
                     "matmul_int8", "sve", "sme", "riscv_v", "vsx", "wasm_simd"):
            fn = getattr(self.cpu, f"ggml_cpu_has_{name}", None)
            if fn is not None:
                fn.restype = C.c_int
                if fn():
                    feats.append(name)
        return feats


@lru_cache(maxsize=None)
def load_ggml(lib_dir: str | Path | None = None) -> GGML:
    """The patched ggml libraries (default: the newest build, see runtime.library_dir)."""
    d = Path(lib_dir).resolve() if lib_dir else library_dir(prefer_cuda=False)
    mode = C.RTLD_GLOBAL
    base = C.CDLL(str(d / "libggml-base.so"), mode=mode)
    cpu = C.CDLL(str(d / "libggml-cpu.so"), mode=mode)
    return GGML(d, base, cpu)


# ----------------------------------------------------------------------------- graphs and the RPC backend

class InitParams(C.Structure):
    """struct ggml_init_params"""
    _fields_ = [("mem_size", C.c_size_t), ("mem_buffer", C.c_void_p), ("no_alloc", C.c_bool)]


_S, _I64 = C.c_size_t, C.c_int64
_GRAPH_SIGS = {   # libggml-base: name -> (argtypes, restype); a graph computed on a backend
    "ggml_tensor_overhead": ([], _S), "ggml_graph_overhead": ([], _S),
    "ggml_init": ([InitParams], _P), "ggml_free": ([_P], None),
    "ggml_new_tensor_2d": ([_P, C.c_int, _I64, _I64], _P), "ggml_mul_mat": ([_P, _P, _P], _P),
    "ggml_new_graph": ([_P], _P), "ggml_build_forward_expand": ([_P, _P], None), "ggml_nbytes": ([_P], _S),
    "ggml_backend_alloc_ctx_tensors": ([_P, _P], _P), "ggml_backend_buffer_free": ([_P], None),
    "ggml_backend_tensor_set": ([_P, _P, _S, _S], None), "ggml_backend_tensor_get": ([_P, _P, _S, _S], None),
    "ggml_backend_graph_compute": ([_P, _P], C.c_int), "ggml_backend_free": ([_P], None),
}


@dataclass
class Backends:
    """ggml's graph and backend API and the RPC client, with their signatures: `base` (libggml-base:
    graphs, backend buffers and compute), `ggml` (libggml: the backend registry) and `rpc`
    (libggml-rpc: ggml_backend_rpc_init, ggml_backend_rpc_add_server)."""
    lib_dir: Path
    base: C.CDLL
    ggml: C.CDLL
    rpc: C.CDLL


@lru_cache(maxsize=None)
def load_backends(lib_dir: str | Path) -> Backends:
    """The libraries of `lib_dir` for graphs on a backend (rpc.py's probe) and RPC devices."""
    d = Path(lib_dir).resolve()
    base = C.CDLL(str(d / "libggml-base.so"), mode=C.RTLD_GLOBAL)
    ggml = C.CDLL(str(d / "libggml.so"), mode=C.RTLD_GLOBAL)
    rpc = C.CDLL(str(d / "libggml-rpc.so"), mode=C.RTLD_GLOBAL)
    for name, (args, res) in _GRAPH_SIGS.items():
        fn = getattr(base, name)
        fn.argtypes, fn.restype = args, res
    rpc.ggml_backend_rpc_init.argtypes, rpc.ggml_backend_rpc_init.restype = [C.c_char_p, C.c_uint32], _P
    rpc.ggml_backend_rpc_add_server.argtypes, rpc.ggml_backend_rpc_add_server.restype = [C.c_char_p], _P
    ggml.ggml_backend_register.argtypes, ggml.ggml_backend_register.restype = [_P], None
    return Backends(d, base, ggml, rpc)
