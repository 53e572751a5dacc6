"""Running llama.cpp: its programs (llama-server, llama-bench, llama-perplexity, llama-quantize,
ggml-rpc-server) and our Python children (llama_child.py, the embedding child), in one place.

What every such child gets from here, written once:
- the build to run (`tools_dir`: the CUDA build for GPU layers when there is one) and its programs
  (`program`: a clear error when the build lacks one);
- its environment (`program_env`: LD_LIBRARY_PATH pointing at the build, and where asked
  GGML_NO_BACKTRACE, so that an abort is an error at once instead of a gdb attach);
- the model pre-check before llama.cpp sees a file (`check_model_for`: the bounds-checked reader and
  the build's type table);
- how it is started (`spawn`): from an argument list (never a shell), in its own session (Ctrl-C
  reaches only us; we stop it), and on Linux it gets SIGTERM if this process dies;
- waiting until it is ready (`wait_for`), and running it in the foreground with SIGINT/SIGTERM
  forwarded to it (`foreground`);
- the dead-helper rule of split runs (`HelperWatch`, issue 19): a `--rpc` helper that dies is one
  error naming it, and one that goes silent is that error after `STALL_S` without progress, never a
  hang. llama_child (run, verify), `run_program` (bench), `foreground` (serve) apply it.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import TritpackError

BUILD_HINT = "run `tritpack-gguf build`"
STALL_S = 120.0     # split runs: no progress for this long while computing is an error (a helper gone silent)
POLL_S = 0.2


# ----------------------------------------------------------------------------- which build, which program

def tools_dir(ngl: int = 0) -> Path:
    """The build whose programs to run: the CUDA one for --ngl > 0 (when there is one), else the CPU
    one, else whichever exists."""
    from .paths import library_dir

    try:
        return library_dir(prefer_cuda=ngl != 0)
    except TritpackError:
        return library_dir(prefer_cuda=True)


def program(lib_dir: Path, name: str) -> Path:
    """The program `name` of the build in `lib_dir` (a TritpackError when the build has none)."""
    exe = Path(lib_dir) / name
    if not exe.is_file():
        raise TritpackError(f"no {name} in the build", path=lib_dir, hint=BUILD_HINT)
    return exe


def program_env(lib_dir: Path | None = None, *, no_backtrace: bool = False, **extra: str) -> dict:
    """This process's environment for a child of the build in `lib_dir`: its libraries first on
    LD_LIBRARY_PATH, with `no_backtrace` no gdb backtrace on an abort (ggml's abort handler would
    attach gdb: the error then comes at once), and `extra` variables."""
    env = dict(os.environ)
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
    if no_backtrace:
        env["GGML_NO_BACKTRACE"] = "1"
    env.update(extra)
    return env


def check_model_for(path: str | Path, lib_dir: Path) -> Path:
    """What a program child checks before llama.cpp sees a file: it exists, and the build in
    `lib_dir` knows every tensor type (runtime.check_types_supported)."""
    from .runtime import check_types_supported

    p = Path(path)
    if not p.is_file():
        raise TritpackError("no such file", path=p)
    check_types_supported(p, lib_dir)
    return p


# ----------------------------------------------------------------------------- where a child listens

def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none): whether a llama.cpp program
    can hold a model in memory (the Ollama server's runners, convert's default imatrix)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (for --port 0)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """A TritpackError when nothing may listen on host:port."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise TritpackError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                                hint="choose another --port (0 picks a free one)" if e.errno == 98 else None) from None


# ----------------------------------------------------------------------------- starting a child

def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def spawn(argv: Sequence[str], *, env: dict, what: str, path: str | Path | None = None, stdout=None,
          stderr=None, pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """Start `argv` as a child in its own session that gets SIGTERM if we die (Linux); stdin is
    /dev/null. A TritpackError naming `path` (default: the program) when it cannot start."""
    try:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env,
                                pass_fds=tuple(pass_fds), start_new_session=True,
                                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
    except OSError as e:
        raise TritpackError(f"cannot start {what}: {e.strerror or e}", path=path or argv[0]) from None


def send(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the child if it still runs (one that ends meanwhile is no error)."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 15.0) -> int:
    """Send `sig`, wait up to `grace` seconds, then kill. The exit code."""
    send(proc, sig)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float, what: str,
             tail: Callable[[], str] = lambda: "", path: str | Path | None = None, hint: str | None = None,
             interval: float = 0.2, until: str = "it was ready", late: str | None = None) -> None:
    """Until ready() is true; a TritpackError if the child exits first ("<what> exited with code N
    before <until>", with the end of its log) or after `timeout` seconds (`late`, default "<what> was
    not ready after <timeout> s")."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            t = tail()
            raise TritpackError(f"{what} exited with code {proc.returncode} before {until}"
                                + (f":\n{t}" if t else ""), path=path, hint=hint)
        if ready():
            return
        time.sleep(interval)
    raise TritpackError(late or f"{what} was not ready after {timeout:.0f} s", path=path)


# ----------------------------------------------------------------------------- the dead-helper rule

@dataclass
class HelperWatch:
    """Issue 19's dead-helper rule for a child computing with layers on RPC helpers, written once.

    A helper that dies closes its connection: llama.cpp then aborts, the child dies, and `explain()`
    turns that failure into one error naming the helper that no longer accepts connections. A helper
    host that goes silent (power or network lost) closes nothing: its peer waits forever. So whoever
    watches the child calls `progress()` whenever the child shows it is moving (a generated token, a
    line of llama-bench's progress, an answer of llama-server's main loop) and `stalled()` in its wait
    loop: no progress for `stall_s` (default STALL_S) while computing is an error naming the helpers. Without
    endpoints a watch does nothing."""
    endpoints: list[str] = field(default_factory=list)
    stall_s: float | None = None     # None: STALL_S
    last: float = field(default_factory=time.monotonic)

    @property
    def limit(self) -> float:
        return self.stall_s or STALL_S

    def __bool__(self) -> bool:
        return bool(self.endpoints)

    def progress(self) -> None:
        self.last = time.monotonic()

    def stalled(self, doing: str, path: str | Path | None = None) -> TritpackError | None:
        """The error when no progress came for stall_s (None otherwise, and always without helpers)."""
        if not self.endpoints or time.monotonic() - self.last <= self.limit:
            return None
        return self.explain(TritpackError(f"llama.cpp made no progress for {self.limit:g} s while {doing}",
                                          path=path))

    def explain(self, e: TritpackError) -> TritpackError:
        """A failure of the child, reworded when a helper went away (rpc.explain_failure)."""
        if not self.endpoints:
            return e
        from .rpc import explain_failure

        return explain_failure(e, self.endpoints)


# ----------------------------------------------------------------------------- running a program

def run_program(cmd: Sequence[str], lib_dir: Path | None, *, watch: HelperWatch | None = None,
                what: str | None = None, path: str | Path | None = None, timeout: float | None = None,
                no_backtrace: bool = False) -> subprocess.CompletedProcess:
    """Run a program of the build (lib_dir None: a Python child) to its end, its stdout and stderr
    captured (bytes). With a `watch` of helpers, more on stderr is progress, and none for its stall_s
    kills the program: a TritpackError naming the helpers (the caller explains other failures with
    watch.explain). Past `timeout` seconds it is killed and subprocess.TimeoutExpired raised."""
    name = what or Path(cmd[0]).name
    t_end = None if timeout is None else time.monotonic() + timeout
    env = program_env(lib_dir, no_backtrace=no_backtrace or bool(watch))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = spawn(cmd, env=env, what=name, stdout=out, stderr=err)
        seen = 0
        try:
            while True:
                try:
                    proc.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if t_end is not None and time.monotonic() > t_end:
                    raise subprocess.TimeoutExpired(list(cmd), timeout)
                if watch:
                    size = os.fstat(err.fileno()).st_size
                    if size != seen:
                        seen = size
                        watch.progress()
                    elif (e := watch.stalled(f"running {name}", path)) is not None:
                        raise e
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(list(cmd), proc.returncode, out.read(), err.read())


# ----------------------------------------------------------------------------- a child in the foreground

def foreground(start: Callable[[], object], *, on_start: Callable[[object], None] = lambda h: None,
               ready: Callable[[object], bool] | None = None, on_ready: Callable[[object], None] = lambda h: None,
               grace: float = 15.0, alive: Callable[[object], bool] | None = None,
               watch: HelperWatch | None = None, doing: str = "serving",
               cleanup: Callable[[object], None] = lambda h: h.stop()) -> tuple[object | None, list[int]]:
    """Run the child that start() returns (a handle with .proc and .send(sig)) until it exits, with
    SIGINT and SIGTERM forwarded to it (a second one too: llama-server then stops at once) and a kill
    `grace` seconds after the first. on_ready(handle) once ready(handle) (None: at once). With a
    `watch`, alive(handle) is asked every few seconds once ready (a quick check that the child's work
    loop answers); answers are progress, and a stall kills the child and raises the watch's error.
    cleanup(handle) runs at the end however it ends (default: handle.stop(), which must leave a
    stopped child alone). Returns (the handle, the signals received); the exit code is handle.proc's."""
    received: list[int] = []
    holder: list = []

    def forward(sig: int, _frame) -> None:
        received.append(sig)
        for h in holder:
            h.send(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    handle = None
    try:
        handle = start()
        holder.append(handle)
        if received:
            handle.send(received[-1])
        on_start(handle)
        is_ready = False
        stop_t0: float | None = None
        next_check = 0.0
        if ready is None:
            is_ready = True
            on_ready(handle)
        while handle.proc.poll() is None:
            now = time.monotonic()
            if received:
                stop_t0 = stop_t0 or now
                if now - stop_t0 > grace:
                    handle.proc.kill()
            elif not is_ready and ready(handle):
                is_ready = True
                if watch:
                    watch.progress()
                on_ready(handle)
                continue
            elif is_ready and watch and alive is not None and now >= next_check:
                next_check = now + 2.0
                if alive(handle):
                    watch.progress()
                elif (e := watch.stalled(doing)) is not None:
                    handle.proc.kill()
                    handle.proc.wait()
                    raise e
            try:
                handle.proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if handle is not None:
            cleanup(handle)
    return handle, received
