"""A build's libggml-cpu with another tritpack-gemm.c, or with ggml's own x86 kernels compiled for other
CPU features, relinked into a folder of its own: the kernel-level A/Bs of bench/results/cpu-repack*.md
without touching the cached build (`bench/repack-matvec.cpp` then runs against it through
LD_LIBRARY_PATH).

    python3 bench/relink_cpu.py BUILD_DIR OUT_DIR [--gemm FILE.c] [--stock-flags "-mavxvnni -DGGML_AVX_VNNI"]

BUILD_DIR is a build folder of `tritpack-gguf build` (its compile_commands.json and objects are used);
--gemm compiles FILE.c in place of ggml_kernels/tritpack-gemm.c with that file's command; --stock-flags
recompiles ggml-cpu's own sources (all but ours in ggml_kernels/) with these flags added, e.g. the
portable (AVX2) build's stock kernels as a native build on an AVX-VNNI CPU would compile them.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--gemm", type=Path, help="a tritpack-gemm.c to compile instead of the build's")
    ap.add_argument("--stock-flags", default="", help="flags added to ggml-cpu's own sources (all but ggml_kernels/)")
    a = ap.parse_args()
    build, out = a.build.resolve(), a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ninja = (build / "build.ninja").read_text()
    m = re.search(r"^build (bin/libggml-cpu\.so\.[\d.]+): CXX_SHARED_LIBRARY_LINKER__ggml-cpu_\w+ ([^|\n]*)", ninja, re.M)
    if not m:
        sys.exit(f"{build}: no libggml-cpu link step in build.ninja")
    objs = m.group(2).split()
    swap: dict[str, str] = {}
    for e in json.loads((build / "compile_commands.json").read_text()):
        src = e["file"]
        ours = "/ggml_kernels/" in src
        is_gemm = src.endswith("ggml_kernels/tritpack-gemm.c")
        if not (is_gemm and a.gemm) and not (a.stock_flags and not ours):
            continue
        cmd = shlex.split(e["command"])
        i = cmd.index("-o")
        obj = cmd[i + 1]
        if obj not in objs:
            continue
        cmd[i + 1] = str(out / obj.replace("/", "_"))
        if is_gemm and a.gemm:
            cmd[cmd.index(src)] = str(a.gemm.resolve())
        if not ours:
            cmd += shlex.split(a.stock_flags)
        subprocess.run(cmd, cwd=e["directory"], check=True)
        swap[obj] = cmd[i + 1]
    libs = [str(p) for p in sorted((build / "bin").glob("libggml-base.so.*")) if not p.is_symlink()]
    link = ["g++", "-shared", "-fPIC", "-O3", "-Wl,-soname,libggml-cpu.so.0", "-o", str(out / "libggml-cpu.so.0"),
            *[swap.get(o, o) for o in objs], *libs, "-fopenmp", "-lpthread"]
    subprocess.run(link, cwd=build, check=True)
    print(f"{out / 'libggml-cpu.so.0'} ({len(swap)} objects recompiled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
