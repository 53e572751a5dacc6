"""Scatter plots through matplotlib (the optional `plot` extra): PNG or SVG by the file's suffix.

`bench --plot` (size against speed and quality) and `bench/quality_table.py` (the quality table's
Pareto picture) draw through `scatter`; TritPack's points are red, llama.cpp's blue, and a hollow
marker is a point made without an imatrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import TritpackError

OURS, STOCK = "#d62728", "#1f77b4"
PANEL_PX = (760, 520)   # one panel's size in pixels at DPI
DPI = 100


@dataclass
class Point:
    label: str
    x: float
    y: float
    ours: bool = False     # a TritPack type (TP1, TP4, mixed) or llama.cpp's
    filled: bool = True    # hollow: made without an imatrix


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    points: list[Point] = field(default_factory=list)
    ylog: bool = False
    y_from_zero: bool = False
    legend: bool = False   # explain the colours and the hollow markers
    fronts: bool = False   # draw each side's Pareto front (no point of that side is both smaller and better)
    xlog: bool = False


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise TritpackError("plots need matplotlib", hint="pip install 'tritpack-gguf[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter(panels: list[Panel], path: str | Path, panel_px: tuple[int, int] = PANEL_PX) -> Path:
    """One row of scatter panels (those with points) written to `path` (.png or .svg)."""
    out = Path(path)
    if out.suffix.lower() not in (".png", ".svg"):
        raise TritpackError("a plot is written as .png or .svg", path=out)
    panels = [p for p in panels if p.points]
    if not panels:
        raise TritpackError("nothing to plot: no row has the numbers", path=out)
    plt = _pyplot()
    w, h = panel_px
    fig, axes = plt.subplots(1, len(panels), figsize=(w * len(panels) / DPI, h / DPI), dpi=DPI, squeeze=False)
    try:
        for ax, panel in zip(axes[0], panels):
            _draw(ax, panel)
        fig.tight_layout()
        fig.savefig(out, dpi=DPI)
    except OSError as e:
        raise TritpackError(f"cannot write the plot: {e.strerror or e}", path=out) from None
    finally:
        plt.close(fig)
    return out


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other point beats on both x and y (smaller is better on both), by x."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.x, p.y)):
        if not front or p.y < front[-1].y:
            front.append(p)
    return front


def _draw(ax, panel: Panel) -> None:
    pts = [p for p in panel.points if (not panel.ylog or p.y > 0) and (not panel.xlog or p.x > 0)]
    if panel.fronts:
        for ours in (False, True):
            front = pareto_front([p for p in pts if p.ours == ours])
            if len(front) > 1:
                color = OURS if ours else STOCK
                ax.step([p.x for p in front], [p.y for p in front], where="post", color=color, alpha=0.45,
                        linewidth=1.2, zorder=2)
    for p in pts:
        color = OURS if p.ours else STOCK
        ax.scatter([p.x], [p.y], s=42, color=color if p.filled else "white", edgecolors=color, linewidths=1.6,
                   zorder=3)
        ax.annotate(p.label, (p.x, p.y), xytext=(6, 3), textcoords="offset points", fontsize=7, color=color)
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    if panel.ylog:
        ax.set_yscale("log")
    elif panel.y_from_zero:
        ax.set_ylim(bottom=0, top=max(p.y for p in pts) * 1.12)
    if panel.xlog:
        ax.set_xscale("log")
    else:
        ax.set_xlim(right=max(p.x for p in pts) * 1.12 + 1e-9)
    ax.grid(True, color="#e1e1e1", zorder=0)
    if panel.legend:
        from matplotlib.lines import Line2D

        mk = dict(marker="o", linestyle="", markersize=7, markeredgewidth=1.6)
        ax.legend(handles=[Line2D([], [], color=STOCK, label="llama.cpp types", **mk),
                           Line2D([], [], color=OURS, label="TritPack (TP1/TP4/mixed)", **mk),
                           Line2D([], [], color="#3c3c3c", label="with imatrix", **mk),
                           Line2D([], [], color="#3c3c3c", markerfacecolor="white", label="without imatrix", **mk)]
                  + ([Line2D([], [], color="#3c3c3c", alpha=0.45, label="Pareto front of each")] if panel.fronts else []),
                  fontsize=8, loc="upper right")
