#!/usr/bin/env bash
# The full-size benchmarks that fit one GPU lease (../shared/BENCHMARKS.md): run once on the device
# machine, from the repository root; results go to benchmarks/results/<name>/gpu/ (or $OUT/<name>/ when
# the device tool's $OUT is set, to be copied back).
#
# Try it on CPU at a tiny size first (writes to a temporary folder): SIZE=tiny bash benchmarks/gpu.sh
#
# What runs (each part bounded by `timeout`, so one slow part cannot take the lease):
#   imagenet  torchvision ResNet-50, 224 px, batch 64, bf16-mixed, synthetic images: step cost of each
#             callback combination, one structural step, one attention / entropy calibration, pruned vs
#             dense latency at batch 1 and 64 (issue "Multi-GPU ImageNet recipes", section 3). About 3 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
SIZE="${SIZE:-full}"
if [ "$SIZE" = tiny ] && [ -z "${OUT:-}" ]; then OUT="$(mktemp -d)"; fi  # a trial never lands in results/
results() { if [ -n "${OUT:-}" ]; then echo "$OUT/$1"; else echo "benchmarks/results/$1/gpu"; fi; }

if [ "$SIZE" = tiny ]; then
  imagenet_size=(--image-size 32 --batch-size 4 --timing-steps 3 --latency-repeats 2)
else
  imagenet_size=(--image-size 224 --batch-size 64 --timing-steps 30 --latency-repeats 50)
fi

echo "== imagenet ($SIZE) =="
timeout 420 "$PYTHON" benchmarks/imagenet.py --out "$(results imagenet)" "${imagenet_size[@]}"
