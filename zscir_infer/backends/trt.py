"""Native TensorRT engines (TensorRT 10 and 11), driven by tensor names.

The runtime API of TensorRT 10+: `set_input_shape`, `set_tensor_address`, `execute_async_v3` (the
binding-index calls are gone). Device memory and the stream come from NVIDIA's `cuda-python`
(`cuda.bindings.runtime`, part of the [gpu] extra). Both imports happen when an engine is opened,
so this module can be imported, and its checks tested, on machines without a GPU.

An engine is built for one TensorRT version and one GPU compute capability; the bundle records both
and `check_compatible` refuses a mismatch before TensorRT would (with a less helpful message). An
engine may hold several optimization profiles (a latency profile around batch 1, a throughput
profile); each batch runs on the profile with the smallest maximum batch that fits it, through one
execution context per profile, and batches above every profile's maximum are split.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from zscir_infer.backends import BackendError

INSTALL_TRT = ("install the GPU extra (`pip install --extra-index-url https://pypi.nvidia.com 'zscir[gpu]'`: TensorRT 10 "
               "and cuda-python 12) on a machine with an NVIDIA GPU")
REBUILD = "rebuild the engines on this machine with `zscir-infer engines BUNDLE`, or use --backend ort"
NUMPY_DTYPE = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
               "INT8": np.int8, "UINT8": np.uint8}


def _import_trt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(f"The trt backend needs the tensorrt package: {INSTALL_TRT}.") from exc
    return tensorrt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendError(f"The trt backend needs cuda-python for device memory: {INSTALL_TRT}.") from exc
    return cudart


def _check(cudart, result):
    """cuda-python returns (error, *values): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call failed: {err}.")
    return values[0] if len(values) == 1 else values


def normalize_compute_capability(value: str) -> str:
    """'sm_89', '89', '8.9' -> '8.9'."""
    digits = value.lower().removeprefix("sm_").replace(".", "")
    if not digits.isdigit() or len(digits) < 2:
        raise BackendError(f"Compute capability {value!r} is not of the form '8.9' or 'sm_89'.")
    return f"{digits[:-1]}.{digits[-1]}"


def check_compatible(engine_file: Path, built_trt: str, built_cc: str, local_trt: str, local_cc: str) -> None:
    """Refuse an engine built for another TensorRT version or GPU generation, naming both sides."""
    problems = []
    if built_trt and built_trt != local_trt:
        problems.append(f"TensorRT {built_trt} (this machine has {local_trt})")
    if built_cc and normalize_compute_capability(built_cc) != normalize_compute_capability(local_cc):
        problems.append(f"compute capability {built_cc} (this GPU is {local_cc})")
    if problems:
        raise BackendError(f"Engine {engine_file} was built for {' and '.join(problems)}: {REBUILD}.")


def pick_engine(engines: Sequence, local_trt: str, local_cc: str):
    """The engine to run here: one built by this TensorRT version for this GPU generation; else one for this
    GPU generation (check_compatible then names the version mismatch); else the first listed.

    A bundle keeps the engines of other machines and of older TensorRT versions listed, so after an upgrade
    the freshly built engine must win over an older one for the same GPU."""
    same_gpu = [e for e in engines if e.compute_capability
                and normalize_compute_capability(e.compute_capability) == normalize_compute_capability(local_cc)]
    exact = [e for e in same_gpu if e.tensorrt_version == local_trt]
    return (exact or same_gpu or list(engines))[0]


def tensorrt_version() -> str:
    return _import_trt().__version__


def device_compute_capability(device_id: int = 0) -> str:
    cudart = _import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"The trt backend needs a CUDA GPU, but CUDA reports {err.name} (no NVIDIA GPU or "
                           "driver on this machine?): use --backend ort --device cpu here.")
    if device_id >= count:
        raise BackendError(f"GPU {device_id} was asked for, but this machine has {count} CUDA device(s).")
    props = _check(cudart, cudart.cudaGetDeviceProperties(device_id))
    return f"{props.major}.{props.minor}"


def device_name(device_id: int = 0) -> str:
    """The GPU's name as CUDA reports it (e.g. 'NVIDIA H100 80GB HBM3')."""
    cudart = _import_cudart()
    props = _check(cudart, cudart.cudaGetDeviceProperties(device_id))
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).split("\x00")[0].strip()


def select_profile(ranges: list[tuple[int, int]], batch: int) -> int | None:
    """Index of the profile (min_batch, max_batch) with the smallest max that holds `batch`; None if none."""
    fitting = [(hi, i) for i, (lo, hi) in enumerate(ranges) if lo <= batch <= hi]
    return min(fitting)[1] if fitting else None


class _DeviceBuffer:
    """Device memory for one tensor, grown when a larger batch arrives."""

    def __init__(self, cudart):
        self.cudart, self.ptr, self.nbytes = cudart, None, 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = _check(self.cudart, self.cudart.cudaMalloc(nbytes))
            self.nbytes = nbytes
        return int(self.ptr)

    def free(self) -> None:
        if self.ptr is not None:
            _check(self.cudart, self.cudart.cudaFree(self.ptr))
            self.ptr, self.nbytes = None, 0


class TrtEngine:
    """A serialized TensorRT engine: `infer(feeds) -> outputs` on one GPU, a context manager.

    Thread-safe: calls are serialized (an execution context runs one inference at a time).
    """

    def __init__(self, path: str | os.PathLike, device_id: int = 0):
        trt, cudart = _import_trt(), _import_cudart()
        self.trt, self.cudart, self.path, self.device_id = trt, cudart, Path(path), device_id
        _check(cudart, cudart.cudaSetDevice(device_id))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {self.path} (see its log above): {REBUILD}.")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: NUMPY_DTYPE[self.engine.get_tensor_dtype(n).name] for n in names}
        first = self.input_names[0]
        self.profile_batches = [
            (int(lo[0]), int(hi[0]))
            for lo, _, hi in (self.engine.get_tensor_profile_shape(first, p)
                              for p in range(self.engine.num_optimization_profiles))
        ]
        self.stream = _check(cudart, cudart.cudaStreamCreate())
        self._contexts: dict[int, object] = {}
        self._buffers = {n: _DeviceBuffer(cudart) for n in names}
        self._lock = threading.Lock()

    def providers_used(self) -> list[str]:
        return [f"TensorRT {self.trt.__version__} (native engine on cuda:{self.device_id})"]

    @property
    def max_batch(self) -> int:
        return max(hi for _, hi in self.profile_batches)

    def _context(self, profile: int):
        if profile not in self._contexts:
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(profile, int(self.stream))
            self._contexts[profile] = context
        return self._contexts[profile]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values())))
        if batch > self.max_batch:  # above every profile: run in slices
            parts = [self.infer({n: a[i:i + self.max_batch] for n, a in feeds.items()})
                     for i in range(0, batch, self.max_batch)]
            return {n: np.concatenate([p[n] for p in parts]) for n in self.output_names}
        profile = select_profile(self.profile_batches, batch)
        if profile is None:
            raise BackendError(f"{self.path.name}: no optimization profile holds batch {batch} "
                               f"(profiles: {self.profile_batches}); {REBUILD} with a wider profile.")
        with self._lock:
            # the current CUDA device is per thread: the thread that runs (a server's batcher, an indexing
            # pipeline) may not be the one that created this engine
            _check(self.cudart, self.cudart.cudaSetDevice(self.device_id))
            return self._run(self._context(profile), feeds)

    def _run(self, context, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, h2d, d2h = self.cudart, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, \
            self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = {}
        for name in self.input_names:
            host = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            hosts[name] = host
            context.set_input_shape(name, host.shape)
            ptr = self._buffers[name].ensure(host.nbytes)
            context.set_tensor_address(name, ptr)
            _check(cudart, cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self.stream))
        outputs = {}
        for name in self.output_names:
            out = np.empty(tuple(context.get_tensor_shape(name)), dtype=self.dtypes[name])
            outputs[name] = out
            context.set_tensor_address(name, self._buffers[name].ensure(out.nbytes))
        if not context.execute_async_v3(int(self.stream)):
            raise BackendError(f"TensorRT failed to run {self.path.name} (see its log above).")
        for name, out in outputs.items():
            _check(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name].ptr, out.nbytes, d2h,
                                                  self.stream))
        _check(cudart, cudart.cudaStreamSynchronize(self.stream))
        return {n: o.astype(np.float32) if o.dtype == np.float16 else o for n, o in outputs.items()}

    def close(self) -> None:
        with self._lock:
            if self.engine is not None:
                _check(self.cudart, self.cudart.cudaSetDevice(self.device_id))
            for buffer in self._buffers.values():
                buffer.free()
            if self.stream is not None:
                _check(self.cudart, self.cudart.cudaStreamDestroy(self.stream))
                self.stream = None
            self._contexts.clear()
            self.engine = None

    def __enter__(self) -> TrtEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
