#!/usr/bin/env bash
# CPU benchmarks of TP1 and TP4 against the stock types, side by side in one llama-bench run each,
# on one ~1B-parameter Llama shape with random weights (speed does not depend on the values).
#
#   bench/cpu.sh [THREADS]        (default 2; results in bench/results/cpu-tp1.md and cpu-tp4.md)
#
# Also measures quantization throughput (MB of F16 input a second) of llama-quantize for TP4,
# IQ4_XS, Q4_K_M, TP1 and TQ1_0 on the same input and threads.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
WORK=${TRITPACK_BENCH_DIR:-${TRITPACK_HOME:-$HOME/.cache/tritpack-gguf}/bench-cpu}
mkdir -p "$WORK" bench/results
make -s setup
LIB=$(.venv/bin/tritpack-gguf build 2>/dev/null | tail -1)
SRC=$(.venv/bin/tritpack-gguf build --json 2>/dev/null | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["source_dir"])')

F16="$WORK/llama-1b-F16.gguf"
if [ ! -f "$F16" ]; then
  echo "making a 1B-parameter random Llama (n_embd 2048, n_ff 5632, 16 layers) ..." >&2
  .venv/bin/python - "$F16" "$SRC" <<'EOF'
import sys
from gguf import GGMLQuantizationType as Q
from tritpack_gguf.converters.tiny_model import Shape, make_llama, vocab_file
make_llama(sys.argv[1], vocab_file(sys.argv[2]), Shape(n_embd=2048, n_ff=5632, n_layer=16, n_head=16, n_head_kv=16, n_ctx=2048),
           seed=0, dtype=Q.F16)
EOF
fi
in_mb=$(( $(stat -c %s "$F16") / 1000000 ))

declare -A QTIME
quantize() {  # quantize TYPE: llama-quantize the F16 model into TYPE, timed
  local t=$1 out="$WORK/llama-1b-$1.gguf"
  if [ ! -f "$out" ] || [ "$out" -ot "$LIB/libggml-base.so" ]; then
    local s=$(date +%s.%N)
    "$LIB/llama-quantize" "$F16" "$out.tmp" "$t" "$THREADS" >"$WORK/quantize-$t.log" 2>&1
    mv "$out.tmp" "$out"
    QTIME[$t]=$(echo "$(date +%s.%N) - $s" | bc)
  fi
}
for t in Q4_0 Q4_K_M IQ4_NL IQ4_XS TQ1_0 TQ2_0 TP1 TP4; do quantize "$t"; done

machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores visible, $THREADS threads; $(uname -sr)"
bench() {  # bench OUT.md TITLE TYPES...
  local md=$1 title=$2; shift 2
  local files=() t
  for t in "$@"; do
    if [ "$t" = F16 ]; then files+=(-m "$F16"); else files+=(-m "$WORK/llama-1b-$t.gguf"); fi
  done
  local cmd=("$LIB/llama-bench" "${files[@]}" -t "$THREADS" -p 512 -n 128 -r 2 -o md)
  echo "running: ${cmd[*]}" >&2
  local table
  table=$("${cmd[@]}" 2>/dev/null)
  {
    echo "# $title"
    echo
    echo "Machine: $machine. Date: $(date -u +%Y-%m-%d)."
    echo "Model: random Llama, n_embd 2048, n_ff 5632, 16 layers, 16 heads, vocab 32000 (~1B parameters), made by bench/cpu.sh."
    echo
    echo "Command (one run, every type side by side):"
    echo
    echo '```'
    echo "bench/cpu.sh $THREADS"
    echo "${cmd[*]}" | sed "s#$WORK/##g; s#$LIB/##g"
    echo '```'
    echo
    echo "$table"
    echo
    echo "File sizes:"
    echo
    echo "| type | bytes | MiB |"
    echo "| --- | ---: | ---: |"
    for t in "$@"; do
      local f="$WORK/llama-1b-$t.gguf"; [ "$t" = F16 ] && f="$F16"
      echo "| $t | $(stat -c %s "$f") | $(( $(stat -c %s "$f") / 1048576 )) |"
    done
    echo
    echo "Ratios (tokens/s of our type over the stock type, same run):"
    echo
    echo "$table" | .venv/bin/python bench/ratios.py "$@"
  } > "$md"
  echo "wrote $md" >&2
}
bench bench/results/cpu-tp1.md "TP1 on the CPU" TP1 F16 Q4_0 TQ1_0 TQ2_0
bench bench/results/cpu-tp4.md "TP4 on the CPU" TP4 Q4_0 Q4_K_M IQ4_NL IQ4_XS

{
  echo
  echo "## Quantization throughput (llama-quantize, $THREADS threads, the same ${in_mb} MB F16 input)"
  echo
  echo "| type | seconds | MB/s of F16 input |"
  echo "| --- | ---: | ---: |"
  for t in TP4 IQ4_XS Q4_K_M TP1 TQ1_0; do
    if [ -n "${QTIME[$t]:-}" ]; then
      echo "| $t | ${QTIME[$t]} | $(echo "scale=1; $in_mb / ${QTIME[$t]}" | bc) |"
    else
      echo "| $t | (cached from an earlier run: delete $WORK/llama-1b-$t.gguf to re-measure) | |"
    fi
  done
} | tee -a bench/results/cpu-tp4.md >/dev/null
