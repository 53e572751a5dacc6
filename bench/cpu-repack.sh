#!/usr/bin/env bash
# CPU speed of TP1/TP4 with the CPU_TRITPACK repack (issue 15), beside the stock types, side by side
# in one llama-bench run per shape and thread count; then TP1, TP4, Q4_0 and TQ2_0 with llama-bench's
# --repack 0,1 in a second run (0: no extra buffer types at all, so TP1/TP4 take the plain vec_dot
# path), for the before/after ratios within one run.
#
#   bench/cpu-repack.sh            results in bench/results/cpu-repack.md
#
# Shapes: n_embd 2048 / n_ff 5632 (Llama ~1B rows) and n_embd 896 / n_ff 4864 (Qwen2.5-0.5B rows),
# random weights (bench/make_random_model.py), vocab 32000. LAYERS_2048, LAYERS_896, REPS and
# THREADS (a list) make a smaller run when time is short; the table says what was run.
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERS_2048=${LAYERS_2048:-12}
LAYERS_896=${LAYERS_896:-24}
REPS=${REPS:-3}
THREADS=${THREADS:-"2 1"}
PP=${PP:-512}
TG=${TG:-128}
WORK=${TRITPACK_BENCH_DIR:-${TRITPACK_HOME:-$HOME/.cache/tritpack-gguf}/bench-repack}
OUT=${OUT:-bench/results/cpu-repack.md}
APPEND=${APPEND:-0}  # 1: add to OUT instead of starting it
mkdir -p "$WORK" bench/results
make -s setup
# TRITPACK_BENCH_LIB / TRITPACK_BENCH_SRC: a library folder and llama.cpp tree to use instead of the build
LIB=${TRITPACK_BENCH_LIB:-$(.venv/bin/tritpack-gguf build 2>/dev/null | tail -1)}
SRC=${TRITPACK_BENCH_SRC:-$(.venv/bin/tritpack-gguf build --json 2>/dev/null | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["source_dir"])')}
TYPES=(TP4 TP1 F16 Q8_0 Q4_0 Q4_K_M IQ4_NL IQ4_XS TQ1_0 TQ2_0)

model() {  # model SHAPE TYPE -> path, made on first use
  local s=$1 t=$2 f16="$WORK/$1-L$3-F16.gguf" out="$WORK/$1-L$3-$2.gguf"
  if [ ! -f "$f16" ]; then
    if [ "$s" = s2048 ]; then a=(--n-embd 2048 --n-ff 5632 --n-head 16 --n-head-kv 16); else a=(--n-embd 896 --n-ff 4864 --n-head 14 --n-head-kv 2); fi
    .venv/bin/python bench/make_random_model.py "$f16" "$SRC/models/ggml-vocab-llama-spm.gguf" "${a[@]}" --n-layer "$3" --n-ctx 2048 >&2
  fi
  if [ "$t" = F16 ]; then echo "$f16"; return; fi
  if [ ! -f "$out" ]; then
    "$LIB/llama-quantize" "$f16" "$out.tmp" "$t" 2 >"$WORK/quantize-$s-$t.log" 2>&1
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# Drop the run's model files from the page cache and read each back the same way, just before the run.
# How a file's pages sit in the cache (the kernel's large folios, which depend on how the file was
# written or last read) changes how fast the mapped weights stream: measured, the same Q6_K output
# matmul took 16% longer reading one model's mapping than another's until both files were read back
# alike (TP4 then went from 0.96x to 1.04x Q4_0 in tg128 on one thread, nothing else changed).
settle() {
  .venv/bin/python - "$@" <<'EOF'
import os, sys
for f in sys.argv[1:]:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 24):
            pass
    finally:
        os.close(fd)
EOF
}

machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores visible; $(uname -sr)"
[ "$APPEND" = 1 ] || {
  echo "# TP1 and TP4 on the CPU, repacked (CPU_TRITPACK) and plain"
  echo
  echo "Machine: $machine. Date: $(date -u '+%Y-%m-%d %H:%M UTC'). Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Models: random Llama weights (bench/make_random_model.py), vocab 32000; n_embd 2048 / n_ff 5632 with"
  echo "$LAYERS_2048 layers, n_embd 896 / n_ff 4864 (14 heads, 2 KV heads) with $LAYERS_896 layers."
  echo "Each llama-bench run starts with its model files dropped from the page cache and read back alike (settle)."
  echo "Command: \`LAYERS_2048=$LAYERS_2048 LAYERS_896=$LAYERS_896 REPS=$REPS THREADS=\"$THREADS\" PP=$PP TG=$TG bench/cpu-repack.sh\`"
  echo
} > "$OUT"

for s in s2048 s896; do
  if [ $s = s2048 ]; then L=$LAYERS_2048; else L=$LAYERS_896; fi
  files=()
  for t in "${TYPES[@]}"; do files+=(-m "$(model $s $t $L)"); done
  before=(-m "$(model $s TP4 $L)" -m "$(model $s TP1 $L)" -m "$(model $s Q4_0 $L)" -m "$(model $s TQ2_0 $L)")
  for th in $THREADS; do
    cmd=("$LIB/llama-bench" "${files[@]}" -t "$th" -p "$PP" -n "$TG" -r "$REPS" -o md)
    echo "running: ${cmd[*]}" >&2
    settle $(printf '%s\n' "${files[@]}" | grep -v '^-m$')
    table=$("${cmd[@]}" 2>/dev/null)
    cmd0=("$LIB/llama-bench" "${before[@]}" -t "$th" -p "$PP" -n "$TG" -r "$REPS" --repack 0,1 -o md)
    echo "running: ${cmd0[*]}" >&2
    settle $(printf '%s\n' "${before[@]}" | grep -v '^-m$')
    table0=$("${cmd0[@]}" 2>/dev/null)
    {
      echo "## $s ($L layers), $th thread(s)"
      echo
      echo '```'
      echo "${cmd[*]}" | sed "s#$WORK/##g; s#$LIB/##g"
      echo "${cmd0[*]}" | sed "s#$WORK/##g; s#$LIB/##g"
      echo '```'
      echo
      echo "$table"
      echo
      echo "Second run, repack off (0) and on (1) for each model (repack 0 is every type's plain path):"
      echo
      echo "$table0"
      echo
      .venv/bin/python - "$table" "$table0" <<'EOF'
import re, sys
def rows(t):
    out = {}
    for l in t.splitlines():
        c = [x.strip() for x in l.strip().strip("|").split("|")]
        if len(c) < 3 or not re.match(r"[0-9.]+", c[-1]) or "t/s" in l:
            continue
        out.setdefault(c[-2], []).append(float(re.match(r"([0-9.]+)", c[-1]).group(1)))
    return out
types = ["TP4", "TP1", "F16", "Q8_0", "Q4_0", "Q4_K_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0"]
a, b = rows(sys.argv[1]), rows(sys.argv[2])
print("Ratios (tokens/s over tokens/s; the first six from the first run, the rest from the second; plain = TP1/TP4 with --repack 0 against the stock type repacked, as before this change):\n")
print("| test | TP4/Q4_0 | TP4/IQ4_NL | TP4/Q4_K_M | TP1/TQ2_0 | TP1/TQ1_0 | TP1/Q4_0 | plain TP4/Q4_0 | plain TP1/TQ2_0 | plain TP1/Q4_0 | TP4 repacked/plain | TP1 repacked/plain |")
print("| --- |" + " ---: |" * 11)
for test, v in a.items():
    if len(v) != len(types) or len(b.get(test, [])) != 8:
        print(f"| {test} | (rows missing) |"); continue
    x = dict(zip(types, v))
    y = dict(zip(["TP4-0", "TP4-1", "TP1-0", "TP1-1", "Q4_0-0", "Q4_0-1", "TQ2_0-0", "TQ2_0-1"], b[test]))
    r = [x["TP4"]/x["Q4_0"], x["TP4"]/x["IQ4_NL"], x["TP4"]/x["Q4_K_M"], x["TP1"]/x["TQ2_0"], x["TP1"]/x["TQ1_0"], x["TP1"]/x["Q4_0"],
         y["TP4-0"]/y["Q4_0-1"], y["TP1-0"]/y["TQ2_0-1"], y["TP1-0"]/y["Q4_0-1"], y["TP4-1"]/y["TP4-0"], y["TP1-1"]/y["TP1-0"]]
    print(f"| {test} | " + " | ".join(f"{q:.2f}x" for q in r) + " |")
EOF
      echo
      echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
      echo
    } >> "$OUT"
  done
done
echo "wrote $OUT" >&2
