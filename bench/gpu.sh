#!/usr/bin/env bash
# TP1/TP4 on an NVIDIA GPU: correctness checks and benchmarks in one command, from the repo root of a
# fresh checkout (needs the NVIDIA driver, the CUDA toolkit with nvcc, cmake, ninja, git, python3):
#
#   bench/gpu.sh                       -> bench/results/gpu-<gpu name>.md
#
# 1. `make setup`, then `tritpack-gguf build --cuda --arch <this GPU's compute capability>`
# 2. test-backend-ops -o MUL_MAT / MUL_MAT_ID / GET_ROWS on CUDA0 for our types (vs the CPU backend),
#    and the same cases under compute-sanitizer --tool memcheck
# 3. mat-vec bandwidth: device-to-device copy vs TP1/TP4/stock mat-vec on a 4096x11008 matrix (a small
#    ggml program compiled here, weights rotated through >= 2 GiB so they come from DRAM), and
#    test-backend-ops -m perf for the 4096x14336 MUL_MAT cases
# 4. a Llama-2-7B-shaped model with random F16 weights (bench/make_random_model.py), quantized with the
#    patched llama-quantize to Q8_0 Q4_0 Q4_K_M IQ4_XS TP4 TP1, one llama-bench -ngl 99 -p 512 -n 128
#    over all seven files, board power sampled with nvidia-smi during tg128 runs (J/token)
# 5. greedy decoding, GPU (-ngl 99) vs CPU (-ngl 0, GPU hidden), 16 tokens, for the TP1 and TP4 models
#
# A failed check does not stop the run (the benchmarks still get written); the script exits 1 at the end
# if any check failed. Models, logs and intermediate files stay in $TRITPACK_BENCH_DIR (default
# $TRITPACK_HOME/bench-gpu, ~45 GB); a second run reuses the models. Environment:
#   TRITPACK_BENCH_DIR   work folder
#   GPU_SH_LIB_DIR       use this existing CUDA build (its lib/bin folder) instead of building
#   GPU_SH_SKIP_SANITIZER=1, GPU_SH_SANITIZER_TIMEOUT (s, default 900), GPU_SH_THREADS (default nproc)
#   GPU_SH_MODEL_ARGS    extra arguments of make_random_model.py (a smaller shape for a quick try)
#   GPU_SH_SKIP_SETUP=1  use the existing .venv as it is (no `make setup`)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)

log()  { echo "[gpu.sh +$(( $(date +%s) - T0 ))s] $*" >&2; }
die()  { echo "gpu.sh: error: $*" >&2; exit 1; }
FAILED=()
check_failed() { FAILED+=("$1"); echo "gpu.sh: CHECK FAILED: $1" >&2; }
STAGES=()
stage_done() { STAGES+=("$1: $(( $(date +%s) - STAGE_T0 )) s"); }

# ------------------------------------------------------------------------------------------ machine
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script needs an NVIDIA GPU with its driver"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi cannot reach the driver (nvidia-smi -L failed)"
if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
command -v nvcc >/dev/null || die "nvcc not found: install the CUDA toolkit (12.x or 13.x) or put its bin/ on PATH"
for tool in cmake ninja git python3; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: apt-get install $tool)"
done

GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 | head -1 | sed 's/ *$//')
CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader -i 0 | head -1 | tr -d ' ')
[[ $CC =~ ^[0-9]+\.[0-9]+$ ]] || die "unexpected compute capability '$CC' from nvidia-smi"
ARCH=${CC/./}
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader -i 0 | head -1)
SLUG=$(echo "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//')
THREADS=${GPU_SH_THREADS:-$(nproc)}
WORK=${TRITPACK_BENCH_DIR:-${TRITPACK_HOME:-$HOME/.cache/tritpack-gguf}/bench-gpu}
RES=$WORK/run
OUT=$ROOT/bench/results/gpu-$SLUG.md
mkdir -p "$WORK" "$RES" "$ROOT/bench/results"
rm -f "$RES"/*
CMDS=$RES/commands.txt
: > "$CMDS"
# record a command (paths shortened) for the report, then run it
run() { echo "$*" | sed "s#$WORK/##g; s#$ROOT/##g; s#${LIB:-/nonexistent}/##g" >> "$CMDS"; "$@"; }

MODEL_ARGS=${GPU_SH_MODEL_ARGS:-}
if [ -z "$MODEL_ARGS" ]; then
  MTAG=llama2-7b
  need_gb=45
else
  MTAG=custom-$(echo "$MODEL_ARGS" | md5sum | cut -c1-8)
  need_gb=5
fi
avail_gb=$(( $(df --output=avail -B1 "$WORK" | tail -1) / 1000000000 ))
for f in "$WORK/$MTAG"-*.gguf; do [ -f "$f" ] && need_gb=$(( need_gb - $(stat -c %s "$f") / 1000000000 )); done
[ "$avail_gb" -ge "$need_gb" ] || die "$WORK has $avail_gb GB free, the models need about $need_gb GB more (set TRITPACK_BENCH_DIR)"

log "GPU: $GPU_NAME (sm_$ARCH), driver $DRIVER, $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/CUDA \1/p'), $THREADS threads"

# ------------------------------------------------------------------------------------------ build
STAGE_T0=$(date +%s)
[ "${GPU_SH_SKIP_SETUP:-0}" = 1 ] || make -s setup
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || die "no .venv (run make setup)"
if [ -n "${GPU_SH_LIB_DIR:-}" ]; then
  LIB=$(cd "$GPU_SH_LIB_DIR" && pwd)
  SRC=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["source_dir"])' "$LIB/../tritpack-build.json")
else
  log "building llama.cpp with CUDA for sm_$ARCH (tritpack-gguf build --cuda --arch $ARCH; the first time takes minutes)"
  run .venv/bin/tritpack-gguf build --cuda --arch "$ARCH" --json > "$RES/build.json" \
    || die "the CUDA build failed (see the log named above)"
  LIB=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["lib_dir"])' "$RES/build.json")
  SRC=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["source_dir"])' "$RES/build.json")
fi
for p in libggml-cuda.so test-backend-ops llama-bench llama-quantize llama-completion; do
  [ -e "$LIB/$p" ] || die "$LIB/$p missing: not a CUDA build of tritpack-gguf"
done
stage_done "build"
log "build: $LIB"

# ------------------------------------------------------------------------------------------ models (background)
# The F16 model and its quantizations are CPU work: they run while the GPU checks below run.
F16=$WORK/$MTAG-F16.gguf
TYPES=(Q8_0 Q4_0 Q4_K_M IQ4_XS TP4 TP1)
model() { if [ "$1" = F16 ]; then echo "$F16"; else echo "$WORK/$MTAG-$1.gguf"; fi; }
QTHREADS=$(( THREADS > 4 ? THREADS - 2 : THREADS ))
make_models() {
  set -e
  if [ ! -s "$F16" ]; then
    echo "\$ python bench/make_random_model.py $MTAG-F16.gguf models/ggml-vocab-llama-spm.gguf $MODEL_ARGS"
    # shellcheck disable=SC2086 # MODEL_ARGS is a list of arguments
    "$PY" "$ROOT/bench/make_random_model.py" "$F16.part" "$SRC/models/ggml-vocab-llama-spm.gguf" $MODEL_ARGS
    mv "$F16.part" "$F16"
  fi
  local t out s
  for t in "${TYPES[@]}"; do
    out=$(model "$t")
    if [ -s "$out" ] && [ "$out" -nt "$F16" ] && [ "$out" -nt "$LIB/libggml-base.so" ]; then
      echo "$t: reusing $out"
      continue
    fi
    s=$(date +%s)
    echo "\$ llama-quantize $MTAG-F16.gguf $MTAG-$t.gguf $t $QTHREADS"
    "$LIB/llama-quantize" "$F16" "$out.part" "$t" "$QTHREADS" > "$RES/quantize-$t.log" 2>&1
    mv "$out.part" "$out"
    echo "$t: quantized in $(( $(date +%s) - s )) s"
  done
}
make_models > "$RES/models.log" 2>&1 &
MODELS_PID=$!
log "making and quantizing the random 7B model in the background (log: $RES/models.log)"

# ------------------------------------------------------------------------------------------ correctness
STAGE_T0=$(date +%s)
TBO=$LIB/test-backend-ops
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }
FILTER='(^|,)type(_a)?=tp[14],'   # type_a=tp1/tp4 (MUL_MAT, MUL_MAT_ID), type=tp1/tp4 (GET_ROWS)
: > "$RES/tbo-summary.tsv"
for op in MUL_MAT MUL_MAT_ID GET_ROWS; do
  log "test-backend-ops -o $op (our types, CUDA0 vs CPU)"
  set +e
  run "$TBO" -b CUDA0 -o "$op" -p "$FILTER" > "$RES/tbo-$op.raw" 2>&1
  rc=$?
  set -e
  strip_ansi < "$RES/tbo-$op.raw" > "$RES/tbo-$op.log"
  n_ok=$(grep -cE "^  $op\(.*type(_a)?=tp[14],.*\): OK$" "$RES/tbo-$op.log" || true)
  n_fail=$(grep -E "^  $op\(.*\): " "$RES/tbo-$op.log" | grep -cE 'FAIL$' || true)
  n_nsup=$(grep -cE "^  $op\(.*\): not supported" "$RES/tbo-$op.log" || true)
  n_tp1=$(grep -cE "^  $op\((type_a|type)=tp1,.*: OK$" "$RES/tbo-$op.log" || true)
  n_tp4=$(grep -cE "^  $op\((type_a|type)=tp4,.*: OK$" "$RES/tbo-$op.log" || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$op" "$n_ok" "$n_fail" "$n_nsup" "$n_tp1" "$n_tp4" "$rc" >> "$RES/tbo-summary.tsv"
  if [ "$rc" -ne 0 ] || [ "$n_fail" -ne 0 ] || [ "$n_tp1" -eq 0 ] || [ "$n_tp4" -eq 0 ]; then
    check_failed "test-backend-ops -o $op: exit $rc, $n_ok OK, $n_fail FAIL, $n_tp1/$n_tp4 TP1/TP4 cases OK (log: $RES/tbo-$op.log)"
  fi
done
stage_done "test-backend-ops"

STAGE_T0=$(date +%s)
SAN=""
for c in "$(command -v compute-sanitizer || true)" "$(dirname "$(command -v nvcc)")/compute-sanitizer" \
         "$(dirname "$(command -v nvcc)")/../compute-sanitizer/compute-sanitizer"; do
  if [ -n "$c" ] && [ -x "$c" ]; then SAN=$c; break; fi
done
if [ "${GPU_SH_SKIP_SANITIZER:-0}" = 1 ]; then
  echo "skipped (GPU_SH_SKIP_SANITIZER=1)" > "$RES/memcheck.log"
elif [ -z "$SAN" ]; then
  echo "compute-sanitizer not found next to nvcc" > "$RES/memcheck.log"
  check_failed "compute-sanitizer not found (it ships with the CUDA toolkit)"
else
  log "compute-sanitizer --tool memcheck on the same cases (slow)"
  set +e
  run timeout "${GPU_SH_SANITIZER_TIMEOUT:-900}" "$SAN" --tool memcheck --error-exitcode 86 --print-limit 20 \
      "$TBO" -b CUDA0 -o MUL_MAT,MUL_MAT_ID,GET_ROWS -p "$FILTER" > "$RES/memcheck.raw" 2>&1
  rc=$?
  set -e
  strip_ansi < "$RES/memcheck.raw" > "$RES/memcheck.log"
  n_err=$(sed -n 's/^========= ERROR SUMMARY: \([0-9]*\) error.*/\1/p' "$RES/memcheck.log" | tail -1)
  echo "exit=$rc errors=${n_err:-?}" > "$RES/memcheck.status"
  if [ "$rc" -eq 124 ]; then
    check_failed "compute-sanitizer memcheck timed out after ${GPU_SH_SANITIZER_TIMEOUT:-900} s (log: $RES/memcheck.log)"
  elif [ "$rc" -ne 0 ] || [ "${n_err:-1}" != 0 ]; then
    check_failed "compute-sanitizer memcheck: exit $rc, ${n_err:-?} errors (log: $RES/memcheck.log)"
  fi
fi
stage_done "compute-sanitizer"

# ------------------------------------------------------------------------------------------ mat-vec bandwidth
STAGE_T0=$(date +%s)
log "mat-vec bandwidth (4096x11008) and device-to-device copy"
cat > "$RES/matvec-bench.cpp" <<'EOF'
// Mat-vec bandwidth on the GPU backend: y = W x for W with K columns (ggml ne0) and M rows, in each
// type, and the device-to-device copy bandwidth for reference. The weights rotate over enough
// distinct matrices (>= --min-mib) that they come from DRAM, not from the L2 cache.
#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static ggml_backend_t init_backend(bool allow_cpu) {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
    if (!dev && allow_cpu) {
        dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    }
    if (!dev) {
        fprintf(stderr, "matvec-bench: no GPU backend device\n");
        exit(1);
    }
    fprintf(stderr, "matvec-bench: device %s (%s)\n", ggml_backend_dev_name(dev), ggml_backend_dev_description(dev));
    return ggml_backend_dev_init(dev, nullptr);
}

static void copy_bandwidth(ggml_backend_t be, size_t nbytes, int reps) {
    ggml_init_params ip = { 2*ggml_tensor_overhead(), nullptr, true };
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * a = ggml_new_tensor_1d(ctx, GGML_TYPE_I8, nbytes);
    ggml_tensor * b = ggml_new_tensor_1d(ctx, GGML_TYPE_I8, nbytes);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, be);
    if (!buf) { fprintf(stderr, "copy: allocation of 2 x %zu bytes failed\n", nbytes); exit(1); }
    ggml_backend_buffer_clear(buf, 1);
    ggml_backend_tensor_copy(a, b); // warm-up
    ggml_backend_synchronize(be);
    const double t0 = now_s();
    for (int r = 0; r < reps; ++r) {
        ggml_backend_tensor_copy(a, b);
    }
    ggml_backend_synchronize(be);
    const double t = (now_s() - t0)/reps;
    // bytes copied, us per copy, GB/s copied, GB/s of DRAM traffic (read + write)
    printf("copy\t%zu\t%.3f\t%.1f\t%.1f\n", nbytes, t*1e6, nbytes/t/1e9, 2.0*nbytes/t/1e9);
    fflush(stdout);
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
}

static void matvec(ggml_backend_t be, ggml_type type, int64_t K, int64_t M, size_t min_bytes, int reps) {
    const size_t wbytes = ggml_row_size(type, K) * M;
    const int nw = (int) std::min<size_t>(512, std::max<size_t>(4, (min_bytes + wbytes - 1) / wbytes));

    ggml_init_params ip = { (size_t)(nw + 1)*ggml_tensor_overhead(), nullptr, true };
    ggml_context * ctx_w = ggml_init(ip);
    std::vector<ggml_tensor *> w(nw);
    for (int i = 0; i < nw; ++i) {
        w[i] = ggml_new_tensor_2d(ctx_w, type, K, M);
    }
    ggml_tensor * x = ggml_new_tensor_2d(ctx_w, GGML_TYPE_F32, K, 1);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx_w, be);
    if (!buf) { fprintf(stderr, "matvec: allocation of %d x %zu bytes failed\n", nw, wbytes); exit(1); }

    // the values do not change the speed: quantize 64 random rows once and repeat them
    const int64_t rows = std::min<int64_t>(64, M);
    std::vector<float> src(rows*K);
    uint32_t s = 12345;
    for (auto & v : src) { s = s*1664525u + 1013904223u; v = ((s >> 8) * (1.0f/16777216.0f) - 0.5f) * 0.1f; }
    const size_t rs = ggml_row_size(type, K);
    std::vector<uint8_t> q(rs*rows);
    ggml_quantize_chunk(type, src.data(), q.data(), 0, rows, K, nullptr);
    std::vector<uint8_t> full(wbytes);
    for (int64_t r = 0; r < M; ++r) {
        memcpy(full.data() + r*rs, q.data() + (r % rows)*rs, rs);
    }
    for (int i = 0; i < nw; ++i) {
        ggml_backend_tensor_set(w[i], full.data(), 0, wbytes);
    }
    ggml_backend_tensor_set(x, src.data(), 0, K*sizeof(float));

    ggml_init_params gp = { (size_t)(2*nw + 16)*ggml_tensor_overhead() + ggml_graph_overhead_custom(2*nw + 16, false), nullptr, true };
    ggml_context * ctx_g = ggml_init(gp);
    ggml_cgraph * gf = ggml_new_graph_custom(ctx_g, 2*nw + 16, false);
    for (int i = 0; i < nw; ++i) {
        ggml_tensor * y = ggml_mul_mat(ctx_g, w[i], x);
        ggml_set_output(y);
        ggml_build_forward_expand(gf, y);
    }
    ggml_gallocr_t ga = ggml_gallocr_new(ggml_backend_get_default_buffer_type(be));
    if (!ggml_gallocr_alloc_graph(ga, gf)) { fprintf(stderr, "matvec: graph allocation failed\n"); exit(1); }

    ggml_backend_graph_compute(be, gf); // warm-up (and CUDA graph capture)
    ggml_backend_graph_compute(be, gf);
    const double t0 = now_s();
    for (int r = 0; r < reps; ++r) {
        ggml_backend_graph_compute(be, gf);
    }
    ggml_backend_synchronize(be);
    const double t = (now_s() - t0)/(reps*(double) nw);
    // type, K, M, weight bytes, matrices rotated, us per mat-vec, GB/s of weights
    printf("matvec\t%s\t%lld\t%lld\t%zu\t%d\t%.3f\t%.1f\n", ggml_type_name(type), (long long) K, (long long) M, wbytes, nw, t*1e6, wbytes/t/1e9);
    fflush(stdout);

    ggml_gallocr_free(ga);
    ggml_free(ctx_g);
    ggml_backend_buffer_free(buf);
    ggml_free(ctx_w);
}

int main(int argc, char ** argv) {
    // matvec-bench [--cpu-ok] [--copy-mib N] [--min-mib N] [--reps N] K M type...
    bool allow_cpu = false;
    size_t copy_mib = 1024, min_mib = 2048;
    int reps = 20;
    std::vector<std::string> args;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--cpu-ok") allow_cpu = true;
        else if (a == "--copy-mib" && i + 1 < argc) copy_mib = strtoull(argv[++i], nullptr, 10);
        else if (a == "--min-mib"  && i + 1 < argc) min_mib  = strtoull(argv[++i], nullptr, 10);
        else if (a == "--reps"     && i + 1 < argc) reps     = atoi(argv[++i]);
        else args.push_back(a);
    }
    if (args.size() < 3) { fprintf(stderr, "usage: %s [--cpu-ok] [--copy-mib N] [--min-mib N] [--reps N] K M type...\n", argv[0]); return 2; }
    const int64_t K = atoll(args[0].c_str()), M = atoll(args[1].c_str());
    ggml_backend_t be = init_backend(allow_cpu);
    if (copy_mib > 0) {
        copy_bandwidth(be, copy_mib << 20, reps);
    }
    for (size_t i = 2; i < args.size(); ++i) {
        ggml_type type = GGML_TYPE_COUNT;
        for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
            const char * name = ggml_type_name((ggml_type) t);
            if (name && args[i] == name) { type = (ggml_type) t; break; }
        }
        if (type == GGML_TYPE_COUNT) { fprintf(stderr, "unknown type %s\n", args[i].c_str()); return 2; }
        matvec(be, type, K, M, min_mib << 20, reps);
    }
    ggml_backend_free(be);
    return 0;
}
EOF
MV_TYPES=(f16 q8_0 q4_0 q4_K iq4_xs tp4 tp1)
set +e
"${CXX:-c++}" -std=c++17 -O2 "$RES/matvec-bench.cpp" -I"$SRC/ggml/include" -L"$LIB" -lggml -lggml-base \
    -Wl,-rpath,"$LIB" -o "$RES/matvec-bench" 2> "$RES/matvec-build.log"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  check_failed "could not compile the mat-vec benchmark (log: $RES/matvec-build.log)"
else
  : > "$RES/matvec.tsv"
  for shape in "4096 11008" "11008 4096"; do
    # shellcheck disable=SC2086 # K and M are two words on purpose
    run "$RES/matvec-bench" --copy-mib "$([ "$shape" = "4096 11008" ] && echo 1024 || echo 0)" $shape "${MV_TYPES[@]}" \
        >> "$RES/matvec.tsv" 2>> "$RES/matvec.log" || check_failed "mat-vec benchmark $shape failed (log: $RES/matvec.log)"
  done
fi
log "test-backend-ops -m perf -o MUL_MAT (4096x14336 cases)"
set +e
run "$TBO" -m perf -b CUDA0 -o MUL_MAT -p 'type_a=(f16|q8_0|q4_0|q4_K|iq4_xs|tp4|tp1),type_b=f32,m=4096,n=(1|8|512),k=14336,' \
    > "$RES/tbo-perf.raw" 2>&1
rc=$?
set -e
strip_ansi < "$RES/tbo-perf.raw" > "$RES/tbo-perf.log"
[ "$rc" -eq 0 ] || check_failed "test-backend-ops -m perf exited $rc (log: $RES/tbo-perf.log)"
stage_done "mat-vec"

# ------------------------------------------------------------------------------------------ models ready?
STAGE_T0=$(date +%s)
log "waiting for the models"
wait "$MODELS_PID" || die "making or quantizing the models failed (log: $RES/models.log)"
cat "$RES/models.log" >> "$CMDS.models"
stage_done "models (wait)"

# ------------------------------------------------------------------------------------------ llama-bench
STAGE_T0=$(date +%s)
BENCH_TYPES=(F16 Q8_0 Q4_0 Q4_K_M IQ4_XS TP4 TP1)
margs=()
for t in "${BENCH_TYPES[@]}"; do margs+=(-m "$(model "$t")"); done
log "llama-bench -ngl 99 -p 512 -n 128 over ${#BENCH_TYPES[@]} models"
run "$LIB/llama-bench" "${margs[@]}" -ngl 99 -p 512 -n 128 -r 3 -o json > "$RES/llama-bench.json" 2> "$RES/llama-bench.log" \
  || check_failed "llama-bench failed (log: $RES/llama-bench.log)"
stage_done "llama-bench"

# tg128 alone per model with the board power sampled every 100 ms; J/token = mean power while the GPU
# is busy (utilization >= 50%, which leaves out loading) / tokens per second of that run
STAGE_T0=$(date +%s)
PQ=power.draw
nvidia-smi --query-gpu=power.draw.instant --format=csv,noheader -i 0 >/dev/null 2>&1 && PQ=power.draw.instant
: > "$RES/power.tsv"
for t in "${BENCH_TYPES[@]}"; do
  log "tg128 with power sampling: $t"
  nvidia-smi --query-gpu=timestamp,"$PQ",utilization.gpu --format=csv,noheader,nounits -i 0 -lms 100 > "$RES/power-$t.csv" 2>/dev/null &
  SMI_PID=$!
  sleep 1
  set +e
  run "$LIB/llama-bench" -m "$(model "$t")" -ngl 99 -p 0 -n 128 -r 5 -o json > "$RES/tg-$t.json" 2> "$RES/tg-$t.log"
  rc=$?
  set -e
  sleep 0.5
  kill "$SMI_PID" 2>/dev/null || true
  wait "$SMI_PID" 2>/dev/null || true
  [ "$rc" -eq 0 ] || check_failed "llama-bench tg128 for $t failed (log: $RES/tg-$t.log)"
  printf '%s\t%s\n' "$t" "$RES/power-$t.csv" >> "$RES/power.tsv"
done
stage_done "power"

# ------------------------------------------------------------------------------------------ greedy GPU vs CPU
STAGE_T0=$(date +%s)
PROMPT="The quick brown fox jumps over the lazy dog. Once upon a time"
: > "$RES/greedy.tsv"
for t in TP1 TP4; do
  log "greedy 16 tokens, GPU vs CPU: $t"
  common=(-m "$(model "$t")" -p "$PROMPT" -n 16 --temp 0 --ignore-eos -no-cnv --no-display-prompt --seed 1 -c 512 --no-warmup)
  set +e
  run "$LIB/llama-completion" "${common[@]}" -ngl 99 > "$RES/greedy-$t-gpu.txt" 2> "$RES/greedy-$t-gpu.log" < /dev/null
  rc_gpu=$?
  run env CUDA_VISIBLE_DEVICES= "$LIB/llama-completion" "${common[@]}" -ngl 0 -t "$THREADS" \
      > "$RES/greedy-$t-cpu.txt" 2> "$RES/greedy-$t-cpu.log" < /dev/null
  rc_cpu=$?
  set -e
  # a finished run prints its timings (common_perf_print) after the text
  if [ "$rc_gpu" -ne 0 ] || [ "$rc_cpu" -ne 0 ] || ! grep -q "eval time" "$RES/greedy-$t-gpu.log" \
     || ! grep -q "eval time" "$RES/greedy-$t-cpu.log" || [ ! -s "$RES/greedy-$t-gpu.txt" ]; then
    check_failed "greedy $t: llama-completion exit $rc_gpu (GPU) / $rc_cpu (CPU), or an unfinished run (logs: $RES/greedy-$t-*.log)"
    printf '%s\terror\n' "$t" >> "$RES/greedy.tsv"
  elif cmp -s "$RES/greedy-$t-gpu.txt" "$RES/greedy-$t-cpu.txt"; then
    printf '%s\tsame\n' "$t" >> "$RES/greedy.tsv"
  else
    check_failed "greedy $t: GPU and CPU outputs differ ($RES/greedy-$t-gpu.txt vs -cpu.txt)"
    printf '%s\tdiffer\n' "$t" >> "$RES/greedy.tsv"
  fi
done
stage_done "greedy"

# ------------------------------------------------------------------------------------------ report
log "writing $OUT"
{
  echo "gpu_name=$GPU_NAME"; echo "arch=$ARCH"; echo "driver=$DRIVER"
  echo "nvcc=$(nvcc --version | tail -2 | head -1)"
  echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  echo "threads=$THREADS"; echo "lib=$LIB"; echo "commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "power_field=$PQ"; echo "seconds=$(( $(date +%s) - T0 ))"; echo "model_args=$MODEL_ARGS"
} > "$RES/machine.txt"
nvidia-smi -L > "$RES/nvidia-smi-L.txt"
printf '%s\n' "${STAGES[@]}" > "$RES/stages.txt"
printf '%s\n' "${FAILED[@]+"${FAILED[@]}"}" > "$RES/failed.txt"

"$PY" - "$RES" "$OUT" "$WORK" <<'EOF'
import csv, json, re, sys
from pathlib import Path

res, out, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
m = dict(l.split("=", 1) for l in (res / "machine.txt").read_text().splitlines() if "=" in l)
L = []
w = L.append
failed = [l for l in (res / "failed.txt").read_text().splitlines() if l.strip()]

w(f"# TP1 / TP4 on {m['gpu_name']}")
w("")
w(f"Result: **{'all checks passed' if not failed else str(len(failed)) + ' check(s) FAILED'}**. "
  f"Written by `bench/gpu.sh` in {int(m['seconds'])//60} min {int(m['seconds'])%60} s.")
w("")
w("## Machine")
w("")
w("```")
w((res / "nvidia-smi-L.txt").read_text().strip())
w(f"driver {m['driver']}; {m['nvcc']}; built for sm_{m['arch']}")
w(f"CPU: {m['cpu']}; {m['threads']} threads; tritpack-gguf commit {m['commit']}")
w("```")
if failed:
    w("")
    w("## Failed checks")
    w("")
    for f in failed:
        w(f"- {f}")

# ---- correctness
w("")
w("## Correctness")
w("")
w("`test-backend-ops -b CUDA0 -o OP -p '(^|,)type(_a)?=tp[14],'` (every test case of our types, CUDA vs the CPU backend):")
w("")
w("| op | OK | FAIL | not supported | TP1 cases OK | TP4 cases OK | exit |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for row in csv.reader((res / "tbo-summary.tsv").open(), delimiter="\t"):
    w("| " + " | ".join(row) + " |")
nsup = []
for op in ("MUL_MAT", "MUL_MAT_ID", "GET_ROWS"):
    p = res / f"tbo-{op}.log"
    if p.exists():
        nsup += [l.strip() for l in p.read_text().splitlines() if "not supported" in l and "tp" in l]
if nsup:
    w("")
    w(f"Not supported on CUDA0 ({len(nsup)}; the CPU runs these, e.g. F16 activations):")
    w("")
    w("```")
    w("\n".join(nsup[:20]) + ("\n..." if len(nsup) > 20 else ""))
    w("```")
w("")
mc = res / "memcheck.log"
status = (res / "memcheck.status").read_text().strip() if (res / "memcheck.status").exists() else mc.read_text().strip()[:200]
summary = [l for l in mc.read_text().splitlines() if "ERROR SUMMARY" in l] if mc.exists() else []
w(f"`compute-sanitizer --tool memcheck` on the same cases: {status}; {summary[-1].strip('= ') if summary else 'no summary line'}.")
w("")
w("Greedy decoding, 16 tokens (`llama-completion --temp 0 --ignore-eos -n 16`), GPU (`-ngl 99`) vs CPU (`-ngl 0`, GPU hidden):")
w("")
w("| model | result | GPU output | CPU output |")
w("| --- | --- | --- | --- |")
for row in csv.reader((res / "greedy.tsv").open(), delimiter="\t"):
    t, r = row
    g = (res / f"greedy-{t}-gpu.txt").read_text(errors="replace") if (res / f"greedy-{t}-gpu.txt").exists() else ""
    c = (res / f"greedy-{t}-cpu.txt").read_text(errors="replace") if (res / f"greedy-{t}-cpu.txt").exists() else ""
    verdict = "16 of 16 tokens identical" if r == "same" else r.upper()
    esc = lambda s: s.replace("|", "\\|").replace("\n", "\\n")[:120]
    w(f"| {t} | {verdict} | `{esc(g)}` | `{esc(c)}` |")

# ---- llama-bench
w("")
w("## llama-bench (one run, every model side by side)")
w("")
if m.get("model_args"):
    w(f"Model: random F16 weights, `bench/make_random_model.py {m['model_args']}` (NOT the 7B shape), "
      "quantized with the patched `llama-quantize`.")
else:
    w("Model: Llama-2-7B shape (n_embd 4096, n_ff 11008, 32 layers, 32 heads, vocab 32000), random F16 weights "
      "(`bench/make_random_model.py`), quantized with the patched `llama-quantize`.")
w("")
try:
    rows = json.loads((res / "llama-bench.json").read_text())
except (OSError, ValueError):
    rows = []
by = {}
for r in rows:
    name = Path(r["model_filename"]).name
    t = name[:-len(".gguf")].rsplit("-", 1)[-1]
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    by.setdefault(t, {"size": r["model_size"], "params": r["model_n_params"]})[test] = (r["avg_ts"], r["stddev_ts"])
if by:
    q4 = by.get("Q4_0", {})
    w("| type | size GiB | bits/weight | pp512 t/s | tg128 t/s | tg128 vs Q4_0 | pp512 vs Q4_0 |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t, d in by.items():
        pp, tg = d.get("pp512", (0, 0)), d.get("tg128", (0, 0))
        rel = lambda k, v: f"{v[0] / q4[k][0]:.2f}x" if k in q4 and q4[k][0] else "-"
        w(f"| {t} | {d['size'] / 2**30:.2f} | {8 * d['size'] / d['params']:.2f} | {pp[0]:.1f} ± {pp[1]:.1f} | "
          f"{tg[0]:.1f} ± {tg[1]:.1f} | {rel('tg128', tg)} | {rel('pp512', pp)} |")
else:
    w("(llama-bench produced no results: see llama-bench.log)")

# ---- power
w("")
w(f"## Energy per token (tg128, board power `{m['power_field']}` sampled every 100 ms while the GPU is busy)")
w("")
w("| type | tg128 t/s | mean power W | samples | J/token |")
w("| --- | ---: | ---: | ---: | ---: |")
for row in csv.reader((res / "power.tsv").open(), delimiter="\t"):
    t, path = row
    pw = []
    for l in Path(path).read_text().splitlines():
        parts = [x.strip() for x in l.split(",")]
        try:
            p, u = float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            continue
        if u >= 50:
            pw.append(p)
    try:
        tg = json.loads((res / f"tg-{t}.json").read_text())[0]["avg_ts"]
    except (OSError, ValueError, IndexError, KeyError):
        tg = 0.0
    mp = sum(pw) / len(pw) if pw else 0.0
    jt = f"{mp / tg:.3f}" if tg and pw else "-"
    w(f"| {t} | {tg:.1f} | {mp:.0f} | {len(pw)} | {jt} |")

# ---- mat-vec
w("")
w("## Mat-vec bandwidth")
w("")
copy = [l.split("\t") for l in (res / "matvec.tsv").read_text().splitlines() if l.startswith("copy")] if (res / "matvec.tsv").exists() else []
mv = [l.split("\t") for l in (res / "matvec.tsv").read_text().splitlines() if l.startswith("matvec")] if (res / "matvec.tsv").exists() else []
if copy:
    c = copy[0]
    w(f"Device-to-device copy (`cudaMemcpy` through ggml, {int(c[1]) >> 20} MiB): {float(c[3]):.0f} GB/s copied = "
      f"**{float(c[4]):.0f} GB/s of DRAM traffic** (read + write).")
    w("")
if not copy and not mv:
    w("(no results: see matvec.log and matvec-build.log)")
if mv:
    w("One mat-vec `y = W x` (batch 1, MMVQ: the activation quantization kernel included), W rotated over >= 2 GiB "
      "of distinct matrices so that it streams from DRAM; GB/s = weight bytes / time:")
    w("")
    w("| type | K x M (cols x rows) | weight MB | us per mat-vec | GB/s of weights | % of copy traffic |")
    w("| --- | --- | ---: | ---: | ---: | ---: |")
    ref = float(copy[0][4]) if copy else 0.0
    for r in mv:
        _, t, k, mm, nb, nw, us, gbs = r
        pct = f"{100 * float(gbs) / ref:.0f}%" if ref else "-"
        w(f"| {t} | {k} x {mm} | {int(nb) / 1e6:.1f} | {float(us):.2f} | {float(gbs):.0f} | {pct} |")
w("")
bpw = {"f16": 16, "q8_0": 8.5, "q4_0": 4.5, "q4_K": 4.5, "iq4_xs": 4.25, "tp4": 4.5, "tp1": 1.875}
perf = []
if (res / "tbo-perf.log").exists():
    for l in (res / "tbo-perf.log").read_text().splitlines():
        mm = re.match(r"\s*MUL_MAT\(type_a=([^,]+),type_b=f32,m=(\d+),n=(\d+),k=(\d+),.*?([0-9.]+) us/run", l)
        if mm:
            perf.append(mm.groups())
if perf:
    w("`test-backend-ops -m perf -o MUL_MAT` (m=4096, k=14336; the same weights every run, so up to the L2 size "
      "they may be served from cache: an upper bound for the small types):")
    w("")
    w("| type | n | us/run | GB/s of weights |")
    w("| --- | ---: | ---: | ---: |")
    for t, mm_, n, k, us in perf:
        gb = int(mm_) * int(k) * bpw.get(t, 0) / 8 / (float(us) * 1e-6) / 1e9
        w(f"| {t} | {n} | {float(us):.2f} | {gb:.0f} |")

# ---- commands
w("")
w("## Commands")
w("")
w("```")
w("bench/gpu.sh")
w((res / "commands.txt").read_text().rstrip())
w("```")
w("")
w("Stages: " + "; ".join((res / "stages.txt").read_text().split("\n")).strip("; ") + ".")
w("")
w(f"Logs and intermediate files: `{res}`.")
out.write_text("\n".join(L) + "\n")
print(f"wrote {out}", file=sys.stderr)
EOF

if [ "${#FAILED[@]}" -ne 0 ]; then
  echo "gpu.sh: ${#FAILED[@]} check(s) failed:" >&2
  printf '  %s\n' "${FAILED[@]}" >&2
  exit 1
fi
log "all checks passed; results in $OUT"
