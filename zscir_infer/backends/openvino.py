"""OpenVINO on the CPU: the bundle's ONNX graphs read by OpenVINO's own ONNX frontend (`--backend openvino`).

OpenVINO reads the same files ONNX Runtime does (fp32, fp16 and the int8 QDQ graphs, dynamic batch and
sequence axes), so a bundle needs nothing more. Compiled once per graph; each thread that calls
`infer` gets its own infer request (an `InferRequest` is not thread-safe, a `CompiledModel` is), so the
server's batcher threads and `zscir-infer index`'s pipeline can share one backend.

Threads: INFERENCE_NUM_THREADS = `threads` (default: all cores), LATENCY hint (one stream: a batch runs
on all the threads, as ONNX Runtime's intra-op pool does), no hyper-threading games. fp16 graphs: the CPU
plugin may execute in bf16 on CPUs that have it; INFERENCE_PRECISION_HINT is pinned to f32 so every
backend computes the numbers the bundle was validated with.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from zscir_infer.backends import BackendError, parse_device

INSTALL = "pip install openvino (OpenVINO's wheel: CPU plugin and ONNX frontend)"


class OpenVinoSession:
    """One ONNX graph compiled by OpenVINO for the CPU; the same interface as `ort.OrtSession`."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendError(f"--backend openvino needs OpenVINO: {INSTALL}.") from exc
        kind, _ = parse_device(device)
        if kind != "cpu":
            raise BackendError(f"--backend openvino runs on the CPU here: use --device cpu, not {device!r} "
                               "(ONNX Runtime or TensorRT drive NVIDIA GPUs).")
        self.path, self.device = Path(path), device
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        try:
            self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        except RuntimeError as exc:
            raise BackendError(f"OpenVINO {ov.__version__} cannot compile {self.path.name}: {exc}") from exc
        # a port can carry several tensor names (a Cast after an input shares it): the graph's own input
        # names are the Parameters' names; every output is returned under each of its names
        self.input_names = [port.get_node().get_friendly_name() for port in self.compiled.inputs]
        self.dtypes = {name: np.dtype(port.get_element_type().to_dtype())
                       for name, port in zip(self.input_names, self.compiled.inputs, strict=True)}
        self.output_names = [sorted(port.get_names()) for port in self.compiled.outputs]
        self._local = threading.local()
        self.version = ov.__version__

    def providers_used(self) -> list[str]:
        return [f"OpenVINO {self.version} CPU"]

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise BackendError(f"{self.path.name} needs inputs {sorted(missing)}; got {sorted(feeds)}.")
        request = self._request()
        results = request.infer([np.ascontiguousarray(feeds[n], dtype=self.dtypes[n]) for n in self.input_names])
        out = {}
        for names, port in zip(self.output_names, self.compiled.outputs, strict=True):
            value = np.array(results[port], copy=True)  # the request's buffer is reused by its next call
            value = value.astype(np.float32) if value.dtype == np.float16 else value
            out.update(dict.fromkeys(names, value))
        return out

    def close(self) -> None:
        self.compiled = None
        self._local = threading.local()

    def __enter__(self) -> OpenVinoSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
