"""The rewrite policy: which type each tensor of a model gets, and why.

- 1-D tensors (norms, biases, scales) stay as they are;
- `--keep` patterns (fnmatch) stay as they are;
- the token embedding and the output get a higher-precision type by default, as llama-quantize
  does for its low-bit types (a tied embedding, used as the output, gets the output's type);
- ternary tensors (TQ1_0, TQ2_0, ternary-valued floats) become TP1 losslessly, whatever the target;
- rows that are not a multiple of 64 fall back to a stock type whose block fits (32, else F16);
- everything else gets the target type (TP4 or TP1), or its tier's type in mixed mode.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from .errors import TritpackError
from .gguf_types import TP1, TP4
from .reader import FLOAT_TYPES, TensorInfo

TARGETS = ("tp4", "tp1", "mixed")
TERNARY_SOURCE_TYPES = (Q.TQ1_0, Q.TQ2_0)
OUTPUT_NAMES = ("output.weight",)
EMBEDDING_NAMES = ("token_embd.weight",)
# added to activations (BERT's position and token-type embeddings): ggml's CPU binary ops take
# only float types there, and llama-quantize never quantizes them either
ADDED_EMBEDDINGS = ("position_embd.weight", "token_types.weight")


@dataclass
class Decision:
    type: Q
    reason: str
    quantize: bool = True   # False: bytes copied as they are
    lossless: bool = False  # a ternary source that TP1 must reproduce exactly


def row_bytes(t: Q, n: int) -> int:
    block, size = GGML_QUANT_SIZES[t]
    return n // block * size


def tensor_bytes(t: Q, info: TensorInfo) -> int:
    return info.n_rows * row_bytes(t, info.row_length)


def fits(t: Q, n: int) -> bool:
    return n % GGML_QUANT_SIZES[t][0] == 0


def _first_fitting(n: int, *candidates: Q) -> Q:
    for c in candidates:
        if fits(c, n):
            return c
    return Q.F16


def fallback(target: Q, n: int) -> Q:
    """A stock type for rows that our 64-blocks do not fit: Q4_0 for TP1, IQ4_NL for TP4, else F16."""
    return _first_fitting(n, Q.Q4_0 if target == TP1.qtype else Q.IQ4_NL)


def high_precision(n: int, for_output: bool, target: Q) -> Q:
    """Token embedding / output type: Q6_K (Q8_0 where rows are not a multiple of 256) for the
    output; for the embedding Q6_K with TP4 and Q4_K (Q5_0) with TP1, as llama-quantize does."""
    if for_output or target == TP4.qtype:
        return _first_fitting(n, Q.Q6_K, Q.Q8_0)
    return _first_fitting(n, Q.Q4_K, Q.Q5_0, Q.Q8_0)


def is_ternary(values: np.ndarray, block: int = 64) -> bool:
    """Every 64-block holds only {-s, 0, +s} with s exactly representable in fp16 (then TP1 is exact)."""
    v = values.reshape(-1)
    if v.size % block:
        return False
    a = np.abs(v.reshape(-1, block))
    s = a.max(axis=1)
    if not np.all(np.isfinite(s)):
        return False
    with np.errstate(over="ignore"):  # a scale past fp16's range is simply not ternary-exact
        if not np.array_equal(s.astype(np.float16).astype(np.float32), s):
            return False
    return bool(np.all((a == 0) | (a == s[:, None])))


def decide(info: TensorInfo, target: Q, keep: list[str], tied_embedding: bool,
           embed_type: Q | None = None, output_type: Q | None = None) -> Decision:
    """The type of one tensor (before the ternary check, which needs its values)."""
    n = info.row_length
    if info.is_1d or len(info.shape) < 2:
        return Decision(info.type, "1-D (norm/bias) kept", quantize=False)
    if info.name in ADDED_EMBEDDINGS:
        return Decision(info.type, "added embedding kept (not a matmul weight)", quantize=False)
    for pattern in keep:
        if fnmatch.fnmatchcase(info.name, pattern):
            return Decision(info.type, f"kept (--keep {pattern})", quantize=False)
    if info.name in OUTPUT_NAMES or (tied_embedding and info.name in EMBEDDING_NAMES):
        t = output_type or high_precision(n, True, target)
        return Decision(t, "output: higher precision" + (" (tied embedding)" if info.name in EMBEDDING_NAMES else ""))
    if info.name in EMBEDDING_NAMES:
        t = embed_type or high_precision(n, False, target)
        return Decision(t, "token embedding: higher precision")
    if info.type in TERNARY_SOURCE_TYPES and fits(TP1.qtype, n):
        return Decision(TP1.qtype, f"ternary source ({info.type.name}): TP1, lossless", lossless=True)
    if not fits(target, n):
        fb = fallback(target, n)
        return Decision(fb, f"rows of {n} not a multiple of {GGML_QUANT_SIZES[target][0]}: {fb.name}")
    return Decision(target, target.name)


def is_embedding_or_output(name: str) -> bool:
    return name in OUTPUT_NAMES or name in EMBEDDING_NAMES


def may_be_ternary(info: TensorInfo) -> bool:
    """Worth checking the values for ternarity (float sources only; quantized ones are not)."""
    return info.type in FLOAT_TYPES and fits(TP1.qtype, info.row_length)


def choose_tiers(lowest: dict[str, str], err: dict[str, dict[str, float]], size: dict[str, dict[str, int]],
                 fixed: int, budget: int, order: list[str]) -> dict[str, str]:
    """The tier of each tensor that meets `budget` (bytes, `fixed` of them spent on untiered tensors)
    with the least total error: every tensor starts at its lowest tier, then the upgrades with the
    best error saved per byte are taken until the budget is spent. `err[name][tier]` and
    `size[name][tier]` are measured for every tier from the tensor's lowest up; `order` runs from the
    smallest tier to the largest."""
    choice = dict(lowest)
    total = fixed + sum(size[name][tier] for name, tier in choice.items())
    if total > budget:
        raise TritpackError(f"the budget of {budget / 1e6:.1f} MB is below the smallest mix "
                            f"({total / 1e6:.1f} MB: every tiered tensor at its lowest tier, TP1, or TP4 for the "
                            f"token embedding and output; the rest as the policy keeps them)")
    while True:
        best = None
        for name, tier in choice.items():
            if tier == order[-1]:
                continue
            nxt = order[order.index(tier) + 1]
            extra = size[name][nxt] - size[name][tier]
            gain = err[name][tier] - err[name][nxt]
            if extra <= 0 or total + extra > budget or gain <= 0:
                continue
            score = gain / extra
            if best is None or score > best[0]:
                best = (score, name, nxt, extra)
        if best is None:
            return choice
        _, name, nxt, extra = best
        choice[name] = nxt
        total += extra
