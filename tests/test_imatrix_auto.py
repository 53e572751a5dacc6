"""`convert --imatrix auto` (llama-imatrix over the package's calibration text, cached by the source's
sha256) and clear errors for bad imatrix files, on a tiny model made here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tritpack_gguf.cli import main as cli_main
from tritpack_gguf.converters.reader import GGUFFile
from tritpack_gguf.converters.tiny_model import make_llama, vocab_file
from tritpack_gguf.imatrix_auto import AUTO_CHUNKS, CALIBRATION_TEXT, auto_label


@pytest.fixture(scope="module")
def model(tmp_path_factory, patched_build):
    d = tmp_path_factory.mktemp("imat")
    return make_llama(d / "tiny.gguf", vocab_file(patched_build.source_dir), seed=11)


def _convert(capsys, *args) -> tuple[int, dict | None, str]:
    rc = cli_main(["convert", *map(str, args), "--json"])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 else None), cap.err


def test_calibration_text_is_package_data():
    text = CALIBRATION_TEXT.read_text()
    assert "Catherine Morland" in text and len(text.split()) > 10_000


def test_imatrix_auto_runs_caches_and_is_recorded(model, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("TRITPACK_HOME", str(home))
    # the build stays where the session found it (TRITPACK_LIB_DIR is set by the fixture's build)
    rc, rep, err = _convert(capsys, model, "-o", tmp_path / "a.gguf", "--imatrix", "auto")
    assert rc == 0, err
    made = sorted((home / "imatrix").glob("*.gguf"))
    assert len(made) == 1 and rep["imatrix"] == auto_label() == f"auto:northanger-abbey-1-8:{AUTO_CHUNKS}x512"
    assert rep["imatrix_seconds"] > 0
    assert GGUFFile(tmp_path / "a.gguf").get("tritpack.imatrix") == auto_label()
    mtime = made[0].stat().st_mtime_ns
    # a second conversion of the same source reuses the cached imatrix: same file, same output
    rc, rep2, err = _convert(capsys, model, "-o", tmp_path / "b.gguf", "--imatrix", "auto")
    assert rc == 0, err
    assert rep2["imatrix_seconds"] == 0 and sorted((home / "imatrix").glob("*.gguf")) == made
    assert made[0].stat().st_mtime_ns == mtime
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    # and the imatrix changes the quantization (it is read and used)
    rc, rep3, err = _convert(capsys, model, "-o", tmp_path / "c.gguf", "--imatrix", "none")
    assert rc == 0, err
    assert rep3["imatrix"] is None and "tritpack.imatrix" not in GGUFFile(tmp_path / "c.gguf").fields
    assert (tmp_path / "c.gguf").read_bytes() != (tmp_path / "a.gguf").read_bytes()


@pytest.mark.parametrize("bad", ["garbage", "missing", "empty_gguf"])
def test_bad_imatrix_file_one_clear_error(model, tmp_path, capsys, bad):
    im = tmp_path / "bad.imatrix"
    if bad == "garbage":
        im.write_bytes(os.urandom(64))
    elif bad == "empty_gguf":
        im.write_bytes(b"GGUF" + b"\0" * 20)
    rc = cli_main(["convert", str(model), "-o", str(tmp_path / "out.gguf"), "--imatrix", str(im)])
    err = capsys.readouterr().err
    assert rc != 0
    errors = [ln for ln in err.splitlines() if ln.startswith("tritpack-gguf: error:")]
    assert len(errors) == 1 and str(im) in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out.gguf").exists()


def test_the_default_makes_one_for_a_small_model(model, tmp_path, monkeypatch, capsys):
    """Without --imatrix (and without TRITPACK_IMATRIX_DEFAULT), convert makes the automatic imatrix
    for a TP4 model that fits in memory and says so; the same bytes as --imatrix auto."""
    monkeypatch.setenv("TRITPACK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRITPACK_IMATRIX_DEFAULT")
    rc, rep, err = _convert(capsys, model, "-o", tmp_path / "d.gguf")
    assert rc == 0, err
    assert rep["imatrix"] == auto_label() and "the default when the source model fits in memory" in rep["imatrix_note"]
    rc, rep2, err = _convert(capsys, model, "-o", tmp_path / "a.gguf", "--imatrix", "auto")
    assert rc == 0 and rep2["imatrix_seconds"] == 0, err  # the default's imatrix, from the cache
    assert (tmp_path / "d.gguf").read_bytes() == (tmp_path / "a.gguf").read_bytes()
    # in words: the imatrix line says where it came from
    assert cli_main(["convert", str(model), "-o", str(tmp_path / "w.gguf")]) == 0
    assert "imatrix: auto:" in capsys.readouterr().out
    # TP1 (exact for ternary weights, the case it is for) is not given one by default
    rc, rep, err = _convert(capsys, model, "-o", tmp_path / "t.gguf", "--type", "tp1")
    assert rc == 0 and rep["imatrix"] is None and rep["imatrix_note"] is None, err


def test_the_default_stays_out_of_the_way(model, tmp_path, monkeypatch, capsys):
    """A source model larger than the memory gets none by default, and the report says why; a
    llama-imatrix that fails under the
    default is a note, not a failed conversion (asked for with --imatrix auto it is an error); a
    bad TRITPACK_IMATRIX_DEFAULT is one clear error."""
    from tritpack_gguf import imatrix_auto
    from tritpack_gguf.errors import TritpackError

    monkeypatch.setenv("TRITPACK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRITPACK_IMATRIX_DEFAULT")
    from tritpack_gguf import programs

    monkeypatch.setattr(programs, "mem_available", lambda: model.stat().st_size)  # a model as large as the memory
    rc, rep, err = _convert(capsys, model, "-o", tmp_path / "big.gguf")
    assert rc == 0 and rep["imatrix"] is None and "would read the model from disk" in rep["imatrix_note"], err
    monkeypatch.setattr(programs, "mem_available", lambda: None)  # unknown: the default makes one

    def broken(*a, **k):
        raise TritpackError("llama-imatrix failed (exit 1): out of luck", path=model)

    monkeypatch.setattr(imatrix_auto, "auto_imatrix", broken)
    rc, rep, err = _convert(capsys, model, "-o", tmp_path / "fell-back.gguf")
    assert rc == 0 and rep["imatrix"] is None and "llama-imatrix failed (exit 1): out of luck" in rep["imatrix_note"], err
    assert "tritpack.imatrix" not in GGUFFile(tmp_path / "fell-back.gguf").fields
    rc, _, err = _convert(capsys, model, "-o", tmp_path / "asked.gguf", "--imatrix", "auto")
    assert rc != 0 and "out of luck" in err and not (tmp_path / "asked.gguf").exists()
    monkeypatch.setenv("TRITPACK_IMATRIX_DEFAULT", "sometimes")
    rc, _, err = _convert(capsys, model, "-o", tmp_path / "x.gguf")
    assert rc != 0 and "TRITPACK_IMATRIX_DEFAULT must be small, auto or none" in err
