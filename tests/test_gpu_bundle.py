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
    # twice in a row: the second finds the first's bundle in place (nothing changed in between)
    first = _bundle(patched_build.lib_dir, bundle)
    assert first.returncode == 0, first.stderr
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
                  "matvec": "ok", "greedy": "ok", "ternary": "ok", "bench": "ok", "models": "ok"}, res["steps"]
    greedy = res["steps"]["greedy"]["models"]
    assert {t: (v["same_tokens"], v["of"]) for t, v in greedy.items()} == {"TP1": (16, 16), "TP4": (16, 16)}
    tern = res["steps"]["ternary"]["sides"]
    assert set(tern) == {"gpu", "cpu"} and all(v["same_tokens"] == 16 for v in tern.values())
    bench_types = {x["type"] for x in res["steps"]["bench"]["rows"]}
    assert bench_types == {"F16", "Q8_0", "Q4_0", "Q4_K_M", "IQ4_XS", "TQ2_0", "TP4", "TP1"}
    assert {x["type"] for x in res["steps"]["matvec"]["matvec"]} >= {"tp1", "tp4"}
    report = (out / "report.md").read_text()
    for heading in ("| step | status |", "## Greedy", "## Ternary model", "## llama-bench", "## Mat-vec bandwidth", "## Commands"):
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


# ----------------------------------------------------------------------------- the GPU-only paths, on canned output
# (the rehearsal cannot run them: their parsing and report sections are checked on text in the programs' formats)

def _check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", CHECK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parse_test_backend_ops_console_output():
    ck = _check_module()
    ok, fail = "\x1b[1;32mOK\x1b[0m", "\x1b[1;31mFAIL\x1b[0m"
    text = "\n".join([
        "Backend 1/2: CUDA0",
        "  Device description: NVIDIA H200",
        f"  MUL_MAT(type_a=tp1,type_b=f32,m=16,n=1,k=256,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=0,o=1): {ok}",
        f"  MUL_MAT(type_a=tp4,type_b=f32,m=16,n=9,k=256,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=0,o=1): [MUL_MAT] NMSE = 0.012 > 0.0005 {fail}",
        "  MUL_MAT(type_a=tp4,type_b=f16,m=16,n=1,k=256,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=0,o=1): not supported [CUDA0] ",
        f"  GET_ROWS(type=tp1,n=256,m=5,r=4,be1=1,bs=1,v=0): {ok}",
        f"  MUL_MAT(type_a=q4_0,type_b=f32,m=16,n=1,k=256,bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=0,o=1): {ok}",
        "  3/4 tests passed",
    ])
    p = ck.parse_tbo(text)
    assert p["types"] == {"tp1": {"ok": 2, "fail": 0, "unsupported": 0}, "tp4": {"ok": 0, "fail": 1, "unsupported": 1},
                          "q4_0": {"ok": 1, "fail": 0, "unsupported": 0}}
    assert len(p["fails"]) == 1 and "NMSE" in p["fails"][0]


def test_report_of_a_gpu_run(tmp_path):
    """Every section of a GPU run's report, from results in the shape the steps store them."""
    ck = _check_module()
    r = ck.Run(tmp_path / "out", tmp_path / "work", 450, rehearse=False)
    types = {"tp1": {"ok": 40, "fail": 0, "unsupported": 2}, "tp4": {"ok": 40, "fail": 0, "unsupported": 2},
             "q4_0": {"ok": 40, "fail": 0, "unsupported": 0}}
    r.results["machine"].update(gpu="NVIDIA H200, 580.159.04, 9.0", cpu="x", cpu_threads=16, python="3.12.3", cublas="/x")
    r.results["model_shape"] = "Llama-2-7B layer shape, 8 layers"
    r.results["tq2_0_cuda"] = "no"
    r.step("tbo", "ok", ops={op: {"exit": 0, "types": types, "fails": [], "last": ""} for op in ck.OPS}, seconds=50)
    r.step("memcheck", "partial", "time cap", seconds=100, ops={op: {"exit": 124, "seconds": 30, "cases_done": 12, "errors": [],
                                                                      "error_summary": None, "timed_out": True} for op in ck.OPS})
    r.step("matvec", "ok", copy_gbs=4300.0, seconds=20, matvec=[
        {"type": t, "K": 4096, "M": 11008, "bytes": 25_000_000, "us": 10.0, "gbs": g} for t, g in (("tp1", 3100.0), ("tp4", 3500.0), ("q4_0", 3600.0))])
    r.step("greedy", "ok", seconds=9, models={t: {"same_tokens": 16, "of": 16, "max_abs_logit_diff": 0.01, "max_abs_logit": 9.0,
                                                   "gpu_tokens": [1] * 16, "cpu_tokens": [1] * 16, "finite": True} for t in ("TP1", "TP4")})
    rows = []
    for t, pp, tg in (("Q4_0", 9000.0, 200.0), ("Q4_K_M", 8000.0, 180.0), ("TP4", 7000.0, 210.0), ("TP1", 6000.0, 320.0)):
        rows += [{"type": t, "test": "pp512", "ts": pp, "sd": 1.0, "size": 2**30, "params": 2**31, "backends": "CUDA", "n_gpu_layers": 99},
                 {"type": t, "test": "tg128", "ts": tg, "sd": 1.0, "size": 2**30, "params": 2**31, "backends": "CUDA", "n_gpu_layers": 99}]
    r.step("bench", "ok", rows=rows, prompt_gen=["-p", "512", "-n", "128", "-r", "3"], seconds=60)
    r.step("energy", "ok", field="power.draw.instant", seconds=40,
           rows=[{"type": "TP1", "tg_ts": 320.0, "watts": 400.0, "samples": 20, "j_per_token": 1.25}])
    manifest = {"kind": "cuda", "archs": "90", "commit": "abc", "key": "0" * 64}
    text = ck.report(r, manifest, type("A", (), {"budget": 450.0})())
    for s in ("## test-backend-ops", "## compute-sanitizer", "## Greedy", "## llama-bench", "## Energy per token",
              "## Mat-vec bandwidth", "## Goals of issue 16"):
        assert s in text, s
    goals = {g: (v, ok) for g, v, ok in ck.goal_rows(r.results)}
    assert goals["tg128 TP4 >= 1.1x Q4_K_M"] == ("1.17x", True)
    assert goals["tg128 TP1 >= 1.5x Q4_0"] == ("1.60x", True)
    assert goals["pp512 TP1 >= 0.8x Q4_K_M"] == ("0.75x", False)
    assert goals["mat-vec tp1 4096x11008 >= 70% of copy bandwidth"] == ("72%", True)
    assert goals["greedy TP4 GPU = CPU, 16 of 16"] == ("16/16", True)


_FAKE_TBO = r'''#!/usr/bin/env bash
# test-backend-ops as far as check.py reads it: [support] -b DEV -o OPS -p FILTER
mode=test; ops=""; filt=""
while [ $# -gt 0 ]; do
  case "$1" in support) mode=support ;; -o) ops=$2; shift ;; -p) filt=$2; shift ;; esac; shift
done
for op in ${ops//,/ }; do
  for t in tp1 tp4 q4_0 tq2_0; do
    if [ "$op" = GET_ROWS ]; then vars="type=$t,n=256,m=5,r=4,be1=1,bs=1,v=0"; else vars="type_a=$t,type_b=f32,m=16,n=1,k=256"; fi
    echo "$vars" | grep -Eq -- "$filt" || continue
    if [ $mode = support ]; then printf '  %s(%s): \033[1;31mNOT SUPPORTED\033[0m\n' "$op" "$vars"
    else printf '  %s(%s): \033[1;32mOK\033[0m\n' "$op" "$vars"; fi
  done
done
'''

_FAKE_SANITIZER = r'''#!/usr/bin/env bash
# compute-sanitizer --tool memcheck --error-exitcode N --print-limit N --leak-check no PROGRAM ARGS
shift 8
echo "========= COMPUTE-SANITIZER"
"$@"
echo "========= ERROR SUMMARY: 0 errors"
'''

_FAKE_SMI = r'''#!/usr/bin/env bash
case "$*" in
  *-lms*) while true; do echo "2026/12/04 15:00:00.000, 400.00, 95"; sleep 0.05; done ;;
  *) echo "400.00" ;;
esac
'''

_FAKE_BENCH = r'''#!/usr/bin/env bash
# llama-bench -m MODEL ... -o jsonl: one tg line
sleep 0.3
echo "{\"model_filename\": \"$2\", \"n_prompt\": 0, \"n_gen\": 128, \"avg_ts\": 250.0, \"stddev_ts\": 1.0, \"model_size\": 1, \"model_n_params\": 1}"
'''


def test_gpu_steps_run_on_stand_in_programs(tmp_path):
    """tbo, memcheck and energy never run in the rehearsal: here they run against stand-ins that print
    what test-backend-ops, compute-sanitizer, nvidia-smi and llama-bench print, end to end through the
    step functions and the report."""
    ck = _check_module()
    r = ck.Run(tmp_path / "out", tmp_path / "work", 120, rehearse=False)
    r.bin.mkdir(parents=True)
    r.logs.mkdir()
    tools = tmp_path / "tools"
    tools.mkdir()
    for path, text in ((r.bin / "test-backend-ops", _FAKE_TBO), (r.bin / "llama-bench", _FAKE_BENCH),
                       (tools / "compute-sanitizer", _FAKE_SANITIZER), (tools / "nvidia-smi", _FAKE_SMI)):
        path.write_text(text)
        path.chmod(0o755)
    ck.step_tbo(r)
    tbo = r.results["steps"]["tbo"]
    assert tbo["status"] == "ok", tbo
    for op in ck.OPS:
        assert {t: c["ok"] for t, c in tbo["ops"][op]["types"].items()} == {"tp1": 1, "tp4": 1, "q4_0": 1}
    assert r.results["tq2_0_cuda"] == "no"
    ck.step_memcheck(r, str(tools / "compute-sanitizer"))
    mc = r.results["steps"]["memcheck"]
    assert mc["status"] == "ok", mc
    assert all(v["cases_done"] == 2 and v["error_summary"] == 0 for v in mc["ops"].values())

    models = ck.Models(r, [], 1)
    for t in ck.BENCH_TYPES:
        models.path(t).parent.mkdir(parents=True, exist_ok=True)
        models.path(t).write_bytes(b"")
        models.ready[t].set()
    ck.step_energy(r, models, str(tools / "nvidia-smi"))
    en = r.results["steps"]["energy"]
    assert en["status"] == "ok", en
    assert {x["type"] for x in en["rows"]} == set(ck.BENCH_TYPES) - {"TQ2_0"}  # no CUDA TQ2_0: not measured
    assert all(x["samples"] > 0 and abs(x["j_per_token"] - 400.0 / 250.0) < 1e-9 for x in en["rows"])
    r.kill_all()
    ck.write_out(r, {"kind": "cuda", "archs": "90", "commit": "abc", "key": "0" * 64}, type("A", (), {"budget": 120.0})())
    text = (r.out / "report.md").read_text()
    assert "| MUL_MAT | 0 | 1/0/0 | 1/0/0 | 1/0/0 |" in text and "## Energy per token" in text
