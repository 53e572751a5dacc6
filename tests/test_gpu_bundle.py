"""The GPU check rehearsed without a GPU (issue 16).

bench/gpu-bundle.sh packs what bench/gpu/check.py needs on a bare GPU machine with no network; the real
bundle comes from the CUDA build, here the CPU build stands in (--from-build). Checked: the bundle holds
every program check.py calls and every library they load, fits the device tool's 64 MiB together with the
working tree, is reused when nothing changed, and check.py --rehearse runs its non-GPU steps (model
generation and quantization, greedy GPU-vs-CPU logic, llama-bench, mat-vec, argument handling, the
report) and reports the GPU-only steps as skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tritpack_gguf.paths import source_root

ROOT = source_root()
CHECK = ROOT / "bench" / "gpu" / "check.py"


def _bundle(lib_dir: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu-bundle.sh"), "--from-build", lib_dir, "--out", str(out)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, patched_build) -> Path:
    out = tmp_path_factory.mktemp("gpu") / ".gpu-bundle"
    r = _bundle(patched_build.lib_dir, out)
    assert r.returncode == 0, r.stderr + r.stdout
    return out


def test_bundle_holds_everything_the_check_calls(bundle, tmp_path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["kind"] == "cpu"
    assert (bundle / "check.py").read_bytes() == CHECK.read_bytes()
    called = set(re.findall(r'r\.bin / "([\w.-]+)"', CHECK.read_text()))
    assert called == {"test-backend-ops", "llama-bench", "llama-quantize", "greedy-logits", "matvec-bench"}
    assert called <= set(manifest["programs"])
    with tarfile.open(bundle / manifest["payload"]) as tf:
        names = set(tf.getnames())
        tf.extractall(tmp_path, filter="data")
    for p in called:
        assert f"./bin/{p}" in names
    for f in ("py/make_random_model.py", "py/gguf/__init__.py", "py/tritpack_gguf/converters/tiny_model.py",
              "py/tritpack_gguf/errors.py", "vocab/ggml-vocab-llama-spm.gguf"):
        assert f"./{f}" in names, f
    # every library the programs load is in bin/ (nothing from the build folder or the cache is needed)
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path / "bin")}
    ldd = subprocess.run(["ldd", *[str(tmp_path / "bin" / p) for p in sorted(called)]], capture_output=True, text=True, env=env)
    assert "not found" not in ldd.stdout, ldd.stdout
    build_bin = str(Path(manifest["build_dir"]) / "bin")
    assert build_bin not in ldd.stdout, "a program still loads a library from the build folder"
    # stripped: no symbol table left
    sections = subprocess.run(["readelf", "-S", str(tmp_path / "bin" / "test-backend-ops")], capture_output=True, text=True).stdout
    assert ".symtab" not in sections


def test_bundle_fits_the_upload_limit_and_is_reused(bundle, patched_build):
    r = _bundle(patched_build.lib_dir, bundle)
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout
    m = re.search(r"= ([0-9.]+) of 64 MiB", r.stdout)
    assert m and float(m.group(1)) < 64, r.stdout
    # the folder the device tool carries is ignored by git (it must not be committed)
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", ".gpu-bundle/payload.tar.xz"])
    assert ignored.returncode == 0


def test_check_rehearsal_writes_the_report(bundle, tmp_path):
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, str(bundle / "check.py"), str(out), "--work", str(tmp_path / "work"), "--rehearse"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    st = {k: v["status"] for k, v in res["steps"].items()}
    assert st == {"tbo": "skipped", "memcheck": "skipped", "energy": "skipped",
                  "matvec": "ok", "greedy": "ok", "bench": "ok", "models": "ok"}, res["steps"]
    greedy = res["steps"]["greedy"]["models"]
    assert {t: (v["same_tokens"], v["of"]) for t, v in greedy.items()} == {"TP1": (16, 16), "TP4": (16, 16)}
    bench_types = {x["type"] for x in res["steps"]["bench"]["rows"]}
    assert bench_types == {"F16", "Q8_0", "Q4_0", "Q4_K_M", "IQ4_XS", "TQ2_0", "TP4", "TP1"}
    assert {x["type"] for x in res["steps"]["matvec"]["matvec"]} >= {"tp1", "tp4"}
    report = (out / "report.md").read_text()
    for heading in ("| step | status |", "## Greedy", "## llama-bench", "## Mat-vec bandwidth", "## Commands"):
        assert heading in report
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "report.md", "results.json"]
    with tarfile.open(out / "logs.tar.gz") as tf:
        logs = tf.getnames()
    assert "logs/llama-bench.jsonl" in logs and "logs/models.log" in logs


def test_check_arguments(bundle, tmp_path):
    r = subprocess.run([sys.executable, str(bundle / "check.py"), str(tmp_path / "o"), "--steps", "tbo,nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown step(s) nope" in r.stderr
    r = subprocess.run([sys.executable, str(CHECK), str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "manifest.json" in r.stderr and "gpu-bundle.sh" in r.stderr
