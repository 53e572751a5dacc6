"""The one header view of a GGUF: its key/values and tensor infos, read by the bounds-checked parser
(reader.GGUFFile), for the commands that look at a file without reading its tensors (run, verify,
serve and rpc's checks; Ollama, LM Studio and the Ollama-compatible server).

Arrays up to SMALL_ARRAY items are decoded; longer ones (the vocabulary) stay in the file as a
LazyArray (`strings_at` reads items of one), so a header of a 150k-token vocabulary costs little and
listing a store of many models touches only the header pages of each file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from gguf import GGUFValueType

from .gguf_types import TYPE_TP1, TYPE_TP4
from .reader import GGUFFile

SMALL_ARRAY = 64  # arrays up to this many items are decoded; longer ones are kept lazy


@dataclass(frozen=True)
class LazyArray:
    """An array left in the file: its item type and count."""
    type_id: int
    count: int


@dataclass(frozen=True)
class HeaderTensor:
    name: str
    ne: tuple[int, ...]   # ggml order: ne[0] is the row length
    type: int             # ggml type id
    offset: int           # from the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n

    @property
    def row_length(self) -> int:
        return self.ne[0] if self.ne else 1

    @property
    def is_1d(self) -> bool:
        return sum(1 for d in self.ne if d > 1) <= 1


@dataclass
class GGUFHeader:
    """Key/values and tensor infos of a GGUF (see the module's docstring)."""
    path: Path
    size: int                            # of the whole file
    version: int
    values: dict[str, Any]               # scalars, strings and short arrays decoded; long arrays LazyArray
    spans: dict[str, tuple[int, int]]    # key -> (start, end) of its whole key/value record
    tensors: list[HeaderTensor]
    alignment: int
    data_offset: int                     # where the data section starts
    source: GGUFFile | None = field(default=None, repr=False, compare=False)  # the parsed file (its data)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`; `default` when absent or a long array left in the file."""
        v = self.values.get(key)
        return default if v is None or isinstance(v, LazyArray) else v

    @property
    def architecture(self) -> str | None:
        a = self.values.get("general.architecture")
        return a if isinstance(a, str) else None

    @property
    def type_ids(self) -> set[int]:
        return {t.type for t in self.tensors}

    @property
    def has_tp1(self) -> bool:
        return TYPE_TP1.id in self.type_ids

    @property
    def has_tp4(self) -> bool:
        return TYPE_TP4.id in self.type_ids

    def array(self, key: str) -> Any:
        """The value of `key` with a long array read from the file."""
        v = self.values.get(key)
        if isinstance(v, LazyArray) and self.source is not None:
            return self.source.fields[key].contents()
        return v

    def strings_at(self, key: str, indices: Iterable[int]) -> dict[int, str]:
        """Items `indices` of the string array `key` (e.g. token texts)."""
        arr = self.values.get(key)
        wanted = {i for i in indices if isinstance(i, int) and i >= 0}
        if isinstance(arr, LazyArray):
            arr = self.array(key) if arr.type_id == GGUFValueType.STRING else None
        if not isinstance(arr, list) or not wanted:
            return {}
        return {i: arr[i] for i in wanted if i < len(arr) and isinstance(arr[i], str)}


def read_header(path: str | Path) -> GGUFHeader:
    """The header of `path`, checked by reader.GGUFFile: a missing, truncated or malformed file, or a
    tensor type nobody knows, is a TritpackError naming the file (and the key or tensor)."""
    f = GGUFFile(path)
    values: dict[str, Any] = {}
    for key, fld in f.fields.items():
        if fld.types[0] != GGUFValueType.ARRAY or fld.count <= SMALL_ARRAY:
            values[key] = fld.contents()
        else:
            values[key] = LazyArray(int(fld.types[-1]), fld.count)
    spans = {k: (fld.offset, fld.end) for k, fld in f.fields.items()}
    tensors = [HeaderTensor(t.name, tuple(reversed(t.shape)), int(t.type), t.offset - f.data_offset)
               for t in f.tensors]
    return GGUFHeader(f.path, f.size, int(f.get("GGUF.version")), values, spans, tensors, f.alignment,
                      f.data_offset, f)
