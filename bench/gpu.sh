#!/usr/bin/env bash
# The prepared device check of issue 19, in one run (about 8 minutes on one GPU):
#   1. ViT-B-16 training images/s and MFU (FLOPs counted from the model) in fp32 and bf16, and
#      evaluation images/s (bench/mfu.py);
#   2. each projection method's step time as a ratio of its project: false twin at batch 64,
#      and their peak memory (bench/projection.py);
#   3. ZSCL's step with the reference text cached vs recomputed at 15 000 captions (bench/zscl.py);
#   4. the mini-mtil finetune chain on CUDA beside the same chain on the CPU (bench/device_match.py).
# --cpu runs the same on the CPU at small sizes (the tiny CLIP; seconds), which is how the tests
# check this script without a GPU. Prints the figures of this run; asserts nothing.
#   bash bench/gpu.sh [--cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [[ "${1:-}" == "--cpu" ]]; then
  DEV=cpu
  MFU=(--arch tiny --batch 8 --steps 2 --warmup 1 --eval-images 64)
  PROJ=(--arch tiny --batch 8 --steps 3 --images 16)
  ZSCL=(--arch tiny --batch 4 --captions 200 --steps 2)
else
  DEV=cuda
  MFU=(--arch ViT-B-16 --compile)
  PROJ=(--arch ViT-B-16 --batch 64 --steps 6 --images 128)
  ZSCL=(--arch ViT-B-16 --batch 64 --captions 15000 --steps 3)
fi
echo "== 1. training throughput, MFU, evaluation ($DEV)"
"$PY" bench/mfu.py --device "$DEV" "${MFU[@]}"
echo "== 2. projection methods against their project: false twins ($DEV)"
"$PY" bench/projection.py --device "$DEV" "${PROJ[@]}"
echo "== 3. ZSCL reference text: cached vs recomputed ($DEV)"
"$PY" bench/zscl.py --device "$DEV" "${ZSCL[@]}"
echo "== 4. mini-mtil finetune: CUDA vs CPU"
"$PY" bench/device_match.py
