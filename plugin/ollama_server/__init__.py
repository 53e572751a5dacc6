"""`tritpack-gguf ollama serve`: an Ollama-compatible HTTP API in front of the patched llama-server.

Ollama's command line and apps are clients of one HTTP API and honour OLLAMA_HOST; this server speaks
that API (api.py), keeps a registry of names -> TritPack GGUF files in Ollama's store layout
(registry.py; `tritpack-gguf ollama create NAME FILE --compat native --host URL` registers there),
and runs one llama-server child per loaded model (runners.py), so that `ollama run` runs the TP1/TP4
file itself. Names it does not hold can go to the user's own Ollama (--upstream).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import TritpackError
from ..programs import is_loopback
from .api import OLLAMA_API_VERSION, ServerConfig, keep_alive_seconds, make_app
from .registry import ApiError, Registry, default_models_dir

DEFAULT_PORT = 11435
SHUTDOWN_GRACE_S = 5.0  # replies in flight get this long to finish when the server is told to stop

__all__ = ["ApiError", "ServerConfig", "serve", "DEFAULT_PORT", "OLLAMA_API_VERSION", "keep_alive_seconds", "check_config",
           "default_models_dir"]


def check_config(cfg: ServerConfig, *, allow_network: bool) -> list[str]:
    """Refuse what cannot work; the warnings to print for what is allowed but risky."""
    warnings = []
    if not 0 <= cfg.port <= 65535:
        raise TritpackError("--port must be between 0 and 65535")
    if not is_loopback(cfg.host):
        if not allow_network:
            raise TritpackError(f"{cfg.host} is not a loopback address: the API has no authentication",
                                hint="pass --allow-network to listen there anyway")
        warnings.append(f"listening on {cfg.host}: anyone who can reach it can run, create and delete models "
                        "(there is no authentication, as in Ollama)")
    if cfg.upstream and not cfg.upstream.startswith(("http://", "https://")):
        raise TritpackError(f"--upstream must be an http(s) URL, not {cfg.upstream!r}",
                            hint="e.g. --upstream http://127.0.0.1:11434")
    for name, v in (("--ctx", cfg.ctx), ("--parallel", cfg.parallel), ("--max-loaded", cfg.max_loaded)):
        if v < 1:
            raise TritpackError(f"{name} must be at least 1")
    return warnings


def serve(cfg: ServerConfig, *, on_ready: Callable[[str, Path], None] = lambda url, d: None) -> int:
    """Serve until SIGINT or SIGTERM; every llama-server child is stopped on the way out."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    registry = Registry(cfg.models_dir or default_models_dir())
    registry.ensure()
    return asyncio.run(_serve(cfg, registry, on_ready))


async def _serve(cfg: ServerConfig, registry: Registry, on_ready: Callable[[str, Path], None]) -> int:
    from aiohttp import web

    with tempfile.TemporaryDirectory(prefix="tritpack-ollama-logs-") as logs:
        app = make_app(cfg, registry, Path(logs))
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_GRACE_S,
                               access_log_format='%a "%r" %s %b %Tfs')
        await runner.setup()
        try:
            site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
            try:
                await site.start()
            except OSError as e:
                raise TritpackError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}",
                                    hint="another server (a stock Ollama?) may use it: choose another --port") from None
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
            on_ready(f"http://{host}:{port}", registry.root)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            # the children first: replies in flight then end at once (with an error line) instead of
            # running on through the shutdown grace
            from .api import RUNNERS

            await app[RUNNERS].stop_all()
        finally:
            await runner.cleanup()
    return 0
