"""Importance matrices from llama-imatrix: the GGUF format (current) and the legacy .dat format.

An imatrix gives, per weight tensor, one non-negative weight per column (the mean squared
activation feeding it); the quantizers weight their error with it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .errors import TritpackError


def load_imatrix(path: str | Path) -> dict[str, np.ndarray]:
    """{tensor name: float32 weights of length row_length (or n_expert * row_length)}."""
    p = Path(path)
    if not p.is_file():
        raise TritpackError("no such imatrix file", path=p)
    with open(p, "rb") as f:
        magic = f.read(4)
    return _load_gguf(p) if magic == b"GGUF" else _load_dat(p)


def _load_gguf(p: Path) -> dict[str, np.ndarray]:
    from .reader import GGUFFile

    g = GGUFFile(p)
    sums = {t.name[: -len(".in_sum2")]: t for t in g.tensors if t.name.endswith(".in_sum2")}
    counts = {t.name[: -len(".counts")]: t for t in g.tensors if t.name.endswith(".counts")}
    if not sums:
        raise TritpackError("no <tensor>.in_sum2 entries: not an imatrix GGUF", path=p)
    out = {}
    for name, t in sums.items():
        s = np.frombuffer(g.raw(t).tobytes(), dtype=np.float32).reshape(-1, t.row_length)
        c = counts.get(name)
        n = np.frombuffer(g.raw(c).tobytes(), dtype=np.float32).reshape(-1, 1) if c is not None else np.ones((s.shape[0], 1), np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(n > 0, s / np.maximum(n, 1e-30), 0.0).astype(np.float32)
        out[name] = _checked(w.ravel(), p, name)
    return out


def _load_dat(p: Path) -> dict[str, np.ndarray]:
    data = p.read_bytes()
    out: dict[str, np.ndarray] = {}
    try:
        (n_entries,) = struct.unpack_from("<i", data, 0)
        off = 4
        if not 0 < n_entries < 1_000_000:
            raise ValueError(f"implausible entry count {n_entries}")
        for _ in range(n_entries):
            (name_len,) = struct.unpack_from("<i", data, off); off += 4
            if not 0 < name_len < 4096 or off + name_len > len(data):
                raise ValueError("bad name length")
            name = data[off:off + name_len].decode(); off += name_len
            ncall, nval = struct.unpack_from("<ii", data, off); off += 8
            if nval <= 0 or off + 4 * nval > len(data):
                raise ValueError(f"bad value count for {name}")
            vals = np.frombuffer(data, dtype=np.float32, count=nval, offset=off); off += 4 * nval
            out[name] = _checked(vals / max(ncall, 1), p, name)
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise TritpackError(f"not a llama-imatrix file ({e})", path=p) from None
    return out


def _checked(w: np.ndarray, p: Path, name: str) -> np.ndarray:
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise TritpackError("imatrix weights are negative, NaN or Inf", path=p, tensor=name)
    return np.ascontiguousarray(w, dtype=np.float32)
