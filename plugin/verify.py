"""`verify`: a TritPack GGUF against its own exact reference, run through the same library.

The reference holds the same weights dequantized to F32 (made on the fly in a temporary folder when
none is given): the TP1/TP4 tensors are dequantized by the library's own to_float, the other tensors
are copied as they are (they run through the same stock kernels in both models; `all_f32` dequantizes
them too). Both models read the same prompt; the report has the worst absolute logit difference
over the prompt positions, the top-1 agreement there, and how many tokens of the greedy
continuation equal the reference's.

The logits are not bit-identical: a quantized matmul on ggml's CPU backend quantizes the activations
to Q8_0 first (Q8_1 on CUDA), the F32 reference does not. The pass criterion is therefore the greedy
continuation: all n tokens equal, and every logit finite. `check_data` adds llama.cpp's tensor
validation (ggml_validate_row_data: NaN/Inf block scales and values).

Files are checked first by converters/reader.py (and the library's types): a broken one is one
TritpackError naming it. llama.cpp then loads, tokenizes and decodes in one child process
(llama_child.py) for both models, so that an abort in it (a vocabulary without byte tokens) or a
crash is a TritpackError naming the file and what llama.cpp was doing, not the end of this process.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from gguf import GGMLQuantizationType as Q

from . import defaults
from .converters.gguf_types import BY_NAME
from .errors import TritpackError

Progress = Callable[[str, int, int], None]
DEFAULT_PROMPT = defaults.VERIFY_PROMPT
ROWS_PER_CHUNK_VALUES = 1 << 22  # floats dequantized at a time while writing a reference


def _quiet(*_a) -> None:
    pass


# ----------------------------------------------------------------------------- the reference

def _type_name(t: int) -> str:
    try:
        return Q(t).name
    except ValueError:
        return f"type {t}"


def _gguf_string(text: str) -> bytes:
    b = text.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _tensor_layout(g, t, path: Path) -> tuple[int, int]:
    """(rows, bytes a row) of a header tensor."""
    if not g.knows(t.type):
        from .converters.reader import _show

        raise TritpackError(f"tensor type {_type_name(t.type)} is unknown to the llama.cpp library", path=path,
                            tensor=_show(t.name))
    ne0 = t.dims[0] if t.dims else 1
    return int(np.prod(t.dims[1:], dtype=np.int64)) if len(t.dims) > 1 else 1, g.row_size(t.type, ne0)


def make_reference(model: str | Path, output: str | Path, *, all_f32: bool = False,
                   progress: Progress = _quiet) -> Path:
    """Write `output`: `model` with its TP1/TP4 tensors (every non-F32 tensor with `all_f32`)
    dequantized to F32 by the library's to_float. The key/values are copied byte for byte (the
    tritpack.* ones and general.file_type dropped), so a large vocabulary costs nothing to carry."""
    from .converters.writer import publish as _publish
    from .ggml_lib import load_ggml
    from .runtime import read_header

    h = read_header(model)
    out = Path(output)
    if out.exists() and out.resolve() == h.path.resolve():
        raise TritpackError("the reference would overwrite the model", path=out)
    g = load_ggml()
    ours = {t.id for t in BY_NAME.values()}
    plans = []  # (tensor, dequantize, rows, row bytes, bytes out)
    for t in h.tensors:
        rows, row_bytes = _tensor_layout(g, t, h.path)
        deq = t.type in ours or (all_f32 and t.type != int(Q.F32))
        plans.append((t, deq, rows, row_bytes, rows * (t.dims[0] if t.dims else 1) * 4 if deq else rows * row_bytes))
    size = h.path.stat().st_size
    for t, _, rows, row_bytes, _ in plans:
        if h.data_start + t.offset + rows * row_bytes > size:
            raise TritpackError("tensor data runs past the end of the file (truncated?)", path=h.path, tensor=t.name)
    align = h.alignment
    need = h.data_start + sum(n + align for *_, n in plans)
    free = shutil.disk_usage(out.parent).free
    if need > free * 0.98:
        raise TritpackError(f"the F32 reference needs {need / 1e9:.2f} GB and {out.parent} has {free / 1e9:.2f} GB free",
                            path=out, hint="give one with --reference, or point TMPDIR at a larger disk")
    keys = [k for k in h.spans if not k.startswith("tritpack.") and k != "general.file_type"]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(h.path, "rb") as fin, open(tmp, "wb") as f:
            f.write(b"GGUF" + struct.pack("<IQQ", h.version, len(plans), len(keys) + (1 if all_f32 else 0)))
            for k in keys:
                a, b = h.spans[k]
                fin.seek(a)
                f.write(fin.read(b - a))
            if all_f32:
                f.write(_gguf_string("general.file_type") + struct.pack("<II", 4, 0))  # uint32 ALL_F32
            offset = 0
            for t, deq, _, _, nbytes in plans:
                f.write(_gguf_string(t.name) + struct.pack(f"<I{len(t.dims)}Q", len(t.dims), *t.dims)
                        + struct.pack("<IQ", int(Q.F32) if deq else t.type, offset))
                offset += (nbytes + align - 1) // align * align
            f.write(b"\0" * (-f.tell() % align))
            for i, (t, deq, rows, row_bytes, nbytes) in enumerate(plans):
                progress(f"reference {i + 1}/{len(plans)} {t.name}", i, len(plans))
                start = h.data_start + t.offset
                step = max(1, ROWS_PER_CHUNK_VALUES // max(1, t.dims[0] if deq else row_bytes))
                for r0 in range(0, rows, step):
                    r1 = min(rows, r0 + step)
                    fin.seek(start + r0 * row_bytes)
                    chunk = fin.read((r1 - r0) * row_bytes)
                    if deq:
                        raw = np.frombuffer(chunk, dtype=np.uint8).reshape(r1 - r0, row_bytes)
                        chunk = g.dequantize(t.type, raw).astype("<f4", copy=False).tobytes()
                    f.write(chunk)
                f.write(b"\0" * (-nbytes % align))
        _publish(tmp, out, force=True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise TritpackError("no space left on the device while writing the reference", path=out,
                                hint="give one with --reference, or point TMPDIR at a larger disk") from None
        raise TritpackError(f"cannot write the reference: {e.strerror or e}", path=out) from None
    finally:
        tmp.unlink(missing_ok=True)
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


def check_tensor_data(model: str | Path, *, progress: Progress = _quiet, max_issues: int = 20) -> tuple[int, list[DataIssue]]:
    """Run ggml_validate_row_data (what llama.cpp's check_tensors runs) over every tensor of `model`.
    Returns (tensors checked, issues); an issue names the tensor, its first bad row and block."""
    from .ggml_lib import load_ggml
    from .runtime import read_header

    h = read_header(model)
    g = load_ggml()
    issues: list[DataIssue] = []
    checked = 0
    size = h.path.stat().st_size
    for i, t in enumerate(h.tensors):
        progress(f"checking {i + 1}/{len(h.tensors)} {t.name}", i, len(h.tensors))
        if not g.knows(t.type):
            issues.append(DataIssue(t.name, _type_name(t.type), -1, -1, "type unknown to the library"))
            continue
        rows, row_bytes = _tensor_layout(g, t, h.path)
        start = h.data_start + t.offset
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


# ----------------------------------------------------------------------------- running a model

@dataclass
class GreedyRun:
    prompt_logits: np.ndarray    # (n_prompt, n_vocab)
    cont_logits: np.ndarray      # (n, n_vocab): the logits that chose each continuation token
    tokens: list[int]            # the greedy continuation
    pieces: list[str]            # each token's text
    text: str
    load_s: float
    eval_s: float


def greedy_run(path: str | Path, prompt_tokens: list[int], n: int, *, ngl: int = 0,
               threads: int | None = None, child=None, rpc: list[str] | None = None,
               tensor_split: list[float] | None = None) -> GreedyRun:
    """Feed `prompt_tokens`, then take n argmax tokens; every position's logits are kept. Runs in
    `child` (a llama_child.LlamaChild), else in a child process of its own. `rpc`: endpoints of
    RPC helpers to split the layers with (checked first, see rpc.check_servers)."""
    if child is None:
        from .llama_child import LlamaChild

        with LlamaChild() as c:
            return greedy_run(path, prompt_tokens, n, ngl=ngl, threads=threads, child=c, rpc=rpc,
                              tensor_split=tensor_split)
    split = {}
    if rpc:
        from .rpc import check_servers, explain_failure, parse_endpoints

        rpc = parse_endpoints(rpc)
        check_servers(rpc)
        split = dict(rpc=rpc, tensor_split=tensor_split)
    try:
        return child.call("tritpack_gguf.verify:_greedy_run_here", Path(path), list(prompt_tokens), n, ngl=ngl,
                          threads=threads, path=path, stage="loading the model", **split)
    except TritpackError as e:
        raise explain_failure(e, rpc) if rpc else e


def _greedy_run_here(path: Path, prompt_tokens: list[int], n: int, *, ngl: int = 0, threads: int | None = None,
                     emit=_quiet, rpc: list[str] | None = None, tensor_split: list[float] | None = None) -> GreedyRun:
    """greedy_run() in the process that holds llama.cpp."""
    from .run import open_model_here

    n_ctx = max(64, len(prompt_tokens) + n + 8)
    t0 = time.perf_counter()
    split = dict(rpc=rpc, tensor_split=tensor_split, rpc_check=False) if rpc else {}
    llm = open_model_here(path, emit, n_ctx=n_ctx, n_batch=max(32, len(prompt_tokens)),
                          n_ubatch=max(32, len(prompt_tokens)), logits_all=True, n_gpu_layers=ngl,
                          n_threads=threads, n_threads_batch=threads, seed=0, **split)
    load_s = time.perf_counter() - t0
    try:
        if llm.n_vocab() <= 0:
            raise TritpackError("the model has no vocabulary", path=path)
        t0 = time.perf_counter()
        llm.reset()
        emit(("stage", "evaluating the prompt"))
        llm.eval(prompt_tokens)
        np_ = len(prompt_tokens)
        scores = llm.scores
        prompt_logits = np.array(scores[:np_], dtype=np.float32)
        cont_logits = np.empty((n, prompt_logits.shape[1]), dtype=np.float32)
        tokens: list[int] = []
        last = prompt_logits[-1]
        emit(("stage", "decoding the greedy continuation"))
        for i in range(n):
            cont_logits[i] = last
            tok = int(np.argmax(last))
            tokens.append(tok)
            if i + 1 < n:
                llm.eval([tok])
                last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        eval_s = time.perf_counter() - t0
        emit(("stage", "detokenizing the continuation"))
        text = llm.detokenize(tokens, prev_tokens=prompt_tokens).decode("utf-8", "replace")
        pieces = [llm.detokenize([t]).decode("utf-8", "replace") for t in tokens]
    finally:
        llm.close()
    return GreedyRun(prompt_logits, cont_logits, tokens, pieces, text, load_s, eval_s)


def tokenize(path: str | Path, text: str, *, child=None) -> list[int]:
    """The prompt's tokens (with BOS when the model adds one), from the vocabulary alone. Runs in
    `child` (a llama_child.LlamaChild), else in a child process of its own."""
    if child is None:
        from .llama_child import LlamaChild

        with LlamaChild() as c:
            return tokenize(path, text, child=c)
    return child.call("tritpack_gguf.verify:_tokenize_here", Path(path), text, path=path,
                      stage="loading the vocabulary")


def _tokenize_here(path: Path, text: str, *, emit=_quiet) -> list[int]:
    """tokenize() in the process that holds llama.cpp."""
    from .run import open_model_here

    llm = open_model_here(path, emit, stage="loading the vocabulary", vocab_only=True)
    try:
        emit(("stage", "tokenizing the prompt"))
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    finally:
        llm.close()


# ----------------------------------------------------------------------------- the comparison

@dataclass
class VerifyReport:
    model: str
    reference: str
    reference_made: bool            # made on the fly from the model (else given)
    prompt: str
    n_prompt: int
    n: int
    ngl: int
    max_abs_diff: float             # over all prompt positions and the whole vocabulary
    mean_abs_diff: float
    logit_range: float              # max |reference logit| over the prompt, for scale
    top1_agree: int                 # prompt positions whose argmax agrees
    continuation_match: int         # leading continuation tokens equal to the reference's
    first_difference: int | None    # index into the continuation, None when all equal
    tokens: list[int]
    reference_tokens: list[int]
    pieces: list[str]
    reference_pieces: list[str]
    text: str
    reference_text: str
    min_reference_margin: float     # smallest top-1 minus top-2 logit of the reference along the continuation
    margin_at_difference: float | None  # the reference's top-1 margin where the continuations part
    finite: bool
    seconds: float
    tensors_checked: int | None = None   # with check_data
    data_issues: list[DataIssue] | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        """JSON-ready: NaN/Inf numbers (a model with broken scales) become null."""
        d = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}
        d["ok"] = self.ok
        return d


def _margin(logits: np.ndarray) -> float:
    top2 = np.partition(logits, -2)[-2:]
    return float(abs(top2[1] - top2[0]))


def compare(model: GreedyRun, ref: GreedyRun) -> dict:
    """The numbers of the report, from the two runs."""
    finite = bool(np.isfinite(model.prompt_logits).all() and np.isfinite(model.cont_logits).all()
                  and np.isfinite(ref.prompt_logits).all() and np.isfinite(ref.cont_logits).all())
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(model.prompt_logits.astype(np.float64) - ref.prompt_logits)
    max_diff = float(np.nanmax(diff)) if finite else float("nan")
    mean_diff = float(np.nanmean(diff)) if finite else float("nan")
    agree = int((model.prompt_logits.argmax(axis=1) == ref.prompt_logits.argmax(axis=1)).sum())
    match = 0
    for a, b in zip(model.tokens, ref.tokens):
        if a != b:
            break
        match += 1
    first = None if match == len(ref.tokens) == len(model.tokens) else match
    margins = [_margin(ref.cont_logits[i]) for i in range(min(len(ref.tokens), match + 1))] if finite else []
    return {"max_abs_diff": max_diff, "mean_abs_diff": mean_diff,
            "logit_range": float(np.abs(ref.prompt_logits).max()) if finite else float("nan"),
            "top1_agree": agree, "continuation_match": match, "first_difference": first,
            "min_reference_margin": min(margins) if margins else float("nan"),
            "margin_at_difference": margins[first] if first is not None and first < len(margins) else None,
            "finite": finite}


def verify(model: str | Path, *, reference: str | Path | None = None, prompt: str = DEFAULT_PROMPT, n: int = 16,
           ngl: int = 0, threads: int | None = None, check_data: bool = False, all_f32: bool = False,
           save_reference: str | Path | None = None, progress: Progress = _quiet,
           rpc: str | list[str] | None = None, tensor_split: str | list[float] | None = None) -> VerifyReport:
    """Compare `model` with `reference` (default: its own F32 reference, made in a temporary folder,
    kept at `save_reference` when given). The report's `failures` is empty when it passes."""
    t_start = time.perf_counter()
    from .llama_child import LlamaChild
    from .runtime import check_model

    model = Path(model)
    check_model(model)  # one clear error naming a missing, broken or unreadable file before anything else
    if n < 1:
        raise TritpackError("-n must be at least 1")
    if reference is not None and save_reference is not None:
        raise TritpackError("--save-reference makes a reference; it cannot be combined with --reference")
    if reference is not None:
        check_model(reference)
    failures: list[str] = []
    tensors_checked = issues = None
    if check_data:
        tensors_checked, issues = check_tensor_data(model, progress=progress)
        for it in issues:
            where = f"row {it.row}, block {it.block}" if it.row >= 0 else ""
            failures.append(f"tensor data: {it.tensor} ({it.type}) {where}: {it.message}".replace(" :", ":"))
    with tempfile.TemporaryDirectory(prefix="tritpack-verify-") as tmp, LlamaChild() as child:
        progress("model: tokenizing the prompt", 0, 0)
        tokens = tokenize(model, prompt, child=child)
        if not tokens:
            raise TritpackError("the prompt has no tokens")
        if reference is None:
            target = Path(save_reference) if save_reference else Path(tmp) / f"{model.stem}-F32-reference.gguf"
            progress("making the F32 reference", 0, 0)
            ref_path = make_reference(model, target, all_f32=all_f32, progress=progress)
        else:
            ref_path = Path(reference)
        if tokenize(ref_path, prompt, child=child) != tokens:
            raise TritpackError("the reference tokenizes the prompt differently: it is not a reference of this model",
                                path=ref_path)
        progress("reference: evaluating", 0, 2)
        split = {}
        if rpc:  # both models split over the RPC helpers (`verify --rpc`)
            from .rpc import parse_endpoints, parse_tensor_split

            split = dict(rpc=parse_endpoints(rpc), tensor_split=parse_tensor_split(tensor_split))
        ref = greedy_run(ref_path, tokens, n, ngl=ngl, threads=threads, child=child, **split)
        progress("model: evaluating", 1, 2)
        got = greedy_run(model, tokens, n, ngl=ngl, threads=threads, child=child, **split)
    if got.prompt_logits.shape[1] != ref.prompt_logits.shape[1]:
        raise TritpackError(f"the reference has {ref.prompt_logits.shape[1]} logits a token and the model "
                            f"{got.prompt_logits.shape[1]}: it is not a reference of this model", path=ref_path)
    c = compare(got, ref)
    if not c["finite"]:
        bad = [name for name, r in (("model", got), ("reference", ref))
               if not (np.isfinite(r.prompt_logits).all() and np.isfinite(r.cont_logits).all())]
        failures.append(f"non-finite logits (NaN/Inf) from the {' and the '.join(bad)}")
    if c["first_difference"] is not None:
        i = c["first_difference"]
        failures.append(f"greedy continuation differs from the reference at token {i + 1} of {n}")
    return VerifyReport(model=str(model), reference=str(ref_path) if (reference or save_reference) else "(made on the fly)",
                        reference_made=reference is None, prompt=prompt, n_prompt=len(tokens), n=n, ngl=ngl,
                        tokens=got.tokens, reference_tokens=ref.tokens, pieces=got.pieces,
                        reference_pieces=ref.pieces, text=got.text, reference_text=ref.text,
                        seconds=time.perf_counter() - t_start, tensors_checked=tensors_checked,
                        data_issues=issues, failures=failures, **c)
