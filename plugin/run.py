"""`run`: generate from a GGUF (TritPack or stock) with the patched library, streaming the text,
and measure it the way llama.cpp does (its own perf counters for prompt and decode).

The file is checked here first (converters/reader.py, and the library's types); llama.cpp then runs
in a child process (llama_child.py), so that an abort or a crash in it is a TritpackError naming the
file, not the end of this process. Only `generate(..., llm=...)`, with a model the caller opened in
its own process, runs here.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

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
    warning left to gpu_note()). In-process: `run` and `verify` call it in their llama.cpp child."""
    from .runtime import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load(path, **kwargs)
        except ValueError as e:  # llama_cpp: "Failed to load model from file" (details on llama.cpp's log)
            raise TritpackError(f"llama.cpp could not load the model: {e}", path=path,
                                hint="`tritpack-gguf verify --check-data` or `tritpack-gguf inspect` may say why") from None


def _no_emit(_event: tuple) -> None:
    pass


def open_model_here(path: str | Path, emit: Callable[[tuple], None] = _no_emit, *,
                    stage: str = "loading the model", **kwargs):
    """open_model() in the llama.cpp child: llama.cpp's log on (it goes to the child's log file, whose
    last lines a crash reports), and a load failure completed with llama.cpp's own error lines."""
    from .llama_child import own_log_tail

    emit(("stage", stage))
    kwargs.setdefault("verbose", True)
    try:
        return open_model(path, **kwargs)
    except TritpackError as e:
        why = own_log_tail(grep=("error", "fail"))
        if why:
            e.message += f"; llama.cpp said: {why}"
        raise


def context_size(path: str | Path, wanted: int = DEFAULT_CTX, *, header=None) -> int:
    """`wanted`, capped at the model's training context when the file records one."""
    from .runtime import read_header

    h = header if header is not None else read_header(path)
    train = h.get(f"{h.architecture}.context_length")
    return min(wanted, int(train)) if isinstance(train, int) and train > 0 else wanted


def generate(model: str | Path, prompt: str | list[dict], *, n: int = 64, ngl: int = 0, chat: bool = False,
             seed: int | None = None, temp: float = 0.8, top_k: int = 40, top_p: float = 0.95,
             threads: int | None = None, ctx: int = DEFAULT_CTX, on_text: Callable[[str], None] = lambda s: None,
             llm=None, rpc: str | list[str] | None = None, tensor_split: str | list[float] | None = None,
             rpc_stall_s: float | None = None) -> RunStats:
    """Generate up to n tokens after `prompt` (with `chat`, a user message or a list of chat messages
    rendered by the model's chat template), calling on_text with each piece as it comes.
    `llm`: a model already opened in this process (runtime.load()), used here; else the file is
    checked, then opened and run in a child process (see llama_child.py). `rpc`: HOST:PORT of
    `tritpack-gguf rpc-server` helpers to split the layers with (checked first, see rpc.py); then
    no token for `rpc_stall_s` seconds (default programs.STALL_S) while generating is an error, not a
    hang (programs.HelperWatch)."""
    from .llama_child import LlamaChild
    from .programs import HelperWatch
    from .runtime import check_model

    path = Path(model)
    if n < 1:
        raise TritpackError("-n must be at least 1")
    endpoints = _rpc_endpoints(rpc) if llm is None else []
    note = None if endpoints else gpu_note(ngl)
    sampling = dict(n=n, chat=chat, seed=seed, temp=temp, top_k=top_k, top_p=top_p)
    if llm is not None:
        stats = _generate_with(llm, path, prompt, on_text=on_text, **sampling)
    else:
        h = check_model(path)
        opened = dict(n_ctx=context_size(path, ctx, header=h), n_gpu_layers=ngl, n_threads=threads,
                      n_threads_batch=threads, seed=seed, **_rpc_opened(endpoints, tensor_split))
        with LlamaChild() as child:
            stats = child.call("tritpack_gguf.run:_generate_in_child", path, prompt, opened, sampling,
                               path=path, stage="loading the model", on_text=on_text,
                               watch=HelperWatch(endpoints, rpc_stall_s))
    stats.gpu_layers, stats.gpu_note = ngl, note
    return stats


def _rpc_endpoints(rpc: str | list[str] | None) -> list[str]:
    """The parsed --rpc endpoints, each checked (hello and the TP1/TP4 probe) before a model is sent."""
    if not rpc:
        return []
    from .rpc import check_servers, parse_endpoints

    endpoints = parse_endpoints(rpc)
    check_servers(endpoints)
    return endpoints


def _rpc_opened(endpoints: list[str], tensor_split: str | list[float] | None) -> dict:
    """load() keywords of a split run in the llama.cpp child (already checked here)."""
    if not endpoints:
        return {}
    from .rpc import parse_tensor_split

    return dict(rpc=endpoints, tensor_split=parse_tensor_split(tensor_split), rpc_check=False)


def _generate_in_child(path: Path, prompt: str | list[dict], opened: dict, sampling: dict, *,
                       emit: Callable[[tuple], None]) -> RunStats:
    from .runtime import activate

    activate()
    import llama_cpp

    if opened.get("seed") is None:
        opened = dict(opened, seed=llama_cpp.LLAMA_DEFAULT_SEED)
    t0 = time.perf_counter()
    llm = open_model_here(path, emit, **opened)
    load_s = time.perf_counter() - t0
    try:
        stats = _generate_with(llm, path, prompt, on_text=lambda s: emit(("text", s)), emit=emit, **sampling)
    finally:
        llm.close()
    stats.load_s = load_s
    return stats


def _generate_with(llm, path: Path, prompt: str | list[dict], *, n: int, chat: bool, seed: int | None, temp: float,
                   top_k: int, top_p: float, on_text: Callable[[str], None],
                   emit: Callable[[tuple], None] = _no_emit) -> RunStats:
    """Generation on an opened model, in whichever process holds it."""
    from .runtime import activate

    activate()  # before llama_cpp is imported: it binds its library at import
    import llama_cpp

    llama_cpp.llama_perf_context_reset(llm.ctx)
    sampling = dict(max_tokens=n, temperature=temp, top_k=top_k, top_p=top_p, seed=seed, stream=True)
    pieces: list[str] = []
    try:
        if chat:
            emit(("stage", "rendering the chat template and reading the prompt"))
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            stream = llm.create_chat_completion(messages=messages, **sampling)
            for chunk in stream:
                piece = chunk["choices"][0].get("delta", {}).get("content")
                if piece:
                    if not pieces:
                        emit(("stage", "generating"))
                    pieces.append(piece)
                    on_text(piece)
        else:
            emit(("stage", "tokenizing the prompt"))
            llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
            emit(("stage", "reading the prompt"))
            for chunk in llm.create_completion(prompt, **sampling):
                piece = chunk["choices"][0]["text"]
                if piece:
                    if not pieces:
                        emit(("stage", "generating"))
                    pieces.append(piece)
                    on_text(piece)
    except ValueError as e:  # e.g. "Requested tokens (...) exceed context window of ..."
        raise TritpackError(str(e), path=path, hint="a larger --ctx, a shorter prompt or a smaller -n") from None
    perf = llama_cpp.llama_perf_context(llm.ctx)
    return RunStats(model=str(path), file_size=path.stat().st_size, load_s=0.0,
                    n_prompt=int(perf.n_p_eval), prompt_s=perf.t_p_eval_ms / 1e3,
                    n_decode=int(perf.n_eval), decode_s=perf.t_eval_ms / 1e3,
                    text="".join(pieces), gpu_layers=0)


class ChatSession:
    """A model opened once for a conversation (`run --chat` without -p), in a llama.cpp child
    process: `generate(messages, ...)` per turn. Checked like generate() checks a file."""

    def __init__(self, model: str | Path, *, ctx: int = DEFAULT_CTX, ngl: int = 0, threads: int | None = None,
                 rpc: str | list[str] | None = None, tensor_split: str | list[float] | None = None) -> None:
        from .llama_child import LlamaChild
        from .runtime import check_model

        self.path = Path(model)
        h = check_model(self.path)
        self._endpoints = _rpc_endpoints(rpc)
        self._child = LlamaChild()
        opened = dict(n_ctx=context_size(self.path, ctx, header=h), n_gpu_layers=ngl, n_threads=threads,
                      n_threads_batch=threads, **_rpc_opened(self._endpoints, tensor_split))
        try:
            self.load_s = self._child.call("tritpack_gguf.run:_chat_open", self.path, opened, path=self.path,
                                           stage="loading the model")
        except BaseException:
            self._child.close(kill=True)
            raise

    def generate(self, messages: list[dict], *, on_text: Callable[[str], None] = lambda s: None, n: int = 64,
                 ngl: int = 0, seed: int | None = None, temp: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 **_ignored: Any) -> RunStats:
        from .programs import HelperWatch

        sampling = dict(n=n, chat=True, seed=seed, temp=temp, top_k=top_k, top_p=top_p)
        stats = self._child.call("tritpack_gguf.run:_chat_turn", self.path, messages, sampling, path=self.path,
                                 stage="reading the conversation", on_text=on_text,
                                 watch=HelperWatch(self._endpoints))
        stats.load_s, stats.gpu_layers = self.load_s, ngl
        stats.gpu_note = None if self._endpoints else gpu_note(ngl)
        return stats

    def close(self) -> None:
        self._child.close()

    def __enter__(self) -> "ChatSession":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._child.close(kill=exc_type is not None and not issubclass(exc_type, TritpackError))


_CHAT: dict[str, Any] = {}  # in the llama.cpp child: the model of a ChatSession


def _chat_open(path: Path, opened: dict, *, emit: Callable[[tuple], None]) -> float:
    t0 = time.perf_counter()
    _CHAT["llm"] = open_model_here(path, emit, **opened)
    return time.perf_counter() - t0


def _chat_turn(path: Path, messages: list[dict], sampling: dict, *, emit: Callable[[tuple], None]) -> RunStats:
    return _generate_with(_CHAT["llm"], path, messages, on_text=lambda s: emit(("text", s)), emit=emit, **sampling)
