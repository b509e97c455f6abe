#!/usr/bin/env bash
# GPU checks and benchmark, meant for one `device` call on the H100 machine (no Rust, no
# network there). Build here first (see ../shared/gpu/README.md):
#
#   CARGO_TARGET_DIR=target/cuda RUSTFLAGS="-C target-cpu=x86-64-v3" \
#     ../shared/gpu/build-cuda.sh . kandle-server --features cuda
#   mkdir -p .devbin && gzip -c target/cuda/cuda-dist/kandle-server > .devbin/kandle-server.gz
#
# then, on the GPU machine (carry .devbin):
#
#   bench/gpu.sh equal MODEL.gguf    # greedy on CUDA f32 == CPU f32, and bf16 vs f32
#   bench/gpu.sh bench PRESET...     # synth-model + serving benchmark per preset
#   bench/gpu.sh prefill PRESET...   # tensor-core vs CUDA-core prefill attention (diff, time)
#
# Results go to $OUT (or ./gpu-results): JSON per preset and a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
SP=$(ls -d /opt/torch/.venv/lib/python3*/site-packages 2>/dev/null | head -1 || true)
[ -n "$SP" ] && export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
PY=$( [ -x /opt/torch/.venv/bin/python ] && echo /opt/torch/.venv/bin/python || echo python3)
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-/tmp/cuda-cache}
BIN=${KANDLE_BIN:-/tmp/kandle-server}
if [ ! -x "$BIN" ]; then
  gunzip -c .devbin/kandle-server.gz > "$BIN" && chmod +x "$BIN"
fi
MODELS=${MODELS:-/tmp/kandle-models}
PROMPT="The history of the printing press begins in the fifteenth century, when Johannes Gutenberg"

gen() { # model device dtype extra... → stdout text; timing line on stderr
  local model=$1 device=$2 dtype=$3; shift 3
  "$BIN" generate --model "$model" --device "$device" --dtype "$dtype" --prompt "$PROMPT" \
    --max-tokens "${MAXTOK:-64}" --ignore-eos --max-model-len 4096 "$@"
}

case "${1:-}" in
equal)
  model=$2
  gen "$model" cpu f32 --dequantize > "$OUT/cpu-f32.txt" 2> "$OUT/cpu-f32.log"
  gen "$model" cuda f32 --dequantize > "$OUT/cuda-f32.txt" 2> "$OUT/cuda-f32.log"
  gen "$model" cuda bf16 --dequantize > "$OUT/cuda-bf16.txt" 2> "$OUT/cuda-bf16.log"
  tail -n1 "$OUT"/*.log
  if cmp -s "$OUT/cpu-f32.txt" "$OUT/cuda-f32.txt"; then echo "EQUAL: CUDA f32 == CPU f32"; else
    echo "DIFFERENT: CUDA f32 != CPU f32"; diff <(fold -w 60 "$OUT/cpu-f32.txt") <(fold -w 60 "$OUT/cuda-f32.txt") || true; fi
  "$PY" - "$OUT/cpu-f32.txt" "$OUT/cuda-bf16.txt" <<'EOF'
import sys
a, b = open(sys.argv[1]).read(), open(sys.argv[2]).read()
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
print(f"bf16 vs f32: first {n} of {len(a)} characters agree")
EOF
  ;;
bench)
  shift
  for preset in "$@"; do
    dir=$MODELS/$preset
    [ -f "$dir/config.json" ] || "$BIN" synth-model --preset "$preset" --out "$dir"
    # Engine alone, batch 1: decode time per token.
    gen "$dir" cuda bf16 --warmup > /dev/null 2> "$OUT/$preset-generate.log" || { cat "$OUT/$preset-generate.log"; exit 1; }
    tail -n1 "$OUT/$preset-generate.log"
    # Prefill: one long prompt (~2,000 tokens with the synthetic tokenizer), first token.
    PROMPT=$(for _ in $(seq 40); do printf '%s ' "$PROMPT"; done) MAXTOK=2 gen "$dir" cuda bf16 \
      --warmup --max-num-batched-tokens 8192 > /dev/null 2> "$OUT/$preset-prefill.log"
    echo "prefill: $(tail -n1 "$OUT/$preset-prefill.log")"
    "$BIN" serve --model "$dir" --device cuda --port 8011 --max-model-len 4096 --max-num-seqs 256 \
      --max-num-batched-tokens 8192 > "$OUT/$preset-server.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
      curl -sf localhost:8011/readiness | grep -q '"ok"' && break
      kill -0 $pid 2>/dev/null || { tail -30 "$OUT/$preset-server.log"; exit 1; }
      sleep 0.5
    done
    "$PY" bench/serve.py --url http://127.0.0.1:8011 --concurrency ${CONCURRENCY:-1 4 16 64 256} \
      --input-len ${INPUT_LEN:-512} --output-len ${OUTPUT_LEN:-128} --requests-per-slot 2 --min-requests 4 \
      --json "$OUT/$preset.json" | tee "$OUT/$preset.md"
    kill $pid; wait $pid || true
  done
  ;;
prefill)
  # Tensor-core vs CUDA-core prefill attention: output difference per layer, then time to
  # first token of one ~2,000-token prompt with each kernel.
  shift
  long=$(for _ in $(seq 40); do printf '%s ' "$PROMPT"; done)
  for preset in "$@"; do
    dir=$MODELS/$preset
    [ -f "$dir/config.json" ] || "$BIN" synth-model --preset "$preset" --out "$dir"
    PROMPT=$long MAXTOK=2 KANDLE_PREFILL_CHECK=1 gen "$dir" cuda bf16 --max-num-batched-tokens 8192 > /dev/null \
      2> "$OUT/$preset-check.log" || { tail -20 "$OUT/$preset-check.log"; exit 1; }
    echo "$preset: $(grep -c 'prefill check' "$OUT/$preset-check.log") layer checks; worst:"
    grep 'prefill check' "$OUT/$preset-check.log" | sort -t' ' -k11 -g | tail -n2
    for kernel in tiled mma; do
      PROMPT=$long MAXTOK=2 KANDLE_PREFILL_KERNEL=$kernel gen "$dir" cuda bf16 --warmup --max-num-batched-tokens 8192 \
        > /dev/null 2> "$OUT/$preset-prefill-$kernel.log"
      echo "$preset $kernel prefill: $(tail -n1 "$OUT/$preset-prefill-$kernel.log")"
    done
    MAXTOK=48 KANDLE_PREFILL_KERNEL=tiled gen "$dir" cuda bf16 > "$OUT/$preset-tiled.txt" 2>/dev/null
    MAXTOK=48 gen "$dir" cuda bf16 > "$OUT/$preset-mma.txt" 2>/dev/null
    cmp -s "$OUT/$preset-tiled.txt" "$OUT/$preset-mma.txt" && echo "$preset: same 48 greedy tokens with either kernel" \
      || echo "$preset: greedy text differs between kernels"
  done
  ;;
*)
  echo "usage: bench/gpu.sh equal MODEL.gguf | bench PRESET... | prefill PRESET..." >&2; exit 2 ;;
esac
