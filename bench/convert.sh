#!/usr/bin/env bash
# Converter speed and memory against llama-quantize, on the same ~1B-parameter F16 input, machine
# and threads, in one run:  [REPEAT=3] bench/convert.sh [THREADS]   ->  bench/results/convert.md
# (each command REPEAT times, pairs alternating; the median run is reported)
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
measure() {  # measure NAME COMMAND... -> appends "seconds peak_kb cpu_seconds" to $WORK/time-NAME.all
  local name=$1; shift
  rm -f "$WORK/out-$name.gguf"
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/time-$name.txt" "$@" >"$WORK/log-$name.txt" 2>&1
  awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$WORK/time-$name.txt" >>"$WORK/time-$name.all"
}
median() {  # median NAME -> "seconds peak_kb cpu_seconds" of the run with the median time
  sort -n "$WORK/time-$1.all" | sed -n "$(( ($(wc -l <"$WORK/time-$1.all") + 1) / 2 ))p"
}
REPEAT=${REPEAT:-3}
rm -f "$WORK"/time-*.all
for i in $(seq "$REPEAT"); do  # each pair back to back, the pairs alternating which goes first
  tp4() { measure tp4 .venv/bin/tritpack-gguf convert "$F16" --type tp4 -o "$WORK/out-tp4.gguf" --threads "$THREADS" --json; }
  iq4() { measure iq4_xs "$LIB/llama-quantize" "$F16" "$WORK/out-iq4_xs.gguf" IQ4_XS "$THREADS"; }
  tp1() { measure tp1 .venv/bin/tritpack-gguf convert "$F16" --type tp1 -o "$WORK/out-tp1.gguf" --threads "$THREADS" --json; }
  tq1() { measure tq1_0 "$LIB/llama-quantize" "$F16" "$WORK/out-tq1_0.gguf" TQ1_0 "$THREADS"; }
  if (( i % 2 )); then tp4; iq4; tp1; tq1; else iq4; tp4; tq1; tp1; fi
done
declare -A R
for k in tp4 iq4_xs tp1 tq1_0; do R[$k]=$(median $k); done
# what the source hash alone costs (convert runs it in a thread beside the work)
hash_s=$(.venv/bin/python -c 'import sys, time
from tritpack_gguf.digest import sha256_file
t = time.monotonic(); sha256_file(sys.argv[1]); print(f"{time.monotonic() - t:.2f}")' "$F16")

row() {  # row LABEL KEY
  read -r s kb cpu <<<"${R[$2]}"
  local all; all=$(awk '{printf "%s%s", sep, $1; sep=", "}' "$WORK/time-$2.all")
  echo "| $1 | $s | $all | $cpu | $(echo "scale=1; $in_bytes / 1000000 / $s" | bc) | $(( kb / 1024 )) |"
}
ratio() { read -r a _ <<<"${R[$1]}"; read -r b _ <<<"${R[$2]}"; printf "%.3f" "$(echo "scale=6; $b / $a" | bc)"; }
pairs() {  # pairs OURS THEIRS -> each pair's ratio (their seconds / ours, the runs made back to back), and their median
  local each; each=$(paste -d' ' <(awk '{print $1}' "$WORK/time-$1.all") <(awk '{print $1}' "$WORK/time-$2.all") |
    awk '{printf "%.3f\n", $2 / $1}')
  printf "%s (median %s)" "$(echo "$each" | paste -sd, | sed 's/,/, /g')" \
    "$(echo "$each" | sort -n | awk '{r[NR] = $1} END {printf "%.3f", NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2}')"
}
{
  echo "# Converter throughput and memory"
  echo
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores visible, $THREADS threads. Date: $(date -u +%Y-%m-%d)."
  echo "Code: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- plugin converters ggml_kernels patches || echo ' with local changes')."
  echo "Input: $(basename "$F16"), $(( in_bytes / 1000000 )) MB F16 (random Llama, ~1B parameters, made by bench/cpu.sh);"
  echo "largest tensor $(( largest / 1000000 )) MB in F32, so the memory bound is $(( (2 * largest) / 1000000 + 500 )) MB."
  echo
  echo '```'
  echo "REPEAT=$REPEAT bench/convert.sh $THREADS"
  echo '```'
  echo
  echo "Each command ran $REPEAT times (pairs back to back, alternating which goes first); the table has the median run."
  echo
  echo "| command | seconds (median) | every run | CPU seconds (user + sys) | MB/s of F16 input | peak RSS MiB |"
  echo "| --- | ---: | --- | ---: | ---: | ---: |"
  row "tritpack-gguf convert --type tp4" tp4
  row "llama-quantize IQ4_XS" iq4_xs
  row "tritpack-gguf convert --type tp1" tp1
  row "llama-quantize TQ1_0" tq1_0
  echo
  echo "Throughput ratios (same input, machine and threads): convert --type tp4 / llama-quantize IQ4_XS = $(ratio tp4 iq4_xs)x;"
  echo "convert --type tp1 / llama-quantize TQ1_0 = $(ratio tp1 tq1_0)x (goals: at least 1.0x each)."
  echo "Each pair's ratio, in run order: tp4 $(pairs tp4 iq4_xs); tp1 $(pairs tp1 tq1_0)."
  echo "convert does more than llama-quantize: it hashes the whole input (sha256, for tritpack.source_sha256), searches TP1's"
  echo "alpha per tensor, and measures every tensor against its source (cos, SNR, RMSE) while writing."
  echo "The sha256 of the input alone took $hash_s s of one core here (the same function, same run)."
} > bench/results/convert.md
cat bench/results/convert.md
