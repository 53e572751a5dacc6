"""`eval`: what a quantized GGUF costs in quality, measured against its base (e.g. the F16 file).

Language models go through the patched `llama-perplexity`:
1. once per (base file, text, ctx, chunks) the base's log-probabilities are written with
   `--kl-divergence-base` into $TRITPACK_HOME/eval/<key>.kld (key: sha256 of the base file's and the
   text's sha256, ctx and chunks); the base's perplexity is kept beside it in <key>.json;
2. each model is then run with `--kl-divergence` against that file: perplexity, mean / median /
   99th-percentile / maximum KL divergence to the base, and how often both pick the same top token.

Embedding models (`embedding=True`, or any GGUF whose architecture declares a pooling type) are
compared on sentence embeddings instead: the text is cut into sentences, each model embeds them
(llama-cpp-python on the patched library, through `tritpack_gguf.load`), and the cosine similarity of
each sentence's embedding to the base's gives a mean and a worst value. The base's embeddings are
cached the same way (<key>.emb.npy).

Bits per weight here are file-level: 8 * (bytes of all tensors) / (elements of all tensors), over
every tensor of the file (norms, embeddings and output included); `size` is the file's true size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import defaults
from .digest import sha256_file
from .errors import TritpackError
from .paths import locked, tritpack_home

Progress = Callable[[str, int, int], None]

DEFAULT_CTX = defaults.EVAL_CTX
DEFAULT_CHUNKS = defaults.EVAL_CHUNKS  # 0 or a negative number: every chunk of the text
DEFAULT_SENTENCES = defaults.EVAL_SENTENCES
KLD_VERSION = 1              # part of the cache key: bump when what the cache holds changes


def _quiet(*_a) -> None:
    pass


# ----------------------------------------------------------------------------- file statistics

@dataclass
class FileStats:
    size: int            # bytes of the whole file
    tensor_bytes: int    # bytes of tensor data
    n_weights: int       # elements of all tensors
    bpw: float           # 8 * tensor_bytes / n_weights
    types: dict[str, int] = field(default_factory=dict)   # tensor type -> count


def file_stats(path: str | Path) -> FileStats:
    """Size, tensor bytes, weights and file-level bits per weight of a GGUF (TP1/TP4 included)."""
    from .converters.reader import GGUFFile

    p = Path(path)
    f = GGUFFile(p)
    tb = sum(t.nbytes for t in f.tensors)
    nw = sum(t.n_elements for t in f.tensors)
    types: dict[str, int] = {}
    for t in f.tensors:
        types[t.type.name] = types.get(t.type.name, 0) + 1
    return FileStats(size=p.stat().st_size, tensor_bytes=tb, n_weights=nw,
                     bpw=8.0 * tb / nw if nw else 0.0, types=types)


def is_embedding_model(path: str | Path) -> bool:
    """An encoder / embedding model: its architecture declares a pooling type (BERT and kin)."""
    from .converters.reader import GGUFFile

    return GGUFFile(path).pools


# ----------------------------------------------------------------------------- results

@dataclass
class EvalResult:
    model: str
    base: str
    text: str | None
    kind: str                              # "perplexity" or "embedding"
    size: int
    bpw: float
    n_weights: int
    types: dict[str, int]
    ctx: int | None = None
    chunks: int | None = None
    tokens: int | None = None              # ctx * chunks evaluated
    perplexity: float | None = None
    perplexity_err: float | None = None
    base_perplexity: float | None = None
    base_perplexity_err: float | None = None
    ppl_ratio: float | None = None         # PPL(model) / PPL(base)
    kld_mean: float | None = None
    kld_mean_err: float | None = None
    kld_median: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    same_top: float | None = None          # fraction of positions where both models' top token agree
    same_top_err: float | None = None
    sentences: int | None = None
    cos_mean: float | None = None
    cos_min: float | None = None
    cos_p01: float | None = None           # 1st percentile of the cosine similarities
    base_cached: bool = False              # the base's logits / embeddings came from the cache
    base_cache: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {k: (round(v, 8) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------- caching

def eval_dir(cache_dir: str | Path | None = None) -> Path:
    d = Path(cache_dir) if cache_dir else tritpack_home() / "eval"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cache_key(base: Path, text: Path, *parts: object) -> str:
    h = hashlib.sha256()
    h.update(f"v{KLD_VERSION}\0{sha256_file(base)}\0{sha256_file(text)}".encode())
    for p in parts:
        h.update(f"\0{p}".encode())
    return h.hexdigest()[:24]


# ----------------------------------------------------------------------------- llama-perplexity

def _program(lib_dir: Path, name: str) -> Path:
    from .programs import program

    return program(lib_dir, name)


def _run(cmd: list[str], lib_dir: Path, what: str, path: Path, log: Path | None = None) -> str:
    from .programs import run_program

    r = run_program(cmd, lib_dir)
    out = (r.stdout + r.stderr).decode("utf-8", errors="replace")
    if log is not None:
        try:
            log.write_text(" ".join(cmd) + "\n\n" + out)
        except OSError:
            pass
    if r.returncode != 0:
        lines = [ln for ln in out.strip().splitlines() if ln.strip()]
        errs = [ln for ln in lines if " E " in ln or "error" in ln.lower() or "failed" in ln.lower()]
        tail = "; ".join((errs or lines)[-3:])
        hint = None
        if "tokens" in out and ("need at least" in out or "not enough" in out):
            hint = "the text is too short for --ctx x --chunks: give a longer text or fewer chunks"
        raise TritpackError(f"{what} failed (exit {r.returncode}): {tail[-400:]}", path=path, hint=hint)
    return out


_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|-?nan|-?inf)"


def _grab(pattern: str, out: str, n: int = 1) -> tuple[float, ...] | None:
    m = re.search(pattern, out)
    if not m:
        return None
    return tuple(float(m.group(i + 1)) for i in range(n))


def parse_kld_output(out: str) -> dict:
    """The summary of `llama-perplexity --kl-divergence` -> numbers (fractions, not percent)."""
    pm = r"\s*(?:±|\+/-)\s*"
    res: dict = {}
    if v := _grab(r"Mean PPL\(Q\)\s*:\s*" + _NUM + pm + _NUM, out, 2):
        res["perplexity"], res["perplexity_err"] = v
    if v := _grab(r"Mean PPL\(base\)\s*:\s*" + _NUM + pm + _NUM, out, 2):
        res["base_perplexity"], res["base_perplexity_err"] = v
    if v := _grab(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*" + _NUM, out):
        res["ppl_ratio"] = v[0]
    if v := _grab(r"Mean\s+KLD:\s*" + _NUM + pm + _NUM, out, 2):
        res["kld_mean"], res["kld_mean_err"] = v
    if v := _grab(r"Median\s+KLD:\s*" + _NUM, out):
        res["kld_median"] = v[0]
    if v := _grab(r"99\.0%\s+KLD:\s*" + _NUM, out):
        res["kld_p99"] = v[0]
    if v := _grab(r"Maximum KLD:\s*" + _NUM, out):
        res["kld_max"] = v[0]
    if v := _grab(r"Same top p:\s*" + _NUM + pm + _NUM + r"\s*%", out, 2):
        res["same_top"], res["same_top_err"] = v[0] / 100.0, v[1] / 100.0
    if v := _grab(r"computing over (\d+) chunks", out):
        res["chunks"] = int(v[0])
    return res


def _ctx_of_kld(path: Path) -> tuple[int, int, int]:
    """(n_ctx, n_vocab, n_chunk) from the header of a --kl-divergence-base file."""
    with open(path, "rb") as f:
        head = f.read(8 + 12)
    if len(head) < 20 or head[:8] != b"_logits_":
        raise TritpackError("not a llama-perplexity log-probability file", path=path)
    n_ctx, n_vocab, n_chunk = np.frombuffer(head[8:20], dtype=np.int32).tolist()
    return int(n_ctx), int(n_vocab), int(n_chunk)


def kld_base(base: str | Path, text: str | Path, *, ctx: int = DEFAULT_CTX, chunks: int | None = DEFAULT_CHUNKS,
             threads: int | None = None, lib_dir: Path | None = None, cache_dir: str | Path | None = None,
             progress: Progress = _quiet) -> tuple[Path, dict, bool]:
    """The base's log-probabilities over `text` (made once, then cached): (file, info, was_cached).
    info: base_perplexity, base_perplexity_err, chunks, ctx."""
    from .runtime import library_dir

    base, text = Path(base), Path(text)
    for p in (base, text):
        if not p.is_file():
            raise TritpackError("no such file", path=p)
    n_chunks = chunks if chunks and chunks > 0 else -1
    d = eval_dir(cache_dir)
    progress("hashing the base and the text", 0, 0)
    key = cache_key(base, text, f"ctx={ctx}", f"chunks={n_chunks}")
    kld, meta = d / f"{key}.kld", d / f"{key}.json"
    with locked(d / f"{key}.lock"):
        if kld.is_file() and meta.is_file():
            try:
                return kld, json.loads(meta.read_text()), True
            except ValueError:
                pass
        lib = lib_dir or library_dir()
        exe = _program(lib, "llama-perplexity")
        tmp = d / f".{key}.{os.getpid()}.kld.tmp"
        cmd = [str(exe), "-m", str(base), "-f", str(text), "-c", str(ctx), "--chunks", str(n_chunks),
               "--kl-divergence-base", str(tmp)]
        if threads:
            cmd += ["-t", str(threads)]
        progress(f"base logits of {base.name} (llama-perplexity, once per base and text)", 0, 0)
        try:
            out = _run(cmd, lib, "llama-perplexity (base)", base, log=d / f"{key}.log")
            if not tmp.is_file():
                raise TritpackError("llama-perplexity wrote no log-probability file", path=base)
            info: dict = {"ctx": ctx, "base": str(base), "text": str(text)}
            if v := _grab(r"Final estimate: PPL = " + _NUM + r"\s*\+/-\s*" + _NUM, out, 2):
                info["base_perplexity"], info["base_perplexity_err"] = v
            if v := _grab(r"perplexity over (\d+) chunks", out):
                info["chunks"] = int(v[0])
            os.replace(tmp, kld)
        finally:
            tmp.unlink(missing_ok=True)
        meta.write_text(json.dumps(info, indent=2))
        return kld, info, False


def perplexity_kld(model: str | Path, base_kld: Path, *, ctx: int = DEFAULT_CTX, threads: int | None = None,
                   lib_dir: Path | None = None, log: Path | None = None) -> dict:
    """`llama-perplexity --kl-divergence` of `model` against a base log-probability file."""
    from .runtime import library_dir

    model = Path(model)
    if not model.is_file():
        raise TritpackError("no such file", path=model)
    lib = lib_dir or library_dir()
    exe = _program(lib, "llama-perplexity")
    n_ctx, _, _ = _ctx_of_kld(base_kld)
    cmd = [str(exe), "-m", str(model), "-c", str(max(ctx, n_ctx)), "--kl-divergence-base", str(base_kld),
           "--kl-divergence"]
    if threads:
        cmd += ["-t", str(threads)]
    out = _run(cmd, lib, "llama-perplexity --kl-divergence", model, log=log)
    res = parse_kld_output(out)
    if "kld_mean" not in res:
        tail = "; ".join(out.strip().splitlines()[-3:])
        raise TritpackError(f"llama-perplexity printed no KL divergence: {tail[-300:]}", path=model,
                            hint="is the model's vocabulary the base's?")
    return res


# ----------------------------------------------------------------------------- embeddings

_SENT_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")
_ABBREV = re.compile(r"(?:^|\s)(?:Mr|Mrs|Ms|Dr|St|Sr|Jr|Prof|Col|Capt|Gen|Lt|Rev|vs|etc|e\.g|i\.e|[A-Z])\.$")


def sentences_of(text: str, n: int | None = DEFAULT_SENTENCES, min_words: int = 4) -> list[str]:
    """The text's sentences (paragraph breaks and . ! ? end one), whitespace collapsed, those of at
    least `min_words` words, the first `n` of them (all with n None or <= 0)."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        pieces: list[str] = []
        for piece in _SENT_END.split(para):
            if pieces and _ABBREV.search(pieces[-1]):   # "Mr. Bennet" is one sentence
                pieces[-1] += " " + piece
            else:
                pieces.append(piece)
        for s in pieces:
            s = s.strip()
            if len(s.split()) >= min_words:
                out.append(s)
                if n and n > 0 and len(out) >= n:
                    return out
    return out


def embed_sentences(model: str | Path, sentences: list[str], *, ctx: int = DEFAULT_CTX,
                    threads: int | None = None) -> np.ndarray:
    """One embedding a sentence, (n, dim) float32, with the model's pooling (mean where the model
    declares none, e.g. a decoder-only model), on the patched library. Runs in a child process: a
    model the library cannot run aborts inside ggml, which must not take the caller down with it."""
    import sys
    import tempfile

    model = Path(model)
    with tempfile.TemporaryDirectory(prefix="tritpack-embed-") as tmp:
        req, out = Path(tmp) / "request.json", Path(tmp) / "out.npy"
        req.write_text(json.dumps({"model": str(model), "sentences": sentences, "ctx": ctx, "threads": threads,
                                   "out": str(out)}))
        from .programs import run_program

        r = run_program([sys.executable, "-m", "tritpack_gguf.evaluate", "--embed-request", str(req)], None,
                        what="the embedding child")
        if r.returncode != 0 or not out.is_file():
            text = (r.stderr or r.stdout).decode("utf-8", errors="replace").strip().splitlines()
            msg = [ln for ln in text if "error" in ln.lower() or "unsupported" in ln.lower() or "abort" in ln.lower()]
            why = "; ".join(list(dict.fromkeys(msg or text))[-2:])[-400:] or f"exit {r.returncode}"
            raise TritpackError(f"embedding with llama.cpp failed: {why}", path=model,
                                hint="the library may not support one of the model's tensor types in that place")
        return np.load(out)


def _embed_in_process(model: Path, sentences: list[str], ctx: int, threads: int | None) -> np.ndarray:
    from .runtime import load

    kwargs: dict = dict(embedding=True, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx)
    if threads:
        kwargs["n_threads"] = threads
    if not is_embedding_model(model):
        kwargs["pooling_type"] = 1  # LLAMA_POOLING_TYPE_MEAN
    m = load(model, **kwargs)
    try:
        rows = []
        for s in sentences:
            e = np.asarray(m.embed(s, normalize=False, truncate=True), dtype=np.float32)
            if e.ndim == 2:           # per-token embeddings: pool them
                e = e.mean(axis=0)
            rows.append(e)
    finally:
        close = getattr(m, "close", None)
        if close:
            close()
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (a * b).sum(axis=1) / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, np.nan_to_num(c, nan=0.0))


def base_embeddings(base: Path, text: Path, sentences: list[str], *, ctx: int, n: int, threads: int | None,
                    cache_dir: str | Path | None, progress: Progress = _quiet) -> tuple[np.ndarray, Path, bool]:
    d = eval_dir(cache_dir)
    key = cache_key(base, text, f"ctx={ctx}", f"sentences={n}", "embedding")
    path = d / f"{key}.emb.npy"
    with locked(d / f"{key}.lock"):
        if path.is_file():
            try:
                e = np.load(path)
                if e.shape[0] == len(sentences):
                    return e, path, True
            except (OSError, ValueError):
                pass
        progress(f"embedding {len(sentences)} sentences with the base {base.name} (once per base and text)", 0, 0)
        e = embed_sentences(base, sentences, ctx=ctx, threads=threads)
        tmp = d / f".{key}.{os.getpid()}.tmp.npy"
        np.save(tmp, e)
        os.replace(tmp, path)
    return e, path, False


# ----------------------------------------------------------------------------- the command's function

def evaluate(model: str | Path, base: str | Path, text: str | Path, *, ctx: int = DEFAULT_CTX,
             chunks: int | None = DEFAULT_CHUNKS, embedding: bool | None = None,
             sentences: int = DEFAULT_SENTENCES, threads: int | None = None, lib_dir: Path | None = None,
             cache_dir: str | Path | None = None, log: Path | None = None,
             progress: Progress = _quiet) -> EvalResult:
    """Quality of `model` against `base` over `text`. `embedding`: None decides from the model
    (an architecture with a pooling type is an embedding model)."""
    t0 = time.monotonic()
    model, base, text = Path(model), Path(base), Path(text)
    for p in (model, base, text):
        if not p.is_file():
            raise TritpackError("no such file", path=p)
    if ctx < 8:
        raise TritpackError("--ctx must be at least 8")
    stats = file_stats(model)
    if embedding is None:
        embedding = is_embedding_model(base)
    res = EvalResult(model=str(model), base=str(base), text=str(text),
                     kind="embedding" if embedding else "perplexity",
                     size=stats.size, bpw=stats.bpw, n_weights=stats.n_weights, types=stats.types, ctx=ctx)
    if embedding:
        try:
            raw = text.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise TritpackError(f"cannot read: {e.strerror or e}", path=text) from None
        sents = sentences_of(raw, sentences)
        if not sents:
            raise TritpackError("no sentences of four words or more in the text", path=text)
        eb, cache, cached = base_embeddings(base, text, sents, ctx=ctx, n=sentences, threads=threads,
                                            cache_dir=cache_dir, progress=progress)
        progress(f"embedding {len(sents)} sentences with {model.name}", 0, 0)
        em = embed_sentences(model, sents, ctx=ctx, threads=threads)
        if em.shape != eb.shape:
            raise TritpackError(f"embedding size {em.shape[1]} differs from the base's {eb.shape[1]}", path=model)
        cos = cosine_rows(em, eb)
        res.sentences = len(sents)
        res.cos_mean, res.cos_min = float(cos.mean()), float(cos.min())
        res.cos_p01 = float(np.percentile(cos, 1))
        res.base_cached, res.base_cache = cached, str(cache)
    else:
        kld, info, cached = kld_base(base, text, ctx=ctx, chunks=chunks, threads=threads, lib_dir=lib_dir,
                                     cache_dir=cache_dir, progress=progress)
        n_chunks = int(info.get("chunks") or 0)
        scored = (ctx - 1 - ctx // 2) * n_chunks   # llama-perplexity scores the second half of each chunk
        if n_chunks and scored < 100:
            raise TritpackError(f"only {scored} tokens would be scored ({n_chunks} chunks of {ctx}); "
                                "llama-perplexity needs at least 100 for KL statistics",
                                hint="use more --chunks, a longer --ctx or a longer text")
        progress(f"perplexity and KL divergence of {model.name} (llama-perplexity)", 0, 0)
        r = perplexity_kld(model, kld, ctx=ctx, threads=threads, lib_dir=lib_dir, log=log)
        for k, v in r.items():
            setattr(res, k, v)
        res.chunks = r.get("chunks", info.get("chunks"))
        res.tokens = res.chunks * ctx if res.chunks else None
        res.base_cached, res.base_cache = cached, str(kld)
    res.seconds = time.monotonic() - t0
    return res


def _main(argv: list[str] | None = None) -> int:
    """`python -m tritpack_gguf.evaluate --embed-request FILE`: the child process of embed_sentences."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--embed-request":
        sys.stderr.write("usage: python -m tritpack_gguf.evaluate --embed-request REQUEST.json\n")
        return 2
    req = json.loads(Path(args[1]).read_text())
    try:
        e = _embed_in_process(Path(req["model"]), req["sentences"], int(req["ctx"]), req.get("threads"))
    except TritpackError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    np.save(req["out"], e)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
