"""`inspect` and `estimate`: what a GGUF holds, how it compares with its original, and what
converting it would give, without converting."""

from __future__ import annotations

from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from .converters import policy
from .converters.gguf_types import TP1, TP4
from .converters.metrics import ErrorStats
from .converters.reader import GGUFFile, to_float32
from .errors import TritpackError

STOCK_ESTIMATES = ("F16", "Q8_0", "Q4_0", "Q4_K_M", "IQ4_XS", "TQ1_0", "TQ2_0")
_STOCK_BASE = {"F16": Q.F16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_K_M": Q.Q4_K, "IQ4_XS": Q.IQ4_XS,
               "TQ1_0": Q.TQ1_0, "TQ2_0": Q.TQ2_0}
_STOCK_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.IQ4_XS: Q.IQ4_NL, Q.TQ1_0: Q.Q4_0, Q.TQ2_0: Q.Q4_0}


def inspect_file(path: str | Path, against: str | Path | None = None, ggml=None) -> dict:
    f = GGUFFile(path)
    doc = {"path": str(f.path), "size": f.path.stat().st_size, "architecture": f.get("general.architecture"),
           "file_type": f.get("general.file_type"), "n_tensors": len(f.tensors),
           "n_weights": sum(t.n_elements for t in f.tensors),
           "tritpack": {k: f.get(k) for k in f.fields if k.startswith("tritpack.") and not k.startswith("tritpack.alpha")},
           "tensors": []}
    alphas = dict(zip(f.get("tritpack.alpha.tensors") or [], f.get("tritpack.alpha.values") or []))
    orig = GGUFFile(against) if against else None
    if orig is not None and ggml is None:
        from .ggml_lib import load_ggml

        ggml = load_ggml()
    counts: dict[str, int] = {}
    for t in f.tensors:
        counts[t.type.name] = counts.get(t.type.name, 0) + 1
        row = {"name": t.name, "shape": list(t.shape), "type": t.type.name, "bytes": t.nbytes,
               "bpw": round(8 * t.nbytes / max(1, t.n_elements), 4)}
        if t.name in alphas:
            row["alpha"] = round(float(alphas[t.name]), 4)
        if orig is not None:
            try:
                o = orig.tensor(t.name)
            except KeyError:
                raise TritpackError("no such tensor in the original", path=orig.path, tensor=t.name) from None
            if o.shape != t.shape:
                raise TritpackError(f"shape {list(o.shape)} in the original, {list(t.shape)} here", path=orig.path, tensor=t.name)
            s = ErrorStats()
            step = max(1, (1 << 22) // max(1, t.row_length))
            raw_a, raw_b = orig.raw(o), f.raw(t)
            for r0 in range(0, t.n_rows, step):
                s.add(to_float32(ggml, o, raw_a[r0:r0 + step], orig.path), to_float32(ggml, t, raw_b[r0:r0 + step], f.path))
            row.update(s.as_dict())
        doc["tensors"].append(row)
    doc["type_counts"] = counts
    doc["bpw"] = round(8 * sum(t.nbytes for t in f.tensors) / max(1, doc["n_weights"]), 4)
    if orig is not None:
        doc["against"] = str(orig.path)
    return doc


def estimate_file(path: str | Path, types: list[str] | None = None) -> dict:
    """Tensor-data sizes after conversion to each type, from shapes alone (our policy for TP1/TP4,
    llama-quantize's fallbacks for the stock types; ternary tensors, which convert makes TP1, are
    counted at the target type)."""
    f = GGUFFile(path)
    names = {t.name for t in f.tensors}
    tied = "output.weight" not in names
    wanted = [x.upper() for x in (types or ["TP4", "TP1", *STOCK_ESTIMATES])]
    n_weights = sum(t.n_elements for t in f.tensors)
    out = {"path": str(f.path), "size": f.path.stat().st_size, "tensor_bytes": sum(t.nbytes for t in f.tensors),
           "n_weights": n_weights, "estimates": {}}
    for name in wanted:
        total = 0
        for t in f.tensors:
            if name in ("TP4", "TP1"):
                d = policy.decide(t, TP4.qtype if name == "TP4" else TP1.qtype, [], tied)
                total += policy.tensor_bytes(d.type, t) if d.quantize else t.nbytes
            elif name in _STOCK_BASE:
                total += _stock_bytes(t, _STOCK_BASE[name], tied)
            else:
                raise TritpackError(f"unknown type {name!r} for estimate; choose from TP4, TP1, {', '.join(STOCK_ESTIMATES)}")
        out["estimates"][name] = {"bytes": total, "bpw": round(8 * total / max(1, n_weights), 4)}
    return out


def _stock_bytes(t, base: Q, tied: bool) -> int:
    if t.is_1d:
        return t.nbytes
    n = t.row_length
    typ = base
    if base not in (Q.F16, Q.Q8_0) and (t.name == "output.weight" or (tied and t.name == "token_embd.weight")):
        typ = Q.Q6_K
    if not policy.fits(typ, n):
        typ = _STOCK_FALLBACK.get(typ, Q.Q8_0 if typ == Q.Q6_K else typ)
        if not policy.fits(typ, n):
            typ = Q.F16
    return t.n_rows * n // GGML_QUANT_SIZES[typ][0] * GGML_QUANT_SIZES[typ][1]
