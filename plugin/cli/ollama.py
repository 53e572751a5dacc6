"""`tritpack-gguf ollama list|create`: the local Ollama store, and registering a GGUF with a server."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .. import ollama as _ollama
from ._common import JsonOpt, print_json, progress_bar

app = typer.Typer(help="Ollama: list local models with estimated TP sizes; register a GGUF with a server.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _group() -> None:
    """Ollama: list local models with estimated TP sizes; register a GGUF with a server."""


class OllamaCompat(str, Enum):
    auto = "auto"
    native = "native"
    q4_0 = "q4_0"
    q8_0 = "q8_0"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@app.command("list")
def list_command(
    models_dir: Annotated[Path | None, typer.Option("--models-dir", help="The Ollama store (default $OLLAMA_MODELS or ~/.ollama/models).")] = None,
    estimate: Annotated[bool, typer.Option("--estimate/--no-estimate", help="Estimate the TP4/TP1 sizes (reads each GGUF header).")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Local Ollama models with their GGUF size and the ESTIMATED size after TP4 / TP1 conversion."""
    store = _ollama.ollama_models_dir(models_dir)
    rows = _ollama.list_ollama_models(models_dir, estimate=estimate)
    if json_out:
        print_json({"models_dir": str(store), "estimate_method": _ollama.ESTIMATE_METHOD if estimate else None,
                    "models": rows})
        return
    if not rows:
        typer.echo(f"no Ollama models in {store}", err=True)
        return
    header = ("NAME", "TYPE", "SIZE", "TP4 (est.)", "TP1 (est.)")
    table = [header] + [
        (r["name"], r.get("file_type") or ("?" if r.get("error") is None else f"({r['error']})"),
         _size(r["size"]), _size(r["tp4_bytes"]), _size(r["tp1_bytes"]))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if estimate:
        typer.echo(f"TP4/TP1 sizes are {_ollama.ESTIMATE_METHOD}", err=True)


@app.command("create")
def create_command(
    name: Annotated[str, typer.Argument(help="The new model's name, e.g. llama3.2-tp4:1b (no '/', no '..').")],
    model: Annotated[Path, typer.Argument(help="The GGUF file to register.")],
    host: Annotated[str | None, typer.Option("--host", help="Ollama server URL (default $OLLAMA_HOST or http://127.0.0.1:11434).")] = None,
    compat: Annotated[OllamaCompat, typer.Option("--compat", case_sensitive=False,
                                                 help="auto: a stock export of TritPack files (TP1->Q4_0 exact, TP4->Q8_0); "
                                                      "native: the TritPack file as it is (patched Ollama); q4_0/q8_0: that export.")] = OllamaCompat.auto,
    tmp_dir: Annotated[Path | None, typer.Option("--tmp-dir", help="Where a stock export is written before upload (default: the system temp folder).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Upload a GGUF to an Ollama server and create a model from it (through the official client)."""
    with progress_bar(enabled=not json_out) as update:
        result = _ollama.create_ollama_model(name, model, host=host, compat=compat.value, work_dir=tmp_dir,
                                             progress=update)
    if json_out:
        print_json(result)
        return
    typer.echo(f"note: {result['note']}", err=True)
    up = "uploaded" if result["uploaded"] else "already on the server"
    typer.echo(f"{result['sent_file']} ({_size(result['bytes'])}, {up})", err=True)
    typer.echo(f"created {result['name']} on {result['host']}: run it with `ollama run {result['name']}`")
