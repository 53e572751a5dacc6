"""Loading the patched llama.cpp: where it is, whether it is ours, and handing it to llama-cpp-python.

llama-cpp-python is installed bindings-only; it loads libllama from $LLAMA_CPP_LIB_PATH when that is
set before `import llama_cpp`. `activate()` sets it to our build and checks the library is patched.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TritpackError
from .paths import BUILD_HINT, library_dir  # noqa: F401  (runtime.library_dir: used by callers)

if TYPE_CHECKING:
    from .converters.header import GGUFHeader


def activate(lib_dir: str | Path | None = None) -> Path:
    """Point llama-cpp-python at the patched library. After it, plain `from llama_cpp import Llama`
    runs TritPack models. Must run before the first `import llama_cpp` in the process."""
    d = Path(lib_dir).resolve() if lib_dir else library_dir()
    from .ggml_lib import tritpack_version_of  # here: the CLI starts without numpy

    if tritpack_version_of(d) is None:
        raise TritpackError("this llama.cpp library is not patched by tritpack-gguf", path=d, hint=BUILD_HINT)
    current = os.environ.get("LLAMA_CPP_LIB_PATH")
    if "llama_cpp" in sys.modules and (current is None or Path(current).resolve() != d):
        raise TritpackError(
            "llama_cpp was imported before tritpack_gguf.activate() and uses another library",
            hint="call tritpack_gguf.activate() (or tritpack_gguf.load()) before `import llama_cpp`")
    os.environ["LLAMA_CPP_LIB_PATH"] = str(d)
    return d


def load(path: str | Path, *, rpc: str | list[str] | None = None, tensor_split: str | list[float] | None = None,
         rpc_check: bool = True, **kwargs):
    """Open a GGUF (TritPack or stock) with llama_cpp.Llama on the patched library. Every keyword of
    llama_cpp.Llama passes through (n_gpu_layers, n_ctx, ...); `verbose` defaults to False.

    A file with a tensor type the library does not know fails before llama.cpp sees it, with a
    TritpackError that says which build to make.

    `rpc`: 'HOST:PORT[,HOST:PORT...]' of `tritpack-gguf rpc-server` helpers; the layers are split
    between this process and them (rpc.offload_plan(): without n_gpu_layers, an equal share each;
    `tensor_split` as llama.cpp's --tensor-split). Each helper is checked first (rpc.check_servers():
    a stock server or another type table is a TritpackError naming it); `rpc_check=False` skips that
    when the caller has just checked. The helpers stay registered as devices of this process (llama.cpp
    has no way to drop one): a later load() with n_gpu_layers but without rpc would use them too."""
    d = activate()
    p = Path(path)
    if not p.is_file():
        raise TritpackError("no such file", path=p)
    check_types_supported(p, d)
    endpoints: list[str] = []
    if rpc:
        from .rpc import check_servers, offload_plan, parse_endpoints, parse_tensor_split

        endpoints = parse_endpoints(rpc)
        if rpc_check:
            check_servers(endpoints, d)
        ngl, split = offload_plan(p, endpoints, kwargs.get("n_gpu_layers"), parse_tensor_split(tensor_split))
        kwargs["n_gpu_layers"] = ngl
        if split:
            kwargs["tensor_split"] = split
    elif tensor_split is not None:
        from .rpc import parse_tensor_split

        kwargs["tensor_split"] = parse_tensor_split(tensor_split)
    if kwargs.get("n_gpu_layers") and not endpoints and not gpu_backends(d):
        warnings.warn(f"n_gpu_layers={kwargs['n_gpu_layers']} but the library in {d} has no GPU backend: "
                      "every layer runs on the CPU (run `tritpack-gguf build --cuda` for NVIDIA GPUs)",
                      stacklevel=2)
    kwargs.setdefault("verbose", False)
    import llama_cpp

    if endpoints:
        from .rpc import attach

        attach(endpoints, d)
    return llama_cpp.Llama(model_path=str(p), **kwargs)


def gpu_backends(lib_dir: Path) -> list[str]:
    """The GPU backends built into `lib_dir` (e.g. ['cuda']); empty for a CPU-only build."""
    return [name for name in ("cuda", "hip", "vulkan", "metal", "sycl")
            if (Path(lib_dir) / f"libggml-{name}.so").is_file()]


UNKNOWN_TYPE_HINT = ("not a type of this llama.cpp: a file of a newer or forked llama.cpp needs that build; "
                     "TP1 (80) and TP4 (81) files need `tritpack-gguf build`")


def read_header(path: str | Path) -> GGUFHeader:
    """The header of `path` (converters/header.py: the one header view, checked by the bounds-checked
    reader): a missing, truncated or malformed file, or a tensor type nobody knows, is a TritpackError
    naming the file (and tensor), the last with a hint saying which build reads it."""
    from .converters.header import read_header as read
    from .converters.reader import UnknownTensorType

    try:
        return read(path)
    except UnknownTensorType as e:
        e.hint = e.hint or UNKNOWN_TYPE_HINT
        raise


def gguf_tensor_types(path: str | Path) -> list[tuple[str, int]]:
    """(name, ggml type id) of every tensor, from the header alone (a type id that neither gguf nor
    TritPack knows is already a TritpackError naming the file and tensor)."""
    return [(t.name, t.type) for t in read_header(path).tensors]


def check_model(path: str | Path) -> GGUFHeader:
    """What run, verify and serve check before llama.cpp sees a file: the bounds-checked reader's
    structural checks and that the patched library knows every tensor type. Each failure is one
    TritpackError naming the file (and the tensor). The header, for the caller's use."""
    h = read_header(path)
    check_types_supported(h.path, library_dir(), header=h)
    return h


def check_types_supported(path: Path, lib_dir: Path, ggml=None, header: GGUFHeader | None = None) -> None:
    """Fail with a build hint when the file holds a tensor type the library in `lib_dir` lacks."""
    from .converters.gguf_types import BY_NAME
    from .converters.reader import _show
    from .ggml_lib import load_ggml

    g = ggml or load_ggml(lib_dir)
    ours = {t.id: t.name for t in BY_NAME.values()}
    types = [(t.name, t.type) for t in header.tensors] if header is not None else gguf_tensor_types(path)
    for name, ttype in types:
        if g.knows(ttype):
            continue
        if ttype in ours:
            raise TritpackError(f"tensor type {ours[ttype]} ({ttype}) is not supported by the llama.cpp library "
                                f"in {lib_dir}", path=path, tensor=_show(name),
                                hint=f"this is a TritPack file: {BUILD_HINT}, then load it through "
                                     "tritpack_gguf.load() or after tritpack_gguf.activate()")
        raise TritpackError(f"tensor type {ttype} is unknown to the llama.cpp library in {lib_dir} "
                            f"(it knows the stock types up to {_stock_max(g)} and TP1/TP4)", path=path, tensor=_show(name),
                            hint="this file needs another llama.cpp build (a newer or forked one); "
                                 f"for TP1/TP4 files {BUILD_HINT}")


def _stock_max(g) -> int:
    return max((t for t in range(min(g.type_count, 80)) if g.knows(t)), default=0)
