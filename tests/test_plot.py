"""plugin/plot.py: scatter panels through matplotlib, PNG and SVG."""

from __future__ import annotations

import builtins

import pytest

from tritpack_gguf.errors import TritpackError
from tritpack_gguf.plot import Panel, Point, scatter

PANELS = [Panel("speed", "size (MB)", "tok/s", [Point("Q4_0", 80.0, 50.0), Point("TP4", 80.0, 55.0, ours=True)],
                y_from_zero=True),
          Panel("quality", "bpw", "KLD (log)", [Point("Q2_K", 2.6, 0.3, filled=False), Point("mixed", 2.5, 0.1, True)],
                ylog=True, legend=True),
          Panel("empty", "x", "y", [])]


def test_png_has_one_panel_width_for_each_panel_with_points(tmp_path):
    data = scatter(PANELS, tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 2 * 760 and int.from_bytes(data[20:24], "big") == 520


def test_svg_carries_the_labels(tmp_path):
    text = scatter(PANELS, tmp_path / "p.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for label in ("Q4_0", "TP4", "mixed", "KLD (log)"):
        assert label in text


def test_bad_requests_are_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(TritpackError, match=r"\.png or \.svg"):
        scatter(PANELS, tmp_path / "p.jpg")
    with pytest.raises(TritpackError, match="nothing to plot"):
        scatter([Panel("empty", "x", "y", [])], tmp_path / "p.png")
    with pytest.raises(TritpackError, match="cannot write the plot"):
        scatter(PANELS, tmp_path / "missing-dir" / "p.png")
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(TritpackError, match=r"tritpack-gguf\[plot\]"):
        scatter(PANELS, tmp_path / "q.png")


def test_pareto_front_and_fronts_drawn(tmp_path):
    from tritpack_gguf.plot import pareto_front

    pts = [Point("a", 1.0, 5.0), Point("b", 2.0, 6.0), Point("c", 3.0, 1.0), Point("d", 3.0, 2.0), Point("e", 4.0, 0.5)]
    assert [p.label for p in pareto_front(pts)] == ["a", "c", "e"]
    panel = Panel("q", "size (MB)", "KLD", pts + [Point("m", 2.5, 0.8, ours=True), Point("n", 5.0, 0.1, ours=True)],
                  ylog=True, legend=True, fronts=True)
    text = scatter([panel], tmp_path / "f.svg").read_text()
    assert "Pareto front" in text
