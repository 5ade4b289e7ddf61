"""ONNX Runtime sessions on CPU, CUDA, or ONNX Runtime's TensorRT execution provider.

When a GPU was asked for, the session must actually run on it: ONNX Runtime itself would warn and
quietly run the whole graph on CPU when the CUDA or TensorRT provider cannot load (CPU-only wheel,
missing CUDA libraries, no GPU). Here that is an error that says why and what to install. Individual
nodes that ONNX Runtime places on CPU inside a GPU session (shape arithmetic) are normal and allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zscir_infer.backends import BackendError, parse_device
from zscir_infer.bundle import cache_root

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDER = {"cuda": CUDA, "tensorrt": TENSORRT}
ORT_SPIN = "0"  # session.intra_op.allow_spinning (see OrtSession)
INSTALL_GPU = (
    "install the GPU runtime (`pip uninstall onnxruntime && pip install 'zscir[gpu]'`; onnxruntime and "
    "onnxruntime-gpu must not be installed together) on a machine with an NVIDIA GPU, or use --device cpu"
)
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64}

def provider_list(kind: str, device_id: int, cache_key: str = "") -> list:
    """The providers, in priority order, for a device kind ('cpu', 'cuda' or 'tensorrt')."""
    if kind == "cpu":
        return [CPU]
    cuda = (CUDA, {"device_id": device_id})
    if kind == "cuda":
        return [cuda, CPU]
    trt_cache = cache_root() / "ort-tensorrt" / cache_key  # its engines and timing cache
    trt = (TENSORRT, {
        "device_id": device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(trt_cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(trt_cache),
    })
    return [trt, cuda, CPU]


def default_intra_op_threads() -> int:
    """Intra-op threads of a session when none are given: every core this process may run on (its CPU
    affinity: a container or `taskset` limited to fewer cores than the machine has gets that many)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


DISABLE_OPTIMIZERS_KEY = "optimization.disable_specified_optimizers"  # comma-separated optimizer names


class OrtSession:
    """One ONNX graph on ONNX Runtime: `infer(feeds) -> outputs`, `providers_used()`, a context manager.

    disabled_optimizers: graph optimizers to skip (the manifest's `onnxruntime.disabled_optimizers`:
    ONNX Runtime 1.24-1.31 crashes building CPU sessions for fp16 graphs in its NchwcTransformer).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 cache_key: str = "", disabled_optimizers: tuple[str, ...] = ()):
        import onnxruntime as ort

        self.path = Path(path)
        self.device = device
        kind, device_id = parse_device(device)
        if kind != "cpu" and hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21: CUDA and cuDNN from
            ort.preload_dlls()  # the nvidia-* pip packages of its [cuda,cudnn] extras, before the provider loads
        if kind != "cpu" and GPU_PROVIDER[kind] not in ort.get_available_providers():
            raise BackendError(
                f"Device {device!r} needs ONNX Runtime's {GPU_PROVIDER[kind]}, which this onnxruntime "
                f"{ort.__version__} does not have (available: {ort.get_available_providers()}): {INSTALL_GPU}."
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or default_intra_op_threads()
        options.inter_op_num_threads = 1
        # No spin-waiting: a composed query runs two sessions one after the other (image encoder, then
        # query encoder), and the idle one's spinning threads took the cores from the busy one (end-to-end
        # 12.5 -> 6.1 ms for the world bundle on 2 shared cores; the query encoder alone 6.4 -> 3.1 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", ORT_SPIN)
        options.log_severity_level = 3  # errors only: fallbacks are checked below, not left as warnings
        providers = provider_list(kind, device_id, cache_key)
        if kind == "tensorrt":
            Path(providers[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        if disabled_optimizers:  # a session config entry, not the constructor argument: it survives ONNX
            # Runtime's provider-fallback retry, and it is what a C++ program sets (the manifest says so)
            options.add_session_config_entry(DISABLE_OPTIMIZERS_KEY, ",".join(disabled_optimizers))
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        used = self.session.get_providers()
        if kind != "cpu" and GPU_PROVIDER[kind] not in used:
            raise BackendError(
                f"Device {device!r} was asked for, but ONNX Runtime could only create {used} for {self.path.name} "
                f"(the {GPU_PROVIDER[kind]} failed to load: CUDA/cuDNN/TensorRT libraries missing or no GPU): "
                f"{INSTALL_GPU}."
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.dtypes = {i.name: ORT_DTYPES.get(i.type) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def providers_used(self) -> list[str]:
        return list(self.session.get_providers())

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph (inputs cast to the graph's types); thread-safe: sessions allow concurrent `run`."""
        missing = set(self.input_names) - set(feeds)
        if missing:
            raise BackendError(f"{self.path.name} needs inputs {sorted(missing)}; got {sorted(feeds)}.")
        typed = {n: np.ascontiguousarray(feeds[n], dtype=self.dtypes[n]) for n in self.input_names}
        outputs = self.session.run(self.output_names, typed)
        return {n: o.astype(np.float32) if o.dtype == np.float16 else o
                for n, o in zip(self.output_names, outputs, strict=True)}

    def close(self) -> None:
        self.session = None

    def __enter__(self) -> OrtSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
