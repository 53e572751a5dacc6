#!/usr/bin/env bash
# Converter speed and memory against llama-quantize, on the same ~1B-parameter F16 input, machine
# and threads, in one run:  bench/convert.sh [THREADS]   ->  bench/results/convert.md
#
#   tritpack-gguf convert --type tp4   vs   llama-quantize IQ4_XS
#   tritpack-gguf convert --type tp1   vs   llama-quantize TQ1_0
# with wall time, MB/s of input and peak RSS (GNU time), and the largest tensor's F32 size for the
# memory bound (peak RSS < 2 x largest tensor in F32 + 500 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
WORK=${TRITPACK_BENCH_DIR:-${TRITPACK_HOME:-$HOME/.cache/tritpack-gguf}/bench-cpu}
F16="$WORK/llama-1b-F16.gguf"
[ -f "$F16" ] || { echo "run bench/cpu.sh first (it makes $F16)" >&2; exit 1; }
LIB=$(.venv/bin/tritpack-gguf build 2>/dev/null | tail -1)
[ -x /usr/bin/time ] || { echo "GNU time is needed: apt-get install time" >&2; exit 1; }

in_bytes=$(stat -c %s "$F16")
largest=$(.venv/bin/python - "$F16" <<'EOF'
import sys
from tritpack_gguf.converters.reader import GGUFFile
print(max(t.n_elements for t in GGUFFile(sys.argv[1]).tensors) * 4)
EOF
)
measure() {  # measure NAME COMMAND... -> "seconds peak_kb"
  local name=$1; shift
  rm -f "$WORK/out-$name.gguf"
  /usr/bin/time -f "%e %M" -o "$WORK/time-$name.txt" "$@" >"$WORK/log-$name.txt" 2>&1
  cat "$WORK/time-$name.txt"
}
declare -A R
R[tp4]=$(measure tp4 .venv/bin/tritpack-gguf convert "$F16" --type tp4 -o "$WORK/out-tp4.gguf" --threads "$THREADS" --json)
R[iq4_xs]=$(measure iq4_xs "$LIB/llama-quantize" "$F16" "$WORK/out-iq4_xs.gguf" IQ4_XS "$THREADS")
R[tp1]=$(measure tp1 .venv/bin/tritpack-gguf convert "$F16" --type tp1 -o "$WORK/out-tp1.gguf" --threads "$THREADS" --json)
R[tq1_0]=$(measure tq1_0 "$LIB/llama-quantize" "$F16" "$WORK/out-tq1_0.gguf" TQ1_0 "$THREADS")

row() {  # row LABEL KEY
  read -r s kb <<<"${R[$2]}"
  echo "| $1 | $s | $(echo "scale=1; $in_bytes / 1000000 / $s" | bc) | $(( kb / 1024 )) |"
}
ratio() { read -r a _ <<<"${R[$1]}"; read -r b _ <<<"${R[$2]}"; echo "scale=2; $b / $a" | bc; }
{
  echo "# Converter throughput and memory"
  echo
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores visible, $THREADS threads. Date: $(date -u +%Y-%m-%d)."
  echo "Input: $(basename "$F16"), $(( in_bytes / 1000000 )) MB F16 (random Llama, ~1B parameters, made by bench/cpu.sh);"
  echo "largest tensor $(( largest / 1000000 )) MB in F32, so the memory bound is $(( (2 * largest) / 1000000 + 500 )) MB."
  echo
  echo '```'
  echo "bench/convert.sh $THREADS"
  echo '```'
  echo
  echo "| command | seconds | MB/s of F16 input | peak RSS MiB |"
  echo "| --- | ---: | ---: | ---: |"
  row "tritpack-gguf convert --type tp4" tp4
  row "llama-quantize IQ4_XS" iq4_xs
  row "tritpack-gguf convert --type tp1" tp1
  row "llama-quantize TQ1_0" tq1_0
  echo
  echo "Throughput ratios (same input, machine and threads): convert --type tp4 / llama-quantize IQ4_XS = $(ratio tp4 iq4_xs)x;"
  echo "convert --type tp1 / llama-quantize TQ1_0 = $(ratio tp1 tq1_0)x (goals: at least 1.0x each)."
  echo "convert also measures every tensor against its source (cos, SNR, RMSE) while writing; llama-quantize does not."
} > bench/results/convert.md
cat bench/results/convert.md
