"""What the commands share: option aliases, JSON output, the progress bar."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from typing import Annotated, Any, Iterator

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (for scripts).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", help="Threads (default: all cores).")]
RpcOpt = Annotated[str | None, typer.Option(
    "--rpc", help="HOST:PORT[,HOST:PORT...] of `tritpack-gguf rpc-server` helpers: the layers are split between "
                  "this machine and them (each checked first). See docs/distributed.md.")]
TensorSplitOpt = Annotated[str | None, typer.Option(
    "--tensor-split", "-ts", help="Share of the offloaded layers per device, e.g. 2,1 (the --rpc servers in order, "
                                  "then local GPUs), as llama.cpp's --tensor-split.")]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr driven by `update(message, done, total)` calls; silent when
    disabled (e.g. with --json) or when stderr is not a terminal, where it prints a line a stage."""
    if not enabled:
        yield lambda *_: None
        return
    if not sys.stderr.isatty():
        last = {"stage": None, "t": 0.0}

        def plain(msg: str, done: int = 0, total: int = 0) -> None:
            now = time.monotonic()
            stage = msg.split(" ", 1)[0]  # a line per stage (and every 30 s), not per tensor
            if stage != last["stage"] or now - last["t"] > 30:
                frac = f" {done}/{total}" if total else ""
                sys.stderr.write(f"tritpack-gguf: {msg}{frac}\n")
                last.update(stage=stage, t=now)

        yield plain
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as p:
        task = p.add_task("starting", total=None)

        def update(msg: str, done: int = 0, total: int = 0) -> None:
            p.update(task, description=msg, completed=done, total=total or None)

        yield update


def resolve_model_arg(model: str):
    """A model argument: an existing file, else an Ollama model name resolved in the local store.
    Returns (path, default_output_dir_and_stem or None): outputs of an Ollama model go to the current
    folder, never beside the blob inside Ollama's store."""
    from pathlib import Path

    from ..ollama_store import looks_like_ollama_ref, ollama_output_stem, resolve_model_input

    path = resolve_model_input(model)
    if not Path(model).expanduser().exists() and looks_like_ollama_ref(model):
        return path, Path.cwd() / ollama_output_stem(model)
    return path, None
