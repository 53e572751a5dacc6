"""TP1 and TP4 in the `gguf` package: the one place that registers them, without forking gguf-py.

After `register()` (run on import of this module), `gguf.GGMLQuantizationType.TP1`/`.TP4` exist,
`GGML_QUANT_SIZES` knows their block and type sizes, `gguf.LlamaFileType.MOSTLY_TP1`/`_TP4` exist,
and GGUFReader/GGUFWriter read and write tensors of both types. `gguf.quants` does not know them: the
numpy twins of the C kernels are converters/tp1.py and tp4.py, and convert runs the C kernels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType


@dataclass(frozen=True)
class TritpackType:
    name: str
    id: int          # ggml type id; the llama ftype has the same number
    block_size: int  # weights per block
    type_size: int   # bytes per block (ggml_kernels/tritpack-common.h; the tests check the C side agrees)

    @property
    def bpw(self) -> float:
        return 8 * self.type_size / self.block_size

    @property
    def qtype(self) -> GGMLQuantizationType:
        return GGMLQuantizationType(self.id)

    @property
    def ftype(self) -> LlamaFileType:
        return LlamaFileType(self.id)


# TYPE_TP1/TYPE_TP4 (the registry records, like C's TRITPACK_TYPE_TP1) are not converters.tp1.TP1 /
# converters.tp4.TP4 (the numpy twins, named like gguf-py's quants classes).
TYPE_TP1 = TritpackType("TP1", 80, 64, 15)
TYPE_TP4 = TritpackType("TP4", 81, 64, 36)
TRITPACK_TYPES = (TYPE_TP1, TYPE_TP4)
BY_NAME = {t.name: t for t in TRITPACK_TYPES}


def _add_member(cls: type[enum.IntEnum], name: str, value: int) -> None:
    if value in cls._value2member_map_:
        existing = cls._value2member_map_[value]
        if existing.name != name:
            raise RuntimeError(f"{cls.__name__} already has {existing.name} = {value}; cannot add {name}")
        return
    member = int.__new__(cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = cls
    type.__setattr__(cls, name, member)  # bypass Enum's guard against new attributes
    cls._member_map_[name] = member
    cls._value2member_map_[value] = member
    cls._member_names_.append(name)


def register() -> None:
    """Idempotent: add TP1/TP4 to gguf's type enums and size table."""
    for t in TRITPACK_TYPES:
        _add_member(GGMLQuantizationType, t.name, t.id)
        _add_member(LlamaFileType, f"MOSTLY_{t.name}", t.id)
        GGML_QUANT_SIZES[GGMLQuantizationType(t.id)] = (t.block_size, t.type_size)


register()

__all__ = ["TYPE_TP1", "TYPE_TP4", "TRITPACK_TYPES", "BY_NAME", "TritpackType", "register", "gguf"]
