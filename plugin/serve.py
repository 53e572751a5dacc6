"""`serve`: the patched llama-server (OpenAI-compatible HTTP API) on a model.

The server runs as a child in its own session, started from an argument list (never a shell). It
binds to loopback unless told otherwise. `serve()` forwards SIGINT and SIGTERM to it and waits for it
to stop (SIGKILL after a grace period); on Linux the child also gets SIGTERM if this process dies.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import TritpackError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
STOP_GRACE_S = 15.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on now (for --port 0)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise TritpackError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                                hint="choose another --port (0 picks a free one)" if e.errno == 98 else None) from None


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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


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
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                raise TritpackError(f"llama-server exited with code {self.proc.returncode} before it was ready"
                                    + (f":\n{tail}" if tail else ""), path=self.model,
                                    hint="its log above says why (a port in use, a file it cannot load, ...)")
            if self.ready():
                self.forget_key_file()
                return
            time.sleep(0.2)
        raise TritpackError(f"llama-server was not ready after {timeout:.0f} s", path=self.model)

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> int:
        """Ask the server to stop, wait up to `grace` seconds, then kill it. Its exit code."""
        self.send(sig)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
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
    from .bench import tools_dir
    from .run import DEFAULT_CTX, context_size
    from .runtime import check_types_supported

    path = Path(model)
    if not path.is_file():
        raise TritpackError("no such file", path=path)
    lib_dir = tools_dir(ngl)
    check_types_supported(path, lib_dir)
    exe = lib_dir / "llama-server"
    if not exe.is_file():
        raise TritpackError("no llama-server in the build", path=lib_dir, hint="run `tritpack-gguf build`")
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
        _check_port(host, port)
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
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
    if endpoints:  # a helper that dies aborts llama-server: no gdb backtrace, the error comes at once
        env["GGML_NO_BACKTRACE"] = "1"
    log = Path(log_file) if log_file else None
    out = open(log, "ab") if log else None
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None,
                                env=env, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    except OSError as e:
        if key_file:
            key_file.unlink(missing_ok=True)
        raise TritpackError(f"cannot start llama-server: {e.strerror or e}", path=exe) from None
    finally:
        if out:
            out.close()
    return ServerProcess(proc, host, port, str(path), argv, log, key_file, tuple(endpoints))


def serve(model: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, ngl: int = 0,
          ctx: int | None = None, threads: int | None = None, api_key: str | None = None, alias: str | None = None,
          extra: list[str] | tuple[str, ...] = (), log_file: str | Path | None = None,
          on_ready: Callable[[ServerProcess], None] = lambda s: None,
          on_start: Callable[[ServerProcess], None] = lambda s: None, rpc: str | list[str] | None = None,
          tensor_split: str | list[float] | None = None) -> int:
    """Run llama-server until it exits or SIGINT/SIGTERM arrives (forwarded to it). The exit code:
    0 after a clean stop on a signal, else the server's own."""
    received: list[int] = []
    holder: list[ServerProcess] = []

    def forward(sig: int, _frame) -> None:
        received.append(sig)
        for server in holder:  # a second Ctrl-C is passed on too: llama-server then stops at once
            server.send(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    server: ServerProcess | None = None
    try:
        server = start_server(model, host=host, port=port, ngl=ngl, ctx=ctx, threads=threads, api_key=api_key,
                              alias=alias, extra=extra, log_file=log_file, rpc=rpc, tensor_split=tensor_split)
        holder.append(server)
        if received:
            server.send(received[-1])
        on_start(server)
        ready = False
        stop_t0: float | None = None
        while server.proc.poll() is None:
            if received:
                stop_t0 = stop_t0 or time.monotonic()
                if time.monotonic() - stop_t0 > STOP_GRACE_S:
                    server.proc.kill()
            elif not ready and server.ready():
                ready = True
                server.forget_key_file()
                on_ready(server)
                continue
            try:
                server.proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if server is not None:
            if server.proc.poll() is None:
                server.stop()
            server.forget_key_file()
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
