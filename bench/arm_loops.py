"""Instructions per 32 weights in the inner loop of the ARM64 dot products, ours beside Q4_0's and IQ4_NL's.

Speed cannot be measured under qemu, so this counts instructions in the disassembly of the cross builds'
libggml-cpu.so (`tritpack-gguf build --target aarch64` and `--target aarch64-dotprod`): a loop is a
backward branch inside the function; its length is every instruction from the branch target to the
branch, both included. Each function's main loop is the one with the SIMD multiplies (smlal, sdot or
smull) and without smmla (Q4_0's two-row i8mm loop, which ours do not have); every one of them handles 64
weights an iteration (one TP1/TP4 block, two Q4_0/IQ4_NL blocks).

    .venv/bin/python bench/arm_loops.py            # prints a Markdown table
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tritpack_gguf import build as _build

FUNCTIONS = {"TP1 x TPQ16": "ggml_vec_dot_tp1_tpq16", "TP4 x Q8_0": "ggml_vec_dot_tp4_q8_0",
             "Q4_0 x Q8_0": "ggml_vec_dot_q4_0_q8_0", "IQ4_NL x Q8_0": "ggml_vec_dot_iq4_nl_q8_0"}
WEIGHTS_PER_ITERATION = 64
SIMD_MULTIPLY = {"smlal", "smlal2", "sdot", "smull", "smull2"}


def loops(disassembly: str, symbol: str) -> list[list[str]]:
    """The mnemonics of each loop (backward branch) of one function."""
    m = re.search(rf"^[0-9a-f]+ <{re.escape(symbol)}>:\n(.*?)(?:\n\n|\Z)", disassembly, re.S | re.M)
    if not m:
        raise SystemExit(f"no {symbol} in the disassembly")
    ins = []
    for line in m.group(1).splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and re.fullmatch(r"\s*[0-9a-f]+:", parts[0]):
            ins.append((int(parts[0].strip().rstrip(":"), 16), parts[1].split()[0], parts[2] if len(parts) > 2 else ""))
    out = []
    for addr, op, arg in ins:
        t = re.search(r"\b([0-9a-f]+) <", arg)
        if (op == "b" or op.startswith("b.") or op in ("cbz", "cbnz", "tbz", "tbnz")) and t:
            target = int(t.group(1), 16)
            if ins[0][0] <= target < addr:
                out.append([o for a, o, _ in ins if target <= a <= addr])
    return out


def main() -> None:
    rows = {name: {} for name in FUNCTIONS}
    versions = {}
    for target, march in _build.CROSS_TARGETS.items():
        result = _build.build_cross(target)
        lib = Path(result.lib_dir) / "libggml-cpu.so"
        dis = subprocess.run([_build.CROSS_PREFIX + "objdump", "-d", "--no-show-raw-insn", str(lib)],
                             capture_output=True, text=True, check=True).stdout
        versions[target] = march
        for name, symbol in FUNCTIONS.items():
            main_loops = [body for body in loops(dis, symbol)
                          if SIMD_MULTIPLY & set(body) and "smmla" not in body]
            if len(main_loops) != 1:
                raise SystemExit(f"{symbol} ({target}): {len(main_loops)} candidate inner loops")
            rows[name][target] = len(main_loops[0]) * 32 / WEIGHTS_PER_ITERATION
    compiler = _build._cross_compilers()[2]
    print(f"Instructions per 32 weights, inner loop of the one-row dot product ({compiler}, CMake Release)\n")
    print("| kernel | " + " | ".join(f"{t} (-march={m})" for t, m in versions.items()) + " |")
    print("|---|" + "---:|" * len(versions))
    for name, counts in rows.items():
        print(f"| {name} | " + " | ".join(f"{counts[t]:g}" for t in versions) + " |")


if __name__ == "__main__":
    main()
