"""llama.cpp's own test programs, built from the patched tree, with our types in them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def _run(lib_dir: Path, program: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(lib_dir / program), *args], capture_output=True, text=True, timeout=timeout)


def test_quantize_fns_passes_with_our_types(lib_dir):
    r = _run(lib_dir, "test-quantize-fns", "-v")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for name in ("tp1", "tp4"):
        assert f"Testing {name}" in out, f"test-quantize-fns did not test {name}"
        lines = [l for l in out.splitlines() if re.match(rf"\s*{name} ", l)]
        # absolute error, reference implementation, dot product: all checked, all ok
        assert len(lines) >= 3 and all("ok" in l for l in lines), lines

