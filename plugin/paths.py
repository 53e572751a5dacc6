"""Where things live: the cache outside the repo, and the source tree the build needs."""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .converters.sources import candidates, find_source_root
from .errors import TritpackError


def tritpack_home() -> Path:
    """$TRITPACK_HOME, default ~/.cache/tritpack-gguf: downloads, unpacked sources, builds."""
    env = os.environ.get("TRITPACK_HOME")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "tritpack-gguf"


def source_root() -> Path:
    """The tritpack-gguf sources (CMakeLists.txt, patches/, ggml_kernels/) that `build` compiles:
    $TRITPACK_SOURCE_DIR, else the checkout this package runs from, else the installed wheel's copy
    (converters/sources.py)."""
    root = find_source_root()
    if root is None:
        raise TritpackError(
            "the tritpack-gguf source tree (CMakeLists.txt, patches/, ggml_kernels/) was not found",
            path=candidates()[0],
            hint="reinstall tritpack-gguf, or set TRITPACK_SOURCE_DIR to a checkout",
        )
    return root


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One holder at a time of the lock file `path` (a cache entry that builds, tests, helpers or two
    evals may want at once); its folder is made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- the built library

BUILD_HINT = "run `tritpack-gguf build` (add --cuda for NVIDIA GPUs)"


def latest_build(kind: str) -> dict | None:
    """The stamp of the newest successful build of `kind` ('cpu' or 'cuda'), if any."""
    try:
        return json.loads((tritpack_home() / f"latest-{kind}.json").read_text())
    except (OSError, ValueError):
        return None


def library_dir(prefer_cuda: bool = True) -> Path:
    """$TRITPACK_LIB_DIR, else the newest CUDA build (when preferred and present), else the CPU one."""
    env = os.environ.get("TRITPACK_LIB_DIR")
    if env:
        d = Path(env).expanduser().resolve()
        if not (d / "libllama.so").is_file():
            raise TritpackError("no libllama.so in TRITPACK_LIB_DIR", path=d, hint=BUILD_HINT)
        return d
    for kind in (["cuda", "cpu"] if prefer_cuda else ["cpu"]):
        stamp = latest_build(kind)
        if stamp and (Path(stamp["lib_dir"]) / "libllama.so").is_file():
            return Path(stamp["lib_dir"])
    raise TritpackError("no patched llama.cpp build found", path=tritpack_home(), hint=BUILD_HINT)
