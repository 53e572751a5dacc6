"""`run`: generate from a GGUF (TritPack or stock) with the patched library, streaming the text,
and measure it the way llama.cpp does (its own perf counters for prompt and decode)."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .errors import TritpackError

DEFAULT_CTX = 4096


@dataclass
class RunStats:
    model: str
    file_size: int
    load_s: float
    n_prompt: int
    prompt_s: float
    n_decode: int         # tokens decoded one at a time (the first generated token comes from the prompt pass)
    decode_s: float
    text: str
    gpu_layers: int
    gpu_note: str | None = None

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.n_decode / self.decode_s if self.decode_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(prompt_tps=round(self.prompt_tps, 2), decode_tps=round(self.decode_tps, 2))
        return d

    def line(self) -> str:
        return (f"load {self.load_s:.2f} s | {self.file_size / 1e6:,.1f} MB | "
                f"prompt {self.n_prompt} tokens at {self.prompt_tps:,.1f} tok/s | "
                f"decode {self.n_decode} tokens at {self.decode_tps:,.1f} tok/s")


def gpu_note(ngl: int) -> str | None:
    """A note when GPU layers are asked for but the library has no GPU backend."""
    if not ngl:
        return None
    from .runtime import gpu_backends, library_dir

    d = library_dir()
    if gpu_backends(d):
        return None
    return (f"--ngl {ngl}: the library in {d} has no GPU backend, so every layer runs on the CPU "
            "(run `tritpack-gguf build --cuda` for NVIDIA GPUs)")


def open_model(path: str | Path, **kwargs):
    """runtime.load() with llama.cpp's load failure turned into a TritpackError (and the no-GPU
    warning left to gpu_note())."""
    from .runtime import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load(path, **kwargs)
        except ValueError as e:  # llama_cpp: "Failed to load model from file" (details on llama.cpp's log)
            raise TritpackError(f"llama.cpp could not load the model: {e}", path=path,
                                hint="`tritpack-gguf verify --check-data` or `tritpack-gguf inspect` may say why") from None


def context_size(path: str | Path, wanted: int = DEFAULT_CTX) -> int:
    """`wanted`, capped at the model's training context when the file records one."""
    from .runtime import read_header

    h = read_header(path)
    train = h.get(f"{h.architecture}.context_length")
    return min(wanted, int(train)) if isinstance(train, int) and train > 0 else wanted


def generate(model: str | Path, prompt: str | list[dict], *, n: int = 64, ngl: int = 0, chat: bool = False,
             seed: int | None = None, temp: float = 0.8, top_k: int = 40, top_p: float = 0.95,
             threads: int | None = None, ctx: int = DEFAULT_CTX, on_text: Callable[[str], None] = lambda s: None,
             llm=None) -> RunStats:
    """Generate up to n tokens after `prompt` (with `chat`, a user message or a list of chat messages
    rendered by the model's chat template), calling on_text with each piece as it comes.
    `llm`: an already opened model (chat sessions reuse it); else the model is opened here."""
    from .runtime import activate

    activate()  # before llama_cpp is imported: it binds its library at import
    import llama_cpp

    path = Path(model)
    if n < 1:
        raise TritpackError("-n must be at least 1")
    note = gpu_note(ngl)
    load_s = 0.0
    own = llm is None
    if own:
        t0 = time.perf_counter()
        llm = open_model(path, n_ctx=context_size(path, ctx), n_gpu_layers=ngl, n_threads=threads,
                         n_threads_batch=threads, seed=seed if seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        load_s = time.perf_counter() - t0
    try:
        llama_cpp.llama_perf_context_reset(llm.ctx)
        sampling = dict(max_tokens=n, temperature=temp, top_k=top_k, top_p=top_p, seed=seed, stream=True)
        pieces: list[str] = []
        try:
            if chat:
                messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                stream = llm.create_chat_completion(messages=messages, **sampling)
                for chunk in stream:
                    piece = chunk["choices"][0].get("delta", {}).get("content")
                    if piece:
                        pieces.append(piece)
                        on_text(piece)
            else:
                for chunk in llm.create_completion(prompt, **sampling):
                    piece = chunk["choices"][0]["text"]
                    if piece:
                        pieces.append(piece)
                        on_text(piece)
        except ValueError as e:  # e.g. "Requested tokens (...) exceed context window of ..."
            raise TritpackError(str(e), path=path, hint="a larger --ctx, a shorter prompt or a smaller -n") from None
        perf = llama_cpp.llama_perf_context(llm.ctx)
        return RunStats(model=str(path), file_size=path.stat().st_size, load_s=load_s,
                        n_prompt=int(perf.n_p_eval), prompt_s=perf.t_p_eval_ms / 1e3,
                        n_decode=int(perf.n_eval), decode_s=perf.t_eval_ms / 1e3,
                        text="".join(pieces), gpu_layers=ngl, gpu_note=note)
    finally:
        if own:
            llm.close()
