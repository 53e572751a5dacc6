"""llama.cpp work (load, tokenize, decode) in a child process, so that its crash is an error, not ours.

llama.cpp aborts on some hostile models (a SentencePiece vocabulary without byte tokens throws
std::out_of_range out of llama_tokenize, through the C API: SIGABRT), and a segfault in a kernel
takes its process down. `run` and `verify` therefore call llama.cpp in a child Python process, started
as every llama.cpp child is (programs.spawn: an argument list, never a shell, its own session so
that Ctrl-C reaches only us and we stop it, SIGTERM on Linux if this process dies). Its
stdout and stderr go to an unlinked temporary file; when it dies, the last lines of that file go
into a TritpackError naming the model and what it was doing:

    <model>: llama.cpp aborted while tokenizing the prompt (signal SIGABRT): terminate called after
    throwing an instance of 'std::out_of_range' | what():  unordered_map::at

Requests and answers are pickled over a socket pair (multiprocessing.connection). A request names a
function `tritpack_gguf.<module>:<name>`, called in the child with an `emit` keyword: emit(("stage",
text)) says what it does now (for the crash message), emit(("text", piece)) streams generated text.
`runtime.load()` and `activate()`, the library API, stay in-process.

A split run (`--rpc`) passes a programs.HelperWatch: every event is progress, and none for its
stall_s while the child is in a stage that reports each token (generating, decoding) is the
dead-helper error; a child that dies is explained by it (the helper that went away, named).
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from .errors import TritpackError
from .programs import HelperWatch, program_env, spawn

POLL_S = 0.1
WATCHED_STAGES = ("generating", "decoding")   # stages whose every token is an event (HelperWatch applies)
STOP_GRACE_S = 5.0
TAIL_BYTES = 8192
TAIL_LINES = 2

Emit = Callable[[tuple], None]


def _no_text(_piece: str) -> None:
    pass


def log_tail(fd: int, lines: int = TAIL_LINES, nbytes: int = TAIL_BYTES, grep: tuple[str, ...] = ()) -> str:
    """The last `lines` non-empty lines (with `grep`: of those holding one of its words) of the last
    `nbytes` of the file open on `fd`, joined with ' | ', control characters escaped. Read with
    pread: the file offset it shares with its writer is left alone."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, nbytes), max(0, size - nbytes))
    except OSError:
        return ""
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line.isprintable():
            line = line.encode("unicode_escape").decode("ascii")
        if line and (not grep or any(w in line.lower() for w in grep)):
            out.append(line if len(line) <= 300 else line[:297] + "...")
    return " | ".join(out[-lines:])


class LlamaChild:
    """A child Python process that runs llama.cpp calls for this one. Use as a context manager;
    `call()` runs one function there (several calls reuse the process and what it has loaded)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._log = None

    # --- lifetime
    def _start(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        self._log = tempfile.TemporaryFile(prefix="tritpack-llama-", suffix=".log")
        argv = [sys.executable, "-m", __name__, str(child_sock.fileno())]
        try:
            self._proc = spawn(argv, env=program_env(no_backtrace=True), what="a child process for llama.cpp",
                               path=sys.executable, stdout=self._log, stderr=self._log,
                               pass_fds=(child_sock.fileno(),))
        except TritpackError:
            parent_sock.close()
            self._log.close()
            raise
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())

    def close(self, kill: bool = False) -> None:
        """Ask the child to exit (kill it at once with `kill`, or after a grace period)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if not kill and proc.poll() is None:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LlamaChild":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(kill=exc_type is not None and not issubclass(exc_type, TritpackError))

    def __del__(self) -> None:
        if self._proc is not None:
            try:
                self.close(kill=True)
            except Exception:
                pass

    # --- calls
    def call(self, target: str, *args: Any, path: str | Path, stage: str = "starting",
             on_text: Callable[[str], None] = _no_text, watch: HelperWatch | None = None, **kwargs: Any) -> Any:
        """Run `target` ('tritpack_gguf.<module>:<function>') in the child with args, kwargs and
        `emit`; its return value, or its TritpackError, comes back here. If the child dies, a
        TritpackError naming `path` and the stage it was in. KeyboardInterrupt kills the child.
        `watch`: the RPC helpers of a split run (programs.HelperWatch): while the stage reports each
        token, no event for its stall_s kills the child, and every failure names a helper gone."""
        if self._proc is None:
            self._start()
        watch = watch or HelperWatch()
        try:
            result, error = self._call(target, args, kwargs, Path(path), stage, on_text, watch)
        except TritpackError as e:  # the child died or stalled: its state is unknown
            self.close(kill=True)
            raise watch.explain(e) from None
        except BaseException:  # Ctrl-C, or on_text failed
            self.close(kill=True)
            raise
        if error is not None:  # raised by the function in the child, which is ready for the next call
            raise watch.explain(error)
        return result

    def _call(self, target: str, args: tuple, kwargs: dict, path: Path, stage: str,
              on_text: Callable[[str], None], watch: HelperWatch) -> tuple[Any, TritpackError | None]:
        conn, proc = self._conn, self._proc
        try:
            conn.send((target, args, kwargs))
        except OSError:
            raise self._died(path, stage) from None
        watch.progress()
        while True:
            if stage.startswith(WATCHED_STAGES) and (e := watch.stalled(stage, path)) is not None:
                raise e
            if conn.poll(POLL_S):
                watch.progress()
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    raise self._died(path, stage) from None
                if kind == "stage":
                    stage = payload
                elif kind == "text":
                    on_text(payload)
                elif kind == "result":
                    return payload, None
                elif kind == "error":
                    message, epath, tensor, hint, code = payload
                    return None, TritpackError(message, path=epath, tensor=tensor, hint=hint, exit_code=code)
                # ("progress", ...): a token computed, nothing to show
            elif proc.poll() is not None:
                raise self._died(path, stage)

    def _died(self, path: Path, stage: str) -> TritpackError:
        proc = self._proc
        try:
            code = proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:  # the socket closed, the process lives on: stop it
            proc.kill()
            code = proc.wait()
        tail = log_tail(self._log.fileno()) if self._log is not None else ""
        self.close(kill=True)
        if code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = str(-code)
            how = {"SIGABRT": "aborted", "SIGKILL": "was killed", "SIGTERM": "was stopped"}.get(sig, "crashed")
            what = f"llama.cpp {how} while {stage} (signal {sig}"
            what += ", perhaps out of memory)" if sig == "SIGKILL" else ")"
        else:
            what = f"the llama.cpp process exited with code {code} while {stage}"
        return TritpackError(what + (f": {tail}" if tail else ""), path=path)


# ----------------------------------------------------------------------------- the child's side

def _serve(conn: Connection) -> int:
    def emit(event: tuple) -> None:
        conn.send(event)

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return 0
        if request is None:
            return 0
        target, args, kwargs = request
        try:
            module, name = target.split(":")
            if not module.startswith("tritpack_gguf."):
                raise TritpackError(f"not a tritpack_gguf function: {target}")
            fn = getattr(importlib.import_module(module), name)
            result = fn(*args, emit=emit, **kwargs)
        except TritpackError as e:
            conn.send(("error", (e.message, e.path, e.tensor, e.hint, e.exit_code)))
        except Exception as e:  # noqa: BLE001  (a bug: its traceback goes to the log, its name back)
            traceback.print_exc()
            sys.stderr.flush()
            conn.send(("error", (f"{type(e).__name__} in the llama.cpp process: {e}", None, None, None, 1)))
        else:
            conn.send(("result", result))


def own_log_tail(lines: int = TAIL_LINES, grep: tuple[str, ...] = ()) -> str:
    """In the child: the last lines of its own stderr (llama.cpp's log), e.g. why a load failed."""
    sys.stderr.flush()
    return log_tail(2, lines, grep=grep)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us when it must
    return _serve(Connection(int(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
