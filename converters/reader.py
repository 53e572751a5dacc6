"""Reading GGUF files for conversion: safe opening, tensor metadata, raw bytes and float32 values.

Model files come from strangers, so the header is parsed here (GGUFFile._parse), not by
gguf.GGUFReader: every count and length is checked against the bytes the file has left before
anything is made from it, so no allocation ever follows a declared size that the file cannot back,
and key/values are kept as offsets into the mapping (an array is decoded only when asked for: a
tokenizer's 150,000 strings cost nothing until convert copies them). Checked, each with one clear
error naming the file (and the key or tensor): the magic, the version (2 and 3, little-endian), the
key and tensor counts, every string and array length, value types (nested arrays and unknown types
refused), UTF-8 of keys, names and string values, duplicate keys and tensor names, general.alignment,
tensor dimensions (1 to 4, none zero, product below 2^63, ne[0] a multiple of the type's block),
tensor types, and the tensor data: aligned, inside the file, not overlapping.

The file is memory-mapped once; tensors are read one at a time, never all at once.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import TritpackError
from . import gguf_types  # noqa: F401  (registers TP1/TP4 with gguf before any file is read)

FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Limits of this reader, far above any real model (the largest hold a few thousand tensors, a few
# dozen keys and under a million tokenizer strings), so that a file of declared-but-tiny entries
# cannot make a long loop or a large structure.
MAX_TENSORS = 1 << 18
MAX_KEYS = 1 << 16
MAX_ARRAY_STRINGS = 1 << 22   # strings in arrays, all keys together
MAX_DIMS = 4                  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63           # GGML_MAX_NAME is 64 with the terminating NUL
INT64_MAX = (1 << 63) - 1

# smallest encodings: a key/value (length, key of 0 bytes, type, a 1-byte value), a tensor info
# (name length, n_dims, type, offset): no count can exceed what is left divided by these
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8

_SCALAR_FMT = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
               GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
               GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
               GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}
_SCALAR_DTYPE = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
                 GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
                 GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "<u8",
                 GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8"}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


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


class GGUFField:
    """One key/value, read the way gguf.ReaderField is: `types` is [type] or [ARRAY, element type],
    `contents()` the value (a list for an array, decoded from the mapping when asked for).
    `offset` and `end` delimit the whole key/value record in the file; `count` is an array's length."""

    __slots__ = ("name", "offset", "end", "types", "_value", "_buf", "_pos", "_count")

    def __init__(self, name: str, offset: int, types: list[GGUFValueType], value: Any = None,
                 buf: Any = None, pos: int = 0, count: int = 0, end: int = 0):
        self.name, self.offset, self.end, self.types = name, offset, end, types
        self._value, self._buf, self._pos, self._count = value, buf, pos, count

    @property
    def count(self) -> int:
        return self._count if self.types[0] == GGUFValueType.ARRAY else 1

    def __repr__(self) -> str:
        return f"GGUFField({self.name!r}, {[t.name for t in self.types]})"

    def contents(self, index_or_slice: int | slice = slice(None)) -> Any:
        if self.types[0] != GGUFValueType.ARRAY:
            return self._value
        return self._items()[index_or_slice]

    def _items(self) -> list:
        etype = self.types[1]
        if etype == GGUFValueType.STRING:  # lengths and UTF-8 were checked when the file was opened
            out, pos, buf = [], self._pos, self._buf
            for _ in range(self._count):
                (n,) = _U64.unpack_from(buf, pos)
                out.append(bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8"))
                pos += 8 + n
            return out
        return np.frombuffer(self._buf, dtype=_SCALAR_DTYPE[etype], count=self._count, offset=self._pos).tolist()


class UnknownTensorType(TritpackError):
    """A tensor type id neither gguf nor TritPack knows (`type_id`); callers may add a hint."""

    def __init__(self, message: str, *, type_id: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.type_id = type_id


def _show(name: str) -> str:
    """A name from the file as it may be printed: control characters escaped, at most 80 characters."""
    text = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 80 else text[:77] + "..."


class GGUFFile:
    """A GGUF opened for reading. `fields` are the key/values, `tensors` the tensor infos in order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise TritpackError("is a folder, not a GGUF file", path=self.path)
        if not self.path.exists():
            raise TritpackError("no such file", path=self.path)
        if not self.path.is_file():  # a FIFO or a device could block or never end
            raise TritpackError("not a regular file", path=self.path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                if head[:4] != GGUF_MAGIC:
                    raise TritpackError("not a GGUF file (bad magic)", path=self.path)
                if size < 24:
                    raise TritpackError(f"truncated GGUF: {size} bytes, less than the 24-byte header",
                                        path=self.path)
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise TritpackError(f"cannot read: {e.strerror or e}", path=self.path) from None
        self.size = len(self._mm)
        self._data = np.frombuffer(self._mm, dtype=np.uint8)
        self._reader = None
        self._fields: dict[str, GGUFField] = {}
        self.tensors: list[TensorInfo] = []
        self._parse()
        self._by_name = {t.name: t for t in self.tensors}

    # --- parsing
    def _fail(self, what: str, tensor: str | None = None) -> TritpackError:
        return TritpackError(what, path=self.path, tensor=None if tensor is None else _show(tensor))

    def _need(self, pos: int, n: int, what: str, tensor: str | None = None) -> None:
        if n > self.size - pos:
            raise self._fail(f"truncated GGUF: the file ends inside {what} (at byte {pos}, "
                             f"{n} bytes needed, {max(0, self.size - pos)} left)", tensor)

    def _u32(self, pos: int, what: str, tensor: str | None = None) -> int:
        self._need(pos, 4, what, tensor)
        return _U32.unpack_from(self._mm, pos)[0]

    def _u64(self, pos: int, what: str, tensor: str | None = None) -> int:
        self._need(pos, 8, what, tensor)
        return _U64.unpack_from(self._mm, pos)[0]

    def _string(self, pos: int, what: str, tensor: str | None = None) -> tuple[str, int]:
        n = self._u64(pos, f"the length of {what}", tensor)
        if n > self.size - pos - 8:
            raise self._fail(f"{what}: string length {n} runs past the end of the file "
                             f"(at byte {pos}; the file has {self.size} bytes)", tensor)
        try:
            text = bytes(self._mm[pos + 8:pos + 8 + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail(f"{what} is not valid UTF-8 (at byte {pos})", tensor) from None
        return text, pos + 8 + n

    def _value_type(self, raw: int, what: str) -> GGUFValueType:
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self._fail(f"{what}: unknown value type {raw}") from None

    def _parse(self) -> None:
        mm, size = self._mm, self.size
        (version,) = _U32.unpack_from(mm, 4)
        if version & 0xFFFF == 0 and struct.unpack_from(">I", mm, 4)[0] in SUPPORTED_VERSIONS:
            raise self._fail("big-endian GGUF is not supported (convert it on a big-endian machine first)")
        if version not in SUPPORTED_VERSIONS:
            raise self._fail(f"unsupported GGUF version {version} (versions 2 and 3 are read)")
        n_tensors, n_kv = _U64.unpack_from(mm, 8)[0], _U64.unpack_from(mm, 16)[0]
        left = size - 24
        if n_kv > MAX_KEYS or n_kv > left // _MIN_KV_BYTES:
            raise self._fail(f"invalid GGUF header: {n_kv} key/values cannot fit in the {size} bytes of the file (truncated or corrupt)"
                             if n_kv > left // _MIN_KV_BYTES else
                             f"invalid GGUF header: {n_kv} key/values, more than this reader accepts ({MAX_KEYS})")
        if n_tensors > MAX_TENSORS or n_tensors > left // _MIN_TENSOR_INFO_BYTES:
            raise self._fail(f"invalid GGUF header: {n_tensors} tensors cannot fit in the {size} bytes of the file (truncated or corrupt)"
                             if n_tensors > left // _MIN_TENSOR_INFO_BYTES else
                             f"invalid GGUF header: {n_tensors} tensors, more than this reader accepts ({MAX_TENSORS})")
        for name, value in (("GGUF.version", version), ("GGUF.tensor_count", n_tensors), ("GGUF.kv_count", n_kv)):
            t = GGUFValueType.UINT32 if name == "GGUF.version" else GGUFValueType.UINT64
            self._fields[name] = GGUFField(name, 0, [t], value)
        pos = 24
        self._array_strings = 0
        for i in range(n_kv):
            pos = self._parse_kv(pos, i, n_kv)

        alignment = DEFAULT_ALIGNMENT
        fa = self._fields.get("general.alignment")
        if fa is not None:
            if fa.types != [GGUFValueType.UINT32]:
                raise self._fail(f"key 'general.alignment': type {fa.types[-1].name}, must be UINT32")
            alignment = fa.contents()
            if alignment == 0 or alignment & (alignment - 1):
                raise self._fail(f"key 'general.alignment': {alignment} is not a power of two")

        infos = []
        seen: set[str] = set()
        for i in range(n_tensors):
            pos, info = self._parse_tensor_info(pos, i, n_tensors)
            if info[0] in seen:
                raise self._fail("duplicate tensor name", info[0])
            seen.add(info[0])
            infos.append(info)

        data_start = -(-pos // alignment) * alignment
        spans = []
        for name, shape, qtype, rel, nbytes in infos:
            if rel % alignment:
                raise self._fail(f"data offset {rel} is not a multiple of the alignment {alignment}", name)
            start = data_start + rel
            if start + nbytes > size:
                raise self._fail(f"tensor data runs past the end of the file (bytes {start}..{start + nbytes}, "
                                 f"the file has {size}): truncated?", name)
            self.tensors.append(TensorInfo(name, shape, qtype, start, nbytes))
            spans.append((start, len(spans), nbytes, name))
        spans.sort()
        for (s0, i0, n0, a), (s1, i1, _, b) in zip(spans, spans[1:]):
            if s0 + n0 > s1:  # named in file order: the later tensor overlaps the earlier one
                first, second = (a, b) if i0 < i1 else (b, a)
                raise self._fail(f"tensor data overlaps tensor '{_show(first)}' (bytes {s1}..{s0 + n0})", second)
        self.data_offset = data_start
        self.alignment = alignment

    def _parse_kv(self, pos: int, i: int, n_kv: int) -> int:
        offset = pos
        key, pos = self._string(pos, f"key/value {i + 1} of {n_kv}: the key")
        what = f"key '{_show(key)}'"
        if key in self._fields:
            raise self._fail(f"duplicate {what}")
        vtype = self._value_type(self._u32(pos, f"the value type of {what}"), what)
        pos += 4
        if vtype == GGUFValueType.ARRAY:
            raw_etype = self._u32(pos, f"the element type of {what}")
            count = self._u64(pos + 4, f"the length of {what}")
            pos += 12
            etype = self._value_type(raw_etype, what)
            if etype == GGUFValueType.ARRAY:
                raise self._fail(f"{what}: arrays of arrays are not supported")
            start = pos
            if etype == GGUFValueType.STRING:
                if count > (self.size - pos) // 8:
                    raise self._fail(f"{what}: an array of {count} strings runs past the end of the file "
                                     f"(at byte {pos}; the file has {self.size} bytes)")
                self._array_strings += count
                if self._array_strings > MAX_ARRAY_STRINGS:
                    raise self._fail(f"{what}: more than {MAX_ARRAY_STRINGS} strings in arrays, more than this "
                                     "reader accepts")
                for j in range(count):
                    _, pos = self._string(pos, f"{what}, string {j}")
            else:
                esize = struct.calcsize(_SCALAR_FMT[etype])
                if count > (self.size - pos) // esize:
                    raise self._fail(f"{what}: an array of {count} {etype.name} runs past the end of the file "
                                     f"(at byte {pos}; the file has {self.size} bytes)")
                pos += count * esize
            field = GGUFField(key, offset, [vtype, etype], buf=self._mm, pos=start, count=count)
        elif vtype == GGUFValueType.STRING:
            value, pos = self._string(pos, f"the value of {what}")
            field = GGUFField(key, offset, [vtype], value)
        else:
            fmt = _SCALAR_FMT[vtype]
            n = struct.calcsize(fmt)
            self._need(pos, n, f"the value of {what}")
            value = struct.unpack_from("<" + fmt, self._mm, pos)[0]
            pos += n
            field = GGUFField(key, offset, [vtype], value)
        field.end = pos
        self._fields[key] = field
        return pos

    def _parse_tensor_info(self, pos: int, i: int, n: int) -> tuple[int, tuple]:
        name, pos = self._string(pos, f"tensor info {i + 1} of {n}: the name")
        if not name:
            raise self._fail(f"tensor info {i + 1} of {n}: empty tensor name")
        if len(name.encode()) > MAX_NAME_BYTES:
            raise self._fail(f"tensor name of {len(name.encode())} bytes, longer than ggml's {MAX_NAME_BYTES}", name)
        n_dims = self._u32(pos, "the dimension count", name)
        pos += 4
        if not 1 <= n_dims <= MAX_DIMS:
            raise self._fail(f"{n_dims} dimensions (ggml tensors have 1 to {MAX_DIMS})", name)
        self._need(pos, 8 * n_dims, "the dimensions", name)
        ne = struct.unpack_from(f"<{n_dims}Q", self._mm, pos)
        pos += 8 * n_dims
        raw_type = self._u32(pos, "the tensor type", name)
        rel = self._u64(pos + 4, "the data offset", name)
        pos += 12
        for k, d in enumerate(ne):
            if d == 0:
                raise self._fail(f"dimension {k} is zero (shape {list(ne)})", name)
        n_elements = 1
        for d in ne:
            n_elements *= d
        if n_elements > INT64_MAX:
            raise self._fail(f"dimensions {list(ne)} multiply to {n_elements} elements, past 2^63", name)
        try:
            qtype = GGMLQuantizationType(raw_type)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise UnknownTensorType(f"unknown tensor type {raw_type}", path=self.path, tensor=_show(name),
                                    type_id=raw_type) from None
        if ne[0] % block:
            raise self._fail(f"row length {ne[0]} is not a multiple of {qtype.name}'s block of {block}", name)
        nbytes = n_elements // block * type_size
        return pos, (name, tuple(int(d) for d in reversed(ne)), qtype, rel, nbytes)

    # --- compatibility
    @property
    def reader(self) -> gguf.GGUFReader:
        """gguf's own reader of the (already checked) file, made on first use. It builds several
        numpy objects per array element: slow and large for a tokenizer; prefer `fields`."""
        if self._reader is None:
            self._reader = gguf.GGUFReader(self.path, "r")
        return self._reader

    # --- key/values
    @property
    def fields(self) -> dict[str, GGUFField]:
        return {k: f for k, f in self._fields.items() if not k.startswith("GGUF.")}

    def get(self, key: str, default: Any = None) -> Any:
        f = self._fields.get(key)
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

    @property
    def pools(self) -> bool:
        """An encoder / embedding model: its architecture declares a pooling type (BERT and kin); a
        file without an architecture does not."""
        try:
            arch = self.architecture
        except TritpackError:
            return False
        return self.get(f"{arch}.pooling_type") is not None

    def tensor(self, name: str) -> TensorInfo:
        return self._by_name[name]

    # --- data
    def raw(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view of the mapped file (rows, row_bytes)."""
        data = self._data[t.offset:t.offset + t.nbytes]
        if data.size != t.nbytes:
            raise TritpackError("tensor data is truncated", path=self.path, tensor=t.name)
        return data.reshape(t.n_rows, -1) if t.n_rows else data.reshape(0, 0)

    def release(self, t: TensorInfo) -> None:
        """Drop the tensor's pages from this process's resident set once it has been read (the
        file's pages stay in the page cache), so that streaming a model through the mapping keeps
        the peak RSS near one tensor, not the whole file."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = t.offset // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(self.size, t.offset + t.nbytes)
        if end > start:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)
            except (OSError, ValueError):
                pass

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
    if t.type not in GGML_QUANT_SIZES or not ggml.knows(int(t.type)):
        raise TritpackError(f"tensor type {t.type.name} cannot be read by this library", path=path, tensor=t.name,
                            hint="rebuild with `tritpack-gguf build`")
    if ggml.traits(int(t.type)).to_float is None:  # integer tensors, Q8_1/Q8_K (activation types)
        raise TritpackError(f"tensor type {t.type.name} holds no weights that can be read as floats",
                            path=path, tensor=t.name)
    return ggml.dequantize(int(t.type), raw_rows)


class _RawValue(bytes):
    """A key/value's type and value as the source file holds them (GGUF is read little-endian only)."""


def copy_fields(src: GGUFFile, writer: gguf.GGUFWriter, skip: set[str], prefix: str = "") -> None:
    """Carry every key/value over unchanged (bar `skip`, keys not starting with `prefix`, and the
    writer's own architecture key). Arrays go over as their bytes: a tokenizer's 50,000 strings are
    not decoded and packed again."""
    _allow_empty_arrays(writer)
    for key, field in src.fields.items():
        if key in skip or key == "general.architecture" or not key.startswith(prefix):
            continue
        if key == "general.alignment":
            writer.data_alignment = int(field.contents())
        vtype = GGUFValueType(field.types[0])
        if vtype == GGUFValueType.ARRAY:
            start = field.offset + 8 + len(key.encode("utf-8"))  # past the key: its u64 length and bytes
            writer.add_key_value(key, _RawValue(src._mm[start:field.end]), vtype)
            continue
        writer.add_key_value(key, field.contents(), vtype)


def _allow_empty_arrays(writer: gguf.GGUFWriter) -> None:
    """gguf's writer refuses to write an empty array ("Invalid GGUF metadata array. Empty array"),
    which GGUF allows and files hold (llama.cpp writes and reads them): write its 12 bytes here. Also
    writes a copied _RawValue as it is."""
    pack_val, pack = getattr(writer, "_pack_val", None), getattr(writer, "_pack", None)
    if pack_val is None or pack is None or getattr(pack_val, "_tritpack_empty_arrays", False):
        return

    def pack_val_empty_ok(val: Any, vtype: GGUFValueType, add_vtype: bool, sub_type: GGUFValueType | None = None) -> bytes:
        if isinstance(val, _RawValue):  # copied from a source file: its type, then its value
            return bytes(val) if add_vtype else bytes(val)[4:]
        if vtype == GGUFValueType.ARRAY and sub_type is not None and hasattr(val, "__len__") and len(val) == 0:
            return (pack("I", vtype) if add_vtype else b"") + pack("I", sub_type) + pack("Q", 0)
        return pack_val(val, vtype, add_vtype, sub_type)

    pack_val_empty_ok._tritpack_empty_arrays = True  # type: ignore[attr-defined]
    writer._pack_val = pack_val_empty_ok  # type: ignore[method-assign]


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 200 else text[:200] + "…"
