"""The TP1/TP4 C kernels on hostile blocks and inputs, under AddressSanitizer and UBSan.

sanitize/CMakeLists.txt is a CMake configuration of its own: ggml-base of the patched llama.cpp
tree with our kernels and the driver tests/sanitize/driver.c (with our CPU kernels), all built with
-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all. It is built like
`tritpack-gguf build` builds (plugin/build.py's functions): the patched tree of the pin, a stable
copy of the project under $TRITPACK_HOME/project/, the build in $TRITPACK_HOME/build/sanitize-<key of
the tree>/ with a stamp holding the hash of every input, so a second run with nothing changed
rebuilds nothing and a changed kernel recompiles incrementally.

Also here, without sanitizers: all 256 TP1 byte values decode in range and identically in C
(dequantize_row_tp1 of the release build) and numpy (converters/tp1.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tritpack_gguf.converters.tp1 import TP1
from tritpack_gguf.converters.tp4 import TP4

HERE = Path(__file__).parent
STAMP = "tritpack-sanitize.json"
REPORT = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|SUMMARY: \w+Sanitizer")


def _inputs(root: Path) -> list[Path]:
    from tritpack_gguf.build import kernel_sources

    return (kernel_sources(root) + [root / "sanitize" / "CMakeLists.txt"] +
            sorted(p for p in (root / "tests" / "sanitize").iterdir() if p.is_file()))


def build_sanitized(progress=print) -> tuple[Path, dict]:
    """Configure and build the sanitizer driver (or find it built); (driver path, stamp)."""
    from tritpack_gguf import build as B
    from tritpack_gguf.paths import locked, source_root, tritpack_home

    t0 = time.monotonic()
    root, home = source_root(), tritpack_home()
    if not (root / "sanitize" / "CMakeLists.txt").is_file():
        pytest.skip("no sanitize/ in this checkout")
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH")
    pin = B.Pin.load(root / "patches" / "llama-cpp.pin")
    source = B.prepare_source(pin, root, home)
    series = (source / ".tritpack-series").read_text() if (source / ".tritpack-series").is_file() else ""
    tree_key = hashlib.sha256(f"sanitize:{source}".encode()).hexdigest()[:16]
    build_dir = home / "build" / f"sanitize-{tree_key}"
    project = home / "project" / f"sanitize-{tree_key}"
    driver = build_dir / "tritpack-sanitize"
    h = hashlib.sha256(json.dumps({"sdist": pin.sha256, "source": str(source), "series": series}).encode())
    B._hash_files(h, root, _inputs(root))
    key = h.hexdigest()
    with locked(home / "build" / f"{build_dir.name}.lock"):
        try:
            stamp = json.loads((build_dir / STAMP).read_text())
        except (OSError, ValueError):
            stamp = None
        if stamp and stamp.get("key") == key and driver.is_file():
            return driver, {**stamp, "cached": True, "seconds": round(time.monotonic() - t0, 1)}
        # a copy of the project at a path that does not depend on the checkout (as build.py does)
        B._sync_tree(root / "ggml_kernels", project / "ggml_kernels", keep=set())
        B._sync_tree(root / "tests" / "sanitize", project / "tests" / "sanitize", keep=set())
        B._copy_if_changed(root / "sanitize" / "CMakeLists.txt", project / "sanitize" / "CMakeLists.txt")
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / STAMP).unlink(missing_ok=True)
        log = build_dir / "build.log"
        log.write_text("")
        cfg = ["cmake", "-S", str(project / "sanitize"), "-B", str(build_dir), "-G", "Ninja",
               "-DCMAKE_BUILD_TYPE=Debug", f"-DTRITPACK_LLAMA_SOURCE={source}"]
        if shutil.which("ccache"):
            cfg += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
        progress("sanitize: configuring")
        B._run_logged(cfg, log, lambda *a: None, "configure (sanitize)", dict(os.environ))
        progress("sanitize: building ggml-base and the driver with ASan + UBSan")
        B._run_logged(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2), "--target",
                       "tritpack-sanitize"], log, lambda *a: None, "compile (sanitize)", dict(os.environ))
        stamp = {"key": key, "driver": str(driver), "source_dir": str(source),
                 "build_seconds": round(time.monotonic() - t0, 1)}
        tmp = build_dir / (STAMP + ".tmp")
        tmp.write_text(json.dumps(stamp, indent=2))
        os.replace(tmp, build_dir / STAMP)
        return driver, {**stamp, "cached": False, "seconds": stamp["build_seconds"]}


ASAN_OPTIONS = ("halt_on_error=1:abort_on_error=0:detect_leaks=1:strict_string_checks=1:"
                "detect_stack_use_after_return=1:check_initialization_order=1")
UBSAN_OPTIONS = "halt_on_error=1:print_stacktrace=1"


def _run_driver(driver: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASAN_OPTIONS": ASAN_OPTIONS, "UBSAN_OPTIONS": UBSAN_OPTIONS}
    r = subprocess.run([str(driver), *args], capture_output=True, text=True, env=env, timeout=900)
    if "LeakSanitizer does not work under ptrace" in r.stderr or "LeakSanitizer has encountered a fatal error" in r.stderr:
        env["ASAN_OPTIONS"] = ASAN_OPTIONS.replace("detect_leaks=1", "detect_leaks=0")
        r = subprocess.run([str(driver), *args], capture_output=True, text=True, env=env, timeout=900)
    return r


@pytest.fixture(scope="module")
def sanitized():
    driver, info = build_sanitized()
    t0 = time.monotonic()
    r = _run_driver(driver)
    return driver, info, r, time.monotonic() - t0


def test_the_sanitizers_are_on(sanitized):
    driver = sanitized[0]
    r = _run_driver(driver, "--selftest-asan")
    assert r.returncode != 0 and "ERROR: AddressSanitizer: heap-buffer-overflow" in r.stderr, r.stderr[-3000:]
    r = _run_driver(driver, "--selftest-ubsan")
    assert r.returncode != 0 and "runtime error: signed integer overflow" in r.stderr, r.stderr[-3000:]


def test_kernels_under_asan_and_ubsan(sanitized, count_line):
    driver, info, r, seconds = sanitized
    print(f"\nsanitize: driver {'found built' if info['cached'] else 'built'} in {info['seconds']} s "
          f"({driver.parent})")
    out = r.stdout + r.stderr
    reports = [line for line in out.splitlines() if REPORT.search(line)]
    assert not reports, "sanitizer report:\n" + out[-8000:]
    assert r.returncode == 0, out[-8000:]
    summary = [line for line in r.stdout.splitlines() if line.startswith("sanitize:")]
    assert summary, out[-4000:]
    count_line(f"{summary[-1]} ({seconds:.1f} s under the sanitizers)")


def test_finite_input_quantizes_to_finite_scales(sanitized):
    # both types clamp their block scale to fp16's largest finite value; the converter's pass turns
    # finite input into finite blocks (or stops at a weight F16 cannot hold)
    notes = [line for line in sanitized[2].stdout.splitlines() if line.startswith("NOTE")]
    assert not notes, "finite input quantized to non-finite block scales:\n" + "\n".join(notes[:20])


# ----------------------------------------------------------------------------- C against numpy

def test_tp1_every_byte_value_decodes_in_range_in_c_and_numpy(ggml):
    """Bytes 243..255 cannot come out of the quantizer but can be in a file: every one of the 256
    values decodes (TQ1_0-style, a multiply and a shift) to trits in {-1, 0, +1}, the same in C
    and numpy, for every scale class."""
    scales = np.array([0x3C00, 0x0000, 0x8000, 0x0001, 0x03FF, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x7C01],
                      dtype=np.uint16)
    rows = []
    for v in range(256):
        for h in scales:
            rows.append(bytes([v]) * 13 + int(h).to_bytes(2, "little"))
    blocks = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 15)
    y_c = ggml.dequantize(80, blocks, 64).reshape(-1, 64)
    with np.errstate(invalid="ignore"):  # 0 * Inf
        y_np = TP1.dequantize_blocks(blocks)
    assert np.array_equal(y_c.view(np.uint32), y_np.astype(np.float32).view(np.uint32)) or \
        np.array_equal(y_c, y_np, equal_nan=True)
    d = blocks[:, 13:15].copy().view("<f2").astype(np.float32)[:, 0]
    with np.errstate(invalid="ignore"):
        trits = y_np / d[:, None]
    unit = d == 1.0
    assert set(np.unique(trits[unit]).tolist()) <= {-1.0, 0.0, 1.0}
    # every value decodes identically for every finite non-zero scale: the trits do not depend on d
    finite = np.isfinite(d) & (d != 0)
    t = trits[finite].reshape(256, -1, 64)
    assert np.array_equal(t, np.repeat(t[:, :1], t.shape[1], axis=1))


def test_tp4_every_field_value_in_c_and_numpy(ggml):
    """All 65536 values of TP4's codebook/scale-code field, with every index nibble: C equals numpy."""
    rng = np.random.default_rng(0)
    sc = np.arange(65536, dtype=np.uint32)
    blocks = np.empty((65536, 36), dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.float16(0.5).tobytes(), dtype=np.uint8)
    blocks[:, 2] = sc & 0xFF
    blocks[:, 3] = sc >> 8
    blocks[:, 4:] = (np.arange(32, dtype=np.uint32)[None, :] * 8 + sc[:, None]) & 0xFF
    blocks[:, 4] = rng.integers(0, 256, size=65536)
    y_c = ggml.dequantize(81, blocks, 64).reshape(-1, 64)
    y_np = TP4.dequantize_blocks(blocks)
    assert np.array_equal(y_c, y_np)
    assert np.isfinite(y_c).all() and np.abs(y_c).max() <= 0.5 * 7 * 127


def test_validate_row_data_rejects_nan_and_inf_scales(ggml):
    """llama.cpp's tensor validation, through the release build: NaN/Inf scales are refused in TP1
    and TP4 blocks, zero, subnormal and the largest finite scales pass, whatever the other bytes."""
    rng = np.random.default_rng(1)
    for tid, bs, at in ((80, 15, 13), (81, 36, 0)):
        blocks = rng.integers(0, 256, size=(6, bs), dtype=np.uint8)
        for h, ok in ((0x3C00, True), (0x0000, True), (0x8000, True), (0x0001, True), (0x7BFF, True),
                      (0xFBFF, True), (0x7C00, False), (0xFC00, False), (0x7E00, False), (0x7C01, False),
                      (0xFFFF, False)):
            b = blocks.copy()
            b[:, at:at + 2] = np.frombuffer(np.uint16(0x3C00).tobytes(), dtype=np.uint8)
            b[4, at:at + 2] = np.frombuffer(np.uint16(h).tobytes(), dtype=np.uint8)
            assert ggml.validate_row_data(tid, b.reshape(-1)) is ok, (tid, hex(h))
