"""TensorRT engine planning without a GPU: profiles, cache keys, version dispatch, manifest entries;
the build itself runs only where TensorRT and a GPU are (marked trt, skipped with the reason)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from zscir_export.bundle import check_manifest

from zscir_infer.engines import (
    DEFAULT_PROFILES,
    EngineError,
    Profile,
    add_engines_to_bundle,
    cache_key,
    check_profiles,
    engine_entry,
    engine_file_name,
    parse_profile,
    parse_version,
    plan_build,
    profile_shapes,
    tensorrt_unavailable_reason,
    timing_cache_path,
    write_engines_to_manifest,
)

INPUTS = [{"name": "image_features", "dtype": "float32", "shape": ["batch", 48]},
          {"name": "token_ids", "dtype": "int32", "shape": ["batch", 77]}]
SHA = "a" * 64
REASON = tensorrt_unavailable_reason()


def test_default_profiles_are_a_latency_and_a_throughput_profile():
    assert [p.to_dict() for p in DEFAULT_PROFILES] == [
        {"name": "latency", "min": 1, "opt": 1, "max": 8}, {"name": "throughput", "min": 1, "opt": 32, "max": 128}]


def test_profile_shapes_put_the_batch_on_the_batch_axis_only():
    shapes = profile_shapes(INPUTS, Profile("throughput", 1, 32, 128))
    assert shapes == {"image_features": ((1, 48), (32, 48), (128, 48)), "token_ids": ((1, 77), (32, 77), (128, 77))}
    pixels = [{"name": "pixels", "dtype": "float32", "shape": ["batch", 3, 224, 224]}]
    assert profile_shapes(pixels, Profile("latency", 1, 1, 8))["pixels"] == ((1, 3, 224, 224), (1, 3, 224, 224),
                                                                               (8, 3, 224, 224))
    with pytest.raises(EngineError, match="no 'batch' axis"):
        profile_shapes([{"name": "x", "dtype": "float32", "shape": [4, 3]}], DEFAULT_PROFILES[0])
    with pytest.raises(EngineError, match="dynamic axis other than"):
        profile_shapes([{"name": "x", "dtype": "float32", "shape": ["batch", "seq"]}], DEFAULT_PROFILES[0])


def test_profile_shapes_span_the_sequence_axis_up_to_the_context_length():
    """Sequence-adaptive text graphs (token_ids [batch, sequence]): every profile takes 1..77 tokens, tuned at 32."""
    inputs = [INPUTS[0], {"name": "token_ids", "dtype": "int32", "shape": ["batch", "sequence"]}]
    shapes = profile_shapes(inputs, Profile("throughput", 1, 32, 128), context_length=77)
    assert shapes == {"image_features": ((1, 48), (32, 48), (128, 48)), "token_ids": ((1, 1), (32, 32), (128, 77))}
    latency = profile_shapes(inputs, DEFAULT_PROFILES[0], context_length=77)["token_ids"]
    assert latency == ((1, 1), (1, 32), (8, 77))
    assert profile_shapes(inputs, DEFAULT_PROFILES[0], context_length=16)["token_ids"] == ((1, 1), (1, 16), (8, 16))
    assert profile_shapes(INPUTS, DEFAULT_PROFILES[0], context_length=77) == profile_shapes(INPUTS, DEFAULT_PROFILES[0])
    with pytest.raises(EngineError, match="context length"):
        profile_shapes(inputs, DEFAULT_PROFILES[0])


def test_the_bundles_text_graphs_get_sequence_profiles(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    for graph in ("text_encoder", "query_encoder"):
        for entry in manifest["graphs"][graph].values():
            shapes = profile_shapes(entry["inputs"], DEFAULT_PROFILES[1], manifest["context_length"])
            assert shapes["token_ids"] == ((1, 1), (32, 32), (128, manifest["context_length"]))


def test_profiles_are_parsed_and_checked():
    assert parse_profile("latency:1,1,8") == Profile("latency", 1, 1, 8)
    assert parse_profile(" big : 4, 64 ,256 ") == Profile("big", 4, 64, 256)
    for bad in ("latency", "latency:1,8", "1:1,1,1", "x:1,2,a"):
        with pytest.raises(EngineError, match="NAME:MIN,OPT,MAX"):
            parse_profile(bad)
    for lo, opt, hi in ((0, 1, 8), (2, 1, 8), (1, 9, 8)):
        with pytest.raises(EngineError, match="min <= opt <= max"):
            Profile("p", lo, opt, hi)
    with pytest.raises(EngineError, match="unique"):
        check_profiles([Profile("a", 1, 1, 1), Profile("a", 1, 2, 4)])
    with pytest.raises(EngineError, match="at least one"):
        check_profiles([])


def test_the_cache_key_is_stable_and_changes_with_every_ingredient():
    base = dict(onnx_sha256=SHA, tensorrt_version="10.13.3", compute_capability="8.9", precision="fp16",
                profiles=DEFAULT_PROFILES)
    key = cache_key(**base)
    assert key == cache_key(**base) and re.fullmatch("[0-9a-f]{64}", key)  # a sha256 hex digest, lower case
    assert key == cache_key(**{**base, "onnx_sha256": SHA.upper()})  # a hex digest's case is not identity
    changes = {"onnx_sha256": "b" * 64, "tensorrt_version": "10.13.4", "compute_capability": "9.0",
               "precision": "fp32", "profiles": (Profile("latency", 1, 1, 16), DEFAULT_PROFILES[1])}
    keys = {name: cache_key(**{**base, name: value}) for name, value in changes.items()}
    assert key not in keys.values() and len(set(keys.values())) == len(changes)
    assert DEFAULT_PROFILES[1] == Profile("throughput", 1, 32, 128)
    for other in (Profile("bulk", 1, 32, 128), Profile("throughput", 2, 32, 128), Profile("throughput", 1, 33, 128),
                  Profile("throughput", 1, 32, 129)):  # every field of every profile is part of the engine
        assert cache_key(**{**base, "profiles": (DEFAULT_PROFILES[0], other)}) != key, other
    assert cache_key(**{**base, "profiles": DEFAULT_PROFILES[:1]}) != key  # a profile dropped
    assert cache_key(**{**base, "profiles": DEFAULT_PROFILES[::-1]}) != key  # profile order is engine layout
    assert engine_file_name("query_encoder", "fp16", key) == f"engines/query_encoder.fp16.{key[:16]}.plan"


@pytest.mark.parametrize("version", ["10.0.1", "10.13.3.9", "10.14"])
def test_tensorrt_10_builds_fp16_from_the_fp32_graph_by_builder_flag(version):
    plan = plan_build(version, "fp16")
    assert (plan.onnx_precision, plan.fp16_flag, plan.strongly_typed) == ("fp32", True, False)
    assert set(plan.fp32_layer_types) == {"NORMALIZATION", "SOFTMAX", "REDUCE"}
    fp32 = plan_build(version, "fp32")
    assert (fp32.onnx_precision, fp32.fp16_flag, fp32.disable_tf32, fp32.strongly_typed) == ("fp32", False, True, False)


@pytest.mark.parametrize("version", ["11.0.0", "11.3.1.2", "11.4"])
def test_tensorrt_11_builds_fp16_from_the_fp16_graph_strongly_typed(version):
    plan = plan_build(version, "fp16")
    assert (plan.onnx_precision, plan.fp16_flag, plan.strongly_typed, plan.fp32_layer_types) == ("fp16", False, True, ())
    assert plan_build(version, "fp32").strongly_typed and plan_build(version, "fp32").onnx_precision == "fp32"


def test_unsupported_versions_and_precisions_are_refused():
    for version in ("8.6.1", "9.3.0", "12.0.0"):
        with pytest.raises(EngineError, match="10.x or 11.x"):
            plan_build(version, "fp16")
    with pytest.raises(EngineError, match="MAJOR.MINOR"):
        parse_version("ten")
    with pytest.raises(EngineError, match="Q/DQ"):
        plan_build("10.13.0", "int8")
    assert parse_version("10.13.3.9") == (10, 13)


def test_engine_entries_fit_the_manifest_schema_and_replace_older_builds(tiny_bundle, tmp_path):
    import shutil

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    plan = plan_build("11.3.0", "fp16")
    key = cache_key(SHA, "11.3.0", "9.0", "fp16", DEFAULT_PROFILES)
    old = engine_entry("query_encoder", "fp16", engine_file_name("query_encoder", "fp16", key), SHA, key, "11.3.0",
                       "9.0", DEFAULT_PROFILES, plan, "query_encoder.fp16.onnx")
    manifest["engines"] = [old]
    check_manifest(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    new = {**old, "sha256": "c" * 64, "cache_key": "d" * 64}
    other_gpu = {**old, "compute_capability": "8.9"}
    updated = write_engines_to_manifest(bundle, [new, other_gpu])
    assert updated["engines"] == [new, other_gpu]
    check_manifest(updated)
    assert json.loads((bundle / "manifest.json").read_text()) == updated


def test_timing_caches_are_per_tensorrt_version_and_gpu(tmp_path):
    a = timing_cache_path("10.13.3", "8.9", tmp_path)
    assert a.parent == tmp_path and a.name == "timing-trt10.13.3-sm89.cache"
    assert a != timing_cache_path("10.13.3", "9.0", tmp_path) != timing_cache_path("11.0.0", "8.9", tmp_path)
    pcie = timing_cache_path("10.13.3", "9.0", tmp_path, "NVIDIA H100 PCIe")
    sxm = timing_cache_path("10.13.3", "9.0", tmp_path, "NVIDIA H100 80GB HBM3")
    assert pcie.name == "timing-trt10.13.3-sm90-nvidia-h100-pcie.cache" and pcie != sxm


def test_a_deployment_machine_without_tensorrt_is_told_why(tiny_bundle):
    if REASON is None:
        pytest.skip("TensorRT and a GPU are present")
    before = (tiny_bundle / "manifest.json").read_bytes()
    with pytest.raises(EngineError, match="tensorrt"):
        add_engines_to_bundle(tiny_bundle)
    assert (tiny_bundle / "manifest.json").read_bytes() == before


def test_the_engine_logic_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['open_clip'] = None; "
            "import zscir_infer.engines as e; print(e.plan_build('11.0.0', 'fp16').onnx_precision)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "fp16"


@pytest.mark.trt
@pytest.mark.skipif(REASON is not None, reason=f"TensorRT engine build skipped: {REASON}")
def test_an_engine_built_here_reproduces_the_golden_outputs(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    from zscir_infer.backends.trt import TrtEngine

    monkeypatch.setenv("ZSCIR_CACHE_DIR", str(tmp_path / "cache"))  # a fresh engine cache: really build
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    updated = add_engines_to_bundle(bundle, ("fp32", "fp16"), timing_cache_dir=tmp_path)
    check_manifest(updated)
    entries = updated["engines"]
    assert {(e["graph"], e["precision"]) for e in entries} == {
        (g, p) for g in ("image_encoder", "query_encoder", "text_encoder") for p in ("fp32", "fp16")}
    golden = json.loads((bundle / "golden" / "golden.json").read_text())["graphs"]["query_encoder"]
    feeds = {n: np.load(bundle / "golden" / f) for n, f in golden["inputs"].items()}
    want = np.load(bundle / "golden" / golden["outputs"]["query_features"])
    for entry in (e for e in entries if e["graph"] == "query_encoder"):
        ids = feeds["token_ids"]
        cut = {**feeds, "token_ids": np.ascontiguousarray(ids[:, :min(-(-(int(ids.argmax(1).max()) + 1) // 8) * 8, 77)])}
        with TrtEngine(bundle / entry["file"]) as engine:
            got = engine.infer(feeds)["query_features"]
            trimmed = engine.infer(cut)["query_features"]  # the sequence axis: ids cut after the last EOT
        np.testing.assert_allclose(trimmed, got, rtol=0, atol=1e-5 if entry["precision"] == "fp32" else 2e-3)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() >= (0.99999 if entry["precision"] == "fp32" else 0.999), entry["precision"]
    assert next(tmp_path.glob("timing-*.cache")).stat().st_size > 0
