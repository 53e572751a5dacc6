"""Loading the patched llama.cpp: where it is, whether it is ours, and handing it to llama-cpp-python.

llama-cpp-python is installed bindings-only; it loads libllama from $LLAMA_CPP_LIB_PATH when that is
set before `import llama_cpp`. `activate()` sets it to our build and checks the library is patched.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from functools import lru_cache
from pathlib import Path

from .errors import TritpackError
from .paths import tritpack_home

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


@lru_cache(maxsize=None)
def tritpack_version_of(lib_dir: Path) -> str | None:
    """The tritpack_version() marker of the libggml-base in `lib_dir`, or None for a stock build."""
    lib = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    try:
        fn = lib.tritpack_version
    except AttributeError:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def activate(lib_dir: str | Path | None = None) -> Path:
    """Point llama-cpp-python at the patched library. After it, plain `from llama_cpp import Llama`
    runs TritPack models. Must run before the first `import llama_cpp` in the process."""
    d = Path(lib_dir).resolve() if lib_dir else library_dir()
    if tritpack_version_of(d) is None:
        raise TritpackError("this llama.cpp library is not patched by tritpack-gguf", path=d, hint=BUILD_HINT)
    current = os.environ.get("LLAMA_CPP_LIB_PATH")
    if "llama_cpp" in sys.modules and (current is None or Path(current).resolve() != d):
        raise TritpackError(
            "llama_cpp was imported before tritpack_gguf.activate() and uses another library",
            hint="call tritpack_gguf.activate() (or tritpack_gguf.load()) before `import llama_cpp`")
    os.environ["LLAMA_CPP_LIB_PATH"] = str(d)
    return d


def load(path: str | Path, **kwargs):
    """Open a GGUF (TritPack or stock) with llama_cpp.Llama on the patched library. Every keyword of
    llama_cpp.Llama passes through (n_gpu_layers, n_ctx, ...)."""
    d = activate()
    p = Path(path)
    if not p.is_file():
        raise TritpackError("no such file", path=p)
    check_types_supported(p, d)
    kwargs.setdefault("verbose", False)
    import llama_cpp

    return llama_cpp.Llama(model_path=str(p), **kwargs)


def check_types_supported(path: Path, lib_dir: Path) -> None:
    """Fail with a build hint when the file holds a tensor type the library in `lib_dir` lacks."""
    from .converters.reader import GGUFFile
    from .ggml_lib import load_ggml

    g = load_ggml(lib_dir)
    for t in GGUFFile(path).tensors:
        if not g.knows(int(t.type)):
            raise TritpackError(f"tensor type {t.type.name} is not supported by the library in {lib_dir}",
                                path=path, tensor=t.name, hint=BUILD_HINT)
