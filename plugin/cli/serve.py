"""`tritpack-gguf serve`: the patched llama-server (OpenAI-compatible API) on a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import serve as _serve
from ..errors import TritpackError
from ._common import RpcOpt, TensorSplitOpt, ThreadsOpt


def serve_command(
    model: Annotated[Path, typer.Argument(help="GGUF file (TritPack or stock).")],
    extra: Annotated[list[str] | None, typer.Argument(help="More llama-server options, after `--` (e.g. -- --jinja -np 2).", show_default=False)] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default; 0.0.0.0 opens it to the network).")] = _serve.DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", help="Port (0: a free one).")] = _serve.DEFAULT_PORT,
    ngl: Annotated[int, typer.Option("--ngl", help="Layers on the GPU.")] = 0,
    ctx: Annotated[int | None, typer.Option("--ctx", help="Context size (default: 4096, capped at the model's).")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require this key (Authorization: Bearer KEY).", envvar="TRITPACK_API_KEY")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="Model name the API reports (default: the file's stem).")] = None,
    threads: ThreadsOpt = None,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="No chat page at / (the API only).")] = False,
    rpc: RpcOpt = None,
    tensor_split: TensorSplitOpt = None,
) -> None:
    """Serve a model over HTTP with llama-server's OpenAI-compatible API; Ctrl-C (or SIGTERM) stops it."""
    if port < 0 or port > 65535:
        raise TritpackError("--port must be between 0 and 65535")
    if not _serve.is_loopback(host):
        typer.echo(f"warning: listening on {host}: the API is reachable from the network"
                   + ("" if api_key else " and anyone can use it (set --api-key)"), err=True)
    if ngl:
        from ..run import gpu_note

        note = gpu_note(ngl)
        if note:
            typer.echo(f"note: {note}", err=True)

    def started(s: _serve.ServerProcess) -> None:
        typer.echo(f"starting llama-server (pid {s.pid}) on {s.url} ...", err=True)

    def ready(s: _serve.ServerProcess) -> None:
        typer.echo(f"serving {model.name} at {s.url} (OpenAI API: {s.url}/v1, model name "
                   f"{alias or model.stem!r}); Ctrl-C stops it", err=True)
        if not no_ui:
            line = _page_line(s)
            if line:
                typer.echo(line, err=True)

    code = _serve.serve(model, host=host, port=port, ngl=ngl, ctx=ctx, threads=threads, api_key=api_key,
                        alias=alias, extra=(["--no-ui"] if no_ui else []) + list(extra or []),
                        on_start=started, on_ready=ready, rpc=rpc, tensor_split=tensor_split)
    typer.echo("llama-server stopped", err=True)
    if code:
        raise typer.Exit(code)


def _page_line(s: _serve.ServerProcess) -> str | None:
    """The address of the chat page; or, where the build has none, how to get it (nothing when the page
    is built in but llama-server was told not to serve it, e.g. `-- --no-ui`)."""
    from .. import build as _build

    if _serve.chat_page(s.url):
        return f"chat page: open {s.url}/ in a browser"
    stamp = _build.read_stamp(Path(s.argv[0]).parent.parent) or {}
    if stamp.get("ui"):
        return None
    return f"no chat page in this build of llama-server: {_build.UI_HOW}"
