"""Inference backends: small objects that run one graph, Polygraphy-style.

Each backend loads one model file and offers `infer(dict[str, ndarray]) -> dict[str, ndarray]`,
`providers_used()` (what actually executes it) and `close()`, and is a context manager. Heavy imports
(onnxruntime, tensorrt, cuda) happen inside the backend module, so importing `zscir_infer` stays light.

- `ort.OrtSession`: ONNX Runtime on CPU, CUDA, or the TensorRT execution provider.
- `trt.TrtEngine`: a native TensorRT engine (TensorRT 10+ name-based I/O, `execute_async_v3`).
- `openvino.OpenVinoSession`: the same ONNX graphs compiled by OpenVINO for the CPU (the `[openvino]` extra).
"""

from __future__ import annotations

from zscir_infer.errors import ZscirError

BACKENDS = ("ort", "trt", "openvino")
ORT_DEVICES = ("cpu", "cuda", "tensorrt")  # the ONNX Runtime execution provider families


class BackendError(ZscirError, RuntimeError):
    """A backend cannot run as asked (missing provider, no GPU, incompatible engine); says what to do."""


def parse_device(device: str) -> tuple[str, int]:
    """'cpu' -> ('cpu', 0); 'cuda' -> ('cuda', 0); 'cuda:1' / 'tensorrt:1' -> (kind, 1)."""
    kind, colon, index = device.partition(":")
    if kind not in ORT_DEVICES or (colon and not index.isdigit()) or (kind == "cpu" and colon):
        raise BackendError(
            f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' (a GPU index) or 'tensorrt[:N]' "
            "(ONNX Runtime's TensorRT execution provider)."
        )
    return kind, int(index or 0)
