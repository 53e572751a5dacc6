"""`tritpack-gguf convert`: a GGUF (or an Ollama model name) -> TP4, TP1 or a tiered mix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ..digest import SourceHash
from ..errors import TritpackError
from ._common import JsonOpt, ThreadsOpt, print_json, progress_bar, resolve_model_arg
from ._report import print_convert_report


def convert_command(
    model: Annotated[str, typer.Argument(help="Input GGUF file (or an Ollama model name such as llama3.2:1b).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output file (default: <stem>-TP4.gguf beside the input).")] = None,
    type_: Annotated[str, typer.Option("--type", help="tp4, tp1 or mixed.")] = "tp4",
    budget: Annotated[str | None, typer.Option("--budget", help="Size budget for --type mixed, e.g. 2.5GB.")] = None,
    bpw: Annotated[float | None, typer.Option("--bpw", help="Bits per weight for --type mixed, e.g. 2.5.")] = None,
    like: Annotated[str | None, typer.Option("--like", help="For --type mixed: the budget is the size llama-quantize gives this model as that preset (Q4_K_M, Q3_K_M, Q6_K, ...).")] = None,
    target_cos: Annotated[float | None, typer.Option("--target-cos", help="TP1: smallest error meeting this cosine similarity.")] = None,
    alpha: Annotated[str, typer.Option("--alpha", help="TP1 threshold factor: auto (searched per tensor) or a number.")] = "auto",
    imatrix: Annotated[str | None, typer.Option("--imatrix", help="llama-imatrix file weighting the errors; auto: made by llama-imatrix from the package's calibration text (cached); small: auto for TP4/mixed when the source model fits in memory (the default; TRITPACK_IMATRIX_DEFAULT=none changes it); none: no imatrix.")] = None,
    keep: Annotated[list[str] | None, typer.Option("--keep", help="Keep tensors matching this pattern as they are (repeatable).")] = None,
    threads: ThreadsOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan without writing.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert a GGUF into a TritPack GGUF and report size and per-tensor quality."""
    if alpha != "auto":
        try:
            alpha_v: float | None = float(alpha)
        except ValueError:
            raise TritpackError(f"--alpha must be 'auto' or a number, not {alpha!r}") from None
        if not 0.0 < alpha_v < 4.0:
            raise TritpackError("--alpha must be between 0 and 4")
    else:
        alpha_v = None
    if target_cos is not None and not 0.0 < target_cos < 1.0:
        raise TritpackError("--target-cos must be between 0 and 1")
    if imatrix is None:
        imatrix = os.environ.get("TRITPACK_IMATRIX_DEFAULT") or "small"
        if imatrix not in ("small", "auto", "none"):
            raise TritpackError(f"TRITPACK_IMATRIX_DEFAULT must be small, auto or none, not {imatrix!r}")
    if (budget or bpw or like) and type_.lower() != "mixed":
        raise TritpackError("--budget, --bpw and --like apply to --type mixed")
    path, stem = resolve_model_arg(model)
    # the source's sha256 (for tritpack.source_sha256) starts now, on the second core, while the
    # interpreter loads numpy, gguf and the converter; convert() takes it over
    source_hash = None if dry_run else SourceHash(path)
    try:
        from .. import convert as _convert

        opts = _convert.ConvertOptions(type=type_.lower(), output=output,
                                       budget=_convert.parse_size(budget) if budget else None, bpw=bpw,
                                       like=_convert.policy.preset(like) if like else None,
                                       target_cos=target_cos, alpha=alpha_v,
                                       imatrix=imatrix if imatrix in ("small", "auto", "none") else Path(imatrix), keep=keep or [],
                                       threads=threads, force=force, dry_run=dry_run)
    except BaseException:
        if source_hash is not None:
            source_hash.stop()
        raise
    if stem is not None and opts.output is None:
        opts.output = _convert.default_output(stem.with_name(stem.name + ".gguf"), opts.type)
    with progress_bar(enabled=not json_out) as update:
        report = _convert.convert(path, opts, progress=update, source_hash=source_hash)
    if json_out:
        print_json(report.as_dict())
    else:
        print_convert_report(report)
