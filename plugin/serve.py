"""`serve`: the patched llama-server (OpenAI-compatible HTTP API) on a model.

The server is a child started by programs.py (its own session, an argument list, never a shell;
SIGTERM if this process dies). It binds to loopback unless told otherwise. `serve()` runs it in the
foreground (programs.foreground: SIGINT and SIGTERM forwarded, SIGKILL after a grace period) and, with
`--rpc` helpers, applies the dead-helper rule: a helper killed mid-request aborts llama-server and
serve exits with an error naming it; one gone silent is found by asking llama-server whether it
moves (`making_progress`: /slots answered, a computing slot's counters moving) and is the same error
after programs.STALL_S.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import TritpackError
from .programs import check_port, free_port, is_loopback  # noqa: F401  (serve.is_loopback, free_port: callers)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
STOP_GRACE_S = 15.0


def server_argv(lib_dir: Path, model: Path, *, host: str, port: int, ngl: int = 0, ctx: int | None = None,
                threads: int | None = None, api_key_file: Path | None = None, alias: str | None = None,
                extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The llama-server argument list (an API key goes in a file: argv is visible to every local user)."""
    argv = [str(lib_dir / "llama-server"), "-m", str(model), "--host", host, "--port", str(port),
            "-ngl", str(ngl), "-a", alias or model.stem]
    if ctx:
        argv += ["-c", str(ctx)]
    if threads:
        argv += ["-t", str(threads)]
    if api_key_file:
        argv += ["--api-key-file", str(api_key_file)]
    return argv + list(extra)


def _slot_counters(slot: dict) -> tuple:
    """What moves while a slot of llama-server's /slots computes."""
    nt = slot.get("next_token")
    nt = nt if isinstance(nt, list) else [nt]
    return (slot.get("id"), slot.get("id_task"), slot.get("n_prompt_tokens_processed"),
            tuple(t.get("n_decoded") for t in nt if isinstance(t, dict)))


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    host: str
    port: int
    model: str
    argv: list[str]
    log_file: Path | None = None
    key_file: Path | None = None   # removed once the server has read it, or when it stops
    rpc: tuple[str, ...] = ()      # RPC helpers holding layers (--rpc), named when the server dies
    api_key: str | None = None     # for the main-loop check of a split server (/slots needs it)
    _counters: tuple = field(default=(), init=False, repr=False)   # making_progress's last look

    def forget_key_file(self) -> None:
        if self.key_file:
            self.key_file.unlink(missing_ok=True)
            self.key_file = None

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_file:
            return ""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until /health answers 200 (the model is loaded); a TritpackError if the server exits first."""
        from .programs import wait_for

        wait_for(self.proc, self.ready, timeout=timeout, what="llama-server", tail=self.log_tail, path=self.model,
                 hint="its log above says why (a port in use, a file it cannot load, ...)")
        self.forget_key_file()

    def making_progress(self, timeout: float = 5.0) -> bool:
        """Whether llama-server shows it is moving (a split server's helper watch asks this every few
        seconds): its main loop answers /slots (a task on its queue), and either no slot is computing
        or a computing slot's counters (prompt tokens processed, tokens decoded) moved since the last
        call. A server waiting on a helper gone silent fails it either way: the main loop does not
        answer, or it answers while the slot's counters stay put. An answer without slot data counts
        (a server started with --no-slots)."""
        req = urllib.request.Request(self.url + "/slots",
                                     headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False
        try:
            busy = tuple(_slot_counters(s) for s in json.loads(body) if isinstance(s, dict) and s.get("is_processing"))
        except (ValueError, TypeError, AttributeError):
            return True
        moved = not busy or busy != self._counters
        self._counters = busy
        return moved

    def send(self, sig: int) -> None:
        from .programs import send

        send(self.proc, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> int:
        """Ask the server to stop, wait up to `grace` seconds, then kill it. Its exit code."""
        from .programs import stop

        try:
            return stop(self.proc, sig, grace)
        finally:
            self.forget_key_file()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.stop()


def chat_page(url: str, timeout: float = 5.0) -> bool:
    """True when the server at `url` serves llama.cpp's chat page at / (a build without the page, or
    a server started with --no-ui, answers 404 there)."""
    req = urllib.request.Request(url + "/", headers={"Accept-Encoding": "gzip"})  # the page is stored gzipped
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200 and r.headers.get_content_type() == "text/html"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_server(model: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, ngl: int = 0,
                 ctx: int | None = None, threads: int | None = None, api_key: str | None = None,
                 alias: str | None = None, extra: list[str] | tuple[str, ...] = (),
                 log_file: str | Path | None = None, parallel: int | None = None,
                 rpc: str | list[str] | None = None, tensor_split: str | list[float] | None = None) -> ServerProcess:
    """Start llama-server on `model` (port 0: a free port). Its output goes to `log_file`, or to this
    process's stdout/stderr when None. Returns at once; wait_ready() waits for the model to load.
    `parallel`: that many slots (-np), each with the whole context (-c is the context times it).
    `rpc`: HOST:PORT of `tritpack-gguf rpc-server` helpers to split the layers with (each checked
    first, see rpc.py); `tensor_split` as llama.cpp's."""
    from .programs import check_model_for, program, program_env, spawn, tools_dir
    from .run import DEFAULT_CTX, context_size

    lib_dir = tools_dir(ngl)
    path = check_model_for(model, lib_dir)
    exe = program(lib_dir, "llama-server")
    endpoints: list[str] = []
    if rpc or tensor_split:
        from .rpc import check_servers, llama_args, offload_plan, parse_endpoints, parse_tensor_split

        endpoints = parse_endpoints(rpc)
        check_servers(endpoints, lib_dir)
        ngl, split = offload_plan(path, endpoints, ngl, parse_tensor_split(tensor_split))
        extra = list(extra) + (llama_args(endpoints, ngl, split) if endpoints
                               else ["-ts", "/".join(f"{v:g}" for v in split or [])])
    if port == 0:
        port = free_port(host)
    else:
        check_port(host, port)
    key_file = None
    if api_key:
        fd, name = tempfile.mkstemp(prefix="tritpack-serve-", suffix=".key")  # mode 0600
        with os.fdopen(fd, "w") as f:
            f.write(api_key + "\n")
        key_file = Path(name)
    slot_ctx = context_size(path, ctx or DEFAULT_CTX)
    argv = server_argv(lib_dir, path, host=host, port=port, ngl=ngl,
                       ctx=slot_ctx * parallel if parallel else slot_ctx, threads=threads,
                       api_key_file=key_file, alias=alias,
                       extra=(["-np", str(parallel)] if parallel else []) + list(extra))
    # a helper that dies aborts llama-server: no gdb backtrace, the error comes at once
    env = program_env(lib_dir, no_backtrace=bool(endpoints))
    log = Path(log_file) if log_file else None
    out = open(log, "ab") if log else None
    try:
        proc = spawn(argv, env=env, what="llama-server", path=exe, stdout=out,
                     stderr=subprocess.STDOUT if out else None)
    except TritpackError:
        if key_file:
            key_file.unlink(missing_ok=True)
        raise
    finally:
        if out:
            out.close()
    return ServerProcess(proc, host, port, str(path), argv, log, key_file, tuple(endpoints), api_key)


def serve(model: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, ngl: int = 0,
          ctx: int | None = None, threads: int | None = None, api_key: str | None = None, alias: str | None = None,
          extra: list[str] | tuple[str, ...] = (), log_file: str | Path | None = None,
          on_ready: Callable[[ServerProcess], None] = lambda s: None,
          on_start: Callable[[ServerProcess], None] = lambda s: None, rpc: str | list[str] | None = None,
          tensor_split: str | list[float] | None = None, rpc_stall_s: float | None = None) -> int:
    """Run llama-server until it exits or SIGINT/SIGTERM arrives (forwarded to it). The exit code:
    0 after a clean stop on a signal, else the server's own. With `rpc` helpers, one that dies is an
    error naming it: serve stops llama-server and exits (at once when the helper closed its
    connection, after `rpc_stall_s` (default programs.STALL_S) when it went silent)."""
    from .programs import HelperWatch, foreground

    watch = HelperWatch(stall_s=rpc_stall_s)

    def start() -> ServerProcess:
        server = start_server(model, host=host, port=port, ngl=ngl, ctx=ctx, threads=threads, api_key=api_key,
                              alias=alias, extra=extra, log_file=log_file, rpc=rpc, tensor_split=tensor_split)
        watch.endpoints = list(server.rpc)
        return server

    def ready(server: ServerProcess) -> bool:
        if server.ready():
            server.forget_key_file()
            return True
        return False

    def cleanup(server: ServerProcess) -> None:
        if server.proc.poll() is None:
            server.stop()
        server.forget_key_file()

    try:
        server, received = foreground(start, on_start=on_start, ready=ready, on_ready=on_ready, grace=STOP_GRACE_S,
                                      alive=ServerProcess.making_progress, watch=watch,
                                      doing="serving a request", cleanup=cleanup)
    except TritpackError:
        if watch and log_file is None:
            sys.stderr.write("\n")  # llama-server may have been killed in the middle of a log line
            sys.stderr.flush()
        raise
    code = server.proc.returncode
    if received:
        return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM, 130, 143) else code
    if code != 0:
        if server.log_file is None and code < 0:
            # killed by a signal (an abort), perhaps in the middle of a line it was writing to our
            # stderr: the error that follows starts a line of its own
            sys.stderr.write("\n")
            sys.stderr.flush()
        tail = server.log_tail()
        e = TritpackError(f"llama-server exited with code {code}" + (f":\n{tail}" if tail else ""),
                          path=server.model, exit_code=code if 0 < code < 256 else 1)
        if server.rpc:
            from .rpc import explain_failure

            e = explain_failure(e, list(server.rpc))
        raise e
    return 0
