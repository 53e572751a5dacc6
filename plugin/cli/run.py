"""`tritpack-gguf run`: generate from a model with the patched llama.cpp, streaming the text."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import run as _run
from ..errors import TritpackError
from ._common import JsonOpt, RpcOpt, TensorSplitOpt, ThreadsOpt, print_json


def _stream(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def run_command(
    model: Annotated[Path, typer.Argument(help="GGUF file (TritPack or stock).")],
    prompt: Annotated[str | None, typer.Option("-p", "--prompt", help="Prompt text (with --chat: the user message; without -p, --chat reads messages from the terminal).")] = None,
    n: Annotated[int, typer.Option("-n", "--n-predict", help="Tokens to generate at most.")] = 64,
    ngl: Annotated[int, typer.Option("--ngl", help="Layers to put on the GPU (needs a `build --cuda` library).")] = 0,
    chat: Annotated[bool, typer.Option("--chat", help="Use the model's chat template.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed (default: random).")] = None,
    temp: Annotated[float, typer.Option("--temp", help="Temperature (0: greedy).")] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k")] = 40,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.95,
    ctx: Annotated[int, typer.Option("--ctx", help="Context size (capped at the model's).")] = _run.DEFAULT_CTX,
    threads: ThreadsOpt = None,
    rpc: RpcOpt = None,
    tensor_split: TensorSplitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Generate text, streamed as it comes; then load time, file size and prompt and decode speed."""
    if prompt is None and not chat:
        if sys.stdin.isatty():
            raise TritpackError("give a prompt with -p (or use --chat for a conversation)")
        prompt = sys.stdin.read()
    opts = dict(n=n, ngl=ngl, chat=chat, seed=seed, temp=temp, top_k=top_k, top_p=top_p, threads=threads, ctx=ctx,
                rpc=rpc, tensor_split=tensor_split)
    if prompt is not None:
        stats = _run.generate(model, prompt, on_text=(lambda s: None) if json_out else _stream, **opts)
        if json_out:
            print_json(stats.as_dict())
            return
        _finish(stats)
        return
    _chat_session(model, opts)


def _finish(stats: _run.RunStats) -> None:
    sys.stdout.write("\n")
    sys.stdout.flush()
    if stats.gpu_note:
        typer.echo(f"note: {stats.gpu_note}", err=True)
    typer.echo(stats.line(), err=True)


def _chat_session(model: Path, opts: dict) -> None:
    """A conversation in the terminal: one line a message, an empty line or Ctrl-D ends it. The model
    stays loaded in a llama.cpp child process for the whole conversation."""
    with _run.ChatSession(model, ctx=opts["ctx"], ngl=opts["ngl"], threads=opts["threads"], rpc=opts["rpc"],
                          tensor_split=opts["tensor_split"]) as session:
        messages: list[dict] = []
        typer.echo(f"chatting with {model.name} (empty line or Ctrl-D ends)", err=True)
        while True:
            try:
                line = input("> " if sys.stdin.isatty() else "")
            except EOFError:
                break
            if not line.strip():
                break
            messages.append({"role": "user", "content": line})
            stats = session.generate(messages, on_text=_stream, **opts)
            messages.append({"role": "assistant", "content": stats.text})
            _finish(stats)
