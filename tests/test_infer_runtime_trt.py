"""The native TensorRT backend and the GPU providers of ONNX Runtime.

What needs no GPU (profile choice, compatibility checks, refusals) runs everywhere; engine and CUDA
parity runs only where TensorRT / a CUDA onnxruntime and a GPU exist, and is skipped with the reason.
"""

import importlib.util
import json
import shutil

import numpy as np
import pytest

from zscir_infer import Runtime
from zscir_infer.backends import BackendError, parse_device
from zscir_infer.backends.trt import (
    check_compatible,
    normalize_compute_capability,
    pick_engine,
    select_profile,
)

GPU_TOL = 1e-3  # TF32/fp32 kernels on the GPU vs ONNX Runtime on the CPU


def _cuda_onnxruntime() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _gpu_count() -> int:
    if importlib.util.find_spec("cuda") is None:
        return 0
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    err, count = cudart.cudaGetDeviceCount()
    return count if err == cudart.cudaError_t.cudaSuccess else 0


HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not (HAS_TRT and _gpu_count()), reason="needs tensorrt, cuda-python and a CUDA GPU")
needs_cuda_ort = pytest.mark.skipif(not _cuda_onnxruntime(), reason="needs onnxruntime-gpu with a CUDA GPU")


def test_devices_parse():
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda") == ("cuda", 0)
    assert parse_device("cuda:3") == ("cuda", 3)
    assert parse_device("tensorrt:1") == ("tensorrt", 1)
    for bad in ("gpu", "cuda:x", "cpu:1", "cpu:", "cuda:", "cuda:-1"):
        with pytest.raises(BackendError, match="Unknown device"):
            parse_device(bad)


def test_the_smallest_profile_that_holds_the_batch_is_chosen():
    latency, throughput = (1, 4), (1, 64)
    assert select_profile([latency, throughput], 1) == 0
    assert select_profile([latency, throughput], 4) == 0
    assert select_profile([latency, throughput], 5) == 1
    assert select_profile([throughput, latency], 2) == 1
    assert select_profile([latency, throughput], 65) is None
    assert select_profile([(8, 16)], 4) is None


def test_incompatible_engines_are_refused_naming_both_sides(tmp_path):
    engine = tmp_path / "image_encoder.fp16.plan"
    assert normalize_compute_capability("sm_89") == normalize_compute_capability("8.9") == "8.9"
    assert normalize_compute_capability("90") == "9.0" and normalize_compute_capability("12.0") == "12.0"
    check_compatible(engine, "10.9.0", "8.9", "10.9.0", "8.9")
    with pytest.raises(BackendError, match=r"TensorRT 10\.9\.0 \(this machine has 11\.0\.0\).*zscir-infer engines"):
        check_compatible(engine, "10.9.0", "8.9", "11.0.0", "8.9")
    with pytest.raises(BackendError, match=r"compute capability sm_90 \(this GPU is 8\.0\)"):
        check_compatible(engine, "10.9.0", "sm_90", "10.9.0", "8.0")
    with pytest.raises(BackendError, match="not of the form"):
        normalize_compute_capability("hopper")


@pytest.mark.skipif(HAS_TRT, reason="checks the message for machines without tensorrt")
def test_the_engine_built_by_this_tensorrt_for_this_gpu_wins():
    """After a TensorRT upgrade the bundle lists the old engine first; the new one must be chosen."""
    from zscir_infer.bundle import EngineSpec

    def engine(trt: str, cc: str) -> EngineSpec:
        return EngineSpec("query_encoder", "fp16", None, trt, cc, ())

    old_h100, other_gpu, new_h100 = engine("10.13.3", "9.0"), engine("10.14.1", "8.9"), engine("10.14.1", "9.0")
    assert pick_engine([old_h100, other_gpu, new_h100], "10.14.1", "9.0") is new_h100
    assert pick_engine([other_gpu, old_h100], "10.14.1", "9.0") is old_h100  # same GPU: check_compatible names it
    assert pick_engine([other_gpu, old_h100], "10.14.1", "sm_90") is old_h100  # spellings of the capability
    assert pick_engine([other_gpu], "10.14.1", "9.0") is other_gpu  # nothing for this GPU: refused downstream


def test_the_trt_backend_without_tensorrt_says_what_to_install(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    graph = manifest["graphs"]["image_encoder"]["fp32"]
    manifest["engines"] = [{"graph": "image_encoder", "precision": "fp32", "file": graph["file"],
                            "sha256": graph["sha256"], "cache_key": "0" * 64, "tensorrt_version": "10.9.0",
                            "compute_capability": "8.9", "profiles": [{"name": "latency", "min": 1, "opt": 1, "max": 8}]}]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rt = Runtime(bundle, backend="trt", device="cuda")  # an engine entry of the right precision exists
    with pytest.raises(BackendError, match=r"zscir\[gpu\]"):
        rt.encode_pixels(np.zeros((1, 3, 32, 32), dtype=np.float32))


@pytest.mark.gpu
@needs_cuda_ort
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_onnxruntime_on_the_gpu_reports_its_provider_and_matches_the_cpu(tiny_bundle, device):
    texts = ["a red circle", "as a sketch"]
    cpu = Runtime(tiny_bundle)
    try:
        gpu = Runtime(tiny_bundle, device=device)
        used = gpu.providers_used(["text_encoder"])["text_encoder"]
    except BackendError as exc:
        if device == "tensorrt":
            pytest.skip(f"ONNX Runtime's TensorRT provider is not usable here: {exc}")
        raise
    assert used[0] == {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[device]
    np.testing.assert_allclose(gpu.encode_texts(texts), cpu.encode_texts(texts), atol=GPU_TOL)


def _build_engine(onnx_path, plan_path, max_batch: int) -> None:
    """A TensorRT engine with a latency profile (1..2) and a throughput profile (1..max_batch)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    for hi in (2, max_batch):
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, (1, *rest), (hi, *rest), (hi, *rest))
        config.add_optimization_profile(profile)
    plan_path.write_bytes(bytes(builder.build_serialized_network(network, config)))


@pytest.mark.trt
@pytest.mark.gpu
@needs_trt
def test_a_native_engine_matches_onnxruntime_across_profiles(tiny_bundle, tmp_path):
    from zscir_infer.backends.trt import TrtEngine
    from zscir_infer.bundle import load_bundle

    onnx_path = load_bundle(tiny_bundle).graph("text_encoder").file.path
    plan = tmp_path / "text_encoder.plan"
    _build_engine(onnx_path, plan, max_batch=8)
    cpu = Runtime(tiny_bundle)
    texts = [f"a photo of {n} red circles" for n in range(11)]  # batches 1 (latency), 5, and 11 > max: sliced
    ids = cpu.token_ids(texts).astype(np.int32)
    with TrtEngine(plan) as engine:
        assert "TensorRT" in engine.providers_used()[0] and engine.profile_batches == [(1, 2), (1, 8)]
        for n in (1, 5, 11):
            got = engine.infer({"token_ids": ids[:n]})["text_features"]
            np.testing.assert_allclose(got, cpu.text_features(texts[:n]), atol=GPU_TOL)


@pytest.mark.skipif(HAS_TRT, reason="checks the message for machines without tensorrt")
def test_engines_command_without_tensorrt_says_what_to_install(tiny_bundle):
    from typer.testing import CliRunner

    from zscir_infer.cli import app

    result = CliRunner().invoke(app, ["engines", str(tiny_bundle)])
    assert result.exit_code == 1 and "zscir[gpu]" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["engines", str(tiny_bundle), "--profile", "fast"])
    assert result.exit_code == 1 and "is not NAME:MIN,OPT,MAX" in result.output  # checked before any build
