"""The Triton model repository, parsed with Triton's own model-config protobuf schema: the encoders (ONNX
Runtime, its TensorRT accelerator, TensorRT plans), the Python models and the ensembles' wiring."""

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from zscir_export.triton import TritonError, TritonOptions, write_triton_repository

from zscir_infer.engines import Profile

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] (dev extra) parses Triton model configs")

TRITON_DTYPE = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT32: "TYPE_INT32"}
ENCODERS = ["image_encoder", "query_encoder", "text_encoder"]
PYTHON_MODELS = ["normalize", "preprocess", "query_tokenizer", "text_tokenizer"]
ENSEMBLES = ["composed_query", "image_embedding", "text_embedding"]
# The keys Triton's onnxruntime_backend accepts for its "tensorrt" accelerator (src/onnxruntime.cc, the
# parameter loop of the TensorRT execution accelerator, onnxruntime_backend commit 00fd3e8, 2026-06): any
# other key fails the model load ("unknown parameter ... is provided for TensorRT Execution Accelerator").
ORT_BACKEND_TRT_KEYS = {
    "precision_mode", "max_workspace_size_bytes", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "int8_calibration_table_name", "int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level",
    "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
    "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model",
    "trt_ep_context_file_path", "trt_ep_context_embed_mode",
}


def parse(path):
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)  # raises on any field Triton does not know
    return config


def dtype_name(value):
    return model_config_pb2.DataType.Name(value)


def graph_io(model_path):
    model = onnx.load(str(model_path), load_external_data=False)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return ({v.name: (TRITON_DTYPE[v.type.tensor_type.elem_type], dims(v)) for v in model.graph.input},
            {v.name: (TRITON_DTYPE[v.type.tensor_type.elem_type], dims(v)) for v in model.graph.output})


def dims_fit(produced, wanted):
    return len(produced) == len(wanted) and all(p == w or -1 in (p, w) for p, w in zip(produced, wanted, strict=True))


def check_ensemble(repo, config):
    """An ensemble's steps against the configs of the models they name (what Triton checks at load:
    triton-inference-server/core ValidateEnsembleSchedulingConfig and ensemble_utils.cc): every input of a
    step's model is mapped, from an ensemble input or an earlier step's output of the same type and shape;
    every mapped output exists and is written once; the ensemble's outputs are produced so; every other
    ensemble tensor (inputs included) is read by some step."""
    assert config.platform == "ensemble"
    tensors = {t.name: (t.data_type, list(t.dims)) for t in config.input}
    read = set()
    for step in config.ensemble_scheduling.step:
        model = parse(repo / step.model_name / "config.pbtxt")
        assert model.max_batch_size >= config.max_batch_size  # Triton refuses a step that batches less
        declared_in = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        declared_out = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        assert set(step.input_map) == set(declared_in), (step.model_name, dict(step.input_map))
        for model_input, tensor in step.input_map.items():
            assert tensor in tensors, f"{step.model_name}.{model_input} reads {tensor}, which nothing produced before"
            (have_type, have_dims), (want_type, want_dims) = tensors[tensor], declared_in[model_input]
            assert have_type == want_type and dims_fit(have_dims, want_dims), (step.model_name, model_input)
            read.add(tensor)
        for model_output, tensor in step.output_map.items():
            assert model_output in declared_out and tensor not in tensors, (step.model_name, model_output)
            tensors[tensor] = declared_out[model_output]
    for output in config.output:
        assert output.name in tensors
        assert tensors[output.name] == (output.data_type, list(output.dims)), output.name
    unused = set(tensors) - read - {o.name for o in config.output}
    assert not unused, f"ensemble tensors {unused} are unused (Triton refuses the ensemble)"


def test_every_encoder_gets_a_config_triton_accepts_matching_its_graph(tiny_bundle, tmp_path):
    repo = tmp_path / "models"
    configs = write_triton_repository(tiny_bundle, repo, TritonOptions(max_batch_size=64, instance_count=2))
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert sorted(p.parent.name for p in configs) == sorted(ENCODERS + PYTHON_MODELS + ENSEMBLES)
    for name in ENCODERS:
        path = repo / name / "config.pbtxt"
        config = parse(path)
        model_file = path.parent / "1" / "model.onnx"
        assert config.name == name and config.backend == "onnxruntime" and config.max_batch_size == 64
        assert hashlib.sha256(model_file.read_bytes()).hexdigest() == manifest["graphs"][name]["fp32"]["sha256"]
        inputs, outputs = graph_io(model_file)
        for declared, actual in ((config.input, inputs), (config.output, outputs)):
            assert {t.name for t in declared} == set(actual)
            for t in declared:
                dtype, dims = actual[t.name]
                assert dtype_name(t.data_type) == dtype
                want = [-1 if d == "sequence" else d for d in dims[1:]]  # any token length: -1
                assert dims[0] == "batch" and list(t.dims) == want  # Triton batches along the graph's batch axis
                assert (t.name == "token_ids") == (-1 in want)
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        (group,) = config.instance_group
        assert group.count == 2 and model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
        assert not config.optimization.execution_accelerators.gpu_execution_accelerator
        assert config.parameters["zscir_sha256"].string_value == manifest["graphs"][name]["fp32"]["sha256"]
    only = write_triton_repository(tiny_bundle, tmp_path / "plain", TritonOptions(ensemble=False))
    assert sorted(p.parent.name for p in only) == ENCODERS


def test_python_models_and_ensembles_parse_and_are_wired_consistently(tiny_bundle, tiny_slerp_bundle, tmp_path):
    repo = tmp_path / "models"
    write_triton_repository(tiny_bundle, repo, TritonOptions(max_batch_size=16, preferred_batch_sizes=(4,)))
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    for name in PYTHON_MODELS:
        config = parse(repo / name / "config.pbtxt")
        assert config.backend == "python" and config.max_batch_size == 16
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"
        assert (repo / name / "1" / "model.py").is_file() and (repo / name / "1" / "zscir.json").is_file()
    for name in ("query_tokenizer", "text_tokenizer"):
        tokenizer = repo / name / "1" / "tokenizer.json"
        assert hashlib.sha256(tokenizer.read_bytes()).hexdigest() == manifest["tokenizer"]["sha256"]
    query = json.loads((repo / "query_tokenizer" / "1" / "zscir.json").read_text())
    assert query["template"] == manifest["templates"]["default"] and query["placeholder_id"] == 259
    assert query["trim"] is True  # the tiny tower is causal and its graphs take any id length
    assert json.loads((repo / "text_tokenizer" / "1" / "zscir.json").read_text())["template"] is None
    for name in ENSEMBLES:
        config = parse(repo / name / "config.pbtxt")
        assert (repo / name / "1").is_dir()  # Triton needs the (empty) version directory of an ensemble
        check_ensemble(repo, config)
    query_config = parse(repo / "composed_query" / "config.pbtxt")
    assert [s.model_name for s in query_config.ensemble_scheduling.step] == [
        "preprocess", "image_encoder", "query_tokenizer", "query_encoder"]
    assert [(o.name, dtype_name(o.data_type), list(o.dims)) for o in query_config.output] == [
        ("QUERY", "TYPE_FP32", [manifest["embed_dim"]])]
    assert {t.name: dtype_name(t.data_type) for t in query_config.input} == {"IMAGE": "TYPE_STRING",
                                                                             "TEXT": "TYPE_STRING"}
    slerp_repo = tmp_path / "slerp"
    write_triton_repository(tiny_slerp_bundle, slerp_repo, TritonOptions())
    assert not (slerp_repo / "query_tokenizer").exists() and not (slerp_repo / "query_encoder").exists()
    slerp_query = parse(slerp_repo / "composed_query" / "config.pbtxt")
    assert [s.model_name for s in slerp_query.ensemble_scheduling.step][-1] == "compose"
    assert json.loads((slerp_repo / "compose" / "1" / "zscir.json").read_text()) == {
        "role": "compose", "method": "slerp", "alpha": 0.8}
    for name in ENSEMBLES:
        check_ensemble(slerp_repo, parse(slerp_repo / name / "config.pbtxt"))


def test_the_wiring_check_catches_a_miswired_step(tiny_bundle, tmp_path):
    repo = tmp_path / "models"
    write_triton_repository(tiny_bundle, repo, TritonOptions())
    config = parse(repo / "composed_query" / "config.pbtxt")
    config.ensemble_scheduling.step[3].input_map["token_ids"] = "IMAGE_FEATURES"  # float features as ids
    with pytest.raises(AssertionError):
        check_ensemble(repo, config)
    config = parse(repo / "composed_query" / "config.pbtxt")
    del config.ensemble_scheduling.step[1].output_map["image_features"]  # the query encoder reads nothing
    with pytest.raises(AssertionError, match="nothing produced"):
        check_ensemble(repo, config)


def accelerator(path):
    (found,) = parse(path).optimization.execution_accelerators.gpu_execution_accelerator
    assert found.name == "tensorrt"
    return dict(found.parameters)


def test_tensorrt_acceleration_and_cpu_fp16_settings(tiny_bundle, tmp_path):
    profiles = (Profile("latency", 1, 1, 8), Profile("throughput", 2, 16, 64))
    write_triton_repository(tiny_bundle, tmp_path / "trt", TritonOptions(precision="fp16", tensorrt=True,
                                                                        max_batch_size=64, profiles=profiles))
    for name in ENCODERS:
        parameters = accelerator(tmp_path / "trt" / name / "config.pbtxt")
        assert set(parameters) <= ORT_BACKEND_TRT_KEYS, set(parameters) - ORT_BACKEND_TRT_KEYS
        assert parameters["precision_mode"] == "FP16" and parameters["trt_layer_norm_fp32_fallback"] == "1"
        assert int(parameters["max_workspace_size_bytes"]) > 0
        assert parameters["trt_engine_cache_path"] == parameters["trt_timing_cache_path"] == f"/models/{name}/trt_cache"
        assert (tmp_path / "trt" / name / "trt_cache").is_dir()
    image = accelerator(tmp_path / "trt" / "image_encoder" / "config.pbtxt")  # one name:shape per profile
    assert image["trt_profile_min_shapes"] == "pixels:1x3x32x32,pixels:2x3x32x32"
    assert image["trt_profile_opt_shapes"] == "pixels:1x3x32x32,pixels:16x3x32x32"
    assert image["trt_profile_max_shapes"] == "pixels:8x3x32x32,pixels:64x3x32x32"
    query = accelerator(tmp_path / "trt" / "query_encoder" / "config.pbtxt")  # ids: 1 .. the context (77)
    assert query["trt_profile_min_shapes"] == "image_features:1x48,token_ids:1x1,image_features:2x48,token_ids:2x1"
    assert query["trt_profile_max_shapes"] == ("image_features:8x48,token_ids:8x77,"
                                               "image_features:64x48,token_ids:64x77")
    write_triton_repository(tiny_bundle, tmp_path / "fp32", TritonOptions(tensorrt=True, trt_cache_dir="/cache"))
    text = accelerator(tmp_path / "fp32" / "text_encoder" / "config.pbtxt")
    assert text["precision_mode"] == "FP32" and "trt_layer_norm_fp32_fallback" not in text
    assert text["trt_engine_cache_path"] == "/cache/text_encoder"
    assert text["trt_profile_opt_shapes"] == "token_ids:1x32,token_ids:32x32"
    assert not (tmp_path / "fp32" / "text_encoder" / "trt_cache").exists()
    with pytest.raises(TritonError, match="largest TensorRT profile"):
        TritonOptions(tensorrt=True, max_batch_size=256)
    with pytest.raises(TritonError, match="absolute"):
        TritonOptions(tensorrt=True, trt_cache_dir="cache")
    cpu = write_triton_repository(tiny_bundle, tmp_path / "cpu", TritonOptions(precision="fp16", instance_kind="cpu"))
    for path in cpu[:3]:
        config = parse(path)
        assert config.optimization.graph.level == 1  # no layout transforms: ORT's fp16 NchwcTransformer crash
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"


def bundle_with_engines(bundle, target, engines):
    """A copy of a bundle whose manifest lists TensorRT engines, their files arbitrary bytes: no TensorRT
    here, only the repository's configs and copies are tested (a real plan is built by `zscir-infer
    engines` on the server's GPU). engines: [(compute capability, TensorRT version, profile maxima)]."""
    shutil.copytree(bundle, target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "engines").mkdir()
    entries = []
    for cc, version, maxima in engines:
        for graph in ENCODERS:
            data = f"fake engine {graph} {cc} {version}".encode()
            file = f"engines/{graph}.fp16.{cc}.{version}.plan"
            (target / file).write_bytes(data)
            entries.append({
                "graph": graph, "precision": "fp16", "file": file, "sha256": hashlib.sha256(data).hexdigest(),
                "cache_key": hashlib.sha256(file.encode()).hexdigest(), "tensorrt_version": version,
                "compute_capability": cc, "onnx": manifest["graphs"][graph]["fp16"]["file"], "strongly_typed": True,
                "profiles": [{"name": f"p{i}", "min": 1, "opt": m // 2 or 1, "max": m} for i, m in enumerate(maxima)]})
    manifest["engines"] = entries
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def test_tensorrt_plans_from_the_bundle_engines(tiny_bundle, tmp_path):
    bundle = bundle_with_engines(tiny_bundle, tmp_path / "bundle", [("9.0", "10.3.0", (8, 64))])
    repo = tmp_path / "plans"
    write_triton_repository(bundle, repo, TritonOptions(precision="fp16", engine="tensorrt_plan", max_batch_size=64))
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ENCODERS:
        config = parse(repo / name / "config.pbtxt")
        (entry,) = [e for e in manifest["engines"] if e["graph"] == name]
        assert config.platform == "tensorrt_plan" and not config.backend and config.max_batch_size == 64
        assert (repo / name / "1" / "model.plan").read_bytes() == (bundle / entry["file"]).read_bytes()
        assert not (repo / name / "1" / "model.onnx").exists()
        (group,) = config.instance_group
        assert list(group.profile) == ["0", "1"]  # every profile of the engine, by index
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
        assert config.parameters["zscir_sha256"].string_value == entry["sha256"]
        assert config.parameters["zscir_compute_capability"].string_value == "9.0"
        graph = manifest["graphs"][name]["fp16"]
        assert [t.name for t in config.input] == [t["name"] for t in graph["inputs"]]
        assert [list(t.dims) for t in config.output] == [[48]]
    check_ensemble(repo, parse(repo / "composed_query" / "config.pbtxt"))
    with pytest.raises(TritonError, match="largest profile of the image_encoder engine \\(64\\)"):
        write_triton_repository(bundle, tmp_path / "a", TritonOptions(precision="fp16", engine="tensorrt_plan"))
    with pytest.raises(TritonError, match="zscir-infer engines .* --precision fp32"):
        write_triton_repository(bundle, tmp_path / "a", TritonOptions(engine="tensorrt_plan", max_batch_size=64))
    assert not (tmp_path / "a").exists()  # all models or none
    with pytest.raises(TritonError, match="GPU instances"):
        TritonOptions(engine="tensorrt_plan", instance_kind="cpu")
    with pytest.raises(TritonError, match="drop one"):
        TritonOptions(engine="tensorrt_plan", tensorrt=True)
    with pytest.raises(TritonError, match="needs --triton-engine tensorrt_plan"):
        TritonOptions(compute_capability="9.0")


def test_several_engines_for_a_graph_are_chosen_by_gpu_and_tensorrt_version(tiny_bundle, tmp_path):
    bundle = bundle_with_engines(tiny_bundle, tmp_path / "bundle", [("8.9", "10.3.0", (8,)), ("9.0", "10.3.0", (8,)),
                                                                    ("9.0", "10.8.0", (8,))])
    options = {"precision": "fp16", "engine": "tensorrt_plan", "max_batch_size": 8, "preferred_batch_sizes": (4,)}
    with pytest.raises(TritonError, match="several fp16 image_encoder engines .*compute capability 8.9.*"
                                          "--triton-compute-capability"):
        write_triton_repository(bundle, tmp_path / "r", TritonOptions(**options))
    with pytest.raises(TritonError, match="several"):
        write_triton_repository(bundle, tmp_path / "r", TritonOptions(**options, compute_capability="sm_90"))
    with pytest.raises(TritonError, match="None of .* matches compute capability 7.5"):
        write_triton_repository(bundle, tmp_path / "r", TritonOptions(**options, compute_capability="75"))
    write_triton_repository(bundle, tmp_path / "r", TritonOptions(**options, compute_capability="sm_90",
                                                                  tensorrt_version="10.8"))
    config = parse(tmp_path / "r" / "text_encoder" / "config.pbtxt")
    assert config.parameters["zscir_tensorrt_version"].string_value == "10.8.0"
    assert (tmp_path / "r" / "text_encoder" / "1" / "model.plan").read_bytes() == b"fake engine text_encoder 9.0 10.8.0"
    write_triton_repository(bundle, tmp_path / "s", TritonOptions(**options, compute_capability="8.9"))
    assert parse(tmp_path / "s" / "text_encoder" / "config.pbtxt").parameters[
        "zscir_compute_capability"].string_value == "8.9"


def test_repository_errors(tiny_bundle, tiny_slerp_bundle, tmp_path):
    with pytest.raises(TritonError, match="no int8"):
        write_triton_repository(tiny_slerp_bundle, tmp_path / "a", TritonOptions(precision="int8"))
    assert not (tmp_path / "a").exists()  # all models or none
    with pytest.raises(TritonError, match="GPU instances"):
        TritonOptions(instance_kind="cpu", tensorrt=True)
    with pytest.raises(TritonError, match="Preferred batch sizes"):
        TritonOptions(max_batch_size=16, preferred_batch_sizes=(8, 32))
    with pytest.raises(TritonError, match="not one of"):
        TritonOptions(engine="openvino")
    write_triton_repository(tiny_bundle, tmp_path / "b", TritonOptions())
    with pytest.raises(FileExistsError, match="--force"):
        write_triton_repository(tiny_bundle, tmp_path / "b", TritonOptions())
    write_triton_repository(tiny_bundle, tmp_path / "b", TritonOptions(max_batch_size=8, preferred_batch_sizes=(4,)),
                            force=True)
    assert parse(tmp_path / "b" / "text_encoder" / "config.pbtxt").max_batch_size == 8
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_bundle, damaged)
    (damaged / "tokenizer.json").write_text((damaged / "tokenizer.json").read_text() + " ")
    with pytest.raises(TritonError, match="sha256"):
        write_triton_repository(damaged, tmp_path / "c", TritonOptions())
    assert not (tmp_path / "c").exists()


def test_a_sum_bundle_whose_encoder_normalizes_is_refused_as_the_runtime_refuses_it(tiny_slerp_bundle, tmp_path):
    bundle = Path(shutil.copytree(tiny_slerp_bundle, tmp_path / "sum"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["method"] = "sum"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    write_triton_repository(bundle, tmp_path / "raw", TritonOptions())
    assert json.loads((tmp_path / "raw" / "compose" / "1" / "zscir.json").read_text())["method"] == "sum"
    manifest["graphs"]["image_encoder"]["fp32"]["normalized_output"] = True
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TritonError, match="image_encoder .*normalized features.*method 'sum'"):
        write_triton_repository(bundle, tmp_path / "normalized", TritonOptions())
    assert not (tmp_path / "normalized").exists()


def test_the_cli_passes_the_triton_options(tmp_path):
    from typer.testing import CliRunner
    from zscir_export.cli import app

    def export(*args):
        return CliRunner().invoke(app, ["--quiet", "--method", "slerp", "--model", "zscir-tiny", *map(str, args)])

    refused = [
        (["--triton-engine", "tensorrt_plan"], "--engine trt"),
        (["--triton-tensorrt", "--triton-trt-cache-dir", "cache"], "absolute"),
        (["--triton-compute-capability", "9.0"], "needs --triton-engine tensorrt_plan"),
        (["--triton-tensorrt", "--profile", "small:1,2,4"], "largest TensorRT profile"),
    ]
    for args, message in refused:  # before anything is exported
        result = export("--out", tmp_path / "out", "--triton", tmp_path / "t", *args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert not (tmp_path / "out").exists()
    repo = tmp_path / "models"
    result = export("--out", tmp_path / "bundle", "--triton", repo, "--triton-tensorrt", "--triton-max-batch", 16,
                    "--profile", "latency:1,1,4", "--profile", "batch:2,8,16", "--triton-trt-cache-dir", "/c",
                    "--no-triton-ensemble")
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in repo.glob("*/config.pbtxt")) == ["image_encoder", "text_encoder"]
    parameters = accelerator(repo / "image_encoder" / "config.pbtxt")
    assert parameters["trt_profile_max_shapes"] == "pixels:4x3x32x32,pixels:16x3x32x32"
    assert parameters["trt_engine_cache_path"] == "/c/image_encoder"
    assert list(parse(repo / "image_encoder" / "config.pbtxt").dynamic_batching.preferred_batch_size) == [8]


def test_the_writer_needs_no_torch(tiny_bundle, tmp_path):
    """On the server's machine (base install, engines built there) the repository is written without torch."""
    import subprocess
    import sys

    script = ("import sys\n"
              "for name in ('torch', 'torchvision', 'open_clip', 'zscir_train', 'onnx'):\n"
              "    sys.modules[name] = None  # importing it raises ImportError\n"
              "from zscir_export.triton import TritonOptions, write_triton_repository\n"
              "write_triton_repository(sys.argv[1], sys.argv[2], TritonOptions())\n")
    done = subprocess.run([sys.executable, "-c", script, str(tiny_bundle), str(tmp_path / "models")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "models" / "composed_query" / "config.pbtxt").is_file()


def test_a_template_without_the_placeholder_is_refused_when_writing(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["templates"]["default"] = "a photo that {caption}"  # the image token would be dropped
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TritonError, match="does not contain the placeholder"):
        write_triton_repository(bundle, tmp_path / "models", TritonOptions())
    assert not (tmp_path / "models").exists()
    write_triton_repository(bundle, tmp_path / "models", TritonOptions(ensemble=False))
