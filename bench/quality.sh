#!/usr/bin/env bash
# The quality table: TP1, TP4 and mixed beside llama.cpp's own types, on real trained weights.
#
#   bench/quality.sh [ARGS...]    (ARGS go to bench/quality_table.py: --only smollm2,ternary,minilm,
#                                  --redo LABEL, --chunks N, --threads N, --report-only)
#
# Writes bench/results/quality.md, quality.json and quality.png. Needs the shared corpus
# (../shared/corpus, or TRITPACK_CORPUS=DIR). Every model file and result is cached in
# $TRITPACK_BENCH_DIR (default $TRITPACK_HOME/bench-quality): a second run only redoes what is missing.
# all-MiniLM-L6-v2 needs torch and transformers for llama.cpp's convert_hf_to_gguf.py: they go into a
# separate venv there (torch==2.13.0 CPU, transformers==4.57.6), never into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
.venv/bin/tritpack-gguf build >/dev/null
start=$(date +%s)
.venv/bin/python bench/quality_table.py "$@"
echo "bench/quality.sh: $(( $(date +%s) - start )) s" >&2
