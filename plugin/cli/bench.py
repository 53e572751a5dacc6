"""`tritpack-gguf bench`: llama-bench of the patched build over files (or over types made from one source)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import bench as _bench
from ..errors import TritpackError
from ._common import JsonOpt, RpcOpt, TensorSplitOpt, ThreadsOpt, print_json, progress_bar
from ._report import mb


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_bench_report(r: _bench.BenchReport) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

    c = Console(width=None if sys.stdout.isatty() else 200)
    where = f"GPU, --ngl {r.ngl}" if r.ngl else "CPU"
    t = Table(title=f"llama-bench ({where}; {r.threads or 'default'} threads, {r.repetitions} runs each)",
              caption=f"x: ratio to {r.baseline}; ± one standard deviation over the runs")
    energy = any(row.pp_j_per_token is not None or row.tg_j_per_token is not None for row in r.rows)
    cols = ["model", "size", "bpw", f"pp{r.n_prompt} t/s", f"tg{r.n_gen} t/s", "pp x", "tg x", "size x"]
    if energy:
        cols += ["pp J/tok", "tg J/tok"]
    if r.quality_metric:
        cols.append(r.quality_metric)
    for i, col in enumerate(cols):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in r.rows:
        cells = [row.label, mb(row.size), f"{row.bpw:.3f}",
                 "-" if row.pp_tps is None else f"{row.pp_tps:,.1f} ± {row.pp_std:,.1f}",
                 "-" if row.tg_tps is None else f"{row.tg_tps:,.1f} ± {row.tg_std:,.1f}",
                 _f(row.pp_ratio, ".2f") + ("x" if row.pp_ratio is not None else ""),
                 _f(row.tg_ratio, ".2f") + ("x" if row.tg_ratio is not None else ""),
                 _f(row.size_ratio, ".2f") + ("x" if row.size_ratio is not None else "")]
        if energy:
            cells += [_f(row.pp_j_per_token, ".4g"), _f(row.tg_j_per_token, ".4g")]
        if r.quality_metric:
            cells.append(_f(row.quality, ".4g"))
        t.add_row(*cells)
    c.print(t)
    machine = ", ".join(x for x in (r.cpu_info, r.gpu_info) if x)
    c.print(f"backends: {r.backends}" + (f" ({machine})" if machine else ""))
    c.print(f"energy per token: {r.energy}")
    for note in r.notes:
        c.print(f"note: {note}")
    if r.plot:
        c.print(f"plot: {r.plot}")


def bench_command(
    models: Annotated[list[Path], typer.Argument(help="GGUF files to benchmark (with --types: the one source to convert).")],
    types: Annotated[str | None, typer.Option("--types", help="Convert the source into these first, e.g. tp4,tp1,q4_0,q4_k_m (`source` = the file itself).")] = None,
    ngl: Annotated[int, typer.Option("--ngl", help="Layers on the GPU.")] = 0,
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", help="Prompt tokens (pp test; 0 skips it).")] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="Generated tokens (tg test; 0 skips it).")] = 128,
    repetitions: Annotated[int, typer.Option("-r", "--repetitions", help="Runs of each test.")] = 5,
    baseline: Annotated[str | None, typer.Option("--baseline", help="Row the ratios are to (label, file name or path; default: the first).")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a plot of size against speed (and quality): .png or .svg (needs the `plot` extra: matplotlib).")] = None,
    quality: Annotated[Path | None, typer.Option("--quality", help="JSON of per-model quality from the evaluation, for the table and --plot.")] = None,
    quality_metric: Annotated[str | None, typer.Option("--quality-metric", help="Which number of --quality (default: perplexity, kld, top1, ... whichever is there).")] = None,
    energy: Annotated[bool | None, typer.Option("--energy/--no-energy", help="Sample GPU board power with nvidia-smi (default: on with --ngl when nvidia-smi is present).")] = None,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Keep the files --types makes here (default: a temporary folder).")] = None,
    threads: ThreadsOpt = None,
    rpc: RpcOpt = None,
    tensor_split: TensorSplitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Benchmark prompt and decode speed with the patched llama-bench: size, bits per weight,
    tokens a second, ratios to a baseline (and energy per token on NVIDIA GPUs)."""
    q = _bench.read_quality(quality, quality_metric) if quality else None
    if types is not None and len(models) != 1:
        raise TritpackError("--types converts one source file: give exactly one")
    with progress_bar(enabled=not json_out) as update, _bench.work_dir(work_dir) as wd:
        if types is not None:
            files = _bench.prepare_types(models[0], [t for t in types.split(",") if t.strip()], wd,
                                         threads=threads, progress=update)
        else:
            labels = [m.name for m in models]
            files = [_bench.BenchFile(m.name if labels.count(m.name) == 1 else str(m), m) for m in models]
        r = _bench.bench(files, n_prompt=n_prompt, n_gen=n_gen, ngl=ngl, threads=threads, repetitions=repetitions,
                         baseline=baseline, quality=q[1] if q else None, quality_metric=q[0] if q else None,
                         energy=energy, progress=update, rpc=rpc, tensor_split=tensor_split)
    if plot is not None:
        r.plot = str(_bench.plot_report(r, plot))
    if json_out:
        print_json(r.as_dict())
    else:
        print_bench_report(r)
