"""`verify`: a TritPack GGUF against its own exact reference, run through the same library.

The reference holds the same weights dequantized to F32 (made on the fly in a temporary folder when
none is given): the TP1/TP4 tensors are dequantized by the library's own to_float, the other tensors
are copied as they are (they run through the same stock kernels in both models; `all_f32` dequantizes
them too). Both models read the same tokens, each prompt then the reference's greedy continuation
(teacher forcing), and every position's logits are compared; "the comparison" below says how a near
tie is told from a fault, and why the logits are not bit-identical (TP4's CPU matmul quantizes its
activations to Q8_0, TP1's to TPQ16). `check_data` adds llama.cpp's tensor validation
(ggml_validate_row_data: NaN/Inf block scales and values).

Files are checked first by converters/reader.py (and the library's types): a broken one is one
TritpackError naming it. llama.cpp then loads, tokenizes and decodes in one child process
(llama_child.py) for both models, so that an abort in it (a vocabulary without byte tokens) or a
crash is a TritpackError naming the file and what llama.cpp was doing, not the end of this process.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from gguf import GGMLQuantizationType as Q

from .converters.gguf_types import BY_NAME
from .errors import TritpackError

if TYPE_CHECKING:
    from .converters.header import GGUFHeader

Progress = Callable[[str, int, int], None]
ROWS_PER_CHUNK_VALUES = 1 << 22  # floats dequantized at a time while writing a reference


def _quiet(*_a) -> None:
    pass


# ----------------------------------------------------------------------------- the reference

def _type_name(t: int) -> str:
    try:
        return Q(t).name
    except ValueError:
        return f"type {t}"


def _check_known(g, h: GGUFHeader) -> None:
    from .converters.reader import _show

    for t in h.tensors:
        if not g.knows(t.type):
            raise TritpackError(f"tensor type {_type_name(t.type)} is unknown to the llama.cpp library", path=h.path,
                                tensor=_show(t.name))


def _dequantized(h: GGUFHeader, all_f32: bool) -> set[str]:
    """Names of the tensors the reference holds as F32 (the others it copies as they are)."""
    ours = {t.id for t in BY_NAME.values()}
    return {t.name for t in h.tensors if t.type in ours or (all_f32 and t.type != int(Q.F32))}


def make_reference(model: str | Path, output: str | Path, *, all_f32: bool = False,
                   progress: Progress = _quiet, header: GGUFHeader | None = None) -> Path:
    """Write `output`: `model` with its TP1/TP4 tensors (every non-F32 tensor with `all_f32`)
    dequantized to F32 by the library's to_float, through the project's GGUF writer
    (converters/writer.GGUFOutput: the key/values go over as their bytes, the tritpack.* ones and
    general.file_type dropped, so a large vocabulary costs nothing to carry).
    `header`: the model's header when the caller has read it (read here otherwise)."""
    from gguf import GGUFValueType

    from .converters.reader import to_float32
    from .converters.writer import GGUFOutput
    from .ggml_lib import load_ggml
    from .runtime import read_header

    h = header if header is not None else read_header(model)
    src = h.source
    out = Path(output)
    if out.exists() and out.resolve() == h.path.resolve():
        raise TritpackError("the reference would overwrite the model", path=out)
    g = load_ggml()
    _check_known(g, h)
    deq = _dequantized(h, all_f32)
    plans = [(t, t.name in deq, t.n_elements * 4 if t.name in deq else t.nbytes) for t in src.tensors]
    need = src.data_offset + sum(n + src.alignment for *_, n in plans)
    free = shutil.disk_usage(out.parent).free
    if need > free * 0.98:
        raise TritpackError(f"the F32 reference needs {need / 1e9:.2f} GB and {out.parent} has {free / 1e9:.2f} GB free",
                            path=out, hint="give one with --reference, or point TMPDIR at a larger disk")
    try:
        with GGUFOutput(out, src, force=True, skip={"general.file_type"}, what="reference") as w:
            if all_f32:
                w.add_key_value("general.file_type", 0, GGUFValueType.UINT32)  # ALL_F32
            for t, d, nbytes in plans:
                w.add_tensor(t.name, t.shape, Q.F32 if d else t.type, nbytes)
            w.start_data()
            for i, (t, d, nbytes) in enumerate(plans):
                progress(f"reference {i + 1}/{len(plans)} {t.name}", i, len(plans))
                w.begin_tensor()
                raw = src.raw(t)
                if not d:
                    w.write(raw.tobytes())
                else:
                    step = max(1, ROWS_PER_CHUNK_VALUES // max(1, t.row_length))
                    for r0 in range(0, t.n_rows, step):
                        w.write(to_float32(g, t, raw[r0:r0 + step], path=h.path).astype("<f4", copy=False))
                src.release(t)
                w.end_tensor(t.name)
            w.publish()
    except TritpackError as e:
        if "no space left" in e.message:
            e.hint = e.hint or "give one with --reference, or point TMPDIR at a larger disk"
        raise
    progress("reference written", len(plans), len(plans))
    return out


# ----------------------------------------------------------------------------- tensor data

@dataclass
class DataIssue:
    tensor: str
    type: str
    row: int
    block: int
    message: str


@contextmanager
def _c_stderr_silenced() -> Iterator[None]:
    """ggml_validate_row_data prints each finding on fd 2; the report says it once, better."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def check_tensor_data(model: str | Path, *, progress: Progress = _quiet, max_issues: int = 20,
                      header: GGUFHeader | None = None) -> tuple[int, list[DataIssue]]:
    """Run ggml_validate_row_data (what llama.cpp's check_tensors runs) over every tensor of `model`.
    Returns (tensors checked, issues); an issue names the tensor, its first bad row and block.
    `header`: the model's header when the caller has read it (read here otherwise)."""
    from .ggml_lib import load_ggml
    from .runtime import read_header

    h = header if header is not None else read_header(model)
    g = load_ggml()
    issues: list[DataIssue] = []
    checked = 0
    size = h.path.stat().st_size
    for i, t in enumerate(h.tensors):
        progress(f"checking {i + 1}/{len(h.tensors)} {t.name}", i, len(h.tensors))
        if not g.knows(t.type):
            issues.append(DataIssue(t.name, _type_name(t.type), -1, -1, "type unknown to the library"))
            continue
        rows = int(np.prod(t.ne[1:], dtype=np.int64)) if len(t.ne) > 1 else 1
        row_bytes = g.row_size(t.type, t.ne[0] if t.ne else 1)
        start = h.data_offset + t.offset
        if start + rows * row_bytes > size:
            issues.append(DataIssue(t.name, _type_name(t.type), -1, -1, "data runs past the end of the file"))
            continue
        checked += 1
        if rows * row_bytes == 0:
            continue
        raw = np.memmap(h.path, dtype=np.uint8, mode="r", offset=start, shape=(rows, row_bytes))
        with _c_stderr_silenced():
            bad = _find_bad_block(g, t.type, raw)
        del raw
        if bad is not None:
            what = "value" if g.block_size(t.type) == 1 else "block scale"
            issues.append(DataIssue(t.name, _type_name(t.type), bad[0], bad[1], f"NaN or Inf {what}"))
            if len(issues) >= max_issues:
                break
    return checked, issues


def _find_bad_block(g, tid: int, raw: np.ndarray) -> tuple[int, int] | None:
    """(row, block) of the first block ggml_validate_row_data rejects, or None when all pass."""
    rows_per_chunk = max(1, (1 << 24) // max(1, raw.shape[1]))
    for r0 in range(0, raw.shape[0], rows_per_chunk):
        chunk = raw[r0:r0 + rows_per_chunk]
        if g.validate_row_data(tid, chunk):
            continue
        row = r0 + _first_bad(lambda a, b: g.validate_row_data(tid, chunk[a:b]), chunk.shape[0])
        bsize = g.type_size(tid)
        line = np.ascontiguousarray(raw[row])
        return row, _first_bad(lambda a, b: g.validate_row_data(tid, line[a * bsize:b * bsize]), raw.shape[1] // bsize)
    return None


def _first_bad(ok: Callable[[int, int], bool], n: int) -> int:
    """The first index i in [0, n) whose item fails (ok(a, b) validates items a..b-1); bisection."""
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(lo, mid):
            lo = mid
        else:
            hi = mid
    return lo


# ----------------------------------------------------------------------------- prompts

def default_prompts() -> list[str]:
    """The short, varied texts shipped with the package (verify_prompts.txt): verify reads them all
    by default, so that no one prompt's near ties decide."""
    from importlib.resources import files

    text = files("tritpack_gguf").joinpath("verify_prompts.txt").read_text(encoding="utf-8")
    return [line.replace("\\n", "\n") for line in text.splitlines() if line.strip() and not line.startswith("#")]


# ----------------------------------------------------------------------------- running a model

@dataclass
class GreedyRun:
    prompt_logits: np.ndarray    # (n_prompt, n_vocab)
    cont_logits: np.ndarray      # (n, n_vocab): the logits before each continuation token
    tokens: list[int]            # the continuation: the greedy one, or the `follow`ed one
    pieces: list[str]            # each token's text
    text: str
    load_s: float
    eval_s: float
    top_pieces: dict[int, str] = field(default_factory=dict)  # text of every row's top-1 token


def greedy_run(path: str | Path, prompt_tokens: list[int], n: int, *, follow: list[int] | None = None, ngl: int = 0,
               threads: int | None = None, child=None, rpc: list[str] | None = None,
               tensor_split: list[float] | None = None, rpc_stall_s: float | None = None) -> GreedyRun:
    """Feed `prompt_tokens`, then n tokens: the argmax ones, or those of `follow` (teacher forcing:
    the model reads the given path and its logits along it are kept). Runs in `child` (a
    llama_child.LlamaChild), else in a child process of its own. `rpc`: endpoints of RPC helpers to
    split the layers with (checked first, see rpc.check_servers)."""
    return greedy_runs(path, [prompt_tokens], n, follow=None if follow is None else [follow], ngl=ngl,
                       threads=threads, child=child, rpc=rpc, tensor_split=tensor_split, rpc_stall_s=rpc_stall_s)[0]


def greedy_runs(path: str | Path, prompts: list[list[int]], n: int, *, follow: list[list[int]] | None = None,
                ngl: int = 0, threads: int | None = None, child=None, rpc: list[str] | None = None,
                tensor_split: list[float] | None = None, rpc_stall_s: float | None = None) -> list[GreedyRun]:
    """greedy_run() for several prompts with the model loaded once. With `rpc`, the dead-helper
    rule (programs.HelperWatch): a helper that dies is an error naming it, and no decoded token for
    `rpc_stall_s` (default programs.STALL_S) is that error too, not a hang."""
    if child is None:
        from .llama_child import LlamaChild

        with LlamaChild() as c:
            return greedy_runs(path, prompts, n, follow=follow, ngl=ngl, threads=threads, child=c, rpc=rpc,
                               tensor_split=tensor_split, rpc_stall_s=rpc_stall_s)
    from .programs import HelperWatch

    split = {}
    if rpc:
        from .rpc import check_servers, parse_endpoints

        rpc = parse_endpoints(rpc)
        check_servers(rpc)
        split = dict(rpc=rpc, tensor_split=tensor_split)
    return child.call("tritpack_gguf.verify:_greedy_runs_here", Path(path), [list(p) for p in prompts], n,
                      follow=follow, ngl=ngl, threads=threads, path=path, stage="loading the model",
                      watch=HelperWatch(list(rpc or []), rpc_stall_s), **split)


def _greedy_runs_here(path: Path, prompts: list[list[int]], n: int, *, follow: list[list[int]] | None = None,
                      ngl: int = 0, threads: int | None = None, emit=_quiet, rpc: list[str] | None = None,
                      tensor_split: list[float] | None = None) -> list[GreedyRun]:
    """greedy_runs() in the process that holds llama.cpp: the prompt in one batch (the batched
    matmul path), the continuation a token at a time (the decode path)."""
    from .run import open_model_here

    longest = max(len(p) for p in prompts)
    n_ctx = max(64, longest + n + 8)
    t0 = time.perf_counter()
    split = dict(rpc=rpc, tensor_split=tensor_split, rpc_check=False) if rpc else {}
    llm = open_model_here(path, emit, n_ctx=n_ctx, n_batch=max(32, longest), n_ubatch=max(32, longest),
                          logits_all=True, n_gpu_layers=ngl, n_threads=threads, n_threads_batch=threads, seed=0,
                          **split)
    load_s = time.perf_counter() - t0
    runs = []
    try:
        if llm.n_vocab() <= 0:
            raise TritpackError("the model has no vocabulary", path=path)
        for k, prompt_tokens in enumerate(prompts):
            forced = follow[k] if follow is not None else None
            t0 = time.perf_counter()
            llm.reset()
            emit(("stage", f"evaluating prompt {k + 1} of {len(prompts)}"))
            llm.eval(prompt_tokens)
            np_ = len(prompt_tokens)
            prompt_logits = np.array(llm.scores[:np_], dtype=np.float32)
            cont_logits = np.empty((n, prompt_logits.shape[1]), dtype=np.float32)
            tokens: list[int] = []
            last = prompt_logits[-1]
            emit(("stage", f"decoding the continuation of prompt {k + 1} of {len(prompts)}"))
            for i in range(n):
                cont_logits[i] = last
                tok = int(forced[i]) if forced is not None else int(np.argmax(last))
                tokens.append(tok)
                if i + 1 < n:
                    llm.eval([tok])
                    last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
                    emit(("progress", i))  # a token decoded (a split run's watch counts it)
            eval_s = time.perf_counter() - t0
            emit(("stage", "detokenizing the continuation"))
            text = llm.detokenize(tokens, prev_tokens=prompt_tokens).decode("utf-8", "replace")
            pieces = [llm.detokenize([t]).decode("utf-8", "replace") for t in tokens]
            top = {int(t) for t in prompt_logits.argmax(axis=1)} | {int(t) for t in cont_logits.argmax(axis=1)}
            top_pieces = {t: llm.detokenize([t]).decode("utf-8", "replace") for t in sorted(top | set(tokens))}
            runs.append(GreedyRun(prompt_logits, cont_logits, tokens, pieces, text, load_s, eval_s, top_pieces))
    finally:
        llm.close()
    return runs


def tokenize(path: str | Path, text: str | list[str], *, child=None) -> list[int] | list[list[int]]:
    """The prompt's tokens (with BOS when the model adds one), from the vocabulary alone; a list of
    prompts gives a list of token lists. Runs in `child` (a llama_child.LlamaChild), else in a child
    process of its own."""
    if child is None:
        from .llama_child import LlamaChild

        with LlamaChild() as c:
            return tokenize(path, text, child=c)
    return child.call("tritpack_gguf.verify:_tokenize_here", Path(path), text, path=path,
                      stage="loading the vocabulary")


def _tokenize_here(path: Path, text: str | list[str], *, emit=_quiet) -> list[int] | list[list[int]]:
    """tokenize() in the process that holds llama.cpp."""
    from .run import open_model_here

    llm = open_model_here(path, emit, stage="loading the vocabulary", vocab_only=True)
    try:
        emit(("stage", "tokenizing the prompt"))
        if isinstance(text, str):
            return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        return [llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in text]
    finally:
        llm.close()


# ----------------------------------------------------------------------------- the comparison
#
# Both models read the same tokens: each prompt, then the reference's own greedy continuation
# (teacher forcing), so one near tie does not send the two down different texts. Every position is
# compared: the prompt's (a batched matmul) and the continuation's (a token at a time).
#
# The logits are not bit-identical: the model's matmuls quantize their activations (TP4 to Q8_0,
# 8 bits; TP1 to TPQ16, 16 bits, on the CPU; Q8_1 on CUDA), the F32 reference does not, and float
# sums run in another order. How the tolerance follows from that:
#   noise at a position p: e_p = max over the reference's TOP_K best tokens j of |d_j - d_top1|,
#     d = model logits - reference logits. The model's top-1 differs from the reference's only if
#     some such pairwise shift exceeds the reference's margin, so e_p is the noise that decides.
#   noise of the run: the median of e_p over all compared positions (a fault at a few positions
#     does not move it). Measured on SmolLM2-135M (20 prompts, 723 positions): TP4 0.24, TP1 0.071
#     logits; the 99th percentile of e_p is about 3x the median (TP4 0.72, TP1 0.20).
#   tolerance = NOISE_TIMES (4) x that median: a top-1 disagreement whose reference margin (its
#     top-1 logit minus its logit of the model's choice) is within it is a near tie, larger is a
#     fault. Measured: the largest near-tie margin was 0.65 on TP4 (tolerance 0.96), 0.11 on TP1
#     (tolerance 0.28).
#   ceiling: a fault that moves every logit also raises the measured noise, and with it the
#     tolerance. The activation precision bounds the noise a correct kernel can make: one step of
#     8-bit activations (2^-7, the coarsest activation type of our kernels) of the reference's logit
#     range. The run fails when its noise is above that ceiling. Measured noise / ceiling: TP4 0.41,
#     TP1 0.12 when correct; a middle-layer matrix with its codes shuffled 3.2 (TP4) and 7.2 (TP1),
#     with its block scales x4 5.8 and 11.3.
# `strict` keeps the older rule instead: the model runs free (its own greedy tokens) and every
# continuation must equal the reference's, n of n.

TOP_K = 8                  # reference candidates whose pairwise noise is measured at each position
NOISE_TIMES = 4.0          # tolerance = this x the median pairwise noise
CEILING_BITS = 8           # noise ceiling: one step of 8-bit activations (2^-(8-1)) of the logit range


@dataclass
class Disagreement:
    prompt: int                 # index into the report's prompts
    position: int               # token position (0 = the first prompt token; continuation after the prompt)
    in_continuation: bool       # the position chose a continuation token (the prompt's last one does too)
    model_token: int
    model_piece: str
    reference_token: int
    reference_piece: str
    margin: float               # reference: its top-1 logit minus its logit of the model's top-1
    near_tie: bool              # margin within the tolerance


@dataclass
class PromptResult:
    prompt: str
    n_prompt: int
    positions: int              # compared positions (prompt, then continuation up to n - 1 or the first difference with strict)
    top1_agree: int
    max_abs_diff: float
    continuation_match: int     # leading continuation tokens whose model top-1 equals the reference's
    reference_text: str         # the reference's greedy continuation (the path both read)
    text: str | None = None     # strict: the model's own greedy continuation


@dataclass
class VerifyReport:
    model: str
    reference: str
    reference_made: bool            # made on the fly from the model (else given)
    strict: bool
    n: int
    ngl: int
    prompts: list[PromptResult]
    positions: int                  # compared positions over all prompts
    top1_agree: int
    max_abs_diff: float             # worst |logit diff| over all positions and the whole vocabulary
    mean_abs_diff: float
    logit_range: float              # reference's max minus min logit over the positions
    relative_diff: float            # max_abs_diff / logit_range: "logits vs reference (worst)"
    noise: float                    # median pairwise noise among the reference's top candidates
    noise_ceiling: float            # logit_range x 2^-(CEILING_BITS-1)
    tolerance: float                # NOISE_TIMES x noise
    near_ties: list[Disagreement]
    faults: list[Disagreement]
    finite: bool
    seconds: float
    tensors_checked: int | None = None   # with check_data
    data_issues: list[DataIssue] | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def n_prompt(self) -> int:
        return sum(p.n_prompt for p in self.prompts)

    def as_dict(self) -> dict:
        """JSON-ready: NaN/Inf numbers (a model with broken scales) become null."""
        def clean(v):
            if isinstance(v, float):
                return v if np.isfinite(v) else None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        d = clean(asdict(self))
        d["ok"] = self.ok
        return d


def _rows(run: GreedyRun, upto: int) -> np.ndarray:
    """The logits of the prompt positions, then of continuation positions 1..upto-1 (row 0 of the
    continuation is the prompt's last row)."""
    return np.concatenate([run.prompt_logits, run.cont_logits[1:upto]]).astype(np.float64)


def compare(models: list[GreedyRun], refs: list[GreedyRun], prompts: list[str], *, strict: bool = False) -> dict:
    """The numbers of the report from the two models' runs on each prompt (the model's runs follow
    the reference's path, or run free with `strict`)."""
    n = len(refs[0].tokens)
    results, diffs, noise, lo, hi, pairs = [], [], [], [], [], []
    finite = all(np.isfinite(r.prompt_logits).all() and np.isfinite(r.cont_logits).all() for r in models + refs)
    for k, (g, r) in enumerate(zip(models, refs)):
        match = 0
        while match < n and int(np.argmax(g.cont_logits[match])) == r.tokens[match]:
            match += 1
        # free-running, the model read the reference's tokens up to its first difference only
        upto = min(n, match + 1) if strict else n
        rl, ml = _rows(r, upto), _rows(g, upto)
        with np.errstate(invalid="ignore", over="ignore"):
            d = ml - rl
        a, b = rl.argmax(axis=1), ml.argmax(axis=1)
        np_ = r.prompt_logits.shape[0]
        if finite:
            top = np.argpartition(-rl, min(TOP_K, rl.shape[1]) - 1, axis=1)[:, :TOP_K]
            dt = np.take_along_axis(d, top, axis=1)
            noise.append(np.abs(dt - d[np.arange(len(a)), a][:, None]).max(axis=1))
            diffs.append(np.abs(d))
            lo.append(rl.min())
            hi.append(rl.max())
        for p in np.nonzero(a != b)[0]:
            pairs.append((k, int(p), int(a[p]), int(b[p]), float(rl[p, a[p]] - rl[p, b[p]]), p >= np_ - 1, g, r))
        results.append(PromptResult(prompt=prompts[k], n_prompt=np_, positions=len(a), top1_agree=int((a == b).sum()),
                                    max_abs_diff=float(np.abs(d).max()) if finite else float("nan"),
                                    continuation_match=match, reference_text=r.text,
                                    text=g.text if strict else None))
    if finite:
        max_diff = max(float(x.max()) for x in diffs)
        mean_diff = float(sum(x.sum() for x in diffs) / sum(x.size for x in diffs))
        rng = float(max(hi) - min(lo))
        med = float(np.median(np.concatenate(noise)))
    else:
        max_diff = mean_diff = rng = med = float("nan")
    ceiling = rng * 2.0 ** -(CEILING_BITS - 1)
    tol = NOISE_TIMES * min(med, ceiling) if finite else float("nan")
    near, faults = [], []
    for k, p, a, b, margin, cont, g, r in pairs:
        dis = Disagreement(prompt=k, position=p, in_continuation=bool(cont), model_token=b,
                           model_piece=g.top_pieces.get(b, ""), reference_token=a,
                           reference_piece=r.top_pieces.get(a, ""), margin=margin,
                           near_tie=bool(finite and margin <= tol))
        (near if dis.near_tie else faults).append(dis)
    return {"prompts": results, "positions": sum(x.positions for x in results),
            "top1_agree": sum(x.top1_agree for x in results), "max_abs_diff": max_diff, "mean_abs_diff": mean_diff,
            "logit_range": rng, "relative_diff": max_diff / rng if finite and rng > 0 else float("nan"),
            "noise": med, "noise_ceiling": ceiling, "tolerance": tol, "near_ties": near, "faults": faults,
            "finite": finite}


def verify(model: str | Path, *, reference: str | Path | None = None, prompt: str | list[str] | None = None,
           n: int = 16, strict: bool = False, ngl: int = 0, threads: int | None = None, check_data: bool = False,
           all_f32: bool = False, save_reference: str | Path | None = None, progress: Progress = _quiet,
           rpc: str | list[str] | None = None, tensor_split: str | list[float] | None = None,
           rpc_stall_s: float | None = None) -> VerifyReport:
    """Compare `model` with `reference` (default: its own F32 reference, made in a temporary folder,
    kept at `save_reference` when given) on `prompt` (a text or a list; default: the shipped
    prompts, default_prompts()). The report's `failures` is empty when it passes."""
    t_start = time.perf_counter()
    from .llama_child import LlamaChild
    from .runtime import check_model

    model = Path(model)
    header = check_model(model)  # one clear error naming a missing, broken or unreadable file before anything else
    if n < 1:
        raise TritpackError("-n must be at least 1")
    if reference is not None and save_reference is not None:
        raise TritpackError("--save-reference makes a reference; it cannot be combined with --reference")
    if reference is not None:
        check_model(reference)
    prompts = default_prompts() if prompt is None else [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise TritpackError("no prompt to verify with")
    failures: list[str] = []
    tensors_checked = issues = None
    if check_data:
        tensors_checked, issues = check_tensor_data(model, progress=progress, header=header)
        for it in issues:
            where = f"row {it.row}, block {it.block}" if it.row >= 0 else ""
            failures.append(f"tensor data: {it.tensor} ({it.type}) {where}: {it.message}".replace(" :", ":"))
    with tempfile.TemporaryDirectory(prefix="tritpack-verify-") as tmp, LlamaChild() as child:
        progress("model: tokenizing the prompts", 0, 0)
        tokens = tokenize(model, prompts, child=child)
        for text, toks in zip(prompts, tokens):
            if not toks:
                raise TritpackError(f"the prompt {text!r} has no tokens")
        if reference is None:
            target = Path(save_reference) if save_reference else Path(tmp) / f"{model.stem}-F32-reference.gguf"
            progress("making the F32 reference", 0, 0)
            ref_path = make_reference(model, target, all_f32=all_f32, progress=progress, header=header)
        else:
            ref_path = Path(reference)
        if tokenize(ref_path, prompts, child=child) != tokens:
            raise TritpackError("the reference tokenizes the prompts differently: it is not a reference of this model",
                                path=ref_path)
        progress("reference: evaluating", 0, 2)
        split = {}
        if rpc:  # both models split over the RPC helpers (`verify --rpc`)
            from .rpc import parse_endpoints, parse_tensor_split

            split = dict(rpc=parse_endpoints(rpc), tensor_split=parse_tensor_split(tensor_split),
                         rpc_stall_s=rpc_stall_s)
        refs = greedy_runs(ref_path, tokens, n, ngl=ngl, threads=threads, child=child, **split)
        progress("model: evaluating", 1, 2)
        got = greedy_runs(model, tokens, n, follow=None if strict else [r.tokens for r in refs], ngl=ngl,
                          threads=threads, child=child, **split)
    if got[0].prompt_logits.shape[1] != refs[0].prompt_logits.shape[1]:
        raise TritpackError(f"the reference has {refs[0].prompt_logits.shape[1]} logits a token and the model "
                            f"{got[0].prompt_logits.shape[1]}: it is not a reference of this model", path=ref_path)
    c = compare(got, refs, prompts, strict=strict)
    if not c["finite"]:
        bad = [name for name, runs in (("model", got), ("reference", refs))
               if not all(np.isfinite(r.prompt_logits).all() and np.isfinite(r.cont_logits).all() for r in runs)]
        failures.append(f"non-finite logits (NaN/Inf) from the {' and the '.join(bad)}")
    elif strict:
        for k, p in enumerate(c["prompts"]):
            if p.continuation_match < n:
                failures.append(f"greedy continuation differs from the reference at token {p.continuation_match + 1} "
                                f"of {n}" + (f" (prompt {k + 1})" if len(prompts) > 1 else ""))
    else:
        if c["noise"] > c["noise_ceiling"]:
            failures.append(f"logit noise {c['noise']:.3g} is above what the kernels' activation precision explains "
                            f"({c['noise_ceiling']:.3g}: one 8-bit step of the logit range)")
        if c["faults"]:
            f0 = c["faults"][0]
            failures.append(f"{len(c['faults'])} top-1 disagreement(s) beyond the tolerance {c['tolerance']:.3g} "
                            f"(first: prompt {f0.prompt + 1}, position {f0.position}, reference margin {f0.margin:.3g})")
    return VerifyReport(model=str(model), reference=str(ref_path) if (reference or save_reference) else "(made on the fly)",
                        reference_made=reference is None, strict=strict, n=n, ngl=ngl,
                        seconds=time.perf_counter() - t_start, tensors_checked=tensors_checked,
                        data_issues=issues, failures=failures, **c)
