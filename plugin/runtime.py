"""Loading the patched llama.cpp: where it is, whether it is ours, and handing it to llama-cpp-python.

llama-cpp-python is installed bindings-only; it loads libllama from $LLAMA_CPP_LIB_PATH when that is
set before `import llama_cpp`. `activate()` sets it to our build and checks the library is patched.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import warnings
from dataclasses import dataclass
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
    llama_cpp.Llama passes through (n_gpu_layers, n_ctx, ...); `verbose` defaults to False.

    A file with a tensor type the library does not know fails before llama.cpp sees it, with a
    TritpackError that says which build to make."""
    d = activate()
    p = Path(path)
    if not p.is_file():
        raise TritpackError("no such file", path=p)
    check_types_supported(p, d)
    if kwargs.get("n_gpu_layers") and not gpu_backends(d):
        warnings.warn(f"n_gpu_layers={kwargs['n_gpu_layers']} but the library in {d} has no GPU backend: "
                      "every layer runs on the CPU (run `tritpack-gguf build --cuda` for NVIDIA GPUs)",
                      stacklevel=2)
    kwargs.setdefault("verbose", False)
    import llama_cpp

    return llama_cpp.Llama(model_path=str(p), **kwargs)


def gpu_backends(lib_dir: Path) -> list[str]:
    """The GPU backends built into `lib_dir` (e.g. ['cuda']); empty for a CPU-only build."""
    return [name for name in ("cuda", "hip", "vulkan", "metal", "sycl")
            if (Path(lib_dir) / f"libggml-{name}.so").is_file()]


# GGUF value types: fixed sizes (8 = string, 9 = array are variable)
_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_FORMAT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class HeaderTensor:
    name: str
    dims: tuple[int, ...]   # ggml order: dims[0] is the row length
    type: int               # ggml type id, known to the gguf package or not
    offset: int             # from the start of the data section


@dataclass
class GGUFHeader:
    """A GGUF header read without gguf.GGUFReader: fast on large vocabularies (arrays are skipped,
    not decoded) and indifferent to type ids the gguf package does not know."""
    path: Path
    version: int
    values: dict[str, object]            # scalars and strings decoded; arrays as None
    spans: dict[str, tuple[int, int]]    # key -> (start, end) of its whole key/value record
    tensors: list[HeaderTensor]
    alignment: int
    data_start: int

    def get(self, key: str, default=None):
        v = self.values.get(key)
        return default if v is None else v

    @property
    def architecture(self) -> str | None:
        a = self.values.get("general.architecture")
        return a if isinstance(a, str) else None


def read_header(path: str | Path) -> GGUFHeader:
    import mmap
    import struct

    p = Path(path)
    try:
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"GGUF":
                raise TritpackError("not a GGUF file (bad magic)", path=p)
            version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
            if version < 2:
                raise TritpackError(f"GGUF version {version} is too old", path=p)
            pos = 24

            def string(pos: int) -> tuple[str, int]:
                (n,) = struct.unpack_from("<Q", m, pos)
                if pos + 8 + n > len(m):
                    raise struct.error("string runs past the end")
                return m[pos + 8:pos + 8 + n].decode("utf-8", "replace"), pos + 8 + n

            def skip_value(vtype: int, pos: int) -> int:
                if vtype in _GGUF_SCALAR:
                    return pos + _GGUF_SCALAR[vtype]
                if vtype == 8:
                    (n,) = struct.unpack_from("<Q", m, pos)
                    return pos + 8 + n
                if vtype == 9:
                    sub, n = struct.unpack_from("<IQ", m, pos)
                    pos += 12
                    if sub in _GGUF_SCALAR:
                        return pos + n * _GGUF_SCALAR[sub]
                    for _ in range(n):
                        pos = skip_value(sub, pos)
                    return pos
                raise struct.error(f"unknown value type {vtype}")

            values: dict[str, object] = {}
            spans: dict[str, tuple[int, int]] = {}
            for _ in range(n_kv):
                start = pos
                key, pos = string(pos)
                (vtype,) = struct.unpack_from("<I", m, pos)
                pos += 4
                if vtype in _GGUF_FORMAT:
                    values[key] = struct.unpack_from(_GGUF_FORMAT[vtype], m, pos)[0]
                elif vtype == 8:
                    values[key] = string(pos)[0]
                else:
                    values[key] = None
                pos = skip_value(vtype, pos)
                if pos > len(m):
                    raise struct.error("key/values run past the end")
                spans[key] = (start, pos)
            tensors = []
            for _ in range(n_tensors):
                name, pos = string(pos)
                (n_dims,) = struct.unpack_from("<I", m, pos)
                if n_dims > 8:
                    raise struct.error(f"tensor {name!r} has {n_dims} dimensions")
                dims = struct.unpack_from(f"<{n_dims}Q", m, pos + 4)
                pos += 4 + 8 * n_dims
                ttype, offset = struct.unpack_from("<IQ", m, pos)
                pos += 12
                tensors.append(HeaderTensor(name, tuple(int(d) for d in dims), int(ttype), int(offset)))
            align = values.get("general.alignment")
            align = align if isinstance(align, int) and align > 0 else 32
            data_start = (pos + align - 1) // align * align
            return GGUFHeader(p, version, values, spans, tensors, align, data_start)
    except (struct.error, ValueError, OverflowError) as e:
        raise TritpackError(f"invalid or truncated GGUF header ({e})", path=p) from None
    except OSError as e:
        raise TritpackError(f"cannot read: {e.strerror or e}", path=p) from None


def gguf_tensor_types(path: str | Path) -> list[tuple[str, int]]:
    """(name, ggml type id) of every tensor, from the header alone: unlike gguf.GGUFReader this
    works for type ids the `gguf` package does not know, so an unknown type can be named."""
    return [(t.name, t.type) for t in read_header(path).tensors]


def check_types_supported(path: Path, lib_dir: Path, ggml=None) -> None:
    """Fail with a build hint when the file holds a tensor type the library in `lib_dir` lacks."""
    from .converters.gguf_types import BY_NAME
    from .ggml_lib import load_ggml

    g = ggml or load_ggml(lib_dir)
    ours = {t.id: t.name for t in BY_NAME.values()}
    for name, ttype in gguf_tensor_types(path):
        if g.knows(ttype):
            continue
        if ttype in ours:
            raise TritpackError(f"tensor type {ours[ttype]} ({ttype}) is not supported by the llama.cpp library "
                                f"in {lib_dir}", path=path, tensor=name,
                                hint=f"this is a TritPack file: {BUILD_HINT}, then load it through "
                                     "tritpack_gguf.load() or after tritpack_gguf.activate()")
        raise TritpackError(f"tensor type {ttype} is unknown to the llama.cpp library in {lib_dir} "
                            f"(it knows the stock types up to {_stock_max(g)} and TP1/TP4)", path=path, tensor=name,
                            hint="this file needs another llama.cpp build (a newer or forked one); "
                                 f"for TP1/TP4 files {BUILD_HINT}")


def _stock_max(g) -> int:
    return max((t for t in range(min(g.type_count, 80)) if g.knows(t)), default=0)
