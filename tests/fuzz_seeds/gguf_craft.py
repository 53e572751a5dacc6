"""Byte-exact GGUF files for the hostile-input tests and the fuzzer.

`Craft` writes a GGUF (v3, little-endian) from key/values and tensors with every structural field
overridable (counts, lengths, types, dimensions, offsets), and records where each structure starts
(`marks`), so a test can cut the file at every boundary or corrupt one field. `base_model()` is the
tiny Llama-shaped model the tests start from; `python tests/fuzz_seeds/gguf_craft.py` rewrites the
committed seeds (deterministic: the same bytes every time).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# GGUF value types
U8, I8, U16, I16, U32, I32, F32V, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32V: "f", BOOL: "?", U64: "Q",
        I64: "q", F64: "d"}
# ggml tensor types used here
T_F32, T_F16, T_Q8_0, T_TP1, T_TP4 = 0, 1, 8, 80, 81
_TYPE_SIZE = {T_F32: (1, 4), T_F16: (1, 2), T_Q8_0: (32, 34), T_TP1: (64, 15), T_TP4: (64, 36)}


def gstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value_bytes(vtype: int, value, sub: int | None = None) -> bytes:
    if vtype == STR:
        return gstr(value)
    if vtype == ARR:
        out = struct.pack("<IQ", sub, len(value))
        return out + b"".join(value_bytes(sub, v) for v in value)
    return struct.pack("<" + _FMT[vtype], value)


@dataclass
class KV:
    key: str | bytes
    vtype: int
    value: object = None
    sub: int | None = None
    raw: bytes | None = None        # the encoded value (after the type), replacing value/sub


@dataclass
class Tensor:
    name: str | bytes
    ne: list[int]                   # ggml order: ne[0] is the row length
    type: int = T_F32
    data: bytes = b""
    offset: int | None = None       # relative to the data section; None: packed with alignment
    n_dims: int | None = None       # override of len(ne)


@dataclass
class Craft:
    kvs: list[KV] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    version: int = 3
    magic: bytes = b"GGUF"
    alignment: int = 32
    n_tensors: int | None = None    # overrides of the header counts
    n_kv: int | None = None
    marks: list[tuple[str, int]] = field(default_factory=list)

    def build(self) -> bytes:
        self.marks = [("magic", 0), ("version", 4), ("tensor count", 8), ("key/value count", 16)]
        out = bytearray(self.magic + struct.pack("<I", self.version))
        out += struct.pack("<QQ", len(self.tensors) if self.n_tensors is None else self.n_tensors,
                           len(self.kvs) if self.n_kv is None else self.n_kv)
        for kv in self.kvs:
            name = kv.key.decode(errors="replace") if isinstance(kv.key, bytes) else kv.key
            self.marks.append((f"key/value {name}", len(out)))
            out += gstr(kv.key) + struct.pack("<I", kv.vtype)
            self.marks.append((f"value of {name}", len(out)))
            out += kv.raw if kv.raw is not None else value_bytes(kv.vtype, kv.value, kv.sub)
        offsets, rel = [], 0
        for t in self.tensors:
            rel = -(-rel // self.alignment) * self.alignment
            offsets.append(rel if t.offset is None else t.offset)
            rel += len(t.data)
        for t, off in zip(self.tensors, offsets):
            name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else t.name
            self.marks.append((f"tensor info {name}", len(out)))
            out += gstr(t.name) + struct.pack("<I", len(t.ne) if t.n_dims is None else t.n_dims)
            out += b"".join(struct.pack("<Q", d) for d in t.ne)
            out += struct.pack("<IQ", t.type, off)
        self.marks.append(("alignment padding", len(out)))
        pad = -len(out) % self.alignment
        out += b"\0" * pad
        start = len(out)
        for t, off in zip(self.tensors, offsets):
            name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else t.name
            if t.offset is None:
                self.marks.append((f"data of {name}", start + off))
                if len(out) < start + off:
                    out += b"\0" * (start + off - len(out))
                out += t.data
        return bytes(out)


def _f16(x: np.ndarray) -> bytes:
    return np.asarray(x, dtype=np.float16).tobytes()


def _q8_0(x: np.ndarray) -> bytes:
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / 127
    q = np.round(blocks / np.where(d == 0, 1, d)[:, None]).astype(np.int8)
    return b"".join(np.float16(di).tobytes() + qi.tobytes() for di, qi in zip(d, q))


def tp1_block(qs: bytes, d: float | int) -> bytes:
    """One TP1 block: 13 trit bytes, then the fp16 scale (a float, or the raw 16 bits as an int)."""
    h = d if isinstance(d, int) else int(np.float16(d).view(np.uint16))
    return bytes(qs) + struct.pack("<H", h)


def tp4_block(d: float | int, sc: int, qs: bytes) -> bytes:
    h = d if isinstance(d, int) else int(np.float16(d).view(np.uint16))
    return struct.pack("<HH", h, sc) + bytes(qs)


def base_model(seed: int = 0, with_quant: bool = True) -> Craft:
    """A tiny Llama-shaped GGUF: every value type among its keys, F32/F16/Q8_0/TP1/TP4 tensors."""
    rng = np.random.default_rng(seed)
    e, v = 64, 16
    kvs = [
        KV("general.architecture", STR, "llama"),
        KV("general.name", STR, "fuzz-seed"),
        KV("general.file_type", U32, 0),
        KV("llama.context_length", U32, 128),
        KV("llama.embedding_length", U32, e),
        KV("llama.block_count", U32, 1),
        KV("llama.feed_forward_length", U32, 128),
        KV("llama.attention.head_count", U32, 2),
        KV("llama.attention.head_count_kv", U32, 2),
        KV("llama.attention.layer_norm_rms_epsilon", F32V, 1e-5),
        KV("llama.rope.freq_base", F32V, 10000.0),
        KV("test.u8", U8, 7), KV("test.i8", I8, -7), KV("test.u16", U16, 700), KV("test.i16", I16, -700),
        KV("test.i32", I32, -70000), KV("test.bool", BOOL, True), KV("test.u64", U64, 1 << 40),
        KV("test.i64", I64, -(1 << 40)), KV("test.f64", F64, 0.25),
        KV("tokenizer.ggml.model", STR, "llama"),
        KV("tokenizer.ggml.tokens", ARR, [f"t{i}" for i in range(v)], STR),
        KV("tokenizer.ggml.scores", ARR, [float(-i) for i in range(v)], F32V),
        KV("tokenizer.ggml.token_type", ARR, [1] * v, I32),
        KV("test.empty", ARR, [], U8),
    ]
    f32 = lambda *shape: (rng.standard_normal(shape) * 0.1).astype(np.float32)  # noqa: E731
    tensors = [
        Tensor("token_embd.weight", [e, v], T_F32, f32(v, e).tobytes()),
        Tensor("output_norm.weight", [e], T_F32, (1 + f32(e)).tobytes()),
        Tensor("blk.0.attn_norm.weight", [e], T_F32, (1 + f32(e)).tobytes()),
        Tensor("blk.0.attn_q.weight", [e, 32], T_F16, _f16(f32(32, e))),
        Tensor("blk.0.ffn_up.weight", [e, 32], T_F16, _f16(f32(32, e))),
    ]
    if with_quant:
        tensors.append(Tensor("blk.0.ffn_gate.weight", [e, 32], T_Q8_0, _q8_0(f32(32, e))))
        qs = rng.integers(0, 243, size=(8, 13), dtype=np.uint8)
        tensors.append(Tensor("blk.0.attn_k.weight", [e, 8], T_TP1,
                              b"".join(tp1_block(q.tobytes(), 0.01 * (1 + i)) for i, q in enumerate(qs))))
        qs4 = rng.integers(0, 256, size=(8, 32), dtype=np.uint8)
        tensors.append(Tensor("blk.0.attn_v.weight", [e, 8], T_TP4,
                              b"".join(tp4_block(0.002, int(rng.integers(0, 1 << 16)), q.tobytes()) for q in qs4)))
    return Craft(kvs, tensors)


def _aligned(a: int) -> Craft:
    c = base_model(3)
    c.kvs.append(KV("general.alignment", U32, a))
    c.alignment = a
    return c


# the committed fuzz seeds: name -> the Craft that writes it (build() also records its marks)
SEEDS = {
    "base.gguf": lambda: base_model(0),
    "floats.gguf": lambda: base_model(1, with_quant=False),
    "no_tensors.gguf": lambda: Craft(base_model(2).kvs, []),
    "align64.gguf": lambda: _aligned(64),
}


def write_seeds(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, make in SEEDS.items():
        p = folder / name
        p.write_bytes(make().build())
        out.append(p)
    return out


if __name__ == "__main__":
    for p in write_seeds(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent):
        print(p, p.stat().st_size)
