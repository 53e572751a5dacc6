"""Reading GGUF files for conversion: safe opening, tensor metadata, raw bytes and float32 values.

The file is memory-mapped (gguf.GGUFReader): tensors are read one at a time, never all at once.
Every failure becomes a TritpackError naming the file (and the tensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from ..errors import TritpackError
from . import gguf_types  # noqa: F401  (registers TP1/TP4 with gguf before any file is read)

FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]    # numpy order: shape[-1] is the row length (ggml's ne[0])
    type: GGMLQuantizationType
    offset: int               # absolute offset of the data in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def row_length(self) -> int:
        return self.shape[-1]

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.row_length if self.row_length else 0

    @property
    def is_1d(self) -> bool:
        return sum(1 for d in self.shape if d > 1) <= 1


class GGUFFile:
    """A GGUF opened for reading. `fields` are the key/values, `tensors` the tensor infos in order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise TritpackError("no such file", path=self.path)
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise TritpackError(f"cannot read: {e.strerror}", path=self.path) from None
        if magic != GGUF_MAGIC:
            raise TritpackError("not a GGUF file (bad magic)", path=self.path)
        try:
            self.reader = GGUFReader(self.path, "r")
        except ValueError as e:
            raise TritpackError(f"invalid GGUF: {_reason(e)}", path=self.path) from None
        except (IndexError, OverflowError, KeyError, TypeError, MemoryError, UnicodeDecodeError) as e:
            raise TritpackError(f"invalid or truncated GGUF ({type(e).__name__}: {_reason(e)})", path=self.path) from None
        size = self.path.stat().st_size
        self.tensors: list[TensorInfo] = []
        for t in self.reader.tensors:
            qtype = GGMLQuantizationType(int(t.tensor_type))
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            info = TensorInfo(t.name, shape, qtype, int(t.data_offset), int(t.n_bytes))
            if info.offset + info.nbytes > size:
                raise TritpackError("tensor data runs past the end of the file (truncated?)",
                                    path=self.path, tensor=t.name)
            self.tensors.append(info)
        self._by_name = {t.name: t for t in self.tensors}

    # --- key/values
    @property
    def fields(self) -> dict[str, Any]:
        return {k: f for k, f in self.reader.fields.items() if not k.startswith("GGUF.")}

    def get(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:
            return default

    @property
    def architecture(self) -> str:
        arch = self.get("general.architecture")
        if not isinstance(arch, str):
            raise TritpackError("no general.architecture key", path=self.path)
        return arch

    def tensor(self, name: str) -> TensorInfo:
        return self._by_name[name]

    # --- data
    def raw(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the mapped file (rows, row_bytes)."""
        data = self.reader.data[t.offset:t.offset + t.nbytes]
        if data.size != t.nbytes:
            raise TritpackError("tensor data is truncated", path=self.path, tensor=t.name)
        return data.reshape(t.n_rows, -1) if t.n_rows else data.reshape(0, 0)

    def iter_float_rows(self, t: TensorInfo, ggml, rows_per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first_row, float32 rows) chunks of the tensor, dequantized by the C library."""
        raw = self.raw(t)
        for r0 in range(0, t.n_rows, rows_per_chunk):
            yield r0, to_float32(ggml, t, raw[r0:r0 + rows_per_chunk], path=self.path)

    def float32(self, t: TensorInfo, ggml) -> np.ndarray:
        """The whole tensor as float32 (rows, row_length)."""
        return to_float32(ggml, t, self.raw(t), path=self.path)


def to_float32(ggml, t: TensorInfo, raw_rows: np.ndarray, path: Path | None = None) -> np.ndarray:
    """Float32 values of whole rows of tensor `t` (stock or TritPack type)."""
    if t.type == GGMLQuantizationType.F32:
        return np.frombuffer(np.ascontiguousarray(raw_rows).data, dtype=np.float32).reshape(raw_rows.shape[0], -1).copy()
    if t.type not in GGML_QUANT_SIZES or not ggml.knows(int(t.type)) or ggml.traits(int(t.type)).to_float is None:
        raise TritpackError(f"tensor type {t.type.name} cannot be read by this library", path=path, tensor=t.name,
                            hint="rebuild with `tritpack-gguf build`")
    return ggml.dequantize(int(t.type), raw_rows)


def copy_fields(src: GGUFFile, writer: gguf.GGUFWriter, skip: set[str]) -> None:
    """Carry every key/value over unchanged (bar `skip` and the writer's own architecture key)."""
    for key, field in src.fields.items():
        if key in skip or key == "general.architecture":
            continue
        if key == "general.alignment":
            writer.data_alignment = int(field.contents())
        vtype = GGUFValueType(field.types[0])
        sub_type = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        value = field.contents()
        if vtype == GGUFValueType.ARRAY and sub_type is None:
            value, sub_type = [], GGUFValueType.INT32  # an empty array; its element type is not recorded
        writer.add_key_value(key, value, vtype, sub_type=sub_type)


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 200 else text[:200] + "…"
