"""`tritpack-gguf eval`: perplexity and KL divergence (or embedding similarity) of a model against its base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import defaults
from ..errors import TritpackError
from ._common import JsonOpt, ThreadsOpt, print_json, progress_bar


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def eval_command(
    model: Annotated[Path, typer.Argument(help="The GGUF to evaluate (e.g. a TP4 conversion).")],
    base: Annotated[Path, typer.Option("--base", help="The reference GGUF (e.g. the F16 file it was made from).")],
    text: Annotated[Path, typer.Option("--text", help="A plain text file to evaluate on.")],
    ctx: Annotated[int, typer.Option("--ctx", help="Context length of each chunk.")] = defaults.EVAL_CTX,
    chunks: Annotated[int, typer.Option("--chunks", help="Chunks of --ctx tokens to evaluate (0: the whole text).")] = defaults.EVAL_CHUNKS,
    embedding: Annotated[bool | None, typer.Option("--embedding/--no-embedding",
                                                   help="Compare sentence embeddings (default: for models with a pooling type, e.g. BERT).")] = None,
    sentences: Annotated[int, typer.Option("--sentences", help="With --embedding: how many sentences of the text.")] = defaults.EVAL_SENTENCES,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Measure what a quantized model costs in quality against its base, over a text.

    Language models: perplexity, mean and 99th-percentile KL divergence of the next-token
    distribution against the base, and how often both pick the same top token (llama-perplexity;
    the base's logits are computed once per base, text, ctx and chunks and cached under
    $TRITPACK_HOME/eval/). Embedding models: mean and worst cosine similarity of sentence embeddings
    against the base's.
    """
    if ctx < 8:
        raise TritpackError("--ctx must be at least 8")
    if sentences < 1:
        raise TritpackError("--sentences must be at least 1")
    from ..evaluate import evaluate

    with progress_bar(enabled=not json_out) as update:
        r = evaluate(model, base, text, ctx=ctx, chunks=chunks, embedding=embedding,
                     sentences=sentences, threads=threads, progress=update)
    if json_out:
        print_json(r.as_dict())
        return
    typer.echo(f"model: {r.model}")
    typer.echo(f"base:  {r.base}")
    typer.echo(f"size:  {r.size / 1e6:.1f} MB, {r.bpw:.3f} bits per weight (all tensors)")
    if r.kind == "embedding":
        typer.echo(f"sentences: {r.sentences} of {r.text}")
        typer.echo(f"cosine similarity to the base: mean {r.cos_mean:.6f}, worst {r.cos_min:.6f}, "
                   f"1st percentile {r.cos_p01:.6f}")
    else:
        typer.echo(f"text:  {r.text}, {r.chunks} chunks of {r.ctx} tokens"
                   + (" (base logits from the cache)" if r.base_cached else ""))
        typer.echo(f"perplexity:      {_fmt(r.perplexity, '.4f')} +/- {_fmt(r.perplexity_err, '.4f')}"
                   f"   (base {_fmt(r.base_perplexity, '.4f')}, ratio {_fmt(r.ppl_ratio, '.4f')})")
        typer.echo(f"KL divergence:   mean {_fmt(r.kld_mean, '.6f')} +/- {_fmt(r.kld_mean_err, '.6f')}, "
                   f"median {_fmt(r.kld_median, '.6f')}, 99% {_fmt(r.kld_p99, '.6f')}, max {_fmt(r.kld_max, '.6f')}")
        typer.echo(f"same top token:  {_fmt(None if r.same_top is None else 100 * r.same_top, '.2f')} %")
    typer.echo(f"{r.seconds:.1f} s")
