"""`tritpack-gguf verify`: a TritPack GGUF against its exact F32 reference; non-zero exit on a mismatch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..defaults import VERIFY_PROMPT
from ..errors import TritpackError
from ._common import JsonOpt, RpcOpt, TensorSplitOpt, ThreadsOpt, print_json, progress_bar

if TYPE_CHECKING:
    from ..verify import VerifyReport


def _tok(piece: str, tok: int) -> str:
    return f"{tok} {piece!r}"


def print_verify_report(r: VerifyReport, echo=typer.echo) -> None:
    if not r.reference_made:
        ref = r.reference
    elif r.reference == "(made on the fly)":
        ref = "its own F32 reference, made on the fly"
    else:
        ref = f"its own F32 reference, saved to {r.reference}"
    echo(f"verify {r.model}" + (f" on the GPU (--ngl {r.ngl})" if r.ngl else ""))
    echo(f"  reference          {ref}")
    echo(f"  prompt             {r.n_prompt} tokens")
    if r.finite:
        echo(f"  max |logit diff|   {r.max_abs_diff:.4g} over the prompt (mean {r.mean_abs_diff:.3g}; "
             f"logits up to {r.logit_range:.3g})")
    else:
        echo("  max |logit diff|   n/a: NaN/Inf logits")
    if not r.finite:
        echo("  top-1 agreement    n/a")
        echo("  greedy continuation: n/a (NaN/Inf logits) FAILED")
    else:
        echo(f"  top-1 agreement    {r.top1_agree}/{r.n_prompt} prompt positions")
        status = "OK" if r.first_difference is None else "FAILED"
        echo(f"  greedy continuation = reference {r.continuation_match}/{r.n} {status}")
    if r.finite and r.first_difference is not None:
        i = r.first_difference
        margin = f"; the reference's top-1 margin there was {r.margin_at_difference:.3g}" if r.margin_at_difference is not None else ""
        echo(f"    token {i + 1}: model {_tok(r.pieces[i], r.tokens[i])}, reference "
             f"{_tok(r.reference_pieces[i], r.reference_tokens[i])}{margin}")
        if (r.margin_at_difference is not None and r.margin_at_difference <= r.max_abs_diff
                and r.max_abs_diff <= 0.05 * r.logit_range):  # small noise, smaller margin
            echo("    (a near tie: the margin is within the logit difference; try another --prompt to tell a "
                 "tie from a fault)")
    elif r.finite:
        echo(f"    smallest reference top-1 margin along it: {r.min_reference_margin:.3g}")
    echo(f"  continuation       {r.text!r}")
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
    prompt: Annotated[str, typer.Option("--prompt", help="Prompt both models read.")] = VERIFY_PROMPT,
    n: Annotated[int, typer.Option("-n", help="Greedy tokens that must equal the reference's.")] = 16,
    ngl: Annotated[int, typer.Option("--ngl", help="Layers on the GPU (both models).")] = 0,
    check_data: Annotated[bool, typer.Option("--check-data", help="Also validate every tensor's data (NaN/Inf block scales) with ggml_validate_row_data.")] = False,
    save_reference: Annotated[Path | None, typer.Option("--save-reference", help="Keep the reference made on the fly here (for later --reference runs).")] = None,
    all_f32: Annotated[bool, typer.Option("--all-f32", help="Dequantize every tensor for the reference, not only TP1/TP4 ones.")] = False,
    threads: ThreadsOpt = None,
    rpc: RpcOpt = None,
    tensor_split: TensorSplitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare a TritPack model with its exact F32 reference: logit difference, top-1 agreement and
    the greedy continuation (exit 1 when it differs, or on NaN/Inf)."""
    if ngl:
        from ..run import gpu_note

        note = gpu_note(ngl)
        if note:
            typer.echo(f"note: {note}", err=True)
    from ..verify import verify

    with progress_bar(enabled=not json_out) as update:
        r = verify(model, reference=reference, prompt=prompt, n=n, ngl=ngl, threads=threads,
                           check_data=check_data, all_f32=all_f32, save_reference=save_reference, progress=update,
                   rpc=rpc, tensor_split=tensor_split)
    if json_out:
        print_json(r.as_dict())
    else:
        print_verify_report(r)
    if not r.ok:
        raise TritpackError("verification failed: " + "; ".join(r.failures), path=model)
