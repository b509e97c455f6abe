#!/usr/bin/env bash
# Type-checks kandle-server's `cuda` feature with the shared CUDA recipe (nvcc from NVIDIA's
# wheels, no GPU needed): candle's kernels and ours (server/kernels/*.cu) are compiled to
# PTX, so the CUDA path cannot rot unseen. The full GPU build and run: bench/gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=../shared/gpu/build-cuda.sh
[ -f "$RECIPE" ] || { echo "$RECIPE not found (../shared must sit beside the checkout)"; exit 1; }
if [ -z "${PIP:-}" ] && [ -x .venv/bin/python ]; then
    export PIP="$PWD/.venv/bin/python -m pip"
fi
eval "$(bash "$RECIPE" --env .)"
CARGO_TARGET_DIR=target/cuda-check cargo check -p kandle-server --features cuda
