#!/usr/bin/env bash
# TP1/TP4 on the NVIDIA GPU of THIS machine (a checkout with network and the CUDA toolkit): the GPU
# bundle built for this GPU's compute capability, then its check script, which is the same one a bare
# GPU machine runs from the bundle (bench/README.md, "GPU check"). Extra arguments go to check.py
# (e.g. --layers 32 --budget 1800 for the full 7B depth).
#
#   bench/gpu.sh [check.py options]      -> bench/results/gpu-<gpu name>/{report.md,results.json,logs.tar.gz}
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "gpu.sh: nvidia-smi not found: this needs an NVIDIA GPU" >&2; exit 1; }
CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader -i 0 | head -1 | tr -d ' .')
NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader -i 0 | head -1)
SLUG=$(echo "$NAME" | tr '[:upper:]' '[:lower:]' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//')
bench/gpu-bundle.sh --arch "$CC"
exec python3 .gpu-bundle/check.py "bench/results/gpu-$SLUG" "$@"
