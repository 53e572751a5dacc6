"""`tritpack-gguf rpc-server`: the patched ggml-rpc-server, a helper that holds layers of a split model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import rpc as _rpc
from ..errors import TritpackError
from ._common import ThreadsOpt


def rpc_server_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default; another one needs --allow-network).")] = _rpc.DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", help="Port (0: a free one).")] = _rpc.DEFAULT_PORT,
    device: Annotated[str | None, typer.Option("--device", help="Backend device: CPU, or CUDA0 with a `build --cuda` library (default: the GPU when there is one, else the CPU).")] = None,
    threads: ThreadsOpt = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Keep received tensors in DIR/rpc, so a client sending the same model again sends hashes (tensors over 10 MB).")] = None,
    allow_network: Annotated[bool, typer.Option("--allow-network", help="Allow a --host other than loopback (RPC has no authentication or encryption: trusted networks only).")] = False,
) -> None:
    """Serve this machine's CPU or GPU to `--rpc` clients (run, verify, serve, bench, load()), which put
    layers of a model here; Ctrl-C (or SIGTERM) stops it. See docs/distributed.md."""
    if port < 0 or port > 65535:
        raise TritpackError("--port must be between 0 and 65535")
    if not _rpc_is_loopback(host):
        if not allow_network:
            raise TritpackError(f"--host {host} would expose the RPC server beyond this machine",
                                hint="ggml's RPC has no authentication or encryption; add --allow-network to do it "
                                     "on a trusted network")
        typer.echo(_rpc.NO_AUTH_WARNING.format(endpoint=f"{host}:{port}"), err=True)

    def ready(s: _rpc.RpcServer) -> None:
        typer.echo(f"rpc-server (pid {s.pid}) listening on {s.endpoint}: clients use --rpc "
                   f"{'THIS_HOST' if host in ('0.0.0.0', '::') else host}:{s.port}; Ctrl-C stops it", err=True)

    _rpc.serve_rpc(host=host, port=port, device=device, threads=threads, cache_dir=cache,
                   allow_network=allow_network, on_ready=ready)
    typer.echo("rpc-server stopped", err=True)


def _rpc_is_loopback(host: str) -> bool:
    from ..programs import is_loopback

    return is_loopback(host)
