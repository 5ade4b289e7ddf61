"""The Triton model repository, parsed with Triton's own model-config protobuf schema."""

import hashlib
import json

import onnx
import pytest
from google.protobuf import text_format
from zscir_export.triton import TritonError, TritonOptions, write_triton_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] (dev extra) parses Triton model configs")

TRITON_DTYPE = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT32: "TYPE_INT32"}


def parse(path):
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)  # raises on any field Triton does not know
    return config


def graph_io(model_path):
    model = onnx.load(str(model_path), load_external_data=False)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return ({v.name: (TRITON_DTYPE[v.type.tensor_type.elem_type], dims(v)) for v in model.graph.input},
            {v.name: (TRITON_DTYPE[v.type.tensor_type.elem_type], dims(v)) for v in model.graph.output})


def test_every_encoder_gets_a_config_triton_accepts_matching_its_graph(tiny_bundle, tmp_path):
    repo = tmp_path / "models"
    configs = write_triton_repository(tiny_bundle, repo, TritonOptions(max_batch_size=64, instance_count=2))
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert sorted(p.parent.name for p in configs) == ["image_encoder", "query_encoder", "text_encoder"]
    for path in configs:
        config, name = parse(path), path.parent.name
        model_file = path.parent / "1" / "model.onnx"
        assert config.name == name and config.backend == "onnxruntime" and config.max_batch_size == 64
        assert hashlib.sha256(model_file.read_bytes()).hexdigest() == manifest["graphs"][name]["fp32"]["sha256"]
        inputs, outputs = graph_io(model_file)
        for declared, actual in ((config.input, inputs), (config.output, outputs)):
            assert {t.name for t in declared} == set(actual)
            for t in declared:
                dtype, dims = actual[t.name]
                assert model_config_pb2.DataType.Name(t.data_type) == dtype
                want = [-1 if d == "sequence" else d for d in dims[1:]]  # any token length: -1
                assert dims[0] == "batch" and list(t.dims) == want  # Triton batches along the graph's batch axis
                assert (t.name == "token_ids") == (-1 in want)
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        (group,) = config.instance_group
        assert group.count == 2 and model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
        assert not config.optimization.execution_accelerators.gpu_execution_accelerator
        assert config.parameters["zscir_sha256"].string_value == manifest["graphs"][name]["fp32"]["sha256"]


def test_tensorrt_acceleration_and_cpu_fp16_settings(tiny_bundle, tmp_path):
    trt = write_triton_repository(tiny_bundle, tmp_path / "trt", TritonOptions(precision="fp16", tensorrt=True))
    for path in trt:
        (accelerator,) = parse(path).optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
        assert int(accelerator.parameters["max_workspace_size_bytes"]) > 0
    cpu = write_triton_repository(tiny_bundle, tmp_path / "cpu", TritonOptions(precision="fp16", instance_kind="cpu"))
    for path in cpu:
        config = parse(path)
        assert config.optimization.graph.level == 1  # no layout transforms: ORT's fp16 NchwcTransformer crash
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_CPU"


def test_repository_errors(tiny_bundle, tiny_slerp_bundle, tmp_path):
    with pytest.raises(TritonError, match="no int8"):
        write_triton_repository(tiny_slerp_bundle, tmp_path / "a", TritonOptions(precision="int8"))
    assert not (tmp_path / "a").exists()  # all models or none
    with pytest.raises(TritonError, match="GPU instances"):
        TritonOptions(instance_kind="cpu", tensorrt=True)
    with pytest.raises(TritonError, match="Preferred batch sizes"):
        TritonOptions(max_batch_size=16, preferred_batch_sizes=(8, 32))
    write_triton_repository(tiny_bundle, tmp_path / "b", TritonOptions())
    with pytest.raises(FileExistsError, match="--force"):
        write_triton_repository(tiny_bundle, tmp_path / "b", TritonOptions())
    write_triton_repository(tiny_bundle, tmp_path / "b", TritonOptions(max_batch_size=8, preferred_batch_sizes=(4,)),
                            force=True)
    assert parse(tmp_path / "b" / "text_encoder" / "config.pbtxt").max_batch_size == 8
