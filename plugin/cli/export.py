"""`tritpack-gguf export`: a TritPack GGUF -> a stock type, for runtimes without our kernels."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ._common import JsonOpt, ThreadsOpt, print_json, progress_bar
from ._report import mb


def export_command(
    model: Annotated[Path, typer.Argument(help="TritPack GGUF to export.")],
    to: Annotated[str, typer.Option("--to", help="q4_0 (TP1 exactly), q8_0 or f16.")] = "q8_0",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output file (default: <stem>-<TO>.gguf).")] = None,
    threads: ThreadsOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Rewrite TP1/TP4 tensors into one stock type (TP1 -> Q4_0 is exact)."""
    from ..export import export_gguf

    out = output or model.with_name(f"{model.stem}-{to.upper()}.gguf")
    with progress_bar(enabled=not json_out) as update:
        r = export_gguf(model, out, to, force=force, threads=threads, progress=update)
    if json_out:
        print_json(asdict(r))
        return
    typer.echo(f"wrote {r.output}: {mb(r.size_before)} -> {mb(r.size_after)}")
    kinds: dict[str, int] = {}
    for how in r.converted.values():
        kinds[how] = kinds.get(how, 0) + 1
    for how, n in sorted(kinds.items()):
        typer.echo(f"  {n} tensors {how}")
