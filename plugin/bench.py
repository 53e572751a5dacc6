"""`bench`: llama-bench of the patched build over GGUF files, in one table with ratios to a baseline.

Files are given, or made from one source (`types`): TP1/TP4/mixed through tritpack_gguf.convert,
stock types (q4_0, q4_k_m, iq4_xs, ...) through the patched llama-quantize. On NVIDIA GPUs
(--ngl > 0 and nvidia-smi present) the board power is sampled during each test and turned into
joules per token. `plot_report` draws size against speed (and against quality) through plugin/plot.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import TritpackError
from .programs import HelperWatch, program, run_program, tools_dir  # noqa: F401  (bench.tools_dir: callers)

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
    exe = program(lib_dir, "llama-quantize")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    cmd = [str(exe), "--allow-requantize", str(src), str(tmp), type_.upper(), str(threads or os.cpu_count() or 1)]
    r = run_program(cmd, lib_dir)
    if r.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join((r.stderr or r.stdout).decode("utf-8", "replace").strip().splitlines()[-5:])
        raise TritpackError(f"llama-quantize could not make {type_.upper()}: {tail}", path=src,
                            hint="stock type names are llama-quantize's (q4_0, q4_k_m, iq4_xs, q8_0, ...)")
    os.replace(tmp, dst)


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
                    threads: int | None, repetitions: int, extra: list[str] | None = None,
                    watch: HelperWatch | None = None) -> list[dict]:
    """llama-bench -o json over `files`; its records (one per file and test). `watch`: the RPC
    helpers of a split run (programs.HelperWatch): llama-bench then reports its progress (--progress),
    and a helper that dies or goes silent is an error naming it."""
    exe = program(lib_dir, "llama-bench")
    cmd = [str(exe)]
    for f in files:
        cmd += ["-m", str(f)]
    cmd += ["-p", str(n_prompt), "-n", str(n_gen), "-ngl", str(ngl), "-r", str(repetitions), "-o", "json"]
    if threads:
        cmd += ["-t", str(threads)]
    cmd += list(extra or [])
    if watch:
        cmd.append("--progress")
    r = run_program(cmd, lib_dir, watch=watch)
    stdout, stderr = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
    if r.returncode != 0:
        tail = "\n".join(ln for ln in stderr.strip().splitlines() if not ln.startswith("llama-bench: benchmark"))
        tail = "\n".join(tail.splitlines()[-8:])
        e = TritpackError(f"llama-bench failed (exit {r.returncode}): {tail}",
                          hint="`tritpack-gguf verify` checks that a file loads and runs")
        raise watch.explain(e) if watch else e
    try:
        return json.loads(stdout)
    except ValueError:
        raise TritpackError(f"llama-bench printed no JSON: {stdout[-300:]!r}") from None


def bench(files: list[BenchFile], *, n_prompt: int = 512, n_gen: int = 128, ngl: int = 0,
          threads: int | None = None, repetitions: int = 5, baseline: str | None = None,
          quality: dict[str, float] | None = None, quality_metric: str | None = None,
          energy: bool | None = None, progress: Progress = _quiet, rpc: str | list[str] | None = None,
          tensor_split: str | list[float] | None = None, rpc_stall_s: float | None = None) -> BenchReport:
    """Benchmark `files` with the patched llama-bench. `energy`: sample GPU board power (default: when
    ngl > 0 and nvidia-smi is on PATH); each file's prompt and decode tests then run separately.
    `rpc`: HOST:PORT of `tritpack-gguf rpc-server` helpers to split each model with (checked first);
    a helper that dies is an error naming it, and so is no progress of llama-bench for `rpc_stall_s`
    (default programs.STALL_S: one repetition of a test must take less)."""
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
        common = dict(ngl=ngl, threads=threads, repetitions=repetitions, watch=HelperWatch(endpoints, rpc_stall_s))
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


# ----------------------------------------------------------------------------- plot

def plot_report(report: BenchReport, path: str | Path) -> Path:
    """Size against decode speed (and against quality when the rows have it), as PNG or SVG."""
    from .plot import Panel, Point, scatter

    rows = report.rows
    speed_of = "tg_tps" if any(r.tg_tps for r in rows) else "pp_tps"
    speed_name = f"decode tok/s (tg{report.n_gen})" if speed_of == "tg_tps" else f"prompt tok/s (pp{report.n_prompt})"

    def ours(r: BenchRow) -> bool:
        return any(t in r.model_type.upper() for t in ("TP1", "TP4"))

    where = "GPU" if report.ngl else "CPU"
    panels = [Panel(f"speed against size ({where})", "size (MB)", speed_name,
                    [Point(r.label, r.size / 1e6, getattr(r, speed_of), ours(r)) for r in rows if getattr(r, speed_of)],
                    y_from_zero=True)]
    quality = [Point(r.label, r.size / 1e6, r.quality, ours(r)) for r in rows if r.quality is not None]
    if quality:
        panels.append(Panel("quality against size", "size (MB)", report.quality_metric or "quality", quality))
    return scatter(panels, path)


@contextmanager
def work_dir(keep: Path | None) -> Iterator[Path]:
    """`keep` (made if needed) or a temporary folder removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="tritpack-bench-") as tmp:
        yield Path(tmp)
