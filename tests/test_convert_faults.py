"""Faults while converting: a full disk, Ctrl-C, SIGTERM, two conversions to one output.

Each leaves no file at the output path, no temporary file, and the input untouched; a second
conversion afterwards succeeds.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tritpack_gguf.converters.reader import GGUFFile
from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file

CLI = [sys.executable, "-m", "tritpack_gguf"]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model(tmp_path_factory, patched_build):
    d = tmp_path_factory.mktemp("faults")
    # big enough that a conversion takes a few seconds on 2 cores (the window for signals)
    return make_llama(d / "m.gguf", vocab_file(patched_build.source_dir),
                      Shape(n_embd=512, n_ff=1536, n_layer=8, n_head=8, n_head_kv=8), seed=7)


def _leftovers(d: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name not in keep)


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}): the disk-full case needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_clear_error_nothing_left(model, small_fs, count_line):
    before = sha(model)
    out = small_fs / "out.gguf"
    r = subprocess.run(CLI + ["convert", str(model), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "no space left" in r.stderr and str(out) in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not out.exists() and list(small_fs.iterdir()) == []
    assert sha(model) == before
    count_line(f"fault: disk full (a 2 MB tmpfs) during convert: exit {r.returncode}, nothing left, input unchanged")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_conversion_then_rerun(model, tmp_path, sig, count_line):
    before = sha(model)
    out = tmp_path / "out.gguf"
    # a runner started in the background (CI) hands its children SIGINT ignored; Ctrl-C is the
    # interactive case, so restore the default the way a terminal session has it
    p = subprocess.Popen(CLI + ["convert", str(model), "-o", str(out), "--type", "tp4"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(x.name.endswith(".tmp") for x in tmp_path.iterdir()):
        if p.poll() is not None:
            pytest.fail(f"conversion ended before the signal: {p.stderr.read()[-1000:]}")
        time.sleep(0.02)
    assert any(x.name.endswith(".tmp") for x in tmp_path.iterdir()), "no temporary file appeared"
    written = sum(x.stat().st_size for x in tmp_path.iterdir() if x.name.endswith(".tmp"))
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0, err
    assert "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path, set()) == [], _leftovers(tmp_path, set())
    assert sha(model) == before
    r = subprocess.run(CLI + ["convert", str(model), "-o", str(out), "--type", "tp4", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(GGUFFile(out).tensors) == len(GGUFFile(model).tensors)
    count_line(f"fault: {sig.name} mid-conversion ({written} bytes of the temporary file written): exit {p.returncode}, "
               f"nothing left; the rerun succeeded")


def test_two_conversions_to_one_output(model, tmp_path, count_line):
    out = tmp_path / "same.gguf"
    procs = [subprocess.Popen(CLI + ["convert", str(model), "-o", str(out), "--type", t],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for t in ("tp1", "tp4")]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    ok = [rc == 0 for rc, _ in results]
    assert sum(ok) >= 1, results
    # exactly one complete file: readable, every tensor of one type family, never an interleaving
    f = GGUFFile(out)
    kinds = {t.type.name for t in f.tensors} & {"TP1", "TP4"}
    assert len(kinds) == 1, kinds
    assert f.get("tritpack.type") == kinds.pop().lower()
    for rc, err in results:
        if rc != 0:
            assert "appeared while converting" in err or "output exists" in err, err
    assert _leftovers(tmp_path, {"same.gguf"}) == []
    count_line(f"fault: two conversions racing for one output: {sum(ok)} succeeded, one complete file "
               f"({len(f.tensors)} tensors, {f.get('tritpack.type')}), nothing else left")
