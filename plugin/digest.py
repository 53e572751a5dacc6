"""sha256 of files: in the foreground, or in a background thread while other work runs (hashlib
releases the GIL). A light module: the CLI starts a conversion's source hash before it imports the
converter, so that the hash has the second core while the interpreter loads numpy and gguf."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from .errors import TritpackError


def sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    """The file's sha256 (hex); "" if `stop` is set before the end (hashing in a background thread)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                if stop is not None and stop.is_set():
                    return ""
                h.update(chunk)
    except OSError as e:
        raise TritpackError(f"cannot read: {e.strerror or e}", path=path) from None
    return h.hexdigest()


class SourceHash:
    """A file's sha256, computed in a background thread from construction on. A file written
    meanwhile carries `placeholder` (the digest's length) where the digest goes; fill_in() puts the
    digest there at the end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.placeholder = ("pending-sha256-" + os.urandom(32).hex())[:64]
        self._stop = threading.Event()
        self._result: list = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result.append(sha256_file(self.path, self._stop))
        except TritpackError as e:
            self._result.append(e)

    def digest(self) -> str:
        self._thread.join()
        r = self._result[0]
        if isinstance(r, TritpackError):
            raise r
        return r

    def stop(self) -> None:
        self._stop.set()

    def fill_in(self, path: Path, header_bytes: int) -> None:
        """Write the digest over the placeholder in the first header_bytes of `path` (the writer's
        publish step syncs the file afterwards)."""
        digest = self.digest().encode()
        with open(path, "r+b") as f:
            pos = f.read(header_bytes).find(self.placeholder.encode())
            if pos < 0:
                raise TritpackError("the source hash placeholder is missing from the written header", path=path)
            f.seek(pos)
            f.write(digest)
