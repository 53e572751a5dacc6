"""Instructions per 32 weights in the inner loop of the ARM64 dot products, ours beside Q4_0's and IQ4_NL's.

Speed cannot be measured under qemu, so this counts instructions in the disassembly of the cross builds'
libggml-cpu.so (`tritpack-gguf build --target aarch64` and `--target aarch64-dotprod`): a loop is a
backward branch inside the function; its length is every instruction from the branch target to the
branch, both included. Each function's main loop is the one with the SIMD multiplies (smlal, sdot or
smull) and without smmla (Q4_0's two-row i8mm loop, which ours do not have); every one of them handles 64
weights an iteration (one TP1/TP4 block, two Q4_0/IQ4_NL blocks).

A second table does the same for the repacked tiles' GEMV/GEMM (CPU_TRITPACK: ours in
ggml_kernels/tritpack-gemm-neon.c, ggml's for Q4_0 and IQ4_NL in its arch/arm/repack.cpp). There a loop
multiplies several rows with one or more columns, so the count is per 32 multiply-adds (32 weights times
one column): the loop's length times 32 over its multiply-adds, read off its multiply instructions
(smmla 2x2x8 = 32, sdot 16, smlal/smull 4 or 8 by their lanes; TP1's i8mm GEMM takes two of them per
multiply-add, one per byte of its 16-bit activations). The loop taken is the innermost one with
the most multiply-adds. Ours decode a 64-block of the 8-row tile once per pass of up to 32 columns, outside
that loop: the table gives that decode per 32 weights of a row, to be divided by the columns of a pass.

    .venv/bin/python bench/arm_loops.py            # prints two Markdown tables
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
    ins, ranges = loop_ranges(disassembly, symbol)
    if not ins:
        raise SystemExit(f"no {symbol} in the disassembly")
    return [[o for a, o, _ in ins if first <= a <= last] for first, last in ranges]


# the repacked tiles: label, symbol; ROW_LOOPS: GEMVs whose loop over a block runs a loop over its rows (times)
TILE_FUNCTIONS = [
    ("TP4 x Q8_0 GEMM, i8mm (ours)", "tp4_gemm_i8mm"),
    ("TP4 x Q8_0 GEMM, dotprod (ours)", "tp4_gemm_dot"),
    ("TP4 x Q8_0 GEMV, dotprod (ours)", "tp4_gemv_dot"),
    ("TP1 x TPQ16 GEMM, i8mm (ours)", "tp1_gemm_i8mm"),
    ("TP1 x TPQ16 GEMM, smlal (ours)", "tp1_gemm_neon"),
    ("TP1 x TPQ16 GEMV (ours)", "tp1_gemv_neon"),
    ("Q4_0 4x8 GEMM, i8mm (ggml)", "ggml_gemm_q4_0_4x8_q8_0"),
    ("Q4_0 4x8 GEMV (ggml)", "ggml_gemv_q4_0_4x8_q8_0"),
    ("Q4_0 4x4 GEMM, dotprod (ggml)", "ggml_gemm_q4_0_4x4_q8_0"),
    ("Q4_0 4x4 GEMV, dotprod (ggml)", "ggml_gemv_q4_0_4x4_q8_0"),
    ("IQ4_NL 4x4 GEMM, dotprod (ggml)", "ggml_gemm_iq4_nl_4x4_q8_0"),
    ("IQ4_NL 4x4 GEMV, dotprod (ggml)", "ggml_gemv_iq4_nl_4x4_q8_0"),
]
ROW_LOOPS = {"tp1_gemv_neon": 4}  # TP1: rows in pairs
# kernels that multiply each weight-activation pair by more than one instruction: TP1's i8mm GEMM splits
# its 16-bit activations into two bytes (smmla on the high, usmmla on the low)
SPLIT = {"tp1_gemm_i8mm": 2}
# GEMMs whose block loop decodes its rows in a loop of its own (and how many times it runs a block); none
# now: TP1's GEMMs decode the row pairs unrolled
DECODE_LOOPS: dict[str, int] = {}
LANES = {"4s": 4, "8h": 8, "2d": 2}


def macs(op: str, args: str) -> int:
    """multiply-adds of weights with activations done by one instruction (0 for any other)"""
    if op in ("smmla", "ummla", "usmmla"):
        return 32
    if op in ("sdot", "udot", "usdot", "sudot"):
        return 16
    if op in ("smlal", "smlal2", "smull", "smull2", "umlal", "umlal2", "umull", "umull2"):
        m = re.match(r"\s*v\d+\.(\w+)", args)
        return LANES.get(m.group(1), 0) if m else 0
    return 0


def loop_ranges(disassembly: str, symbol: str) -> tuple[list, list[tuple[int, int]]]:
    """(instructions as (address, mnemonic, operands), loops as (first, last) address) of one function"""
    m = re.search(rf"^[0-9a-f]+ <{re.escape(symbol)}>:\n(.*?)(?:\n\n|\Z)", disassembly, re.S | re.M)
    if not m:
        return [], []
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
                out.append((target, addr))
    return ins, out


def tile_loop(disassembly: str, symbol: str) -> tuple[float, float | None] | None:
    """(instructions per 32 multiply-adds of the main loop, decode per 32 weights of a row or None)"""
    ins, ranges = loop_ranges(disassembly, symbol)
    body = lambda lo, hi: [(op, arg) for a, op, arg in ins if lo <= a <= hi]
    count = lambda lo, hi: sum(macs(op, arg) for op, arg in body(lo, hi))
    total = sum(macs(op, arg) for _, op, arg in ins)
    if "gemv" in symbol:
        # a GEMV: the smallest loop with all of the function's multiplies (the loop over blocks, whatever
        # loops over rows it holds)
        whole = sorted((r for r in ranges if total and count(*r) == total), key=lambda r: r[1] - r[0])
        if len(whole) < (2 if symbol in ROW_LOOPS else 1):
            return None
        main = whole[1] if symbol in ROW_LOOPS else whole[0]
    else:
        innermost = [r for r in ranges if count(*r) and not any(o != r and r[0] <= o[0] and o[1] <= r[1] for o in ranges)]
        if not innermost:
            return None
        main = max(innermost, key=lambda r: (count(*r), r[1] - r[0]))
    n, m = len(body(*main)), count(*main)
    if symbol in ROW_LOOPS:  # the row loop inside runs ROW_LOOPS times an iteration: count what runs
        inner = whole[0]
        if not (main[0] <= inner[0] and inner[1] <= main[1]):
            raise SystemExit(f"{symbol}: expected a row loop inside the block loop")
        k = len(body(*inner))
        n, m = n + (ROW_LOOPS[symbol] - 1) * k, m * ROW_LOOPS[symbol]
    per_mac = n * 32 / (m / SPLIT.get(symbol, 1))
    decode = None
    if not symbol.startswith("ggml_") and "gemm" in symbol:
        # the block loop: the smallest loop around the main one; the rest of it is the per-block decode,
        # which covers 8 rows x 64 weights
        outer = [r for r in ranges if r != main and r[0] <= main[0] and main[1] <= r[1]]
        if outer:
            o = min(outer, key=lambda r: r[1] - r[0])
            others = [r for r in ranges if r not in (o, main) and o[0] <= r[0] and r[1] <= o[1]]
            extra = 0
            if others:
                if symbol not in DECODE_LOOPS or len(others) != 1:
                    raise SystemExit(f"{symbol}: other loops in the block loop: its decode cannot be counted statically")
                extra = (DECODE_LOOPS[symbol] - 1) * len(body(*others[0]))
            decode = (len(body(*o)) - n + extra) * 32 / (8 * 64)
    return per_mac, decode


def main() -> None:
    rows = {name: {} for name in FUNCTIONS}
    tiles: dict[str, dict] = {}
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
        for name, symbol in TILE_FUNCTIONS:
            tiles.setdefault(name, {})[target] = tile_loop(dis, symbol)
    compiler = _build._cross_compilers()[2]
    print(f"Instructions per 32 weights, inner loop of the one-row dot product ({compiler}, CMake Release)\n")
    print("| kernel | " + " | ".join(f"{t} (-march={m})" for t, m in versions.items()) + " |")
    print("|---|" + "---:|" * len(versions))
    for name, counts in rows.items():
        print(f"| {name} | " + " | ".join(f"{counts[t]:g}" for t in versions) + " |")
    print("\nRepacked tiles: instructions per 32 multiply-adds (32 weights x 1 column) of the main loop;"
          " in brackets, ours: the per-block decode per 32 weights of a row, shared by the columns of a pass\n")
    print("| kernel | " + " | ".join(f"{t} (-march={m})" for t, m in versions.items()) + " |")
    print("|---|" + "---:|" * len(versions))
    fmt = lambda v: "—" if v is None else f"{v[0]:.3g}" + ("" if v[1] is None else f" (+{v[1]:.3g})")
    for name, counts in tiles.items():
        print(f"| {name} | " + " | ".join(fmt(counts.get(t)) for t in versions) + " |")


if __name__ == "__main__":
    main()
