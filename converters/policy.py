"""The rewrite policy: which type each tensor of a model gets, and why.

- 1-D tensors (norms, biases, scales) stay as they are;
- `--keep` patterns (fnmatch) stay as they are;
- the token embedding and the output get a higher-precision type by default, as llama-quantize
  does for its low-bit types (a tied embedding, used as the output, gets the output's type);
- ternary tensors (TQ1_0, TQ2_0, ternary-valued floats) become TP1 losslessly, whatever the target;
- rows that are not a multiple of 64 fall back to a stock type whose block fits (32, else F16);
- everything else gets the target type (TP4 or TP1); in mixed mode every quantized tensor chooses from
  the palette (TP1, TP4 and the stock types its rows allow) by measured error per byte (choose_tiers).
"""

from __future__ import annotations

import fnmatch
import heapq
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from .errors import TritpackError
from .gguf_types import TYPE_TP1, TYPE_TP4
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
    return _first_fitting(n, Q.Q4_0 if target == TYPE_TP1.qtype else Q.IQ4_NL)


def high_precision(n: int, for_output: bool, target: Q) -> Q:
    """Token embedding / output type: Q6_K (Q8_0 where rows are not a multiple of 256) for the
    output; for the embedding Q6_K with TP4 and Q4_K (Q5_0) with TP1, as llama-quantize does."""
    if for_output or target == TYPE_TP4.qtype:
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
    if info.type in TERNARY_SOURCE_TYPES and fits(TYPE_TP1.qtype, n):
        return Decision(TYPE_TP1.qtype, f"ternary source ({info.type.name}): TP1, lossless", lossless=True)
    if not fits(target, n):
        fb = fallback(target, n)
        return Decision(fb, f"rows of {n} not a multiple of {GGML_QUANT_SIZES[target][0]}: {fb.name}")
    return Decision(target, target.name)


def is_embedding_or_output(name: str) -> bool:
    return name in OUTPUT_NAMES or name in EMBEDDING_NAMES


def may_be_ternary(info: TensorInfo) -> bool:
    """Worth checking the values for ternarity (float sources only; quantized ones are not)."""
    return info.type in FLOAT_TYPES and fits(TYPE_TP1.qtype, info.row_length)


# --type mixed: the palette every tiered tensor chooses from, smallest first. A tensor may take a type
# whose block divides its rows (so the 256-superblock K- and i-quants only where 256 divides the row);
# the i-quants below 4 bits only with an imatrix (ggml refuses IQ2_XXS/IQ2_XS without one, and the
# others lose badly without); the output (and a tied token embedding, which is the output too) never
# goes below 4 bits, an untied token embedding never below 2.5 (never ternary). Q4_1 is left
# out: at its 5 bpw Q5_0 and TP4 beat it on trained weights, and on a model that was once Q4_1 (our
# benchmark's SmolLM2 F16 is its Q4_1 GGUF dequantized) it would reproduce the weights exactly and
# make any comparison meaningless.
PALETTE = (TYPE_TP1.qtype, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.Q2_K, Q.IQ3_XXS, Q.IQ3_S, Q.Q3_K, Q.IQ4_XS, Q.Q4_0,
           Q.IQ4_NL, Q.Q4_K, TYPE_TP4.qtype, Q.Q5_0, Q.Q5_K, Q.Q5_1, Q.Q6_K, Q.Q8_0, Q.F16)
IMATRIX_ONLY = (Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S)
OUTPUT_MIN_BPW = 4.0
EMBEDDING_MIN_BPW = 2.5
# llama-quantize's presets (its ftype names) that --like accepts
PRESETS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "TQ1_0",
           "TQ2_0", "Q2_K", "Q2_K_S", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "Q3_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
           "IQ4_NL", "IQ4_XS", "Q4_K", "Q4_K_S", "Q4_K_M", "Q5_K", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16")


def bpw(t: Q) -> float:
    block, size = GGML_QUANT_SIZES[t]
    return 8.0 * size / block


def preset(name: str) -> str:
    """A --like preset name, checked (case does not matter)."""
    p = name.strip().upper()
    if p not in PRESETS:
        raise TritpackError(f"unknown preset {name!r} for --like; choose one of llama-quantize's: {', '.join(PRESETS)}")
    return p


def min_bpw(name: str, tied_embedding: bool) -> float:
    """The fewest bits a weight --type mixed may give this tensor (see PALETTE)."""
    if name in OUTPUT_NAMES or (tied_embedding and name in EMBEDDING_NAMES):
        return OUTPUT_MIN_BPW
    return EMBEDDING_MIN_BPW if name in EMBEDDING_NAMES else 0.0


def palette(n: int, imatrix: bool, least_bpw: float = 0.0) -> list[Q]:
    """The types --type mixed may give a tensor with rows of `n` (smallest first): see PALETTE."""
    return [t for t in PALETTE
            if fits(t, n) and (imatrix or t not in IMATRIX_ONLY) and bpw(t) >= least_bpw]


def _hull(opts: dict[str, tuple[int, float]]) -> list[str]:
    """The options on the lower convex hull of (size, error), smallest first: every other option costs
    more bytes for the error, or saves less error per byte than a mix of two hull points."""
    pts = sorted(opts, key=lambda o: (opts[o][0], opts[o][1]))
    hull: list[str] = []
    for o in pts:
        s, e = opts[o]
        if hull and e >= opts[hull[-1]][1]:
            continue  # no better than a smaller (or equal) option
        while len(hull) >= 2:
            (s1, e1), (s2, e2) = opts[hull[-2]], opts[hull[-1]]
            # drop the middle point when it lies on or above the line from hull[-2] to o
            if (e1 - e2) * (s - s1) <= (e1 - e) * (s2 - s1):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def choose_tiers(err: dict[str, dict[str, float]], size: dict[str, dict[str, int]], fixed: int,
                 budget: int) -> dict[str, str]:
    """The option (a type, a tier) of each tensor that meets `budget` (bytes, `fixed` of them spent on
    untiered tensors) with the least total error. `err[name][option]` and `size[name][option]` are
    measured for every option the tensor may take.

    Each tensor starts at its smallest option (the least error among equal sizes); the steps along each
    tensor's lower convex hull of (size, error) are then taken best error saved per byte first while
    they fit (optimal at every budget that a hull step ends on); last, the bytes left are filled by the
    single switches (any option, hull or not) that save the most error and still fit."""
    opts = {n: {o: (size[n][o], err[n][o]) for o in err[n]} for n in err}
    hulls = {n: _hull(o) for n, o in opts.items()}
    choice = {n: h[0] for n, h in hulls.items()}
    total = fixed + sum(opts[n][o][0] for n, o in choice.items())
    if total > budget:
        raise TritpackError(f"the budget of {budget / 1e6:.1f} MB is below the smallest mix "
                            f"({total / 1e6:.1f} MB: every tiered tensor at its smallest type, TP1 for the matrices, "
                            f"4 bits for the output, 2.5 for an untied token embedding; the rest as the policy keeps them)")
    names = sorted(choice)
    rank = {n: i for i, n in enumerate(names)}
    heap: list[tuple[float, int, str, int]] = []

    def push(n: str) -> None:
        h = hulls[n]
        i = h.index(choice[n])
        if i + 1 < len(h):
            (s0, e0), (s1, e1) = opts[n][h[i]], opts[n][h[i + 1]]
            heapq.heappush(heap, (-(e0 - e1) / max(s1 - s0, 1), rank[n], n, i + 1))

    for n in names:
        push(n)
    while heap:
        _, _, n, i = heapq.heappop(heap)
        nxt = hulls[n][i]
        extra = opts[n][nxt][0] - opts[n][choice[n]][0]
        if total + extra > budget:
            continue  # this tensor's next hull step does not fit; the fill below may still use a smaller one
        choice[n] = nxt
        total += extra
        push(n)
    while True:
        best = None
        for n in names:
            s0, e0 = opts[n][choice[n]]
            for o, (s, e) in opts[n].items():
                if e < e0 and total + s - s0 <= budget and (best is None or e0 - e > best[0]):
                    best = (e0 - e, n, o, s - s0)
        if best is None:
            return choice
        _, n, o, extra = best
        choice[n] = o
        total += extra
