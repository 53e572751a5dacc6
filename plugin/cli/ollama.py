"""`tritpack-gguf ollama list|create`: the local Ollama store, and registering a GGUF with a server."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .. import ollama as _ollama
from .. import ollama_store as _store
from ._common import JsonOpt, RpcOpt, TensorSplitOpt, ThreadsOpt, print_json, progress_bar

app = typer.Typer(help="Ollama: list local models with estimated TP sizes; register a GGUF with a server; serve the Ollama API.",
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
    store = _store.ollama_models_dir(models_dir)
    rows = _store.list_ollama_models(models_dir, estimate=estimate)
    if json_out:
        print_json({"models_dir": str(store), "estimate_method": _store.ESTIMATE_METHOD if estimate else None,
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
        typer.echo(f"TP4/TP1 sizes are {_store.ESTIMATE_METHOD}", err=True)


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


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (stock Ollama uses 11434; 0 picks a free one).")] = 11435,
    upstream: Annotated[str | None, typer.Option("--upstream", help="A stock Ollama (e.g. http://127.0.0.1:11434) that gets the names this server does not hold.")] = None,
    models_dir: Annotated[Path | None, typer.Option("--models-dir", help="This server's registry (default $TRITPACK_OLLAMA_MODELS or ~/.cache/tritpack-gguf/ollama-models; never Ollama's own store).")] = None,
    allow_network: Annotated[bool, typer.Option("--allow-network", help="Allow a non-loopback --host (there is no authentication).")] = False,
    ctx: Annotated[int, typer.Option("--ctx", envvar="OLLAMA_CONTEXT_LENGTH", help="Default num_ctx (capped at each model's own).")] = 4096,
    parallel: Annotated[int, typer.Option("--parallel", envvar="OLLAMA_NUM_PARALLEL", help="Requests one model serves at once (llama-server slots).")] = 1,
    keep_alive: Annotated[str, typer.Option("--keep-alive", envvar="OLLAMA_KEEP_ALIVE", help="Default keep_alive: how long an idle model stays loaded (-1: forever).")] = "5m",
    max_loaded: Annotated[int, typer.Option("--max-loaded", envvar="OLLAMA_MAX_LOADED_MODELS", help="Models loaded at once (the least recently used idle one is unloaded).")] = 3,
    ngl: Annotated[int, typer.Option("--ngl", help="Layers on the GPU (default num_gpu).")] = 0,
    threads: ThreadsOpt = None,
    rpc: RpcOpt = None,
    tensor_split: TensorSplitOpt = None,
) -> None:
    """Ollama's API in front of the patched llama-server: `OLLAMA_HOST=127.0.0.1:11435 ollama run NAME` runs TP1/TP4 files."""
    from .. import ollama_server as _srv
    from ..errors import TritpackError

    try:
        ka = _srv.keep_alive_seconds(keep_alive)
    except _srv.ApiError:
        raise TritpackError(f"invalid --keep-alive {keep_alive!r}", hint="e.g. 5m, 30s, 1h or -1") from None
    cfg = _srv.ServerConfig(host=host, port=port, upstream=upstream, models_dir=models_dir, ctx=ctx, parallel=parallel,
                            threads=threads, ngl=ngl, keep_alive=ka, max_loaded=max_loaded,
                            rpc=rpc, tensor_split=tensor_split)
    for w in _srv.check_config(cfg, allow_network=allow_network):
        typer.echo(f"warning: {w}", err=True)

    def ready(url: str, registry: Path) -> None:
        typer.echo(f"Ollama API at {url} (registry {registry}); use it with OLLAMA_HOST={url.removeprefix('http://')}"
                   + (f"; other names go to {upstream}" if upstream else "") + "; Ctrl-C stops it", err=True)

    _srv.serve(cfg, on_ready=ready)
    typer.echo("stopped", err=True)
