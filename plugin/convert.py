"""`convert`: any GGUF llama.cpp can load -> a TritPack GGUF, streamed tensor by tensor.

The input is memory-mapped and never modified; each tensor is dequantized, checked, quantized by
the C kernels of the patched library (in parallel over row chunks), measured against its source
and written; the output appears at its final path only when complete (temporary file, then an
atomic rename or link).
"""

from __future__ import annotations

import ctypes as C
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, GGUFValueType

from . import __version__
from .converters import policy
from .converters.gguf_types import TYPE_TP1, TYPE_TP4
from .converters.imatrix import load_imatrix
from .converters.metrics import ErrorStats
from .converters.reader import GGUFFile, TensorInfo, to_float32
from .converters.tp1 import DEFAULT_ALPHA as TP1_DEFAULT_ALPHA
from .converters.writer import GGUFOutput
from .digest import SourceHash, sha256_file
from .errors import TritpackError
from .ggml_lib import CONVERT_INVALID, CONVERT_NOMEM, CONVERT_NONFINITE, GGML, ConvertStats, load_ggml

Progress = Callable[[str, int, int], None]
CHUNK_VALUES = 1 << 22          # floats per work chunk (16 MB of float32)
ALPHA_SAMPLE_ROWS = 256         # rows the per-tensor TP1 alpha search looks at
TIER_SAMPLE_ROWS = 64           # rows the mixed-precision planner measures per tensor
LIKE_MARGIN = 128               # bytes a tensor (and 16 x for the keys) kept off a --like budget
TERNARY_SAMPLE_ROWS = 16        # rows checked for ternary values before the whole tensor is read
SUFFIX = {"tp4": "TP4", "tp1": "TP1", "mixed": "MIX"}


@dataclass
class ConvertOptions:
    type: str = "tp4"
    output: Path | None = None
    budget: int | None = None       # bytes, for --type mixed
    bpw: float | None = None        # bits per weight, for --type mixed
    like: str | None = None         # for --type mixed: the budget is this llama-quantize preset's size
    target_cos: float | None = None
    alpha: float | None = None      # None: searched per tensor
    imatrix: Path | str | None = None   # a llama-imatrix file, "auto" (imatrix_auto.py), "small" (auto for
                                        # a source model that fits in memory, the CLI's default) or None/"none"
    keep: list[str] = field(default_factory=list)
    threads: int | None = None
    force: bool = False
    dry_run: bool = False


@dataclass
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    src_type: str
    dst_type: str
    reason: str
    src_bytes: int
    dst_bytes: int
    quantize: bool
    tier: str | None = None
    alpha: float | None = None
    cos: float | None = None
    snr_db: float | None = None
    rmse: float | None = None
    lossless: bool | None = None


@dataclass
class ConvertReport:
    input: str
    output: str | None
    type: str
    tensors: list[TensorPlan]
    size_before: int
    size_after: int
    n_weights: int
    seconds: float = 0.0
    dry_run: bool = False
    imatrix: str | None = None      # tritpack.imatrix: "auto:<text>:<chunks>x<ctx>", "file:<name>" or None
    imatrix_seconds: float = 0.0    # time llama-imatrix took (0 when none ran: a file, or the cache)
    imatrix_note: str | None = None  # --imatrix small: why there is none, or that the default made one

    @property
    def ratio(self) -> float:
        return self.size_before / self.size_after if self.size_after else 0.0

    @property
    def bpw(self) -> float:
        return 8.0 * self.size_after / self.n_weights if self.n_weights else 0.0

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.dst_type] = counts.get(t.dst_type, 0) + 1
        return counts

    def worst(self, k: int = 5) -> list[TensorPlan]:
        measured = [t for t in self.tensors if t.quantize and t.cos is not None]
        return sorted(measured, key=lambda t: t.cos)[:k]

    def as_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "type": self.type, "dry_run": self.dry_run,
                "size_before": self.size_before, "size_after": self.size_after, "ratio": round(self.ratio, 4),
                "bpw": round(self.bpw, 4), "n_weights": self.n_weights, "seconds": round(self.seconds, 3),
                "imatrix": self.imatrix, "imatrix_seconds": round(self.imatrix_seconds, 3),
                "imatrix_note": self.imatrix_note,
                "type_counts": self.type_counts(), "lossless_tensors": [t.name for t in self.tensors if t.lossless],
                "tensors": [asdict(t) for t in self.tensors]}


def parse_size(text: str) -> int:
    """'2.5GB', '700MB', '1.5GiB', '123456' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", text)
    if not m:
        raise TritpackError(f"cannot read size {text!r} (examples: 2.5GB, 700MB, 1GiB)")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    base = 1024 if binary else 1000
    return int(value * base ** " KMGT".index(unit or " "))


def default_output(inp: Path, type_: str) -> Path:
    return inp.with_name(f"{inp.stem}-{SUFFIX[type_]}.gguf")


# ----------------------------------------------------------------------------- planning

def _sample_rows(n_rows: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_rows - 1, num=min(k, n_rows)).astype(np.int64))


def _float_rows(src: GGUFFile, g: GGML, t: TensorInfo, rows: np.ndarray) -> np.ndarray:
    """Sample rows as float32. The mapped pages are dropped again: the kernel maps a fault's
    neighbours too (fault-around), so sampling every tensor would otherwise leave most of the
    file resident."""
    raw = src.raw(t)
    try:
        return to_float32(g, t, np.ascontiguousarray(raw[rows]), path=src.path)
    finally:
        src.release(t)


def _check_finite(src: GGUFFile, t: TensorInfo, x: np.ndarray, first_row: int = 0) -> None:
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise TritpackError(f"NaN or Inf weight at row {first_row + int(bad[0])}, column {int(bad[1])}",
                            path=src.path, tensor=t.name)


class Quantizer:
    """Quantizes rows into a ggml type with the C kernels, in parallel over row slices."""

    def __init__(self, g: GGML, threads: int | None):
        self.g = g
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self._tp1 = g.base.tritpack_quantize_tp1
        self._search = g.base.tritpack_tp1_search_alpha
        self._convert = g.base.tritpack_convert_rows
        self._ready: set[int] = set()

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()

    def search_alpha(self, x: np.ndarray, imatrix: np.ndarray | None, target_cos: float | None) -> tuple[float, float]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = C.c_float(0.0)
        im = None if imatrix is None else imatrix.ctypes.data
        alpha = self._search(x.ctypes.data, x.shape[0], x.shape[1], im, C.c_float(target_cos or 0.0), C.byref(out))
        return float(alpha), float(out.value)

    def quantize(self, t: Q, x: np.ndarray, imatrix: np.ndarray | None, alpha: float | None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        nrows, n = x.shape
        if t == Q.F32:
            return x.view(np.uint8).reshape(nrows, -1)
        out = np.empty((nrows, policy.row_bytes(t, n)), dtype=np.uint8)
        im = None if imatrix is None else imatrix.ctypes.data
        self.init(t)

        def work(r0: int, r1: int) -> None:
            if t == TYPE_TP1.qtype:
                self._tp1(x[r0:r1].ctypes.data, out[r0:r1].ctypes.data, r1 - r0, n, im,
                          C.c_float(TP1_DEFAULT_ALPHA if alpha is None else alpha))
            else:
                self.g.base.ggml_quantize_chunk(int(t), x[r0:r1].ctypes.data, out[r0:r1].ctypes.data, 0, r1 - r0, n, im)

        self._parallel(nrows, work)
        return out

    def init(self, t: Q) -> None:
        """ggml's tables for `t` (the i-quants' grids), built once before the threads use them."""
        if int(t) not in self._ready and t not in (TYPE_TP1.qtype, Q.F32):
            self.g.base.ggml_quantize_init(int(t))
            self._ready.add(int(t))

    def _parallel(self, nrows: int, work: Callable[[int, int], object]) -> list:
        step = max(1, math.ceil(nrows / (self.threads * 2)))
        slices = [(r, min(r + step, nrows)) for r in range(0, nrows, step)]
        if self.pool and len(slices) > 1:
            return list(self.pool.map(lambda s: work(*s), slices))
        return [work(*s) for s in slices]

    def convert_rows(self, src_type: Q, raw: np.ndarray, dst: Q, n: int, imatrix: np.ndarray | None,
                     alpha: float | None, out: np.ndarray, stats: ErrorStats) -> tuple[int, int, int] | None:
        """Rows of raw bytes (any readable type) -> `out` in dst, measured into `stats`, in one pass
        per thread (tritpack_convert_rows). None, or (problem, row, column) for the first slice that
        failed: CONVERT_NONFINITE at that weight, CONVERT_INVALID, ..."""
        im = None if imatrix is None else imatrix.ctypes.data
        a = C.c_float(TP1_DEFAULT_ALPHA if alpha is None else alpha)
        self.init(dst)

        def work(r0: int, r1: int) -> tuple[int, ConvertStats, int]:
            st = ConvertStats(exact=1)
            rc = self._convert(int(src_type), raw[r0:r1].ctypes.data, int(dst), out[r0:r1].ctypes.data,
                               r1 - r0, n, im, a, C.byref(st))
            return rc, st, r0

        problem = None
        for rc, st, r0 in self._parallel(raw.shape[0], work):
            stats.add_sums(st.n, st.sxx, st.syy, st.sxy, st.see, bool(st.exact))
            if rc and problem is None:
                problem = (rc, r0 + st.bad_row, st.bad_col)
        return problem


def _imatrix_for(imatrix: dict[str, np.ndarray] | None, t: TensorInfo) -> np.ndarray | None:
    if not imatrix:
        return None
    w = imatrix.get(t.name)
    if w is None:
        w = imatrix.get(t.name.removesuffix(".weight"))
    if w is None:
        return None
    if w.size != t.row_length:  # per-expert imatrix: average over experts for a 2-D view
        if w.size % t.row_length:
            raise TritpackError(f"imatrix has {w.size} weights, the tensor's rows have {t.row_length}", tensor=t.name)
        w = w.reshape(-1, t.row_length).mean(axis=0).astype(np.float32)
    return np.ascontiguousarray(w)


def plan_conversion(src: GGUFFile, opts: ConvertOptions, g: GGML, q: Quantizer,
                    imatrix: dict[str, np.ndarray] | None, progress: Progress,
                    imatrix_path: Path | None = None) -> list[TensorPlan]:
    if opts.type not in policy.TARGETS:
        raise TritpackError(f"unknown --type {opts.type!r}; choose one of {', '.join(policy.TARGETS)}")
    target = TYPE_TP1.qtype if opts.type == "tp1" else TYPE_TP4.qtype
    names = {t.name for t in src.tensors}
    tied = "output.weight" not in names
    plans: list[TensorPlan] = []
    for i, t in enumerate(src.tensors):
        progress(f"planning {t.name}", i, len(src.tensors))
        if t.type not in GGML_QUANT_SIZES or not g.knows(int(t.type)):
            raise TritpackError(f"unknown tensor type {int(t.type)}", path=src.path, tensor=t.name)
        d = policy.decide(t, target, opts.keep, tied)
        if d.quantize and not d.lossless and policy.may_be_ternary(t) and _is_ternary(src, g, t):
            d = policy.Decision(TYPE_TP1.qtype, f"ternary-valued {t.type.name}: TP1, lossless", lossless=True)
        plans.append(TensorPlan(t.name, t.shape, t.type.name, d.type.name, d.reason, t.nbytes,
                                policy.tensor_bytes(d.type, t) if d.quantize else t.nbytes, d.quantize,
                                lossless=True if d.lossless else None))
    if opts.type == "mixed":
        _plan_tiers(src, opts, g, q, imatrix, plans, progress, imatrix_path)
    for i, (t, p) in enumerate(zip(src.tensors, plans)):
        if p.quantize and p.dst_type == TYPE_TP1.qtype.name:
            progress(f"calibrating {t.name}", i, len(plans))
            p.alpha = _tp1_alpha(src, g, q, t, p, opts, imatrix)
    return plans


def _is_ternary(src: GGUFFile, g: GGML, t: TensorInfo) -> bool:
    """Ternary-valued (policy.is_ternary), checked on sample rows first: an ordinary tensor fails
    there, so only ternary tensors are read whole (chunk by chunk)."""
    sample = _float_rows(src, g, t, _sample_rows(t.n_rows, TERNARY_SAMPLE_ROWS))
    _check_finite(src, t, sample)
    if not policy.is_ternary(sample):
        return False
    step = max(1, CHUNK_VALUES // t.row_length)
    raw = src.raw(t)
    try:
        for r0 in range(0, t.n_rows, step):
            x = to_float32(g, t, raw[r0:r0 + step], path=src.path)
            _check_finite(src, t, x, r0)
            if not policy.is_ternary(x):
                return False
        return True
    finally:
        src.release(t)


def _tp1_alpha(src: GGUFFile, g: GGML, q: Quantizer, t: TensorInfo, p: TensorPlan, opts: ConvertOptions,
               imatrix: dict[str, np.ndarray] | None) -> float:
    """TP1's threshold factor for one tensor: --alpha, else searched on sample rows (largest
    cosine, or the smallest error meeting --target-cos). Ternary tensors need none: any alpha in
    (0, 1) keeps exactly their nonzero trits."""
    if p.lossless:
        return 0.5
    if opts.alpha is not None:
        return opts.alpha
    sample = _float_rows(src, g, t, _sample_rows(t.n_rows, ALPHA_SAMPLE_ROWS))
    _check_finite(src, t, sample)
    return q.search_alpha(sample, _imatrix_for(imatrix, t), opts.target_cos)[0]


def _plan_tiers(src: GGUFFile, opts: ConvertOptions, g: GGML, q: Quantizer,
                imatrix: dict[str, np.ndarray] | None, plans: list[TensorPlan], progress: Progress,
                imatrix_path: Path | None = None) -> None:
    """Mixed precision over the whole palette (policy.palette: TP1, TP4 and the stock types each
    tensor's rows allow): every quantized tensor is quantized on sample rows into each type it may
    take, through the same C quantizers that write the file (ggml_quantize_chunk with the imatrix), and
    its error measured (relative squared error on those rows, weighted by the imatrix when given, times
    the tensor's size); policy.choose_tiers then picks the types that meet the budget with the least
    total error. The token embedding and the output take part too, but never ternary: the output (or
    a tied embedding) gets 4 bits at least, an untied embedding 2.5 (policy.min_bpw)."""
    n_weights = sum(t.n_elements for t in src.tensors)
    given = [o for o, v in (("--budget", opts.budget), ("--bpw", opts.bpw), ("--like", opts.like)) if v is not None]
    if not given:
        raise TritpackError("--type mixed needs --budget SIZE, --bpw X or --like PRESET")
    if len(given) > 1:
        raise TritpackError(f"give one of --budget, --bpw and --like, not {' and '.join(given)}")
    if opts.like is not None:
        # the preset's tensor bytes, less room for what our file holds beyond its tensors (the tritpack.*
        # keys, TP1's alphas, each tensor's alignment padding), so that the file is no larger either
        budget = preset_size(src.path, opts.like, imatrix_path, g.lib_dir)[0] - LIKE_MARGIN * (len(src.tensors) + 16)
    else:
        budget = opts.budget if opts.budget is not None else int(opts.bpw * n_weights / 8)
    # the token embedding is the output too when there is no output matrix, unless the model has none
    # (an embedding model: it pools instead; a file without an architecture counts as tied, the side
    # that keeps the embedding at 4 bits or more)
    tied = "output.weight" not in {t.name for t in src.tensors} and not src.pools
    tiered: list[tuple[TensorPlan, TensorInfo, list[Q]]] = []
    for p, t in zip(plans, src.tensors):
        if not p.quantize or p.lossless:
            continue
        w_known = _imatrix_for(imatrix, t) is not None
        types = [qt for qt in policy.palette(t.row_length, w_known, policy.min_bpw(t.name, tied))
                 if w_known or not g.requires_imatrix(int(qt))]
        if types:
            tiered.append((p, t, types))
    fixed = sum(p.dst_bytes for p in plans) - sum(p.dst_bytes for p, _, _ in tiered)
    err: dict[str, dict[str, float]] = {}
    size: dict[str, dict[str, int]] = {}
    for i, (p, t, types) in enumerate(tiered):
        progress(f"measuring types {t.name}", i, len(tiered))
        x = _float_rows(src, g, t, _sample_rows(t.n_rows, TIER_SAMPLE_ROWS))
        _check_finite(src, t, x)
        w = _imatrix_for(imatrix, t)
        ww = np.ones(t.row_length) if w is None else w.astype(np.float64)
        ref = float(((x.astype(np.float64) ** 2) * ww).sum()) or 1.0
        err[p.name], size[p.name] = {}, {}
        for qt in types:
            alpha = None
            if qt == TYPE_TP1.qtype:
                alpha = opts.alpha if opts.alpha is not None else q.search_alpha(x, w, opts.target_cos)[0]
            y = g.dequantize(int(qt), q.quantize(qt, x, w, alpha))
            err[p.name][qt.name] = float((((x - y).astype(np.float64) ** 2) * ww).sum()) / ref * t.n_elements
            size[p.name][qt.name] = policy.tensor_bytes(qt, t)
    # an untied token embedding is only looked up: a token meets one of its rows, where it meets every
    # weight of a matrix, so its error counts as much as an average matrix's, not by its size
    emb = [(p, t) for p, t, _ in tiered if t.name in policy.EMBEDDING_NAMES and not tied]
    others = [t.n_elements for _, t, _ in tiered if t.name not in policy.EMBEDDING_NAMES]
    for p, t in emb:
        if others:
            scale = (sum(others) / len(others)) / t.n_elements
            err[p.name] = {k: v * scale for k, v in err[p.name].items()}
    choice = policy.choose_tiers(err, size, fixed, budget)
    for p, t, types in tiered:
        p.tier = p.dst_type = choice[p.name]
        p.dst_bytes = size[p.name][p.tier]
        p.reason = (f"mixed: {p.tier}, the least error per byte of {len(types)} types measured"
                    + (f" ({policy.min_bpw(t.name, tied):g} bits at least)" if policy.min_bpw(t.name, tied) else ""))


_DRY_RUN_TENSOR = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+-\s+\[([\d,\s]+)\],\s+type\s*=\s*(\w+),\s+size\s*=\s*[\d.]+\s*MiB"
                             r"(?:\s*->\s*[\d.]+\s*MiB\s*\((\w+)\))?")


def preset_size(model: str | Path, like: str, imatrix: Path | None, lib_dir: Path) -> tuple[int, dict[str, str]]:
    """(tensor bytes, type of each tensor) of what the patched llama-quantize makes of `model` as preset
    `like` (with `imatrix` when given, since some of its choices depend on one): its own type choice
    (llama_tensor_get_type, fallbacks for rows 256 does not divide included), read from its --dry-run,
    which runs that choice over the model's header and writes nothing; the bytes are counted here from
    each tensor's shape and type. Cheap (no tensor data is read), so not cached."""
    from .evaluate import _program, _run

    name = policy.preset(like)
    model = Path(model)
    cmd = [str(_program(lib_dir, "llama-quantize")), "--dry-run", "--allow-requantize"]
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    cmd += [str(model), name, "1"]
    out = _run(cmd, lib_dir, f"llama-quantize --dry-run {name}", model)
    src = GGUFFile(model)
    types: dict[str, str] = {}
    total = 0
    for m in _DRY_RUN_TENSOR.finditer(out):
        tname, shape, new = m.group(1), m.group(2), m.group(4) or m.group(3)
        try:
            qt = Q[new.upper()]
        except KeyError:
            raise TritpackError(f"llama-quantize --dry-run {name} chose a type unknown here: {new}", path=model,
                                tensor=tname) from None
        ne = [int(v) for v in shape.split(",") if v.strip()]
        types[tname] = qt.name
        total += math.prod(ne[1:]) * policy.row_bytes(qt, ne[0])
    if set(types) != {t.name for t in src.tensors}:
        raise TritpackError(f"llama-quantize --dry-run {name} listed {len(types)} tensors, the model has "
                            f"{len(src.tensors)}", path=model)
    return total, types


# ----------------------------------------------------------------------------- writing

def _ftype(plans: list[TensorPlan], opts: ConvertOptions) -> int:
    if opts.type == "tp1":
        return TYPE_TP1.id
    if opts.type == "tp4":
        return TYPE_TP4.id
    by = {TYPE_TP1.qtype.name: 0, TYPE_TP4.qtype.name: 0}
    for p in plans:
        if p.dst_type in by:
            by[p.dst_type] += p.dst_bytes
    return TYPE_TP4.id if by[TYPE_TP4.qtype.name] >= by[TYPE_TP1.qtype.name] else TYPE_TP1.id


def _convert_tensor(src: GGUFFile, g: GGML, q: Quantizer, t: TensorInfo, p: TensorPlan, opts: ConvertOptions,
                    imatrix: dict[str, np.ndarray] | None, write: Callable[[bytes], None],
                    done: Callable[[int], None]) -> None:
    raw = src.raw(t)
    if not p.quantize:
        step = max(1, CHUNK_VALUES // max(1, t.row_length))
        for r0 in range(0, max(t.n_rows, 1), step):
            chunk = raw[r0:r0 + step]
            write(chunk.tobytes())
            done(chunk.nbytes)
        return
    dst = Q[p.dst_type]
    w = _imatrix_for(imatrix, t)
    stats = ErrorStats()
    step = max(1, CHUNK_VALUES // t.row_length)
    out = np.empty((min(step, t.n_rows), policy.row_bytes(dst, t.row_length)), dtype=np.uint8)
    for r0 in range(0, t.n_rows, step):
        rows = raw[r0:r0 + step]
        chunk = out[:rows.shape[0]]
        problem = q.convert_rows(t.type, rows, dst, t.row_length, w, p.alpha, chunk, stats)
        if problem:
            rc, row, col = problem
            if rc == CONVERT_NONFINITE:
                raise TritpackError(f"NaN or Inf weight at row {r0 + row}, column {col}", path=src.path, tensor=t.name)
            if rc == CONVERT_INVALID:  # e.g. a block scale past fp16's range
                raise TritpackError(f"the weights do not fit {dst.name} (a scale or value overflows fp16)",
                                    path=src.path, tensor=t.name, hint=f"keep this tensor with --keep {t.name}")
            if rc == CONVERT_NOMEM:
                raise TritpackError("out of memory", path=src.path, tensor=t.name)
            raise TritpackError(f"cannot convert {t.type.name} rows of {t.row_length} to {dst.name}",
                                path=src.path, tensor=t.name)
        write(chunk.data)
        done(rows.nbytes)
    m = stats.as_dict()
    p.cos, p.snr_db, p.rmse = m["cos"], m["snr_db"], m["rmse"]
    if p.lossless:
        p.lossless = stats.exact
        if not stats.exact:
            p.reason = p.reason.replace("lossless", "NOT lossless (values changed)")


def convert(inp: str | Path, opts: ConvertOptions, progress: Progress = lambda *a: None,
            g: GGML | None = None, source_hash: SourceHash | None = None) -> ConvertReport:
    """Convert `inp` as `opts` say. `source_hash`: the input's hash, already started (the CLI starts it
    before importing this module); convert() owns it from here and stops it when done."""
    t0 = time.monotonic()
    inp = Path(inp)
    if source_hash is not None and (opts.dry_run or source_hash.path.resolve() != inp.resolve()):
        source_hash.stop()
        source_hash = None
    try:
        src = GGUFFile(inp)
        out = Path(opts.output) if opts.output else default_output(inp, opts.type)
        if not opts.dry_run:
            if out.exists() and out.resolve() == inp.resolve():
                raise TritpackError("the output would overwrite the input", path=out)
            if out.exists() and not opts.force:
                raise TritpackError("output exists", path=out, hint="use --force to overwrite it, or -o to choose another name")
            if not out.parent.is_dir():
                raise TritpackError("the output folder does not exist", path=out.parent)
            # hashed from the start: planning runs on one core, so the hash mostly takes the other
            source_hash = source_hash or SourceHash(src.path)
        g = g or load_ggml()
        t_im = time.monotonic()
        imatrix, imatrix_label, ran, imatrix_path, imatrix_note = _imatrix_of(inp, src, opts, g, source_hash, progress)
        t_im = time.monotonic() - t_im if ran else 0.0
        q = Quantizer(g, opts.threads)
        try:
            plans = plan_conversion(src, opts, g, q, imatrix, progress, imatrix_path)
            report = ConvertReport(str(inp), None if opts.dry_run else str(out), opts.type, plans,
                                   size_before=sum(t.nbytes for t in src.tensors),
                                   size_after=sum(p.dst_bytes for p in plans),
                                   n_weights=sum(t.n_elements for t in src.tensors), dry_run=opts.dry_run,
                                   imatrix=imatrix_label, imatrix_seconds=t_im, imatrix_note=imatrix_note)
            if source_hash is not None:
                _write(src, out, opts, g, q, imatrix, plans, progress, source_hash, imatrix_label)
        finally:
            q.close()
    finally:
        if source_hash is not None:
            source_hash.stop()
    report.seconds = time.monotonic() - t0
    return report


# --imatrix small (the CLI's default): the automatic imatrix when llama-imatrix can hold the source model
# in memory. Measured (README, convert): SmolLM2-135M to TP4, mean KL divergence 0.103 -> 0.035 and its
# answers right, for 16 s of llama-imatrix on an idle 2-core machine against 15 s of conversion: the
# imatrix about doubles the time at any size (both are linear in the weights). What does not scale is
# memory: llama-imatrix runs the source model forward, 16 times over the calibration text, so a model
# larger than the memory would be read from disk 16 times. The default stops there.
SMALL_MEMORY_SHARE = 0.8   # the source file may take this share of MemAvailable


def _small_choice(src: GGUFFile, opts: ConvertOptions) -> tuple[str, str | None]:
    """What --imatrix small means for this model: ("auto" or "none", a note for the report)."""
    from .programs import mem_available

    if opts.type not in ("tp4", "mixed"):
        return "none", None  # TP1 is for ternary weights, exact without one
    if opts.dry_run:
        return "none", "no imatrix in a dry run (the conversion itself makes one when the model fits in memory)"
    if src.pools:
        return "none", ("no imatrix: llama-imatrix does not run embedding models; --imatrix FILE gives one "
                        "(bench/minilm_imatrix.py makes one for BERT)")
    if src.get("tokenizer.ggml.tokens") is None:
        return "none", "no imatrix: the model has no tokenizer for llama-imatrix to read the calibration text with"
    avail = mem_available()
    if avail is not None and src.size > SMALL_MEMORY_SHARE * avail:
        return "none", (f"no imatrix: llama-imatrix runs the source model ({src.size / 1e9:.1f} GB) 16 times over "
                        f"its calibration text and {avail / 1e9:.1f} GB of memory is available, so it would read "
                        "the model from disk each time; --imatrix auto makes one anyway, --imatrix FILE uses yours")
    return "auto", "the default when the source model fits in memory; --imatrix none skips it"


def _imatrix_of(inp: Path, src: GGUFFile, opts: ConvertOptions, g: GGML, source_hash: SourceHash | None,
                progress: Progress) -> tuple[dict[str, np.ndarray] | None, str | None, bool, Path | None, str | None]:
    """(the imatrix, its tritpack.imatrix label, whether llama-imatrix ran, its file, a note) as
    opts.imatrix says: None or "none": none; "auto": made from the package's calibration text (cached);
    "small": auto for a small decoder model (_small_choice), none otherwise, and none with a note when
    llama-imatrix fails there (a default must not stop a conversion); else a file."""
    choice, note = str(opts.imatrix) if opts.imatrix is not None else "none", None
    if choice == "small":
        choice, note = _small_choice(src, opts)
    if choice == "none":
        return None, None, False, None, note
    if choice == "auto":
        from .imatrix_auto import auto_imatrix, auto_label

        sha = source_hash.digest() if source_hash is not None else sha256_file(inp)
        try:
            path, cached = auto_imatrix(inp, sha, Path(g.lib_dir), opts.threads, progress)
        except TritpackError as e:
            if str(opts.imatrix) != "small":
                raise
            return None, None, False, None, f"no imatrix: {e.message}; converted without one"
        return load_imatrix(path), auto_label(), not cached, path, note
    p = Path(opts.imatrix)
    return load_imatrix(p), f"file:{p.name}", False, p, None


def _write(src: GGUFFile, out: Path, opts: ConvertOptions, g: GGML, q: Quantizer,
           imatrix: dict[str, np.ndarray] | None, plans: list[TensorPlan], progress: Progress,
           source_hash: SourceHash, imatrix_label: str | None = None) -> None:
    with GGUFOutput(out, src, force=opts.force, skip={"general.file_type"}) as w:
        w.add_key_value("general.file_type", _ftype(plans, opts), GGUFValueType.UINT32)
        w.add_key_value("tritpack.converter_version", __version__, GGUFValueType.STRING)
        w.add_key_value("tritpack.source_sha256", source_hash.placeholder, GGUFValueType.STRING)
        w.add_key_value("tritpack.type", opts.type, GGUFValueType.STRING)
        if opts.type == "mixed" and opts.like:
            w.add_key_value("tritpack.like", policy.preset(opts.like), GGUFValueType.STRING)
        if imatrix_label:
            w.add_key_value("tritpack.imatrix", imatrix_label, GGUFValueType.STRING)
        alphas = [(p.name, float(p.alpha)) for p in plans if p.alpha is not None]
        if alphas:  # the per-tensor TP1 calibration
            w.add_key_value("tritpack.alpha.tensors", [n for n, _ in alphas], GGUFValueType.ARRAY,
                            sub_type=GGUFValueType.STRING)
            w.add_key_value("tritpack.alpha.values", [a for _, a in alphas], GGUFValueType.ARRAY,
                            sub_type=GGUFValueType.FLOAT32)
        for t, p in zip(src.tensors, plans):
            w.add_tensor(t.name, t.shape, Q[p.dst_type], p.dst_bytes)
        w.start_data()
        total = sum(t.nbytes for t in src.tensors)
        state = {"done": 0}
        for i, (t, p) in enumerate(zip(src.tensors, plans)):
            w.begin_tensor()

            def done(n: int, i=i, t=t) -> None:
                state["done"] += n
                progress(f"tensor {i + 1}/{len(plans)} {t.name}", state["done"], total)

            _convert_tensor(src, g, q, t, p, opts, imatrix, w.write, done)
            src.release(t)
            w.end_tensor(t.name)
        w.publish(before=source_hash.fill_in)
