"""`tritpack-gguf inspect` and `tritpack-gguf estimate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._common import JsonOpt, print_json, resolve_model_arg
from ._report import mb


def inspect_command(
    model: Annotated[Path, typer.Argument(help="GGUF file.")],
    against: Annotated[Path | None, typer.Option("--against", help="The original GGUF: per-tensor cos, SNR and RMSE.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show tensors, types and sizes (and quality against the original)."""
    from ..describe import inspect_file

    doc = inspect_file(model, against)
    if json_out:
        print_json(doc)
        return
    c = Console()
    c.print(escape(f"{doc['path']}: {mb(doc['size'])}, {doc['n_tensors']} tensors, {doc['n_weights']:,} weights, "
                   f"{doc['bpw']:.3f} bits per weight, architecture {doc['architecture']}"))
    c.print("types: " + ", ".join(f"{k} x{v}" for k, v in sorted(doc["type_counts"].items())))
    for k, v in doc["tritpack"].items():
        c.print(escape(f"{k}: {v}"))
    table = Table()
    cols = ["tensor", "shape", "type", "size", "bpw", "alpha"] + (["cos", "SNR dB", "RMSE"] if against else [])
    for col in cols:
        table.add_column(col)
    for t in doc["tensors"]:
        row = [escape(t["name"]), "x".join(map(str, t["shape"])), t["type"], mb(t["bytes"]), f"{t['bpw']:.3f}",
               f"{t['alpha']:.3f}" if "alpha" in t else "-"]
        if against:
            row += [f"{t['cos']:.5f}", "exact" if t["snr_db"] is None else f"{t['snr_db']:.1f}", f"{t['rmse']:.3g}"]
        table.add_row(*row)
    c.print(table)


def estimate_command(
    model: Annotated[str, typer.Argument(help="GGUF file (or an Ollama model name).")],
    type_: Annotated[list[str] | None, typer.Option("--type", help="Types to estimate (repeatable; default: ours and the stock ones).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The sizes a conversion would give, for TP4, TP1 and the stock types, without converting."""
    from ..converters.estimate import estimate_file

    path, _ = resolve_model_arg(model)
    doc = estimate_file(path, type_)
    if json_out:
        print_json(doc)
        return
    typer.echo(f"{model}: {mb(doc['size'])} now, {doc['n_weights']:,} weights (estimates from shapes)")
    for name, e in doc["estimates"].items():
        typer.echo(f"  {name:7s} {mb(e['bytes']):>12s}  {e['bpw']:.3f} bpw")
