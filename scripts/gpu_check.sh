#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (driver >= 525), from the repository root:
#   bash scripts/gpu_check.sh            # about 10 minutes on one H100-class GPU
# 1. a venv with the [gpu] extra (CUDA 12 throughout; TensorRT's wheels from NVIDIA's index) and [train];
# 2. a ViT-B-32 bundle (random weights) with fp16 graphs, and its TensorRT engines built on this GPU;
# 3. python -m zscir_bench.gpu_check: native TensorRT, ONNX Runtime CUDA and its TensorRT provider against
#    ONNX Runtime CPU fp32 (cosines on the golden inputs and 200 images, latency at batch 1 and 32), and
#    an IVF gallery of 1M random vectors on faiss-gpu against CPU (recall@10), into results/gpu/.
# Whatever cannot run is printed as skipped with the reason, and no figure is written for it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPU_VENV:-.venv-gpu}
WORK=${GPU_WORK:-runs/gpu-check}
OUT=${GPU_OUT:-results/gpu}
start=$(date +%s)
if ! command -v nvidia-smi >/dev/null; then
  echo "skipped: no nvidia-smi here, so no NVIDIA GPU or driver: this check needs one." >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch for the export only (the CUDA build pip picks is fine: export runs on the CPU)
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q --extra-index-url https://pypi.nvidia.com -e '.[gpu,train]'
"$VENV/bin/python" - <<'PY'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
PY
mkdir -p "$WORK"
# a ViT-B-32 LinCIR bundle with random weights, fp32 + fp16 (+ int8), exported once into $WORK
BUNDLE=$("$VENV/bin/python" - "$WORK" <<'PY'
import sys
from pathlib import Path
from zscir_bench.bundles import speed_bundle
print(speed_bundle("ViT-B-32", Path(sys.argv[1]), "lincir", show_progress=False).bundle)
PY
)
echo "bundle: $BUNDLE"
"$VENV/bin/zscir-infer" engines "$BUNDLE" --precision fp16 \
  || echo "skipped: TensorRT engines could not be built (see above); the trt-fp16 path will be listed as skipped" >&2
"$VENV/bin/python" -m zscir_bench.gpu_check --bundle "$BUNDLE" --images 200 --faiss-n 1000000 --out "$OUT"
echo "done in $(( $(date +%s) - start )) s: $OUT/gpu_check.md"
