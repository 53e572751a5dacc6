"""ARM64: the NEON kernels (ggml_kernels/tritpack-neon.c, tritpack-gemm-neon.c) cross-built for aarch64 and
run under qemu-aarch64.

Two builds (plugin/build.py, `tritpack-gguf build --target ...`): plain NEON (-march=armv8-a), run on qemu's
Cortex-A57 model (ARMv8.0, no dotprod) and on `max`, and dotprod+i8mm (-march=armv8.2-a+dotprod+i8mm), run on
qemu's `max` model. In each: llama.cpp's test-quantize-fns, test-backend-ops -b CPU for MUL_MAT, MUL_MAT_ID and
GET_ROWS with TP1 and TP4 (the plain layout: test-backend-ops puts weights in the backend's default buffer,
never in an extra one such as CPU_TRITPACK), tests/arm/neon_check.c (the NEON dot products against the generic
ones, bit for bit) and tests/arm/repack_check.c (the repacked tiles' NEON GEMV/GEMM against the generic tile
path and the plain vec_dot, and MUL_MAT / MUL_MAT_ID through the CPU backend with the weights in CPU_TRITPACK
against the plain buffer, all bit for bit; which kernel each build and CPU takes). Debian's
gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu and qemu-user come from `make arm-tools` (a step of
`make test`); without them these tests skip and say so. Speed is not measured here: under emulation it
means nothing (README.md, "ARM64").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tritpack_gguf import build as _build

ROOT = Path(__file__).resolve().parent.parent
# variant -> the qemu CPU models it runs on
CPUS = {"aarch64": ["cortex-a57", "max"], "aarch64-dotprod": ["max"]}
OUR_TYPES = "(^|,)type(_a)?=tp[14],"   # test-backend-ops -p: the cases whose weights are TP1 or TP4


def _tools_or_skip() -> None:
    missing = [t for t in (_build.CROSS_PREFIX + "gcc", _build.CROSS_PREFIX + "g++", _build.CROSS_PREFIX + "objdump",
                           "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: `make arm-tools` installs Debian's {_build.CROSS_APT}")


@pytest.fixture(scope="session", params=list(CPUS))
def cross(request):
    _tools_or_skip()
    return request.param, _build.build_cross(request.param)


def _qemu(bin_dir: Path, program: str, cpu: str, *args: str, timeout: int = 900,
          env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*_build.qemu_command(bin_dir / program, cpu), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


def _disassembly(lib: Path, symbol: str) -> list[str]:
    """The instruction mnemonics of one function of lib."""
    out = subprocess.run([_build.CROSS_PREFIX + "objdump", "-d", "--no-show-raw-insn", str(lib)],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^[0-9a-f]+ <{re.escape(symbol)}>:\n(.*?)(?:\n\n|\Z)", out, re.S | re.M)
    assert m, f"no {symbol} in {lib}"
    return [line.split("\t")[1].split()[0] for line in m.group(1).splitlines() if line.count("\t") >= 1]


def test_each_build_runs_its_own_instructions(cross):
    """The CPU traits' dot products are the NEON ones (tbl decodes), TP4's with sdot exactly where the
    build has dotprod; the dotprod build dies on a CPU without it (so the qemu models below do differ)."""
    variant, result = cross
    lib = Path(result.lib_dir) / "libggml-cpu.so"
    tp1 = _disassembly(lib, "ggml_vec_dot_tp1_tpq16")
    tp4 = _disassembly(lib, "ggml_vec_dot_tp4_q8_0")
    assert tp1.count("tbl") == 4 and "smlal" in tp1, tp1
    assert tp4.count("tbl") == 4, tp4
    if variant == "aarch64-dotprod":
        assert tp4.count("sdot") == 4, tp4
    else:
        assert "sdot" not in tp4 and tp4.count("sadalp") == 4, tp4
    # the repacked tiles' kernels (tritpack-gemm-neon.c): TP1's smlal in both builds; TP4's only with
    # dotprod (sdot GEMV and GEMM); with i8mm TP4's smmla GEMM and TP1's smmla + usmmla GEMM
    for fn in ("tp1_gemm_neon", "tp1_gemv_neon"):
        body = _disassembly(lib, fn)
        assert body.count("smlal") + body.count("smlal2") >= 14 and "sdot" not in body, (fn, body)
    symbols = subprocess.run([_build.CROSS_PREFIX + "objdump", "-t", str(lib)], capture_output=True, text=True,
                             check=True).stdout
    if variant == "aarch64-dotprod":
        assert _disassembly(lib, "tp4_gemm_i8mm").count("smmla") == 32
        assert _disassembly(lib, "tp4_gemm_dot").count("sdot") == 32
        assert _disassembly(lib, "tp4_gemv_dot").count("sdot") == 32
        tp1 = _disassembly(lib, "tp1_gemm_i8mm")
        assert tp1.count("smmla") == 32 and tp1.count("usmmla") == 32, tp1
    else:
        assert not re.search(r"\btp4_gem[mv]_|\btp1_gemm_i8mm\b", symbols), "dotprod/i8mm kernels in a plain build"


def _neon_check(result, tmp_path: Path, name: str = "neon_check") -> Path:
    """tests/arm/NAME.c cross-compiled against the build's libraries"""
    exe = tmp_path / name
    source = Path(result.source_dir)
    subprocess.run([_build.CROSS_PREFIX + "gcc", "-O2", "-std=gnu11", f"-I{source / 'ggml' / 'include'}",
                    f"-I{ROOT / 'ggml_kernels'}", str(ROOT / "tests" / "arm" / f"{name}.c"), "-o", str(exe),
                    f"-L{result.lib_dir}", "-lggml-cpu", "-lggml-base", "-lm", f"-Wl,-rpath,{result.lib_dir}"],
                   check=True, capture_output=True, text=True)
    return exe


def test_neon_equals_generic_bit_for_bit(cross, tmp_path):
    variant, result = cross
    exe = _neon_check(result, tmp_path)
    for cpu in CPUS[variant]:
        r = _qemu(exe.parent, exe.name, cpu, timeout=300)
        assert r.returncode == 0, f"{variant} on {cpu}:\n{r.stdout}{r.stderr}"
        m = re.search(r"(\d+) rows compared, 0 differ", r.stdout)
        assert m and int(m.group(1)) >= 1000, r.stdout
    if variant == "aarch64-dotprod":   # sdot is not there on an ARMv8.0 core: SIGILL, not a wrong answer
        r = _qemu(exe.parent, exe.name, "cortex-a57", timeout=300)
        assert r.returncode != 0, r.stdout


def test_repacked_tiles_equal_plain_path_under_qemu(cross, tmp_path):
    """CPU_TRITPACK on ARM64: the kernels each build and CPU take, and their results equal to the generic
    tiles', the plain vec_dot's and (through the CPU backend) the plain buffer's, bit for bit."""
    variant, result = cross
    exe = _neon_check(result, tmp_path, "repack_check")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GGML_TRITPACK_")}
    runs = [(cpu, {}) for cpu in CPUS[variant]]
    if variant == "aarch64-dotprod":
        runs.append(("max", {"GGML_TRITPACK_NO_I8MM": "1"}))   # the dotprod GEMM, which i8mm would hide
    for cpu, extra in runs:
        r = _qemu(exe.parent, exe.name, cpu, timeout=300, env={**env, **extra})
        out = r.stdout
        assert r.returncode == 0, f"{variant} on {cpu} {extra}:\n{out}{r.stderr[-2000:]}"
        m = re.search(r"(\d+) cases compared, 0 differ, (\d+) types repacked", out)
        assert m and int(m.group(1)) >= 40, out
        kernels = set(re.findall(r"^kernel (.+)$", out, re.M))
        i8mm = variant == "aarch64-dotprod" and not extra
        assert {"tp1 gemv smlal", "tp1 gemm smmla" if i8mm else "tp1 gemm smlal"} <= kernels, out
        if variant == "aarch64":   # no dotprod: TP4 keeps its plain layout and NEON vec_dot
            assert m.group(2) == "1" and "tp4: not repacked here" in out, out
        else:
            assert m.group(2) == "2" and {"tp4 gemv sdot", "tp4 gemm smmla" if i8mm else "tp4 gemm sdot"} <= kernels, out
        for op in ("MUL_MAT", "MUL_MAT_ID"):
            assert re.search(rf"^tp1 {op} .*: equal$", out, re.M), out
        assert "tp1 layout control:" in out, out   # the same rows unrepacked give other numbers
        print(f"{variant} on {cpu} {extra}: {m.group(1)} cases equal; kernels {sorted(kernels)}")
    # GGML_TRITPACK_NO_REPACK turns the buffer type off on ARM64 too
    r = _qemu(exe.parent, exe.name, CPUS[variant][0], timeout=300, env={**env, "GGML_TRITPACK_NO_REPACK": "1"})
    assert r.returncode != 0 and "no CPU_TRITPACK buffer type" in r.stdout, r.stdout


def test_quantize_fns_under_qemu(cross):
    variant, result = cross
    cpu = CPUS[variant][0]
    r = _qemu(Path(result.lib_dir), "test-quantize-fns", cpu, "-v")
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{variant} on {cpu}:\n{out[-3000:]}"
    for name in ("tp1", "tp4"):
        assert f"Testing {name}" in out, f"test-quantize-fns did not test {name}"
        lines = [l for l in out.splitlines() if re.match(rf"\s*{name} ", l)]
        assert len(lines) >= 3 and all("ok" in l for l in lines), lines


@pytest.mark.parametrize("op", ["MUL_MAT", "MUL_MAT_ID", "GET_ROWS"])
def test_backend_ops_under_qemu(cross, op):
    variant, result = cross
    cpu = CPUS[variant][0]
    r = _qemu(Path(result.lib_dir), "test-backend-ops", cpu, "-b", "CPU", "-o", op, "-p", OUR_TYPES)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{variant} on {cpu}:\n{out[-3000:]}"
    m = re.search(r"(\d+)/(\d+) tests passed", out)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) > 0, out[-2000:]
    for t in ("tp1", "tp4"):
        assert f"type_a={t}," in out or f"type={t}," in out, f"no {t} case of {op}"


def test_cross_build_is_cached_by_content(cross):
    """A second build with nothing changed is found at once; the targets (their -march) are builds of their own."""
    variant, result = cross
    again = _build.build_cross(variant)
    assert again.cached and again.key == result.key and again.seconds < 10
    other = next(t for t in CPUS if t != variant)
    assert Path(_build.build_cross(other).build_dir) != Path(result.build_dir)


def test_unknown_target_is_one_clear_error():
    r = subprocess.run([str(Path(sys.executable).parent / "tritpack-gguf"), "build", "--target", "riscv64"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "unknown target 'riscv64'" in r.stderr and "aarch64-dotprod" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
