"""Scatter plots with a log y axis as PNG, without matplotlib (tritpack_gguf.bench's Canvas draws)."""

from __future__ import annotations

import math
from pathlib import Path

from tritpack_gguf.bench import Canvas

STOCK = (31, 119, 180)    # llama.cpp's types
OURS = (214, 39, 40)      # TP1 / TP4 / mixed
GRID, AXIS = (225, 225, 225), (60, 60, 60)

# (title, x label, y label, [(label, x, y, maker, imatrix)])
Panel = tuple[str, str, str, list[tuple[str, float, float, str, bool]]]


def _log_ticks(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    return [10.0 ** e for e in range(a, b + 1)]


def _fmt(v: float) -> str:
    e = round(math.log10(v))
    return f"{v:g}" if -3 <= e <= 3 else f"1e{e}"


def _panel(cv: Canvas, x0: int, y0: int, w: int, h: int, panel: Panel) -> None:
    title, xlabel, ylabel, pts = panel
    pts = [p for p in pts if p[2] > 0 and math.isfinite(p[2])]
    if not pts:
        return
    xs, ys = [p[1] for p in pts], [p[2] for p in pts]
    xlo, xhi = math.floor(min(xs)) - 0.5, math.ceil(max(xs)) + 0.5
    yt = _log_ticks(min(ys) / 1.3, max(ys) * 1.3)
    ylo, yhi = math.log10(yt[0]), math.log10(yt[-1])
    left, right, top, bottom = 110, 30, 50, 70
    px0, py0, pw, ph = x0 + left, y0 + top, w - left - right, h - top - bottom
    cv.text(x0 + w // 2, y0 + 14, title, scale=2, anchor="center")

    def X(v: float) -> int:
        return px0 + round((v - xlo) / (xhi - xlo) * pw)

    def Y(v: float) -> int:
        return py0 + ph - round((math.log10(v) - ylo) / (yhi - ylo) * ph)

    xt = range(math.ceil(xlo), math.floor(xhi) + 1)
    cv.axes(x0, px0, py0, pw, ph, [(X(x), f"{x:g}") for x in xt], [(Y(t), _fmt(t)) for t in yt], xlabel, ylabel,
            GRID, AXIS)
    placed: list[tuple[int, int, int, int]] = []
    # draw the points first, then labels where they overlap nothing placed yet
    for label, x, y, maker, imat in pts:
        c = OURS if maker == "tritpack" else STOCK
        cv.disc(X(x), Y(y), 6, c)
        if not imat:
            cv.disc(X(x), Y(y), 3, (255, 255, 255))
        placed.append((X(x) - 6, Y(y) - 6, X(x) + 6, Y(y) + 6))
    for label, x, y, maker, imat in sorted(pts, key=lambda p: p[1]):
        c = OURS if maker == "tritpack" else STOCK
        text = label.replace(" +imat", "*").replace("mixed @", "mixed=")
        tw = cv.text_width(text, 1)
        cx, cy = X(x), Y(y)
        spots = [(9, -4, "left"), (-9, -4, "right"), (9, -16, "left"), (9, 8, "left"), (-9, -16, "right"),
                 (-9, 8, "right"), (9, -28, "left"), (9, 20, "left"), (-9, -28, "right"), (-9, 20, "right"),
                 (30, -4, "left"), (-30, -4, "right"), (30, -16, "left"), (30, 8, "left"), (-30, -16, "right"),
                 (-30, 8, "right")]
        for dx, dy, anchor in spots:
            lx = cx + dx if anchor == "left" else cx + dx - tw
            box = (lx, cy + dy, lx + tw, cy + dy + 9)
            if box[0] < px0 or box[2] > px0 + pw or box[1] < py0 or box[3] > py0 + ph:
                continue
            if any(not (box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3]) for b in placed):
                continue
            cv.text(box[0], box[1] + 1, text, c, 1)
            placed.append(box)
            break
    # legend
    lx, ly = px0 + pw - 250, py0 + 10
    for i, (name, c, filled) in enumerate((("llama.cpp types", STOCK, True), ("TritPack (TP1/TP4/mixed)", OURS, True),
                                           ("with imatrix (label *)", AXIS, True), ("without imatrix", AXIS, False))):
        cv.disc(lx, ly + 16 * i + 4, 5, c)
        if not filled:
            cv.disc(lx, ly + 16 * i + 4, 2, (255, 255, 255))
        cv.text(lx + 12, ly + 16 * i, name, c, 1)


def scatter_png(panels: list[Panel], path: str | Path, panel_w: int = 900, panel_h: int = 620) -> Path:
    panels = [p for p in panels if p[3]]
    cv = Canvas(panel_w * max(1, len(panels)), panel_h)
    for i, p in enumerate(panels):
        _panel(cv, i * panel_w, 0, panel_w, panel_h, p)
    out = Path(path)
    out.write_bytes(cv.png())
    return out
