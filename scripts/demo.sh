#!/usr/bin/env bash
# The zscir demo (`make demo`, the README's first command): the whole path on the synthetic shapes world.
#
#   generate the world -> train a LinCIR phi on its captions (with the committed tiny CLIP) -> export a
#   bundle -> index the gallery -> composed queries (top 5, targets marked) -> a contact sheet ->
#   recall of LinCIR against the training-free baselines.
#
# Every step is the public command a user would type; each is printed before it runs. Everything is
# written to ./zscir-out/ (replaced on each run); afterwards `zscir-infer query IMAGE "TEXT"` finds
# zscir-out/bundle and zscir-out/gallery by default. Budget: under 5 minutes on 2 cores.
set -euo pipefail

OUT=zscir-out
WORLD=$OUT/world
WEIGHTS=zscir_train/weights/world-clip/world-clip.safetensors  # the world's tiny CLIP, committed
THREADS=${ZSCIR_DEMO_THREADS:-$(nproc)}
# Small enough for the budget, large enough to hold every attribute combination in the gallery.
WORLD_SIZE=(--train-images 64 --val-images 1200 --test-images 3000 --corpus-captions 12000
            --val-queries 300 --test-queries 600 --domain-queries 100)
LINCIR=(--steps 1000 --batch-size 128 --lr 1e-3 --val-every 0 --threads "$THREADS" --no-progress)
REFERENCE=$WORLD/images/test/test1-00000.png
SHOWN_QUERIES=4

# Print a command as it would be typed (quoted where needed); `run` also runs it, `run_to FILE` into FILE.
quoted() {
    local arg
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=,@+-]+$ ]]; then printf ' %s' "$arg"; else printf " '%s'" "${arg//\'/\'\\\'\'}"; fi
    done
}
run() { printf '\n\033[1m$%s\033[0m\n' "$(quoted "$@")"; "$@"; }
run_to() { local file=$1; shift; printf '\n\033[1m$%s > %s\033[0m\n' "$(quoted "$@")" "$file"; "$@" > "$file"; }

section() { printf '\n\033[1;34m== %s\033[0m\n' "$*"; }

if [[ ! -f $WEIGHTS ]]; then
    echo "error: $WEIGHTS is missing; run the demo from the repository root after 'make setup'." >&2
    exit 1
fi
start=$SECONDS
rm -rf "$OUT"

section "1. The shapes world: images, captions, composed queries with ground truth"
run zscir-train world --out "$WORLD" "${WORLD_SIZE[@]}"

section "2. LinCIR: train phi from the world's captions alone (the CLIP encoders stay frozen)"
run zscir-train lincir --captions "$WORLD/corpus/captions.txt" --model world-clip --pretrained "$WEIGHTS" \
    --out "$OUT/lincir.safetensors" "${LINCIR[@]}"

section "3. Export: ONNX graphs validated against PyTorch, tokenizer, manifest -> a bundle"
run zscir-export --ckpt "$OUT/lincir.safetensors" --out "$OUT/bundle"
run zscir-infer bundle-info "$OUT/bundle"

section "4. Index the test images (the CIRR-style split file names them) into a FAISS gallery"
run zscir-infer index "$WORLD/cirr/image_splits/split.rc2.test1.json" --bundle "$OUT/bundle" --out "$OUT/gallery"

section "5. Composed queries (default bundle and gallery: zscir-out/)"
run zscir-infer query "$REFERENCE" "as a sketch" -k 5
run_to "$OUT/demo-queries.jsonl" head -n "$SHOWN_QUERIES" "$WORLD/queries/test.jsonl"
run zscir-infer query --batch "$OUT/demo-queries.jsonl" -k 5 --exclude-ref --show "$OUT/contact-sheet.png"
run_to "$OUT/demo-results.jsonl" zscir-infer query --batch "$OUT/demo-queries.jsonl" -k 5 --exclude-ref \
    --show "$OUT/contact-sheet.html" --json

section "6. Recall on all $(wc -l < "$WORLD/queries/test.jsonl") test queries: LinCIR (phi) against the training-free methods (slerp, BGE-VL's sum) and the baselines"
echo "(a hit: an image with every attribute the query asks for in the top k; the reference excluded)"
for method in phi slerp sum average image text; do
    run zscir-infer query --batch "$WORLD/queries/test.jsonl" -k 10 --exclude-ref --method "$method"
done

section "Done in $((SECONDS - start)) s"
echo "contact sheets: $OUT/contact-sheet.png and $OUT/contact-sheet.html"
echo "try: zscir-infer query $REFERENCE \"make it red\""
