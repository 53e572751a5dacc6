"""Human-readable tables for convert, inspect and estimate (the --json forms are the dicts)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_convert_report(r, console: Console | None = None) -> None:
    c = console or Console()
    verb = "would write" if r.dry_run else "wrote"
    c.print(f"{verb} {r.output or '(dry run)'}" if not r.dry_run else "plan (dry run, nothing written)")
    c.print(f"size: {mb(r.size_before)} -> {mb(r.size_after)}  (x{r.ratio:.2f} smaller, {r.bpw:.3f} bits per weight)")
    c.print("types: " + ", ".join(f"{k} x{v}" for k, v in sorted(r.type_counts().items())))
    lossless = [t.name for t in r.tensors if t.lossless]
    if lossless:
        c.print(f"lossless (ternary source reproduced exactly): {len(lossless)} tensors")
    not_lossless = [t.name for t in r.tensors if t.lossless is False]
    if not_lossless:
        c.print(f"[yellow]ternary sources NOT reproduced exactly: {', '.join(not_lossless)}[/yellow]")
    if r.imatrix:
        ran = f" (llama-imatrix: {r.imatrix_seconds:.0f} s)" if r.imatrix_seconds else ""
        c.print(f"imatrix: {r.imatrix}{ran}" + (f"; {r.imatrix_note}" if r.imatrix_note else ""))
    elif r.imatrix_note:
        c.print(f"[yellow]{r.imatrix_note}[/yellow]")
    elif r.type in ("tp4", "mixed") and not any(t.lossless for t in r.tensors):
        # measured on SmolLM2-135M (README, convert): TP4's mean KL divergence 0.103 -> 0.035, its
        # answers right where the plain file's were wrong; llama-imatrix took 16 s on 2 idle cores there
        c.print("[dim]tip: --imatrix auto weights the errors by what the model uses (TP4 on SmolLM2-135M: "
                "KL divergence 3x lower) for about the conversion's time again, cached for the next convert[/dim]")
    table = Table(title="per tensor" if r.dry_run else "five worst tensors (all of them with --json)")
    for col in ("tensor", "shape", "from", "to", "why", "alpha", "cos", "SNR dB", "RMSE"):
        table.add_column(col)
    rows = r.tensors if r.dry_run else r.worst(5)
    for t in rows:
        table.add_row(t.name, "x".join(map(str, t.shape)), t.src_type, t.dst_type, t.reason,
                      _fmt(t.alpha, ".3f"), _fmt(t.cos, ".5f"), _fmt(t.snr_db, ".1f"), _fmt(t.rmse, ".3g"))
    c.print(table)
    if not r.dry_run:
        c.print(f"{r.seconds:.1f} s, {r.size_before / 1e6 / max(r.seconds, 1e-9):.1f} MB/s of input")
