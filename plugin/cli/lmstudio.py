"""`tritpack-gguf lmstudio import`: place a GGUF in LM Studio's models folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .. import lmstudio as _lmstudio
from ..errors import TritpackError
from ._common import JsonOpt, print_json, progress_bar

app = typer.Typer(help="LM Studio: place a GGUF in its models folder.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _group() -> None:
    """LM Studio: place a GGUF in its models folder."""


class LMStudioCompat(str, Enum):
    auto = "auto"
    native = "native"


@app.command("import")
def import_command(
    model: Annotated[Path, typer.Argument(help="The GGUF file to import.")],
    publisher: Annotated[str | None, typer.Option("--publisher", help=f"Publisher folder (default {_lmstudio.DEFAULT_PUBLISHER}).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model folder (default: the file name without .gguf).")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="Copy the file (the default).")] = False,
    symlink: Annotated[bool, typer.Option("--symlink", help="Symlink to the file (it must stay where it is).")] = False,
    hardlink: Annotated[bool, typer.Option("--hardlink", help="Hard-link the file (same filesystem only).")] = False,
    move: Annotated[bool, typer.Option("--move", help="Move the file into the models folder.")] = False,
    compat: Annotated[LMStudioCompat, typer.Option("--compat", case_sensitive=False,
                                                   help="auto: a stock export of TritPack files (TP1->Q4_0 exact, TP4->Q8_0) "
                                                        "for LM Studio's stock engine; native: the TritPack file (swapped engine).")] = LMStudioCompat.auto,
    models_dir: Annotated[Path | None, typer.Option("--models-dir", help=f"LM Studio's models folder (default ${_lmstudio.ENV_MODELS_DIR}, else found as LM Studio finds it).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be done; write nothing.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Place MODEL as <models>/<publisher>/<name>/<file>.gguf; never overwrites."""
    modes = [m for m, on in (("copy", copy), ("symlink", symlink), ("hardlink", hardlink), ("move", move)) if on]
    if len(modes) > 1:
        raise TritpackError(f"choose one of --copy, --symlink, --hardlink, --move (got {', '.join('--' + m for m in modes)})")
    mode = modes[0] if modes else "copy"
    with progress_bar(enabled=not (json_out or dry_run)) as update:
        result = _lmstudio.import_to_lmstudio(model, publisher=publisher, name=name, mode=mode, compat=compat.value,
                                              models_dir=models_dir, dry_run=dry_run, progress=update)
    if json_out:
        print_json(result)
        return
    typer.echo(f"note: {result['note']}", err=True)
    typer.echo(f"models folder: {result['models_dir']} (from {result['models_dir_found_by']})", err=True)
    if dry_run:
        typer.echo(f"would {result['action']}: {result['source']} -> {result['destination']}")
        return
    typer.echo(f"{result['action']}: {result['source']} -> {result['destination']}", err=True)
    typer.echo(result["destination"])
