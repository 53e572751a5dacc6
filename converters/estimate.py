"""The one size estimator: what converting a GGUF would give, from tensor shapes alone, by the
converter's own policy (policy.decide) for TP1/TP4 and llama-quantize's rules for the stock types.
`tritpack-gguf estimate`, `ollama list` and the Ollama-compatible server's listings all use it.

Ternary tensors, which convert makes TP1 whatever the target, are counted at the target type (the
values are not read); so are the tiers of `--type mixed`, which this does not estimate.
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from . import policy
from .errors import TritpackError
from .gguf_types import TYPE_TP1, TYPE_TP4
from .reader import GGUFFile

STOCK_ESTIMATES = ("F16", "Q8_0", "Q4_0", "Q4_K_M", "IQ4_XS", "TQ1_0", "TQ2_0")
_STOCK_BASE = {"F16": Q.F16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_K_M": Q.Q4_K, "IQ4_XS": Q.IQ4_XS,
               "TQ1_0": Q.TQ1_0, "TQ2_0": Q.TQ2_0}
_STOCK_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.IQ4_XS: Q.IQ4_NL, Q.TQ1_0: Q.Q4_0, Q.TQ2_0: Q.Q4_0}
METHOD = ("an estimate from tensor shapes by the converter's policy: 1-D tensors kept; the token embedding "
          "and output at a higher-precision stock type; other tensors whose rows are a multiple of 64 at TP4 "
          "(36 bytes per 64) or TP1 (15 bytes per 64), the rest at a stock type whose block fits; metadata kept")


def estimate(f: GGUFFile, types: list[str] | None = None) -> dict:
    """Tensor-data sizes of the parsed file `f` after conversion to each type (default: TP4, TP1 and
    STOCK_ESTIMATES): {"estimates": {TYPE: {"bytes", "bpw"}}}, with the file's own size, tensor bytes
    and weight count."""
    tied = _tied(f)
    wanted = [x.upper() for x in (types or ["TP4", "TP1", *STOCK_ESTIMATES])]
    n_weights = sum(t.n_elements for t in f.tensors)
    out = {"path": str(f.path), "size": f.path.stat().st_size, "tensor_bytes": sum(t.nbytes for t in f.tensors),
           "n_weights": n_weights, "estimates": {}}
    for name in wanted:
        if name in ("TP4", "TP1"):
            total, _ = _ours(f, TYPE_TP4.qtype if name == "TP4" else TYPE_TP1.qtype, tied)
        elif name in _STOCK_BASE:
            total = sum(_stock_bytes(t, _STOCK_BASE[name], tied) for t in f.tensors)
        else:
            raise TritpackError(f"unknown type {name!r} for estimate; choose from TP4, TP1, {', '.join(STOCK_ESTIMATES)}")
        out["estimates"][name] = {"bytes": total, "bpw": round(8 * total / max(1, n_weights), 4)}
    return out


def _tied(f: GGUFFile) -> bool:
    return "output.weight" not in {t.name for t in f.tensors}


def _ours(f: GGUFFile, target: Q, tied: bool) -> tuple[int, int]:
    """(tensor bytes, tensors made `target`) of a conversion to TP1 or TP4, by policy.decide."""
    total = packed = 0
    for t in f.tensors:
        d = policy.decide(t, target, [], tied)
        total += policy.tensor_bytes(d.type, t) if d.quantize else t.nbytes
        packed += d.quantize and d.type == target
    return total, packed


def estimate_file(path: str | Path, types: list[str] | None = None) -> dict:
    """estimate() of the GGUF at `path`."""
    return estimate(GGUFFile(path), types)


def file_sizes(f: GGUFFile) -> dict:
    """For listings: the whole file's size after conversion to TP4 and to TP1 (the tensors as
    estimate() counts them; metadata and padding as they are now)."""
    tied = _tied(f)
    size = f.path.stat().st_size
    current = sum(t.nbytes for t in f.tensors)
    overhead = max(size - current, 0)
    tp4, packed = _ours(f, TYPE_TP4.qtype, tied)
    tp1, _ = _ours(f, TYPE_TP1.qtype, tied)
    return {"path": str(f.path), "estimate": True, "method": METHOD, "file_bytes": size, "tensor_bytes": current,
            "n_tensors": len(f.tensors), "n_packed": packed, "n_params": sum(t.n_elements for t in f.tensors),
            "tp4_bytes": overhead + tp4, "tp1_bytes": overhead + tp1}


def dominant_type(f: GGUFFile) -> str | None:
    """The type holding most of the weights of the 2-D tensors (a model's "quantization")."""
    by_type: dict[Q, int] = {}
    for t in f.tensors:
        if not t.is_1d:
            by_type[t.type] = by_type.get(t.type, 0) + t.n_elements
    return max(by_type, key=by_type.__getitem__).name if by_type else None


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
