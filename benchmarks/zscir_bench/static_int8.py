"""Is static int8 better than dynamic int8 for the image encoder? Measured, not assumed.

The bundle's int8 graphs use dynamic quantization (activations quantized at run time, per batch).
Static quantization calibrates activation ranges once, on images, and stores QDQ pairs in the graph, so
no run-time range computation is needed. This builds the static variant of the bundle's fp32 image
encoder (MinMax calibration on photos, per-channel int8 weights, uint8 activations), and times it
beside the fp32 and dynamic int8 graphs at the same batches and threads, with the cosine of its
features to fp32's. The export can adopt it if it wins.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from zscir_bench import samples
from zscir_bench.timing import Policy, measure
from zscir_infer.bundle import load_bundle
from zscir_infer.preprocess import load_image, preprocess

CALIBRATION_IMAGES = 32
CALIBRATION_SEED = 7  # other photos than the ones timed
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
PIXELS = "pixels"


class _Calibration(CalibrationDataReader):
    """Preprocessed photos for the calibration, one image per read."""

    def __init__(self, pixels: np.ndarray):
        self.rows = iter(pixels)

    def get_next(self):
        row = next(self.rows, None)
        return None if row is None else {PIXELS: row[None]}


def _photos(folder: Path, n: int, seed: int, cfg) -> np.ndarray:
    return preprocess([load_image(p) for p in samples.write_jpegs(folder, n, seed)], cfg)  # [n, 3, S, S]


def quantize_image_encoder(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    quantize_static(str(fp32), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosines of a and b [N, D], in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def compare_int8(bundle_dir: Path, batches: Sequence[int], threads: int, policy: Policy) -> dict:
    """{graph variant: {batch: stats}} for fp32, dynamic int8 and static int8, plus static's cosine to fp32."""
    bundle = load_bundle(bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        calibration = _photos(folder / "calibration", CALIBRATION_IMAGES, CALIBRATION_SEED, bundle.preprocess)
        static = quantize_image_encoder(bundle.verified(bundle.graph("image_encoder", "fp32").file),
                                        folder / "image_encoder.static-int8.onnx", calibration)
        pixels = _photos(folder / "timed", max(batches), 0, bundle.preprocess)
        variants = {"ort-fp32": bundle.verified(bundle.graph("image_encoder", "fp32").file), "ort-int8-static": static}
        if "int8" in bundle.precisions("image_encoder"):
            variants["ort-int8-dynamic"] = bundle.verified(bundle.graph("image_encoder", "int8").file)
        timings, features = {}, {}
        for name, path in variants.items():
            session = _session(path, threads)
            features[name] = session.run(None, {PIXELS: pixels})[0]
            timings[name] = {str(b): measure(lambda s=session, x=pixels[:b]: s.run(None, {PIXELS: x}), b,
                                             policy).to_dict() for b in batches}
            del session
    cosine = {name: float(cosines(f, features["ort-fp32"]).min()) for name, f in features.items() if name != "ort-fp32"}
    return {"calibration": f"{CALIBRATION_IMAGES} photos, MinMax, per-channel int8 weights, uint8 activations (QDQ)",
            "timings": timings, "min_cosine_to_fp32": cosine}
