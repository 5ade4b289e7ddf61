#!/usr/bin/env bash
# Train every method on the shapes world with the committed world-clip and score them on the test
# queries (issue: training): LinCIR from captions only, Pic2Word from unlabeled images only, TAT on
# image-caption pairs (for Slerp), then the test table of all methods and the baselines.
#
#   bash scripts/world_methods.sh [OUT]      (default runs/world-methods; the table goes to results/train/)
#
# The best step of each run is chosen on the world's VAL queries (CIRR-style R@1); the test queries are
# only scored at the end. Each command is printed with its wall time.
set -euo pipefail
OUT=${1:-runs/world-methods}
WORLD=$OUT/world
WEIGHTS=zscir_train/weights/world-clip/world-clip.safetensors
THREADS=${ZSCIR_THREADS:-$(nproc)}
COMMON=(--model world-clip --pretrained "$WEIGHTS" --threads "$THREADS" --no-progress --val-world "$WORLD" --val-every 250)

timed() {
    printf '\n$ %s\n' "$*"
    local start=$SECONDS
    "$@"
    echo "[$(( SECONDS - start )) s] $1 $2"
}

[[ -f $WORLD/world.json ]] || timed zscir-train world --out "$WORLD" --seed 0
timed zscir-train lincir --captions "$WORLD/corpus/captions.txt" --out "$OUT/lincir.safetensors" \
    --steps 2000 --batch-size 128 --lr 1e-3 "${COMMON[@]}"
timed zscir-train pic2word --images "$WORLD/train/unlabeled.txt" --image-root "$WORLD" --out "$OUT/pic2word.safetensors" \
    --steps 1000 --batch-size 128 --lr 1e-3 --warmup-steps 50 "${COMMON[@]}"
timed zscir-train tat --pairs "$WORLD/train/pairs.jsonl" --image-root "$WORLD" --out "$OUT/tat-clip.safetensors" \
    --steps 500 --batch-size 128 --lr 1e-4 --warmup-steps 25 --val-metric cirr/R@5 "${COMMON[@]}"
timed zscir-train world-eval --world "$WORLD" --lincir "$OUT/lincir.safetensors" --pic2word "$OUT/pic2word.safetensors" \
    --tat "$OUT/tat-clip.safetensors" --out results/train
