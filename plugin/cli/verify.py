"""`tritpack-gguf verify`: a TritPack GGUF against its exact F32 reference; non-zero exit on a mismatch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import TritpackError
from ._common import JsonOpt, RpcOpt, TensorSplitOpt, ThreadsOpt, print_json, progress_bar

if TYPE_CHECKING:
    from ..verify import VerifyReport


def _tok(piece: str, tok: int) -> str:
    return f"{tok} {piece!r}"


def _sci(x: float) -> str:
    """7.9e-3, not 7.9e-03."""
    m, e = f"{x:.1e}".split("e")
    return f"{m}e{int(e)}"


def _where(r: VerifyReport, d) -> str:
    p = r.prompts[d.prompt]
    at = f"continuation token {d.position - p.n_prompt + 2}" if d.in_continuation else f"prompt position {d.position + 1}"
    return (f"prompt {d.prompt + 1}, {at}: model {_tok(d.model_piece, d.model_token)}, reference "
            f"{_tok(d.reference_piece, d.reference_token)}, reference margin {d.margin:.3g}")


def print_verify_report(r: VerifyReport, echo=typer.echo, max_listed: int = 5) -> None:
    if not r.reference_made:
        ref = r.reference
    elif r.reference == "(made on the fly)":
        ref = "its own F32 reference, made on the fly"
    else:
        ref = f"its own F32 reference, saved to {r.reference}"
    echo(f"verify {r.model}" + (f" on the GPU (--ngl {r.ngl})" if r.ngl else ""))
    echo(f"  reference          {ref}")
    how = "its own greedy tokens (--strict)" if r.strict else "the reference's greedy tokens"
    echo(f"  prompts            {len(r.prompts)} ({r.n_prompt} tokens), each followed by {r.n} of {how}")
    if not r.finite:
        echo("  logits vs reference (worst) n/a: NaN/Inf logits")
    else:
        echo(f"  logits vs reference (worst) {_sci(r.relative_diff)} of the logit range "
             f"(max |diff| {r.max_abs_diff:.3g}, mean {r.mean_abs_diff:.3g}, range {r.logit_range:.3g})")
        echo(f"  top-1 agreement    {r.top1_agree}/{r.positions} positions")
        if not r.strict:
            echo(f"  logit noise        {r.noise:.3g} (ceiling {r.noise_ceiling:.3g}); near-tie tolerance {r.tolerance:.3g}")
            echo(f"  near ties          {len(r.near_ties)}" + (" (disagreements within the tolerance: not faults)"
                                                              if r.near_ties else ""))
            for d in r.near_ties[:max_listed]:
                echo(f"    {_where(r, d)}")
            if r.faults:
                echo(f"  faults             {len(r.faults)} disagreement(s) beyond the tolerance")
                for d in r.faults[:max_listed]:
                    echo(f"    {_where(r, d)}")
        else:
            for k, p in enumerate(r.prompts):
                status = "OK" if p.continuation_match == r.n else "FAILED"
                echo(f"  greedy continuation = reference {p.continuation_match}/{r.n} {status}"
                     + (f" (prompt {k + 1})" if len(r.prompts) > 1 else ""))
                if p.continuation_match < r.n:
                    echo(f"    model {p.text!r}, reference {p.reference_text!r}")
    if len(r.prompts) == 1:
        echo(f"  continuation       {r.prompts[0].reference_text!r}")
    if r.tensors_checked is not None:
        if r.data_issues:
            echo(f"  tensor data        {len(r.data_issues)} bad tensor(s):")
            for it in r.data_issues:
                at = f" at row {it.row}, block {it.block}" if it.row >= 0 else ""
                echo(f"    {it.tensor} ({it.type}): {it.message}{at}")
        else:
            echo(f"  tensor data        {r.tensors_checked} tensors valid (no NaN/Inf scales or values)")
    echo(("OK" if r.ok else "FAILED: " + "; ".join(r.failures)) + f" ({r.seconds:.1f} s)")


def verify_command(
    model: Annotated[Path, typer.Argument(help="TritPack GGUF to verify.")],
    reference: Annotated[Path | None, typer.Option("--reference", help="Reference GGUF (default: the model's own weights dequantized to F32, made in a temporary folder).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="Prompt both models read (repeat for several; default: the short varied texts shipped with the package).")] = None,
    n: Annotated[int, typer.Option("-n", help="Greedy tokens of the reference after each prompt, read by both models.")] = 16,
    strict: Annotated[bool, typer.Option("--strict", help="The model runs free instead, and its greedy continuation must equal the reference's, n of n, on every prompt.")] = False,
    ngl: Annotated[int, typer.Option("--ngl", help="Layers on the GPU (both models).")] = 0,
    check_data: Annotated[bool, typer.Option("--check-data", help="Also validate every tensor's data (NaN/Inf block scales) with ggml_validate_row_data.")] = False,
    save_reference: Annotated[Path | None, typer.Option("--save-reference", help="Keep the reference made on the fly here (for later --reference runs).")] = None,
    all_f32: Annotated[bool, typer.Option("--all-f32", help="Dequantize every tensor for the reference, not only TP1/TP4 ones.")] = False,
    threads: ThreadsOpt = None,
    rpc: RpcOpt = None,
    tensor_split: TensorSplitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare a TritPack model with its exact F32 reference along the reference's greedy path: logit
    difference, top-1 agreement, near ties (exit 1 on a disagreement beyond the measured tolerance,
    logit noise above the activation precision's ceiling, or NaN/Inf)."""
    if ngl:
        from ..run import gpu_note

        note = gpu_note(ngl)
        if note:
            typer.echo(f"note: {note}", err=True)
    from ..verify import verify

    with progress_bar(enabled=not json_out) as update:
        r = verify(model, reference=reference, prompt=prompt or None, n=n, strict=strict, ngl=ngl, threads=threads,
                   check_data=check_data, all_f32=all_f32, save_reference=save_reference, progress=update,
                   rpc=rpc, tensor_split=tensor_split)
    if json_out:
        print_json(r.as_dict())
    else:
        print_verify_report(r)
    if not r.ok:
        raise TritpackError("verification failed: " + "; ".join(r.failures), path=model)
