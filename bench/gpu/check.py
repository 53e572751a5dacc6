#!/usr/bin/env python3
"""The GPU check of TP1/TP4, run from the bundle that bench/gpu-bundle.sh makes, on a bare GPU machine
with no network (Python 3 with numpy; nothing else of ours installed):

    python3 .gpu-bundle/check.py OUTDIR [--budget 450] [--layers 8] [--steps tbo,memcheck,...]

Steps, each bounded in time (the whole run ends within --budget seconds, report included):
  tbo       test-backend-ops -b CUDA0 for MUL_MAT, MUL_MAT_ID, GET_ROWS: TP1 and TP4 (one process per op)
            side by side with Q4_0 (the control, one process) and a support probe of TQ2_0
  memcheck  the same cases of TP1/TP4 under compute-sanitizer --tool memcheck (each op capped)
  matvec    mat-vec y = W x on 4096 x 11008 (and 11008 x 4096) per type vs the device-to-device copy
  greedy    16 greedy tokens, all layers on the GPU vs the CPU (GPU hidden), TP1 and TP4, with the
            largest logit difference over the steps whose context agrees
  ternary   a ternary model (tiny_model.make_llama, embeddings and output kept F16) in F16 and in TP1:
            the largest logit difference TP1 vs F16 on the GPU and on the CPU (TP1 is exact on ternary
            weights, so what is left is the activations' rounding: 8-bit on the GPU, 16-bit on the CPU)
  bench     one llama-bench -ngl 99 -p 512 -n 128 over F16 Q8_0 Q4_0 Q4_K_M IQ4_XS TP4 TP1 (+ TQ2_0,
            run apart when ggml-cuda cannot multiply it)
  energy    tg128 per model with nvidia-smi board power sampled every 100 ms: J/token
The models (random weights, Llama-2-7B layer shape with --layers layers) are made and quantized in the
background from the start. OUTDIR gets report.md, results.json and logs.tar.gz (every raw log).

--rehearse runs without a GPU (CI, bench/gpu-bundle.sh --rehearse): tiny models, the CPU instead of
the GPU for greedy/bench/matvec, the GPU-only steps reported as skipped. Exit status 0 when every
step that ran passed, 1 otherwise, 2 for bad arguments or a broken bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = ("tbo", "memcheck", "matvec", "greedy", "ternary", "bench", "energy")
GPU_ONLY = ("tbo", "memcheck", "energy")
BENCH_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_K_M", "IQ4_XS", "TQ2_0", "TP4", "TP1")
QUANT_ORDER = ("TP1", "TP4", "Q4_0", "Q8_0", "Q4_K_M", "IQ4_XS", "TQ2_0")  # greedy needs TP1/TP4 first
MATVEC_TYPES = ("f16", "q8_0", "q4_0", "q4_K", "iq4_xs", "tp4", "tp1")
OPS = ("MUL_MAT", "MUL_MAT_ID", "GET_ROWS")
OUR_TYPES = "(^|,)type(_a)?=tp[14],"
CONTROL = "(^|,)type(_a)?=q4_0,"
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
# caps in seconds (a step also stops when the run's deadline is near)
CAPS = {"tbo": 110, "memcheck": 110, "matvec": 60, "greedy": 60, "ternary": 40, "bench": 120, "energy": 60}
RESERVE = 12  # kept for the report at the end
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Run:
    """The clock, the folders and the results of one check."""

    def __init__(self, out: Path, work: Path, budget: float, rehearse: bool):
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.out, self.work, self.rehearse = out, work, rehearse
        self.logs = work / "logs"
        self.models = work / "models"
        self.bin = work / "bin"
        self.results: dict = {"steps": {}, "machine": {}, "commands": []}
        self.env = dict(os.environ)
        self.live: set[subprocess.Popen] = set()  # killed at the end: each runs in its own session
        self.stopping = False

    def kill_all(self) -> None:
        self.stopping = True
        for p in list(self.live):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def left(self) -> float:
        return self.deadline - RESERVE - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str) -> None:
        print(f"[check +{self.elapsed():5.0f}s] {msg}", flush=True)

    def step(self, name: str, status: str, note: str = "", **data) -> None:
        self.results["steps"][name] = {"status": status, "note": note, **data}
        self.say(f"{name}: {status}{' - ' + note if note else ''}")

    def run(self, cmd: list[str], log: str, cap: float, env: dict | None = None, stdout: str | None = None) -> tuple[int, float]:
        """Run cmd with stderr (and stdout unless `stdout` names a file) into logs/<log>; rc 124 when it
        ran out of time (its process group is killed). Returns (rc, seconds)."""
        if self.stopping:
            return 125, 0.0
        timeout = max(1.0, min(cap, self.left()))
        shown = shlex.join(str(c) for c in cmd).replace(str(self.work) + "/", "")
        self.results["commands"].append(shown)
        t = time.monotonic()
        with open(self.logs / log, "ab") as err, open(self.logs / stdout, "wb") if stdout else open(os.devnull, "wb") as so:
            err.write(f"$ {shown}\n".encode())
            err.flush()
            p = subprocess.Popen([str(c) for c in cmd], stdout=so if stdout else err, stderr=err,
                                 stdin=subprocess.DEVNULL, env=env or self.env, start_new_session=True)
            self.live.add(p)
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                rc = 124
                err.write(f"\n[check.py: stopped after {timeout:.0f} s]\n".encode())
            finally:
                self.live.discard(p)
        return rc, time.monotonic() - t


# ----------------------------------------------------------------------------------------- setup

def unpack(r: Run, manifest: dict) -> None:
    stamp = r.work / ".bundle-key"
    if stamp.is_file() and stamp.read_text() == manifest["key"]:
        return
    if r.work.exists():
        shutil.rmtree(r.work)
    r.work.mkdir(parents=True)
    try:
        with tarfile.open(HERE / manifest["payload"]) as tf:
            tf.extractall(r.work, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(r.work)
    except (tarfile.CompressionError, ImportError):  # a Python without lzma: the system's tar and xz
        subprocess.run(["tar", "-xJf", str(HERE / manifest["payload"]), "-C", str(r.work)], check=True)
    stamp.write_text(manifest["key"])


def find_tool(name: str, extra: list[str]) -> str | None:
    for c in [shutil.which(name)] + extra:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def library_dirs(r: Run, manifest: dict) -> tuple[list[str], str]:
    """LD_LIBRARY_PATH for the bundled programs: the bundle's bin/, then the folder of this machine
    that holds the libraries the bundle does not carry (cuBLAS: libcublasLt alone is over 500 MB)."""
    dirs = [str(r.bin)]
    need = [n for n in manifest.get("not_carried", []) if not n.startswith("libcuda.so")]
    if not need:
        return dirs, "not needed" if manifest["kind"] != "cuda" else "not needed (?)"
    cands = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"]
    try:  # the nvidia-cublas wheel of the machine's Python (PyTorch's)
        import importlib.util
        for name in ("nvidia.cu13", "nvidia.cublas", "nvidia.cu12"):
            spec = importlib.util.find_spec(name)
            cands += [str(Path(p) / "lib") for p in (spec.submodule_search_locations or [])] if spec else []
    except ModuleNotFoundError:
        pass
    for pat in ("opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib", "usr/local/lib/python3*/dist-packages/nvidia/*/lib",
                "usr/lib/python3/dist-packages/nvidia/*/lib", "usr/local/cuda*/lib64"):
        cands += [str(p) for p in sorted(Path("/").glob(pat))]
    found = f"NOT FOUND ({', '.join(need)})"
    for d in cands:
        if all((Path(d) / n).exists() for n in need):
            dirs.append(d)
            found = d
            break
    return dirs, found


def preflight(r: Run, manifest: dict) -> list[str]:
    """`ldd` of every program the steps call, with the LD_LIBRARY_PATH they run with: a missing library
    or too old a C++ runtime shows here, before any step."""
    problems = []
    for prog in manifest["programs"]:
        path = r.bin / prog
        if not path.is_file():
            problems.append(f"{prog}: not in the bundle")
            continue
        if not shutil.which("ldd"):
            continue
        ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=r.env)
        missing = [ln.split()[0] for ln in ldd.stdout.splitlines() if "not found" in ln and "=>" in ln]
        if missing:
            problems.append(f"{prog}: libraries not found: {', '.join(missing)}")
        problems += [f"{prog}: {ln.strip()[:200]}" for ln in (ldd.stdout + ldd.stderr).splitlines() if "version `" in ln][:2]
    return problems


def machine(r: Run, smi: str | None) -> None:
    m = r.results["machine"]
    m["cpu_threads"] = os.cpu_count()
    m["python"] = sys.version.split()[0]
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,compute_cap,memory.total,power.limit",
                            "--format=csv,noheader", "-i", "0"], capture_output=True, text=True)
        m["gpu"] = q.stdout.strip() or q.stderr.strip()
        m["nvidia_smi_L"] = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip()
    try:
        m["cpu"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        m["cpu"] = "?"


# ----------------------------------------------------------------------------------------- models

class Models(threading.Thread):
    """The F16 random model, then each quantized type, one after another; `ready[t]` is set when the
    file of type t exists (or failed: `errors[t]`)."""

    def __init__(self, r: Run, shape: list[str], threads: int, types: tuple[str, ...] = QUANT_ORDER):
        super().__init__(daemon=True)
        self.r, self.shape, self.threads = r, shape, threads
        self.types = [t for t in QUANT_ORDER if t in types]
        self.ready = {t: threading.Event() for t in BENCH_TYPES}
        self.errors: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def path(self, t: str) -> Path:
        return self.r.models / f"model-{t}.gguf"

    def run(self) -> None:
        r = self.r
        r.models.mkdir(parents=True, exist_ok=True)
        f16 = self.path("F16")
        env = {**r.env, "PYTHONPATH": str(r.work / "py")}
        if not f16.is_file():
            rc, s = r.run([sys.executable, r.work / "py" / "make_random_model.py", f16, r.work / "vocab" / "ggml-vocab-llama-spm.gguf",
                           *self.shape], "models.log", 300, env=env)
            self.seconds["F16"] = s
            if rc != 0 or not f16.is_file():
                for t in BENCH_TYPES:
                    self.errors[t] = f"making the F16 model failed (exit {rc}, models.log)"
                    self.ready[t].set()
                return
        self.ready["F16"].set()
        for t in self.types:
            out = self.path(t)
            if not out.is_file():
                part = out.with_name(out.name + ".part")
                rc, s = r.run([r.bin / "llama-quantize", f16, part, t, str(self.threads)], f"quantize-{t}.log", 300)
                self.seconds[t] = s
                if rc == 0 and part.is_file():
                    part.replace(out)
                else:
                    self.errors[t] = f"llama-quantize {t} exit {rc} (quantize-{t}.log)"
            self.ready[t].set()

    def wait(self, t: str) -> Path | None:
        self.ready[t].wait(timeout=max(0.0, self.r.left()))
        return self.path(t) if self.ready[t].is_set() and t not in self.errors and self.path(t).is_file() else None


# ----------------------------------------------------------------------------------------- steps

def parse_tbo(text: str, op: str | None = None) -> dict:
    """Per type: OK / FAIL / not supported counts, failing cases, and the last case line (of `op` only,
    when given)."""
    types: dict[str, dict] = {}
    fails, last = [], ""
    for ln in ANSI.sub("", text).splitlines():
        m = re.match(r"\s+(\w+)\((.*)\): (.*)$", ln)
        if not m or m.group(1) not in OPS or (op and m.group(1) != op):
            continue
        last = ln.strip()
        tm = re.search(r"(?:^|,)type(?:_a)?=(\w+)", m.group(2))
        t = types.setdefault(tm.group(1) if tm else "?", {"ok": 0, "fail": 0, "unsupported": 0})
        status = m.group(3).strip()
        if status.endswith("OK"):
            t["ok"] += 1
        elif status.endswith("FAIL"):
            t["fail"] += 1
            fails.append(ln.strip()[:300])
        elif status.startswith("not supported"):
            t["unsupported"] += 1
    return {"types": types, "fails": fails[:20], "last": last[:300]}


def step_tbo(r: Run) -> None:
    """One process per op for our types, one for the Q4_0 control (all three ops), one support probe of
    TQ2_0, side by side: a slow control cannot take our cases' time."""
    t0 = time.monotonic()
    cap = min(CAPS["tbo"], r.left())
    tbo = r.bin / "test-backend-ops"
    jobs = {op: ([tbo, "-b", "CUDA0", "-o", op, "-p", OUR_TYPES], f"tbo-{op}.log", cap) for op in OPS}
    jobs["control"] = ([tbo, "-b", "CUDA0", "-o", ",".join(OPS), "-p", CONTROL], "tbo-control-q4_0.log", cap)
    jobs["tq2_0"] = ([tbo, "support", "-b", "CUDA0", "-o", "MUL_MAT", "-p", "type_a=tq2_0,type_b=f32"], "tbo-support-tq2_0.log", 30)
    rcs: dict[str, int] = {}

    def go(name: str) -> None:
        rcs[name] = r.run(*jobs[name])[0]

    threads = [threading.Thread(target=go, args=(name,)) for name in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    per_op, bad, capped = {}, [], []
    control = (r.logs / "tbo-control-q4_0.log").read_text(errors="replace")
    for op in OPS:
        rc = rcs[op]
        p = parse_tbo((r.logs / f"tbo-{op}.log").read_text(errors="replace"))
        ctl = parse_tbo(control, op)
        p["types"]["q4_0"] = ctl["types"].get("q4_0", {"ok": 0, "fail": 0, "unsupported": 0})
        p["fails"] += ctl["fails"]
        per_op[op] = {"exit": rc, "control_exit": rcs["control"], **p}
        for t in ("tp1", "tp4", "q4_0"):
            c = p["types"].get(t, {"ok": 0, "fail": 0})
            if c["fail"] or (c["ok"] == 0 and rc != 124 and (t != "q4_0" or rcs["control"] != 124)):
                bad.append(f"{op} {t}: {c['ok']} OK, {c['fail']} FAIL")
        if rc == 124:
            capped.append(f"{op} (last case: {p['last'] or 'none'})")
        elif rc != 0 and not any(v["fail"] for v in p["types"].values()):
            bad.append(f"{op}: exit {rc}; last case: {p['last'] or 'none'}")
    if rcs["control"] == 124:
        capped.append("the Q4_0 control")
    sup = ANSI.sub("", (r.logs / "tbo-support-tq2_0.log").read_text(errors="replace"))
    r.results["tq2_0_cuda"] = "no" if "NOT SUPPORTED" in sup else "yes" if "SUPPORTED" in sup else "unknown"
    note = "; ".join(bad + ([f"time cap ({cap:.0f} s) reached in {', '.join(capped)}"] if capped else []))
    r.step("tbo", "failed" if bad else "partial" if capped else "ok", note, ops=per_op, seconds=round(time.monotonic() - t0, 1))


def step_memcheck(r: Run, san: str | None) -> None:
    if not san:
        return r.step("memcheck", "failed", "compute-sanitizer not found (PATH, /usr/local/cuda/bin)")
    t0 = time.monotonic()
    caps = {"GET_ROWS": 0.2, "MUL_MAT_ID": 0.35, "MUL_MAT": 0.45}
    total = min(CAPS["memcheck"], r.left())
    per_op, bad = {}, []
    order = ["GET_ROWS", "MUL_MAT_ID", "MUL_MAT"]
    for i, op in enumerate(order):  # each op gets its share of what is left (an early finish passes time on)
        share = caps[op] / sum(caps[o] for o in order[i:])
        cap = max(5.0, (total - (time.monotonic() - t0)) * share)
        rc, s = r.run([san, "--tool", "memcheck", "--error-exitcode", "86", "--print-limit", "50", "--leak-check", "no",
                       r.bin / "test-backend-ops", "-b", "CUDA0", "-o", op, "-p", OUR_TYPES], f"memcheck-{op}.log", cap)
        text = ANSI.sub("", (r.logs / f"memcheck-{op}.log").read_text(errors="replace"))
        errors = [ln.strip("= ").strip() for ln in text.splitlines() if re.match(r"=+ (Invalid|Program hit|Out-of-range|Misaligned|Malloc|Cuda API error|Uninit)", ln)]
        summ = re.findall(r"ERROR SUMMARY: (\d+) error", text)
        p = parse_tbo(text)
        cases = sum(v["ok"] + v["fail"] for v in p["types"].values())
        per_op[op] = {"exit": rc, "seconds": round(s, 1), "cases_done": cases, "errors": errors[:10],
                      "error_summary": int(summ[-1]) if summ else None, "timed_out": rc == 124}
        if errors or (summ and int(summ[-1])) or rc not in (0, 124):
            bad.append(f"{op}: exit {rc}, {len(errors)} sanitizer error(s){': ' + errors[0] if errors else ''}")
    partial = [op for op, v in per_op.items() if v["timed_out"]]
    status = "failed" if bad else "partial" if partial else "ok"
    note = "; ".join(bad) or (f"time cap reached in {', '.join(partial)} (no error in the cases done)" if partial else "")
    r.step("memcheck", status, note, ops=per_op, seconds=round(time.monotonic() - t0, 1))


def step_matvec(r: Run) -> None:
    t0 = time.monotonic()
    rows, bad = [], []
    if r.rehearse:
        shapes, extra = [("256", "512")], ["--cpu-ok", "--min-mib", "8", "--reps", "2"]
    else:
        shapes, extra = [("4096", "11008"), ("11008", "4096")], []
    for i, (k, m) in enumerate(shapes):
        copy = ("8" if r.rehearse else "1024") if i == 0 else "0"
        rc, _ = r.run([r.bin / "matvec-bench", *extra, "--copy-mib", copy, k, m, *MATVEC_TYPES], "matvec.log",
                      CAPS["matvec"] / len(shapes), stdout=f"matvec-{k}x{m}.tsv")
        rows += (r.logs / f"matvec-{k}x{m}.tsv").read_text().splitlines()
        if rc != 0:
            bad.append(f"matvec-bench {k} {m}: exit {rc}")
    copy = [ln.split("\t") for ln in rows if ln.startswith("copy\t")]
    mv = [ln.split("\t") for ln in rows if ln.startswith("matvec\t")]
    data = {"copy_gbs": float(copy[0][4]) if copy else None,
            "matvec": [{"type": x[1], "K": int(x[2]), "M": int(x[3]), "bytes": int(x[4]), "us": float(x[6]), "gbs": float(x[7])} for x in mv]}
    r.step("matvec", "failed" if bad or not mv else "ok", "; ".join(bad), **data, seconds=round(time.monotonic() - t0, 1))


def greedy_run(r: Run, path: Path, side: str, tag: str, n: int, cap: float):
    """greedy-logits of one model on one side ("gpu": -ngl 99, "cpu": -ngl 0 with the GPU hidden):
    (tokens, logits n x n_vocab) or None."""
    import numpy as np

    ngl, env = ("99", r.env) if side == "gpu" else ("0", {**r.env, "CUDA_VISIBLE_DEVICES": ""})
    rc, _ = r.run([r.bin / "greedy-logits", path, ngl, str(n), r.logs / f"greedy-{tag}-{side}.f32", PROMPT,
                   str(os.cpu_count() or 4)], f"greedy-{tag}-{side}.log", cap, env=env, stdout=f"greedy-{tag}-{side}.txt")
    line = (r.logs / f"greedy-{tag}-{side}.txt").read_text().strip()
    if rc != 0 or not line.startswith("tokens:"):
        return None
    return [int(x) for x in line.split(":", 1)[1].split()], np.fromfile(r.logs / f"greedy-{tag}-{side}.f32", dtype=np.float32).reshape(n, -1)


def compare(a, b, n: int) -> dict:
    """Identical leading tokens and the largest logit difference over the steps with the same context."""
    import numpy as np

    same = 0
    while same < n and a[0][same] == b[0][same]:
        same += 1
    k = min(n, same + 1)
    return {"same_tokens": same, "of": n, "max_abs_logit_diff": float(np.max(np.abs(a[1][:k] - b[1][:k]))),
            "max_abs_logit": float(np.max(np.abs(b[1][:k]))), "finite": bool(np.isfinite(a[1]).all())}


def step_ternary(r: Run) -> None:
    t0 = time.monotonic()
    d = r.models / "ternary"
    d.mkdir(parents=True, exist_ok=True)
    f16, tp1 = d / "tern-F16.gguf", d / "tern-TP1.gguf"
    dims = (256, 512, 2, 4) if r.rehearse else (1024, 2816, 4, 16)
    if not f16.is_file():
        code = ("import sys; from gguf import GGMLQuantizationType as Q; "
                "from tritpack_gguf.converters.tiny_model import Shape, make_llama; "
                f"make_llama(sys.argv[1] + '.part', sys.argv[2], Shape(n_embd={dims[0]}, n_ff={dims[1]}, n_layer={dims[2]}, "
                f"n_head={dims[3]}, n_head_kv={dims[3]}, n_ctx=512), seed=4, ternary=True, dtype=Q.F16)")
        rc, _ = r.run([sys.executable, "-c", code, f16, r.work / "vocab" / "ggml-vocab-llama-spm.gguf"], "ternary.log", 20,
                      env={**r.env, "PYTHONPATH": str(r.work / "py")})
        if rc != 0:
            return r.step("ternary", "failed", f"making the ternary model failed (exit {rc}, ternary.log)")
        Path(str(f16) + ".part").replace(f16)
    if not tp1.is_file():
        rc, _ = r.run([r.bin / "llama-quantize", "--token-embedding-type", "f16", "--output-tensor-type", "f16",
                       f16, str(tp1) + ".part", "TP1", str(os.cpu_count() or 4)], "ternary.log", 20)
        if rc != 0:
            return r.step("ternary", "failed", f"llama-quantize TP1 failed (exit {rc}, ternary.log)")
        Path(str(tp1) + ".part").replace(tp1)
    n, out, bad = 16, {}, []
    for side in ("gpu", "cpu"):
        a = greedy_run(r, tp1, side, "tern-TP1", n, CAPS["ternary"] / 5)
        b = greedy_run(r, f16, side, "tern-F16", n, CAPS["ternary"] / 5)
        if a is None or b is None:
            bad.append(f"{side}: greedy-logits failed (greedy-tern-*-{side}.log)")
            continue
        out[side] = compare(a, b, n)
        if out[side]["same_tokens"] < n or not out[side]["finite"]:
            bad.append(f"{side}: TP1 and F16 agree on {out[side]['same_tokens']}/{n} tokens")
    shape = f"n_embd {dims[0]}, n_ff {dims[1]}, {dims[2]} layers, {dims[3]} heads, ternary layer matrices, F16 embeddings and output"
    r.step("ternary", "failed" if bad else "ok", "; ".join(bad), sides=out, shape=shape, seconds=round(time.monotonic() - t0, 1))


def step_greedy(r: Run, models: Models) -> None:
    t0 = time.monotonic()
    out, bad = {}, []
    n = 16
    for t in ("TP1", "TP4"):
        path = models.wait(t)
        if path is None:
            out[t] = {"result": "no model"}
            bad.append(f"{t}: no model ({models.errors.get(t, 'not ready in time')})")
            continue
        g = greedy_run(r, path, "gpu", t, n, CAPS["greedy"] / 4)
        c = greedy_run(r, path, "cpu", t, n, CAPS["greedy"] / 4)
        if g is None or c is None:
            out[t] = {"result": "error"}
            bad.append(f"{t}: greedy-logits failed (greedy-{t}-*.log)")
            continue
        out[t] = {**compare(g, c, n), "gpu_tokens": g[0], "cpu_tokens": c[0]}
        if out[t]["same_tokens"] < n or not out[t]["finite"]:
            bad.append(f"{t}: {out[t]['same_tokens']}/{n} tokens identical")
    r.step("greedy", "failed" if bad else "ok", "; ".join(bad), models=out, seconds=round(time.monotonic() - t0, 1))


def step_bench(r: Run, models: Models) -> None:
    t0 = time.monotonic()
    types = [t for t in BENCH_TYPES if models.wait(t) is not None]
    apart = ["TQ2_0"] if r.results.get("tq2_0_cuda") == "no" and "TQ2_0" in types else []
    main = [t for t in types if t not in apart]
    missing = [t for t in BENCH_TYPES if t not in types]
    if r.rehearse:
        pn = ["-p", "64", "-n", "16", "-r", "1"]
    else:
        pn = ["-p", "512", "-n", "128", "-r", "3"]
    args = [a for t in main for a in ("-m", models.path(t))]
    rc, _ = r.run([r.bin / "llama-bench", *args, "-ngl", "99", *pn, "-o", "jsonl"], "llama-bench.log",
                  CAPS["bench"], stdout="llama-bench.jsonl")
    note = []
    if apart and r.left() > 60:
        r.run([r.bin / "llama-bench", "-m", models.path("TQ2_0"), "-ngl", "99", *pn[:4], "-r", "1", "-o", "jsonl"],
              "llama-bench-tq2_0.log", 45, stdout="llama-bench-tq2_0.jsonl")
        note.append("TQ2_0 has no CUDA mat-mul in the pinned llama.cpp: run apart, one repetition, its matmuls on the CPU")
    elif apart:
        note.append("TQ2_0 has no CUDA mat-mul in the pinned llama.cpp: not run (no time left)")
    rows = []
    for f in ("llama-bench.jsonl", "llama-bench-tq2_0.jsonl"):
        p = r.logs / f
        for ln in p.read_text().splitlines() if p.is_file() else []:
            try:
                j = json.loads(ln)
            except ValueError:
                continue
            rows.append({"type": Path(j["model_filename"]).stem.split("-", 1)[1], "test": f"pp{j['n_prompt']}" if j["n_prompt"] else f"tg{j['n_gen']}",
                         "ts": j["avg_ts"], "sd": j["stddev_ts"], "size": j["model_size"], "params": j["model_n_params"],
                         "backends": j.get("backends", ""), "n_gpu_layers": j.get("n_gpu_layers")})
    if missing:
        note.append(f"no model for {', '.join(missing)}")
    status = "ok" if rc == 0 and not missing else "partial" if rows else "failed"
    if rc != 0:
        note.append(f"llama-bench exit {rc}{' (time cap)' if rc == 124 else ''}")
    r.step("bench", status, "; ".join(note), rows=rows, prompt_gen=pn, seconds=round(time.monotonic() - t0, 1))


def step_energy(r: Run, models: Models, smi: str | None) -> None:
    if not smi:
        return r.step("energy", "failed", "nvidia-smi not found")
    t0 = time.monotonic()
    field = "power.draw.instant"
    if subprocess.run([smi, f"--query-gpu={field}", "--format=csv,noheader", "-i", "0"], capture_output=True).returncode != 0:
        field = "power.draw"
    rows, bad = [], []
    for t in BENCH_TYPES:
        if t == "TQ2_0" and r.results.get("tq2_0_cuda") == "no":
            continue
        path = models.wait(t)
        if path is None or r.left() < 8:
            bad.append(f"{t}: {'no model' if path is None else 'no time left'}")
            continue
        samples = r.logs / f"power-{t}.csv"
        with open(samples, "w") as f:
            sp = subprocess.Popen([smi, f"--query-gpu=timestamp,{field},utilization.gpu", "--format=csv,noheader,nounits",
                                   "-i", "0", "-lms", "100"], stdout=f, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                rc, _ = r.run([r.bin / "llama-bench", "-m", path, "-ngl", "99", "-p", "0", "-n", "128", "-r", "5", "-o", "jsonl"],
                              f"energy-{t}.log", 30, stdout=f"energy-{t}.jsonl")
            finally:
                os.killpg(sp.pid, signal.SIGTERM)
                sp.wait()
        try:
            tg = json.loads((r.logs / f"energy-{t}.jsonl").read_text().splitlines()[-1])["avg_ts"]
        except (ValueError, IndexError, KeyError):
            tg = 0.0
        busy = []
        for ln in samples.read_text().splitlines():
            parts = [x.strip() for x in ln.split(",")]
            try:
                if float(parts[2]) >= 50:
                    busy.append(float(parts[1]))
            except (IndexError, ValueError):
                pass
        w = sum(busy) / len(busy) if busy else None
        rows.append({"type": t, "tg_ts": tg, "watts": w, "samples": len(busy), "j_per_token": (w / tg) if w and tg else None})
        if rc != 0 or not busy:
            bad.append(f"{t}: llama-bench exit {rc}, {len(busy)} busy power samples")
    r.step("energy", "failed" if bad and not rows else "partial" if bad else "ok", "; ".join(bad),
           rows=rows, field=field, seconds=round(time.monotonic() - t0, 1))


# ----------------------------------------------------------------------------------------- report

def report(r: Run, manifest: dict, args) -> str:
    res, m = r.results, r.results["machine"]
    L = []
    w = L.append
    st = res["steps"]
    failed = [k for k, v in st.items() if v["status"] == "failed"]
    w(f"# TP1 / TP4 GPU check{' (REHEARSAL on the CPU, no GPU)' if r.rehearse else ''}")
    w("")
    w(f"Result: **{'every step that ran passed' if not failed else 'FAILED: ' + ', '.join(failed)}**; "
      f"{r.elapsed():.0f} s in all (budget {args.budget:.0f} s).")
    w("")
    w(f"- GPU: {m.get('gpu', 'none')}")
    w(f"- CPU: {m.get('cpu')}, {m.get('cpu_threads')} threads; Python {m.get('python')}")
    w(f"- bundle: {manifest['kind']} build{' sm_' + str(manifest.get('archs')) if manifest.get('archs') else ''}, "
      f"commit {manifest.get('commit')}, key {manifest['key'][:12]}; cuBLAS from: {m.get('cublas')}")
    if manifest.get("cmake"):
        w(f"- build settings: {', '.join(f'{k}={v}' for k, v in sorted(manifest['cmake'].items()))}")
    w(f"- models: {res.get('model_shape')}")
    if res.get("preflight"):
        w(f"- preflight problems: {'; '.join(res['preflight'])}")
    w("")
    w("| step | status | seconds | note |")
    w("| --- | --- | ---: | --- |")
    for k in ("models",) + STEPS:
        v = st.get(k)
        if v:
            w(f"| {k} | {v['status']} | {v.get('seconds', '')} | {v['note'].replace('|', '/')[:300]} |")
    if "tbo" in st and "ops" in st["tbo"]:
        w("")
        w(f"## test-backend-ops -b CUDA0 (`-p '{OUR_TYPES}'`; the Q4_0 control `-p '{CONTROL}'`)")
        w("")
        w("| op | exit | tp1 OK/FAIL/unsup | tp4 OK/FAIL/unsup | q4_0 OK/FAIL/unsup |")
        w("| --- | ---: | --- | --- | --- |")
        for op, v in st["tbo"]["ops"].items():
            cell = lambda t: "/".join(str(v["types"].get(t, {}).get(x, 0)) for x in ("ok", "fail", "unsupported"))
            w(f"| {op} | {v['exit']} | {cell('tp1')} | {cell('tp4')} | {cell('q4_0')} |")
        fails = [f for v in st["tbo"]["ops"].values() for f in v["fails"]]
        if fails:
            w("")
            w("```")
            w("\n".join(fails[:20]))
            w("```")
        w("")
        w(f"TQ2_0 MUL_MAT on CUDA0 (`test-backend-ops support`): {res.get('tq2_0_cuda')}.")
    if "memcheck" in st and "ops" in st["memcheck"]:
        w("")
        w(f"## compute-sanitizer --tool memcheck (`-p '{OUR_TYPES}'`)")
        w("")
        w("| op | exit | seconds | cases done | ERROR SUMMARY | first errors |")
        w("| --- | ---: | ---: | ---: | ---: | --- |")
        for op, v in st["memcheck"]["ops"].items():
            w(f"| {op} | {v['exit']}{' (cap)' if v['timed_out'] else ''} | {v['seconds']} | {v['cases_done']} | "
              f"{v['error_summary'] if v['error_summary'] is not None else '-'} | {'; '.join(v['errors'][:2])[:200]} |")
    if "greedy" in st and "models" in st["greedy"]:
        w("")
        w(f"## Greedy, {'GPU' if not r.rehearse else 'first run'} (-ngl 99) vs CPU (-ngl 0, CUDA_VISIBLE_DEVICES=)")
        w("")
        w("| model | identical tokens | max abs logit diff | max abs logit | GPU tokens |")
        w("| --- | ---: | ---: | ---: | --- |")
        for t, v in st["greedy"]["models"].items():
            if "same_tokens" in v:
                w(f"| {t} | {v['same_tokens']}/{v['of']} | {v['max_abs_logit_diff']:.4g} | {v['max_abs_logit']:.4g} | "
                  f"{' '.join(map(str, v['gpu_tokens']))} |")
            else:
                w(f"| {t} | {v['result']} | | | |")
        w("")
        w("The logit difference is over the steps whose context is identical on both sides.")
    if "ternary" in st and st["ternary"].get("sides"):
        w("")
        w(f"## Ternary model, TP1 vs its F16 original ({st['ternary']['shape']})")
        w("")
        w("| side | identical tokens | max abs logit diff TP1 vs F16 | max abs logit |")
        w("| --- | ---: | ---: | ---: |")
        for side, v in st["ternary"]["sides"].items():
            w(f"| {side.upper()} | {v['same_tokens']}/{v['of']} | {v['max_abs_logit_diff']:.4g} | {v['max_abs_logit']:.4g} |")
        w("")
        w("TP1 holds ternary weights exactly; the difference left is the activations' rounding (CUDA: 8-bit q8_1, CPU: 16-bit TPQ16).")
    if "bench" in st and st["bench"].get("rows") is not None:
        w("")
        w(f"## llama-bench -ngl 99 {' '.join(st['bench']['prompt_gen'])}")
        w("")
        by: dict = {}
        for x in st["bench"]["rows"]:
            by.setdefault(x["type"], {"size": x["size"], "params": x["params"], "backends": x["backends"]})[x["test"]] = (x["ts"], x["sd"])
        tests = sorted({x["test"] for x in st["bench"]["rows"]}, key=lambda s: (s[:2] != "pp", s))
        ref = {k: by.get(k, {}) for k in ("Q4_0", "Q4_K_M")}
        w("| type | GiB | bpw | " + " | ".join(f"{t} t/s" for t in tests) + " | " +
          " | ".join(f"{t} vs {k}" for t in tests for k in ref) + " |")
        w("|" + " --- |" * 3 + " ---: |" * (len(tests) * 3))
        for t, d in by.items():
            cells = [f"{d[x][0]:.1f} ± {d[x][1]:.1f}" if x in d else "-" for x in tests]
            rel = [f"{d[x][0] / ref[k][x][0]:.2f}x" if x in d and x in ref[k] and ref[k][x][0] else "-" for x in tests for k in ref]
            w(f"| {t} | {d['size'] / 2**30:.2f} | {8 * d['size'] / d['params']:.2f} | " + " | ".join(cells + rel) + " |")
    if "energy" in st and st["energy"].get("rows"):
        w("")
        w(f"## Energy per token (tg128, `{st['energy']['field']}` every 100 ms while utilization >= 50%)")
        w("")
        w("| type | tg128 t/s | mean W | samples | J/token |")
        w("| --- | ---: | ---: | ---: | ---: |")
        for x in st["energy"]["rows"]:
            w(f"| {x['type']} | {x['tg_ts']:.1f} | {x['watts'] or 0:.0f} | {x['samples']} | "
              f"{'%.3f' % x['j_per_token'] if x['j_per_token'] else '-'} |")
    if "matvec" in st and st["matvec"].get("matvec"):
        mv = st["matvec"]
        w("")
        w("## Mat-vec bandwidth (MMVQ, weights rotated over >= 2 GiB so they stream from DRAM)")
        w("")
        if mv["copy_gbs"]:
            w(f"Device-to-device copy: {mv['copy_gbs']:.0f} GB/s of DRAM traffic (read + write).")
            w("")
        w("| type | K x M | weight MB | us | GB/s | % of copy |")
        w("| --- | --- | ---: | ---: | ---: | ---: |")
        for x in mv["matvec"]:
            pct = f"{100 * x['gbs'] / mv['copy_gbs']:.0f}%" if mv["copy_gbs"] else "-"
            w(f"| {x['type']} | {x['K']} x {x['M']} | {x['bytes'] / 1e6:.1f} | {x['us']:.2f} | {x['gbs']:.0f} | {pct} |")
    goals = goal_rows(res)
    if goals:
        w("")
        w("## Goals of issue 16 (from the tables above)")
        w("")
        w("| goal | measured | met |")
        w("| --- | ---: | --- |")
        for g, v, ok in goals:
            w(f"| {g} | {v} | {'yes' if ok else '**no**'} |")
    w("")
    w("## Commands")
    w("")
    w("```")
    w(f"python3 .gpu-bundle/check.py OUTDIR {' '.join(sys.argv[2:])}".rstrip())
    w("\n".join(res["commands"]))
    w("```")
    return "\n".join(L) + "\n"


def goal_rows(res: dict) -> list[tuple[str, str, bool]]:
    """The speed and correctness goals of issue 16 that this run measured: (goal, value, met)."""
    st, out = res["steps"], []
    bench = {(x["type"], x["test"]): x["ts"] for x in st.get("bench", {}).get("rows", [])}
    tg = next((x for _, x in bench if x.startswith("tg")), None)
    pp = next((x for _, x in bench if x.startswith("pp")), None)
    for t, ref, test, want in (("TP4", "Q4_K_M", tg, 1.1), ("TP4", "Q4_0", tg, 1.0), ("TP1", "Q4_0", tg, 1.5),
                               ("TP4", "Q4_K_M", pp, 0.8), ("TP1", "Q4_K_M", pp, 0.8)):
        a, b = bench.get((t, test)), bench.get((ref, test))
        if test and a and b:
            out.append((f"{test} {t} >= {want}x {ref}", f"{a / b:.2f}x", a / b >= want))
    mv = st.get("matvec", {})
    for x in mv.get("matvec", []):
        if x["type"] in ("tp1", "tp4") and x["K"] == 4096 and mv.get("copy_gbs"):
            f = x["gbs"] / mv["copy_gbs"]
            out.append((f"mat-vec {x['type']} 4096x11008 >= 70% of copy bandwidth", f"{100 * f:.0f}%", f >= 0.7))
    for t, v in st.get("greedy", {}).get("models", {}).items():
        if "same_tokens" in v:
            out.append((f"greedy {t} GPU = CPU, 16 of 16", f"{v['same_tokens']}/{v['of']}", v["same_tokens"] == v["of"]))
    return out


def write_out(r: Run, manifest: dict, args) -> None:
    r.out.mkdir(parents=True, exist_ok=True)
    (r.out / "results.json").write_text(json.dumps(r.results, indent=1, default=str))
    try:
        text = report(r, manifest, args)
    except Exception:  # the raw results and logs still come back
        import traceback
        text = ("# TP1 / TP4 GPU check: the report could not be written\n\n```\n" + traceback.format_exc() +
                "```\n\nThe steps' results are in results.json, the raw logs in logs.tar.gz.\n")
    (r.out / "report.md").write_text(text)
    with tarfile.open(r.out / "logs.tar.gz", "w:gz") as tf:
        for p in sorted(r.logs.iterdir()):
            if p.suffix == ".f32":
                continue
            if p.stat().st_size > 4 << 20:  # keep the ends of a huge log (the archive must stay small)
                data = p.read_bytes()
                cut = r.logs / (p.name + ".cut")
                cut.write_bytes(data[:2 << 20] + b"\n[... cut ...]\n" + data[-(2 << 20):])
                tf.add(cut, arcname=f"logs/{p.name}")
                cut.unlink()
            else:
                tf.add(p, arcname=f"logs/{p.name}")
    print(text, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for report.md, results.json and logs.tar.gz")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tritpack-gpu-check",
                    help="where the bundle is unpacked and the models are made (kept for a rerun)")
    ap.add_argument("--budget", type=float, default=450, help="seconds for the whole run, report included")
    ap.add_argument("--layers", type=int, default=8, help="layers of the Llama-2-7B-shaped models")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--rehearse", action="store_true", help="no GPU: tiny models, CPU stands in, GPU-only steps skipped")
    args = ap.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or args.budget < 30 or args.layers < 1:
        ap.error(f"unknown step(s) {', '.join(unknown)}" if unknown else "--budget must be >= 30 and --layers >= 1")
    try:
        manifest = json.loads((HERE / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        print(f"check.py: error: {HERE / 'manifest.json'}: {e} (make the bundle with bench/gpu-bundle.sh)", file=sys.stderr)
        return 2

    r = Run(args.out.resolve(), args.work.resolve(), args.budget, args.rehearse)
    r.say(f"unpacking {manifest['payload']} into {r.work}")
    unpack(r, manifest)
    r.logs.mkdir(parents=True, exist_ok=True)
    for p in r.logs.iterdir():
        p.unlink()
    r.results["machine"]["bundle_kind"] = manifest["kind"]
    dirs, cublas = library_dirs(r, manifest)
    if os.environ.get("LD_LIBRARY_PATH"):
        dirs.append(os.environ["LD_LIBRARY_PATH"])
    r.env["LD_LIBRARY_PATH"] = ":".join(dirs)
    r.results["machine"]["cublas"] = cublas
    cuda_bin = ["/usr/local/cuda/bin/", "/usr/local/cuda/compute-sanitizer/"]
    smi = None if args.rehearse else find_tool("nvidia-smi", ["/usr/local/nvidia/bin/nvidia-smi", "/usr/bin/nvidia-smi"])
    san = None if args.rehearse else find_tool("compute-sanitizer", [d + "compute-sanitizer" for d in cuda_bin])
    machine(r, smi)
    r.results["preflight"] = preflight(r, manifest)
    if any("version `" in x for x in r.results["preflight"]):
        # an older C++ runtime than the build's: use the one the bundle carries
        r.env["LD_LIBRARY_PATH"] = ":".join([dirs[0], str(r.work / "fallback")] + dirs[1:])
        r.results["machine"]["cxx_runtime"] = "the bundle's (fallback/)"
        r.results["preflight"] = preflight(r, manifest)
    if r.results["preflight"]:
        r.say("preflight: " + "; ".join(r.results["preflight"]))
    if not args.rehearse and manifest["kind"] != "cuda":
        r.say("warning: this bundle is a CPU build (a rehearsal bundle): every GPU step will fail")

    threads = os.cpu_count() or 4
    if args.rehearse:
        shape = ["--n-embd", "256", "--n-ff", "512", "--n-layer", "2", "--n-head", "4", "--n-head-kv", "4", "--n-ctx", "512"]
        r.results["model_shape"] = "tiny rehearsal shape (n_embd 256, n_ff 512, 2 layers, 4 heads, vocab 32000)"
    else:
        shape = ["--n-layer", str(args.layers)]
        r.results["model_shape"] = (f"Llama-2-7B layer shape (n_embd 4096, n_ff 11008, 32 heads, vocab 32000), "
                                    f"{args.layers} layers instead of 32, random weights")
    r.models = r.work / ("models-rehearsal" if args.rehearse else f"models-{args.layers}-layers")  # reused by a rerun
    wanted = QUANT_ORDER if ("bench" in steps or "energy" in steps) else ("TP1", "TP4")
    models = Models(r, shape, max(1, threads // 2), wanted)  # the other half: the GPU steps' CPU side
    if any(s in steps for s in ("greedy", "bench", "energy")):
        models.start()

    for s in steps:
        if r.left() < 5:
            r.step(s, "skipped", "no time left in the budget")
            continue
        if args.rehearse and s in GPU_ONLY:
            r.step(s, "skipped", "rehearsal: needs the GPU")
            continue
        try:
            if s == "tbo":
                step_tbo(r)
            elif s == "memcheck":
                step_memcheck(r, san)
            elif s == "matvec":
                step_matvec(r)
            elif s == "greedy":
                step_greedy(r, models)
            elif s == "ternary":
                step_ternary(r)
            elif s == "bench":
                step_bench(r, models)
            elif s == "energy":
                step_energy(r, models, smi)
        except Exception as e:  # a step's bug must not cost the other steps or the report
            r.step(s, "failed", f"check.py error: {type(e).__name__}: {e}")
    if models.is_alive() or models.seconds:
        done = [t for t in BENCH_TYPES if models.ready[t].is_set() and t not in models.errors]
        r.step("models", "failed" if models.errors else "ok" if len(done) == len(models.types) + 1 else "partial",
               "; ".join(sorted(set(models.errors.values()))), made=done,
               seconds_each={k: round(v, 1) for k, v in models.seconds.items()}, seconds=round(sum(models.seconds.values()), 1))
    r.kill_all()
    write_out(r, manifest, args)
    bad = [k for k, v in r.results["steps"].items() if v["status"] == "failed"] + r.results["preflight"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
