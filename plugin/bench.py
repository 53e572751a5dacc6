"""`bench`: llama-bench of the patched build over GGUF files, in one table with ratios to a baseline.

Files are given, or made from one source (`types`): TP1/TP4/mixed through tritpack_gguf.convert,
stock types (q4_0, q4_k_m, iq4_xs, ...) through the patched llama-quantize. On NVIDIA GPUs
(--ngl > 0 and nvidia-smi present) the board power is sampled during each test and turned into
joules per token. `plot_png` draws size against speed (and against quality) without matplotlib.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import TritpackError

Progress = Callable[[str, int, int], None]
OUR_TYPES = {"tp1", "tp4", "mixed"}
SOURCE = "source"   # in --types: the source file itself


def _quiet(*_a) -> None:
    pass


# ----------------------------------------------------------------------------- making the files

@dataclass
class BenchFile:
    label: str
    path: Path


def prepare_types(source: str | Path, types: list[str], work_dir: Path, *, threads: int | None = None,
                  progress: Progress = _quiet) -> list[BenchFile]:
    """`source` converted into each of `types` inside `work_dir` (made once: existing files are reused).
    'source' stands for the file itself."""
    from .convert import ConvertOptions, convert

    src = Path(source)
    if not src.is_file():
        raise TritpackError("no such file", path=src)
    work_dir.mkdir(parents=True, exist_ok=True)
    out: list[BenchFile] = []
    for i, t in enumerate(types):
        key = t.strip().lower()
        if not key:
            continue
        if key == SOURCE:
            out.append(BenchFile(src.name, src))
            continue
        dst = work_dir / f"{src.stem}-{key.upper()}.gguf"
        progress(f"making {dst.name}", i, len(types))
        if not dst.is_file():
            if key in OUR_TYPES:
                if key == "mixed":
                    raise TritpackError("--types mixed needs a budget: convert it with `tritpack-gguf convert "
                                        "--type mixed` and bench the file")
                convert(src, ConvertOptions(type=key, output=dst, threads=threads))
            else:
                _llama_quantize(tools_dir(0), src, dst, key, threads)
        out.append(BenchFile(key.upper(), dst))
    if not out:
        raise TritpackError("--types names no type")
    return out


def _llama_quantize(lib_dir: Path, src: Path, dst: Path, type_: str, threads: int | None) -> None:
    exe = lib_dir / "llama-quantize"
    if not exe.is_file():
        raise TritpackError("no llama-quantize in the build", path=lib_dir, hint="run `tritpack-gguf build`")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    cmd = [str(exe), "--allow-requantize", str(src), str(tmp), type_.upper(), str(threads or os.cpu_count() or 1)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(lib_dir))
    if r.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise TritpackError(f"llama-quantize could not make {type_.upper()}: {tail}", path=src,
                            hint="stock type names are llama-quantize's (q4_0, q4_k_m, iq4_xs, q8_0, ...)")
    os.replace(tmp, dst)


def tools_dir(ngl: int = 0) -> Path:
    """The build whose programs to run: the CUDA one for --ngl > 0 (when there is one), else the CPU
    one, else whichever exists."""
    from .runtime import library_dir

    try:
        return library_dir(prefer_cuda=ngl != 0)
    except TritpackError:
        return library_dir(prefer_cuda=True)


def _env(lib_dir: Path) -> dict:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


# ----------------------------------------------------------------------------- board power

class PowerSampler:
    """nvidia-smi's board power of every GPU, sampled every `interval_ms` while running."""

    def __init__(self, interval_ms: int = 100):
        self.exe = shutil.which("nvidia-smi")
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float]] = []   # (seconds since start, watts summed over GPUs)
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    @property
    def available(self) -> bool:
        return self.exe is not None

    def __enter__(self) -> "PowerSampler":
        if not self.exe:
            return self
        self.samples = []
        self._t0 = time.monotonic()
        self._proc = subprocess.Popen([self.exe, "--query-gpu=index,power.draw", "--format=csv,noheader,nounits",
                                       f"-lms={self.interval_ms}"], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc and self._proc.stdout
        current: dict[str, float] = {}
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 2:
                continue
            try:
                watts = float(parts[1])
            except ValueError:  # "[N/A]"
                continue
            if parts[0] in current:  # a new round of samples starts
                self.samples.append((time.monotonic() - self._t0, sum(current.values())))
                current = {}
            current[parts[0]] = watts
        if current:
            self.samples.append((time.monotonic() - self._t0, sum(current.values())))

    def __exit__(self, *exc) -> None:
        if self._proc:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            if self._thread:
                self._thread.join(timeout=5)

    def mean_watts(self, skip_fraction: float = 0.3) -> float | None:
        """Mean power over the run, leaving out its first part (model load and warm-up)."""
        if not self.samples:
            return None
        t_end = self.samples[-1][0]
        kept = [w for t, w in self.samples if t >= skip_fraction * t_end] or [w for _, w in self.samples]
        return sum(kept) / len(kept)


# ----------------------------------------------------------------------------- llama-bench

@dataclass
class BenchRow:
    label: str
    path: str
    model_type: str            # llama-bench's, e.g. "llama 1B TP4 - 4-bit codebook"
    size: int                  # bytes of tensor data (llama-bench's model_size)
    file_size: int
    n_params: int
    bpw: float
    pp_tps: float | None = None
    pp_std: float | None = None
    tg_tps: float | None = None
    tg_std: float | None = None
    pp_ratio: float | None = None       # speed / the baseline's
    tg_ratio: float | None = None
    size_ratio: float | None = None     # size / the baseline's
    pp_watts: float | None = None
    tg_watts: float | None = None
    pp_j_per_token: float | None = None
    tg_j_per_token: float | None = None
    quality: float | None = None


@dataclass
class BenchReport:
    rows: list[BenchRow]
    baseline: str
    n_prompt: int
    n_gen: int
    ngl: int
    threads: int | None
    repetitions: int
    backends: str
    cpu_info: str
    gpu_info: str
    energy: str                         # "measured (...)" or why it is not available
    quality_metric: str | None = None
    plot: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def run_llama_bench(lib_dir: Path, files: list[Path], *, n_prompt: int, n_gen: int, ngl: int,
                    threads: int | None, repetitions: int, extra: list[str] | None = None) -> list[dict]:
    """llama-bench -o json over `files`; its records (one per file and test)."""
    exe = lib_dir / "llama-bench"
    if not exe.is_file():
        raise TritpackError("no llama-bench in the build", path=lib_dir, hint="run `tritpack-gguf build`")
    cmd = [str(exe)]
    for f in files:
        cmd += ["-m", str(f)]
    cmd += ["-p", str(n_prompt), "-n", str(n_gen), "-ngl", str(ngl), "-r", str(repetitions), "-o", "json"]
    if threads:
        cmd += ["-t", str(threads)]
    cmd += list(extra or [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(lib_dir))
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-8:])
        raise TritpackError(f"llama-bench failed (exit {r.returncode}): {tail}",
                            hint="`tritpack-gguf verify` checks that a file loads and runs")
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise TritpackError(f"llama-bench printed no JSON: {r.stdout[-300:]!r}") from None


def bench(files: list[BenchFile], *, n_prompt: int = 512, n_gen: int = 128, ngl: int = 0,
          threads: int | None = None, repetitions: int = 5, baseline: str | None = None,
          quality: dict[str, float] | None = None, quality_metric: str | None = None,
          energy: bool | None = None, progress: Progress = _quiet, rpc: str | list[str] | None = None,
          tensor_split: str | list[float] | None = None) -> BenchReport:
    """Benchmark `files` with the patched llama-bench. `energy`: sample GPU board power (default: when
    ngl > 0 and nvidia-smi is on PATH); each file's prompt and decode tests then run separately.
    `rpc`: HOST:PORT of `tritpack-gguf rpc-server` helpers to split each model with (checked first)."""
    from .runtime import gpu_backends

    if n_prompt < 0 or n_gen < 0 or (n_prompt == 0 and n_gen == 0):
        raise TritpackError("-p and -n must not be negative, nor both 0")
    if repetitions < 1:
        raise TritpackError("--repetitions must be at least 1")
    for f in files:
        if not f.path.is_file():
            raise TritpackError("no such file", path=f.path)
    lib_dir = tools_dir(ngl)
    notes = []
    endpoints: list[str] = []
    if rpc:
        from .rpc import check_servers, parse_endpoints

        endpoints = parse_endpoints(rpc)
        check_servers(endpoints, lib_dir)
        notes.append(f"layers split with the RPC servers {', '.join(endpoints)} (docs/distributed.md)")
    if ngl and not endpoints and not gpu_backends(lib_dir):
        notes.append(f"--ngl {ngl}: the library has no GPU backend, every layer ran on the CPU "
                     "(`tritpack-gguf build --cuda`)")
    sampler = PowerSampler()
    if energy is None:
        energy = bool(ngl) and sampler.available and bool(gpu_backends(lib_dir))
    if energy and not sampler.available:
        raise TritpackError("energy per token needs nvidia-smi on PATH")
    if energy:
        energy_note = "measured: mean nvidia-smi board power (all GPUs, 100 ms samples) / tokens a second"
    elif not sampler.available:
        energy_note = "not available: no nvidia-smi (NVIDIA GPUs only)"
    elif not ngl:
        energy_note = "not available: CPU run (give --ngl to run on the GPU)"
    else:
        energy_note = "not available: the library has no GPU backend"

    rows: list[BenchRow] = []
    records: list[dict] = []
    for i, f in enumerate(files):
        progress(f"benchmarking {f.label}", i, len(files))
        common = dict(ngl=ngl, threads=threads, repetitions=repetitions)
        if endpoints or tensor_split:
            from .rpc import llama_args, offload_plan, parse_tensor_split

            f_ngl, split = offload_plan(f.path, endpoints, ngl, parse_tensor_split(tensor_split))
            common.update(ngl=f_ngl, extra=llama_args(endpoints, f_ngl, split) if endpoints
                          else ["-ts", "/".join(f"{v:g}" for v in split or [])])
        if energy:
            got = []
            watts = {}
            for kind, (p, n) in (("pp", (n_prompt, 0)), ("tg", (0, n_gen))):
                if p == 0 and n == 0:
                    continue
                with sampler:
                    recs = run_llama_bench(lib_dir, [f.path], n_prompt=p, n_gen=n, **common)
                watts[kind] = sampler.mean_watts()
                got += [r for r in recs if (r["n_prompt"] > 0) == (kind == "pp")]
        else:
            got = run_llama_bench(lib_dir, [f.path], n_prompt=n_prompt, n_gen=n_gen, **common)
            watts = {}
        records += got
        rows.append(_row(f, got, watts))
    progress("benchmarked", len(files), len(files))

    base = _find(rows, baseline) if baseline else rows[0]
    if base is None:
        raise TritpackError(f"--baseline {baseline!r} is none of the benchmarked files",
                            hint="name one by label, file name or path: " + ", ".join(r.label for r in rows))
    for r in rows:
        if base.pp_tps and r.pp_tps is not None:
            r.pp_ratio = r.pp_tps / base.pp_tps
        if base.tg_tps and r.tg_tps is not None:
            r.tg_ratio = r.tg_tps / base.tg_tps
        r.size_ratio = r.size / base.size if base.size else None
        if quality:
            r.quality = _lookup(quality, r)
    first = records[0] if records else {}
    return BenchReport(rows=rows, baseline=base.label, n_prompt=n_prompt, n_gen=n_gen, ngl=ngl, threads=threads,
                       repetitions=repetitions, backends=str(first.get("backends", "")),
                       cpu_info=str(first.get("cpu_info", "")), gpu_info=str(first.get("gpu_info", "")),
                       energy=energy_note, quality_metric=quality_metric if quality else None, notes=notes)


def _row(f: BenchFile, records: list[dict], watts: dict[str, float | None]) -> BenchRow:
    if not records:
        raise TritpackError("llama-bench returned no results", path=f.path)
    r0 = records[0]
    size, n_params = int(r0["model_size"]), int(r0["model_n_params"])
    row = BenchRow(label=f.label, path=str(f.path), model_type=str(r0.get("model_type", "")), size=size,
                   file_size=f.path.stat().st_size, n_params=n_params,
                   bpw=8.0 * size / n_params if n_params else 0.0)
    for r in records:
        kind = "pp" if r["n_prompt"] > 0 and r["n_gen"] == 0 else "tg" if r["n_gen"] > 0 and r["n_prompt"] == 0 else None
        if kind:
            setattr(row, f"{kind}_tps", float(r["avg_ts"]))
            setattr(row, f"{kind}_std", float(r["stddev_ts"]))
    for kind in ("pp", "tg"):
        w, tps = watts.get(kind), getattr(row, f"{kind}_tps")
        if w is not None and tps:
            setattr(row, f"{kind}_watts", w)
            setattr(row, f"{kind}_j_per_token", w / tps)
    return row


def _keys(row: BenchRow) -> set[str]:
    p = Path(row.path)
    return {row.label.lower(), p.name.lower(), p.stem.lower(), str(p).lower(), str(p.resolve()).lower()}


def _find(rows: list[BenchRow], name: str) -> BenchRow | None:
    n = name.lower()
    return next((r for r in rows if n in _keys(r)), None)


def _lookup(quality: dict[str, float], row: BenchRow) -> float | None:
    keys = _keys(row)
    for k, v in quality.items():
        kl = k.lower()
        if kl in keys or Path(kl).name in keys or Path(kl).stem in keys:
            return v
    return None


# ----------------------------------------------------------------------------- quality file

QUALITY_METRICS = ("perplexity", "ppl", "kld_mean", "kld", "mean_kld", "kl_divergence", "same_top", "top1",
                   "top1_agreement", "same_top_p", "cos_mean", "accuracy", "score")
NAME_KEYS = ("model", "file", "path", "name", "label", "type", "output")


def read_quality(path: str | Path, metric: str | None = None) -> tuple[str, dict[str, float]]:
    """A quality file from the evaluation -> (metric, {model name or path: value}). Accepted shapes:
    {name: number}, {name: {metric: number}}, [{"model"|"file"|"path"|...: name, metric: number}]
    (what `evaluate --json` writes: one such record, or a list), and such a list under "results",
    "models", "rows" or "files"."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise TritpackError(f"cannot read: {e.strerror or e}", path=p) from None
    except ValueError as e:
        raise TritpackError(f"not JSON: {e}", path=p) from None
    if isinstance(data, dict):
        for key in ("results", "models", "rows", "files"):
            if isinstance(data.get(key), (list, dict)):
                data = data[key]
                break
        else:
            if any(isinstance(data.get(k), str) for k in NAME_KEYS):  # a single record
                data = [data]
    entries: list[tuple[str, dict]] = []
    if isinstance(data, list):
        for item in data:
            if isinstance(item, dict):
                name = next((str(item[k]) for k in NAME_KEYS if isinstance(item.get(k), str)), None)
                if name:
                    entries.append((name, item))
    elif isinstance(data, dict):
        for name, v in data.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                entries.append((name, {metric or "quality": v}))
            elif isinstance(v, dict):
                entries.append((name, v))
    if not entries:
        raise TritpackError("no per-model quality numbers found", path=p,
                            hint='expected e.g. [{"model": "m-TP4.gguf", "perplexity": 7.1}] or {"m-TP4.gguf": 7.1}')
    if metric is None:
        present = {k for _, d in entries for k, v in d.items() if _is_num(v)}
        metric = next((m for m in QUALITY_METRICS if m in present), None) or ("quality" if "quality" in present else None)
        if metric is None:
            raise TritpackError("cannot tell which number is the quality", path=p,
                                hint=f"name it with --quality-metric (numbers present: {', '.join(sorted(present))})")
    values = {name: float(d[metric]) for name, d in entries if _is_num(d.get(metric))}
    if not values:
        raise TritpackError(f"no model has a number {metric!r}", path=p)
    return metric, values


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- a PNG without matplotlib

# 5x7 glyphs, one byte a column, bit 0 at the top (the classic HD44780/GLCD font); lower case is drawn
# in upper case, unknown characters as '?'.
_FONT = {
    " ": (0, 0, 0, 0, 0), "0": (0x3E, 0x51, 0x49, 0x45, 0x3E), "1": (0x00, 0x42, 0x7F, 0x40, 0x00),
    "2": (0x42, 0x61, 0x51, 0x49, 0x46), "3": (0x21, 0x41, 0x45, 0x4B, 0x31), "4": (0x18, 0x14, 0x12, 0x7F, 0x10),
    "5": (0x27, 0x45, 0x45, 0x45, 0x39), "6": (0x3C, 0x4A, 0x49, 0x49, 0x30), "7": (0x01, 0x71, 0x09, 0x05, 0x03),
    "8": (0x36, 0x49, 0x49, 0x49, 0x36), "9": (0x06, 0x49, 0x49, 0x29, 0x1E), "A": (0x7E, 0x11, 0x11, 0x11, 0x7E),
    "B": (0x7F, 0x49, 0x49, 0x49, 0x36), "C": (0x3E, 0x41, 0x41, 0x41, 0x22), "D": (0x7F, 0x41, 0x41, 0x22, 0x1C),
    "E": (0x7F, 0x49, 0x49, 0x49, 0x41), "F": (0x7F, 0x09, 0x09, 0x09, 0x01), "G": (0x3E, 0x41, 0x49, 0x49, 0x7A),
    "H": (0x7F, 0x08, 0x08, 0x08, 0x7F), "I": (0x00, 0x41, 0x7F, 0x41, 0x00), "J": (0x20, 0x40, 0x41, 0x3F, 0x01),
    "K": (0x7F, 0x08, 0x14, 0x22, 0x41), "L": (0x7F, 0x40, 0x40, 0x40, 0x40), "M": (0x7F, 0x02, 0x0C, 0x02, 0x7F),
    "N": (0x7F, 0x04, 0x08, 0x10, 0x7F), "O": (0x3E, 0x41, 0x41, 0x41, 0x3E), "P": (0x7F, 0x09, 0x09, 0x09, 0x06),
    "Q": (0x3E, 0x41, 0x51, 0x21, 0x5E), "R": (0x7F, 0x09, 0x19, 0x29, 0x46), "S": (0x46, 0x49, 0x49, 0x49, 0x31),
    "T": (0x01, 0x01, 0x7F, 0x01, 0x01), "U": (0x3F, 0x40, 0x40, 0x40, 0x3F), "V": (0x1F, 0x20, 0x40, 0x20, 0x1F),
    "W": (0x3F, 0x40, 0x38, 0x40, 0x3F), "X": (0x63, 0x14, 0x08, 0x14, 0x63), "Y": (0x07, 0x08, 0x70, 0x08, 0x07),
    "Z": (0x61, 0x51, 0x49, 0x45, 0x43), ".": (0x00, 0x60, 0x60, 0x00, 0x00), ",": (0x00, 0x50, 0x30, 0x00, 0x00),
    "-": (0x08, 0x08, 0x08, 0x08, 0x08), "_": (0x40, 0x40, 0x40, 0x40, 0x40), "/": (0x20, 0x10, 0x08, 0x04, 0x02),
    "(": (0x00, 0x1C, 0x22, 0x41, 0x00), ")": (0x00, 0x41, 0x22, 0x1C, 0x00), ":": (0x00, 0x36, 0x36, 0x00, 0x00),
    "%": (0x23, 0x13, 0x08, 0x64, 0x62), "+": (0x08, 0x08, 0x3E, 0x08, 0x08), "=": (0x14, 0x14, 0x14, 0x14, 0x14),
    "*": (0x14, 0x08, 0x3E, 0x08, 0x14), "?": (0x02, 0x01, 0x51, 0x09, 0x06), "<": (0x08, 0x14, 0x22, 0x41, 0x00),
    ">": (0x00, 0x41, 0x22, 0x14, 0x08), "[": (0x00, 0x7F, 0x41, 0x41, 0x00), "]": (0x00, 0x41, 0x41, 0x7F, 0x00),
    "#": (0x14, 0x7F, 0x14, 0x7F, 0x14), "!": (0x00, 0x00, 0x5F, 0x00, 0x00), "'": (0x00, 0x05, 0x03, 0x00, 0x00),
}
_PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class Canvas:
    """An RGB raster with lines, dots and 5x7 text; `png()` encodes it."""

    def __init__(self, width: int, height: int, bg: tuple[int, int, int] = (255, 255, 255)):
        self.w, self.h = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def dot(self, x: int, y: int, c: tuple[int, int, int]) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = 3 * (y * self.w + x)
            self.px[i:i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: tuple[int, int, int], width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            for a in range(width):
                for b in range(width):
                    self.dot(x0 + a - width // 2, y0 + b - width // 2, c)
            if x0 == x1 and y0 == y1:
                break
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def disc(self, cx: int, cy: int, r: int, c: tuple[int, int, int]) -> None:
        for y in range(-r, r + 1):
            for x in range(-r, r + 1):
                if x * x + y * y <= r * r + r:
                    self.dot(cx + x, cy + y, c)

    @staticmethod
    def _glyph_pixels(s: str, scale: int):
        """(along, down) offsets of the set pixels of text s, unrotated: 5x7 glyphs, 6 columns apart."""
        for i, ch in enumerate(s):
            for cx, bits in enumerate(_FONT.get(ch.upper(), _FONT["?"])):
                for cy in range(7):
                    if bits >> cy & 1:
                        for a in range(scale):
                            for b in range(scale):
                                yield (6 * i + cx) * scale + a, cy * scale + b

    def text(self, x: int, y: int, s: str, c: tuple[int, int, int] = (0, 0, 0), scale: int = 2,
             anchor: str = "left") -> None:
        width = self.text_width(s, scale)
        if anchor == "center":
            x -= width // 2
        elif anchor == "right":
            x -= width
        for u, v in self._glyph_pixels(s, scale):
            self.dot(x + u, y + v, c)

    def text_up(self, x: int, y: int, s: str, c: tuple[int, int, int] = (0, 0, 0), scale: int = 2) -> None:
        """Text rotated a quarter turn counter-clockwise, centred on (x, y)."""
        y += self.text_width(s, scale) // 2
        for u, v in self._glyph_pixels(s, scale):
            self.dot(x + v, y - u, c)

    def axes(self, x0: int, px0: int, py0: int, pw: int, ph: int, xticks: list[tuple[int, str]],
             yticks: list[tuple[int, str]], xlabel: str, ylabel: str,
             grid: tuple[int, int, int] = (225, 225, 225), axis: tuple[int, int, int] = (60, 60, 60)) -> None:
        """The frame of a plot whose area starts at (px0, py0), pw x ph: grid lines and labels at the
        tick pixels, the two axes, and their labels (the y label turned, at x0 + 14)."""
        for x, label in xticks:
            self.line(x, py0, x, py0 + ph, grid)
            self.text(x, py0 + ph + 8, label, axis, 2, "center")
        for y, label in yticks:
            self.line(px0, y, px0 + pw, y, grid)
            self.text(px0 - 8, y - 7, label, axis, 2, "right")
        self.line(px0, py0 + ph, px0 + pw, py0 + ph, axis, 2)
        self.line(px0, py0, px0, py0 + ph, axis, 2)
        self.text(px0 + pw // 2, py0 + ph + 34, xlabel, axis, 2, "center")
        self.text_up(x0 + 14, py0 + ph // 2, ylabel, axis, 2)

    @staticmethod
    def text_width(s: str, scale: int = 2) -> int:
        return max(0, 6 * scale * len(s) - scale)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[3 * self.w * y:3 * self.w * (y + 1)]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _axis(lo: float, hi: float, n: int = 6) -> tuple[float, float, list[float]]:
    """A nice range covering [lo, hi] and its ticks (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if hi <= lo:
        lo, hi = (lo - 1.0, hi + 1.0) if lo == 0 else (lo - abs(lo) * 0.1, hi + abs(hi) * 0.1)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return lo, hi, [round(lo + i * step, 10) for i in range(int(round((hi - lo) / step)) + 1)]


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}" if abs(v) >= 0.01 else f"{v:.1e}"


def _panel(cv: Canvas, x0: int, y0: int, w: int, h: int, points: list[tuple[str, float, float]],
           title: str, xlabel: str, ylabel: str, colors: dict[str, tuple[int, int, int]], y_zero: bool = False) -> None:
    """A scatter plot of (label, x, y) in the box (x0, y0, w, h) of the canvas."""
    xs = [p[1] for p in points] or [0.0, 1.0]
    ys = [p[2] for p in points] or [0.0, 1.0]
    xlo, xhi, xt = _axis(0.0, max(xs) * 1.12)
    pad = (max(ys) - min(ys)) * 0.12
    ylo, yhi, yt = _axis(0.0 if y_zero else min(ys) - pad, max(ys) + pad)
    left = 44 + max(cv.text_width(_fmt_tick(t)) for t in yt)
    right, top, bottom = 30, 50, 70
    px0, py0, pw, ph = x0 + left, y0 + top, w - left - right, h - top - bottom
    cv.text(x0 + w // 2, y0 + 14, title, scale=2, anchor="center")

    def X(v: float) -> int:
        return px0 + round((v - xlo) / (xhi - xlo) * pw)

    def Y(v: float) -> int:
        return py0 + ph - round((v - ylo) / (yhi - ylo) * ph)

    cv.axes(x0, px0, py0, pw, ph, [(X(t), _fmt_tick(t)) for t in xt], [(Y(t), _fmt_tick(t)) for t in yt],
            xlabel, ylabel)
    for label, x, y in points:
        c = colors.get(label, (0, 0, 0))
        cv.disc(X(x), Y(y), 6, c)
        lx = X(x) + 10
        anchor = "left"
        if lx + cv.text_width(label) > px0 + pw:
            lx, anchor = X(x) - 10, "right"
        cv.text(lx, Y(y) - 7, label, c, 2, anchor)


def plot_png(report: BenchReport, path: str | Path) -> Path:
    """Size against decode speed (and against quality when the rows have it), as a PNG."""
    rows = report.rows
    colors = {r.label: _PALETTE[i % len(_PALETTE)] for i, r in enumerate(rows)}
    speed_of = "tg_tps" if any(r.tg_tps for r in rows) else "pp_tps"
    speed_name = f"decode tok/s (tg{report.n_gen})" if speed_of == "tg_tps" else f"prompt tok/s (pp{report.n_prompt})"
    speed = [(r.label, r.size / 1e6, getattr(r, speed_of)) for r in rows if getattr(r, speed_of)]
    quality = [(r.label, r.size / 1e6, r.quality) for r in rows if r.quality is not None]
    panel_w, h = 760, 520
    cv = Canvas(panel_w * (2 if quality else 1), h)
    where = "GPU" if report.ngl else "CPU"
    _panel(cv, 0, 0, panel_w, h, speed, f"speed against size ({where})", "size (MB)", speed_name, colors, y_zero=True)
    if quality:
        _panel(cv, panel_w, 0, panel_w, h, quality, "quality against size", "size (MB)",
               report.quality_metric or "quality", colors)
    p = Path(path)
    try:
        p.write_bytes(cv.png())
    except OSError as e:
        raise TritpackError(f"cannot write the plot: {e.strerror or e}", path=p) from None
    return p


@contextmanager
def work_dir(keep: Path | None) -> Iterator[Path]:
    """`keep` (made if needed) or a temporary folder removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="tritpack-bench-") as tmp:
        yield Path(tmp)
