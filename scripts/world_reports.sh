#!/usr/bin/env bash
# After scripts/world_methods.sh: the figures that use its trained models. Each command prints its wall time.
#   export of the world model (fp32/fp16/int8 validation) -> results/export/world-clip.json
#   zscir-eval cirr / circo on the world's val splits, every method -> results/eval/
#   zscir-bench accuracy (methods x backends on the test queries) -> results/bench/accuracy
set -euo pipefail
RUN=${1:-runs/world-methods}
WORLD=$RUN/world
WEIGHTS=zscir_train/weights/world-clip/world-clip.safetensors

timed() {
    printf '\n$ %s\n' "$*"
    local start=$SECONDS
    "$@"
    echo "[$(( SECONDS - start )) s] $1 $2"
}

timed zscir-export --ckpt "$RUN/lincir.safetensors" --fp16 --int8 --out "$RUN/bundle-lincir" --force --quiet \
    --report results/export/world-clip.json
timed zscir-export --ckpt "$RUN/pic2word.safetensors" --out "$RUN/bundle-pic2word" --force --quiet
# The gallery is encoded once per bundle (cached under runs/eval/); the metric files go to results/eval/.
for bench in cirr circo; do
    for method in phi slerp average image text; do
        timed zscir-eval "$bench" --root "$WORLD/$bench" --bundle "$RUN/bundle-lincir" --method "$method" \
            --out runs/eval/world-lincir
    done
    timed zscir-eval "$bench" --root "$WORLD/$bench" --bundle "$RUN/bundle-pic2word" --method phi \
        --out runs/eval/world-pic2word
done
for name in lincir pic2word; do
    mkdir -p "results/eval/world-$name"
    cp runs/eval/world-$name/*.json "results/eval/world-$name/"
done
timed zscir-bench accuracy --world "$WORLD" --checkpoint "$RUN/lincir.safetensors" \
    --checkpoint "$RUN/pic2word.safetensors"
