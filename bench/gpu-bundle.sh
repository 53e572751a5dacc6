#!/usr/bin/env bash
# The GPU bundle: everything bench/gpu/check.py needs on a bare GPU machine with no network, in the
# ignored folder .gpu-bundle/ (check.py, manifest.json, payload.tar.xz), cached by content in
# $TRITPACK_HOME/gpu-bundle/. See bench/README.md for the one device call that runs it.
#
#   bench/gpu-bundle.sh                      CUDA build for sm_90 (H100/H200) machine code only ("90-real":
#                                            no PTX, smaller), CPU code for any AVX2 x86-64
#   bench/gpu-bundle.sh --arch 89-real       another GPU generation
#   ... --cmake-arg -DGGML_CUDA_FA=OFF       passed to the build (repeatable); this one leaves out the
#                                            FlashAttention kernels, the largest part of libggml-cuda,
#                                            should the bundle not fit the 64 MiB
#   bench/gpu-bundle.sh --from-build DIR     bundle an existing build (its bin/ folder) as it is
#   bench/gpu-bundle.sh --rehearse           the CPU build as a stand-in (no CUDA build; CI, tests)
#   ... --out DIR                            another folder than .gpu-bundle
#
# The first CUDA build takes about 20 minutes on 2 cores (tritpack-gguf build --cuda --arch 90-real --portable,
# cached like every build); later runs with nothing changed return in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ARCH=90-real
EXTRA=()
LIB=""
REHEARSE=0
OUT=.gpu-bundle
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH=$2; shift 2 ;;
    --cmake-arg) EXTRA+=("--cmake-arg=$2"); shift 2 ;;
    --from-build) LIB=$2; shift 2 ;;
    --rehearse) REHEARSE=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu-bundle.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$PY" ] || make -s setup
libdir() { "$PY" -c 'import json,sys; print(json.load(sys.stdin)["lib_dir"])'; }
if [ -z "$LIB" ]; then
  if [ "$REHEARSE" = 1 ]; then
    LIB=$("$PY" -m tritpack_gguf.cli build --json | libdir)
  else
    echo "gpu-bundle.sh: tritpack-gguf build --cuda --arch $ARCH --portable ${EXTRA[*]} (cached by content)" >&2
    LIB=$("$PY" -m tritpack_gguf.cli build --cuda --arch "$ARCH" --portable "${EXTRA[@]}" --json | libdir)
  fi
fi
exec "$PY" bench/gpu/bundle.py --lib-dir "$LIB" --out "$OUT"
