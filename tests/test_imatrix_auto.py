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
