"""Rooflines: FLOPs per image and per query from the open_clip config, and a GEMM peak measured here.

FLOPs count the dense arithmetic (2 per multiply-add) of the patch embedding, the attention
projections, the two attention matmuls, the MLPs and the final projection. LayerNorm, softmax, GELU
and the embedding lookup are left out: they are memory-bound and well under 1% of the total for the
CLIP ViTs. A `% of peak` divides achieved FLOP/s by the fastest matrix multiply this machine does at the
same thread count, measured in the same run: numpy (OpenBLAS) in a child process with
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (the values this machine sets slow OpenBLAS to about half,
DESIGN §8; the parent's environment is never changed) and ONNX Runtime's MatMul.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from zscir_infer.errors import ZscirError

DEFAULT_MLP_RATIO = 4.0
FLOPS_PER_MAC = 2
RGB = 3
PEAK_GEMM_SIZE = 2048  # n for the n x n x n GEMM; big enough that the peak is compute-bound
PEAK_REPS = 5
GEMM_OPSET, GEMM_IR_VERSION = 17, 8
BLAS_ENV_SLOWING_NUMPY = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
NUMPY_GEMM_SCRIPT = """
import json, sys, time
import numpy as np
n, reps = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
a @ b
times = []
for _ in range(reps):
    t0 = time.perf_counter()
    a @ b
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


class UnsupportedArchitecture(ZscirError, ValueError):
    """The config is not a plain CLIP ViT/text transformer that the counter knows."""


def transformer_flops(tokens: int, width: int, layers: int, mlp_ratio: float = DEFAULT_MLP_RATIO) -> int:
    """FLOPs of `layers` pre-norm blocks over `tokens` tokens of width W (heads do not change the count)."""
    hidden = int(width * mlp_ratio)
    qkv = tokens * width * 3 * width
    scores = tokens * tokens * width  # Q K^T summed over heads
    mix = tokens * tokens * width  # softmax(QK^T) V
    out = tokens * width * width
    mlp = 2 * tokens * width * hidden
    return FLOPS_PER_MAC * layers * (qkv + scores + mix + out + mlp)


def _check_plain(cfg: dict, tower: str, unsupported: tuple[str, ...]) -> None:
    found = [k for k in unsupported if cfg.get(k)]
    if found:
        raise UnsupportedArchitecture(
            f"{tower} config uses {found}: the FLOP counter covers plain CLIP ViT and text transformers only."
        )


def image_flops(arch: dict) -> int:
    """FLOPs to encode one image with the ViT image tower of an open_clip config (batch-independent)."""
    v = arch["vision_cfg"]
    if not isinstance(v.get("layers"), int):
        raise UnsupportedArchitecture(f"vision_cfg.layers={v.get('layers')!r}: a ResNet tower, not a ViT.")
    _check_plain(v, "vision_cfg", ("timm_model_name", "attentional_pool"))
    size, patch, width = int(v["image_size"]), int(v["patch_size"]), int(v["width"])
    patches = (size // patch) ** 2
    tokens = patches + 1  # + class token
    patch_embed = patches * (RGB * patch * patch) * width
    projection = width * int(arch["embed_dim"])  # pooled class token only
    body = transformer_flops(tokens, width, int(v["layers"]), float(v.get("mlp_ratio", DEFAULT_MLP_RATIO)))
    return body + FLOPS_PER_MAC * (patch_embed + projection)


def text_flops(arch: dict) -> int:
    """FLOPs to encode one text (all context_length positions run; padding is not skipped)."""
    t = arch["text_cfg"]
    _check_plain(t, "text_cfg", ("hf_model_name",))
    width = int(t["width"])
    body = transformer_flops(int(t["context_length"]), width, int(t["layers"]),
                             float(t.get("mlp_ratio", DEFAULT_MLP_RATIO)))
    return body + FLOPS_PER_MAC * width * int(arch["embed_dim"])


def phi_flops(embed_dim: int, width: int, hidden_dim: int) -> int:
    """FLOPs of phi on one image feature. Both forms are three linears D -> H -> H -> W (LinCIR: H = 4D;
    Pic2Word: H = 512, its two blocks plus fc_out)."""
    return FLOPS_PER_MAC * (embed_dim * hidden_dim + hidden_dim * hidden_dim + hidden_dim * width)


def query_flops(arch: dict, phi_dims: tuple[int, int, int] | None) -> int:
    """FLOPs of one composed query from image features: phi (D, W, H), then the text transformer."""
    return text_flops(arch) + (phi_flops(*phi_dims) if phi_dims else 0)


@dataclass
class GemmResult:
    name: str  # numpy-openblas | ort-matmul-fp32 | ort-matmulinteger-int8
    n: int
    threads: int
    best_gflops: float
    median_gflops: float
    note: str = ""


def _gflops(n: int, times: list[float]) -> tuple[float, float]:
    flops = FLOPS_PER_MAC * n**3
    return flops / min(times) / 1e9, flops / float(np.median(times)) / 1e9


def gemm_child_env(environ: Mapping[str, str], threads: int) -> dict[str, str]:
    """The environment of the numpy GEMM child: the parent's without the OpenBLAS overrides, at `threads`."""
    env = {k: v for k, v in environ.items() if k not in BLAS_ENV_SLOWING_NUMPY}
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    return env


def numpy_gemm(n: int = PEAK_GEMM_SIZE, reps: int = PEAK_REPS, threads: int = 1) -> GemmResult:
    """float32 numpy GEMM in a child process whose environment lacks the OpenBLAS overrides."""
    out = subprocess.run([sys.executable, "-c", NUMPY_GEMM_SCRIPT, str(n), str(reps)],
                         env=gemm_child_env(os.environ, threads), capture_output=True, text=True, check=True).stdout
    best, median = _gflops(n, json.loads(out))
    unset = [k for k in BLAS_ENV_SLOWING_NUMPY if k in os.environ]
    note = f"child process without {', '.join(unset)}" if unset else ""
    return GemmResult("numpy-openblas", n, threads, best, median, note)


def _matmul_model(n: int, integer: bool):
    from onnx import TensorProto, helper

    if integer:
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                  helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])]
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        output = helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])
    else:
        inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")]
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        output = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([node], "gemm", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", GEMM_OPSET)])
    model.ir_version = GEMM_IR_VERSION  # onnx may default to an IR newer than ONNX Runtime reads
    return model.SerializeToString()


def ort_gemm(n: int = PEAK_GEMM_SIZE, reps: int = PEAK_REPS, threads: int = 1, integer: bool = False) -> GemmResult:
    """ONNX Runtime's MatMul (float32) or MatMulInteger (uint8 x int8, what dynamic int8 graphs run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(_matmul_model(n, integer), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if integer:
        feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    else:
        feeds = {x: rng.standard_normal((n, n), dtype=np.float32) for x in ("a", "b")}
    session.run(None, feeds)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    best, median = _gflops(n, times)
    name = "ort-matmulinteger-int8" if integer else "ort-matmul-fp32"
    return GemmResult(name, n, threads, best, median, "int8 ops/s" if integer else "")


def measure_peaks(threads: int, n: int = PEAK_GEMM_SIZE, reps: int = PEAK_REPS) -> dict:
    """float32 peak = the best of numpy and ORT MatMul; the int8 peak (ORT MatMulInteger) separately."""
    fp32 = [numpy_gemm(n, reps, threads), ort_gemm(n, reps, threads)]
    int8 = ort_gemm(n, reps, threads, integer=True)
    best = max(fp32, key=lambda g: g.best_gflops)
    return {
        "fp32_peak_gflops": best.best_gflops,
        "fp32_peak_source": best.name,
        "int8_peak_gops": int8.best_gflops,
        "gemms": [asdict(g) for g in (*fp32, int8)],
    }


def roofline_entry(flops_per_item: int, items_per_s: float, peak_gflops: float) -> dict:
    achieved = flops_per_item * items_per_s / 1e9
    return {"gflop_per_item": flops_per_item / 1e9, "achieved_gflops": achieved,
            "percent_of_peak": 100.0 * achieved / peak_gflops if peak_gflops else float("nan")}
