"""fp16 and int8 graphs: fp32 I/O, fp16 weights, the fragile ops in fp32, accuracy against PyTorch."""

import collections
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from zscir_export.fp16 import ORT_DISABLED_OPTIMIZERS, convert_to_fp16
from zscir_export.validate import TOLERANCES, ort_session

GRAPHS = ("image_encoder", "query_encoder", "text_encoder")


def manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info)}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


@pytest.mark.parametrize("graph", GRAPHS)
def test_fp16_graphs_keep_fp32_io_and_fp32_norms_softmax_reductions(tiny_bundle, graph):
    entry = manifest(tiny_bundle)["graphs"][graph]["fp16"]
    model = onnx.load(str(tiny_bundle / entry["file"]))
    assert all(v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT32)
               for v in (*model.graph.input, *model.graph.output))
    types = tensor_types(model)
    weights = [t for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    big = [t for t in weights if np.prod(t.dims) >= 1024]
    assert big and all(t.data_type == TensorProto.FLOAT16 for t in big)  # the matrices are fp16
    fragile = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax", "ReduceL2")]
    assert fragile
    for node in fragile:
        assert types[node.input[0]] == TensorProto.FLOAT, f"{node.op_type} {node.name} computes in fp16"
    names = collections.Counter(n.name for n in model.graph.node)
    outputs = collections.Counter(o for n in model.graph.node for o in n.output)
    assert max(names.values()) == 1 and max(outputs.values()) == 1
    assert entry["onnxruntime"]["disabled_optimizers"] == list(ORT_DISABLED_OPTIMIZERS)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_graphs_meet_their_thresholds_on_the_golden_inputs(tiny_bundle, precision):
    m = manifest(tiny_bundle)
    base = tiny_bundle / "golden"
    golden = json.loads((base / "golden.json").read_text())["graphs"]
    for graph in GRAPHS:
        entry = m["graphs"][graph][precision]
        inputs = {n: np.load(base / f) for n, f in golden[graph]["inputs"].items()}
        (name, file), = golden[graph]["outputs"].items()
        want = np.load(base / file)
        got = ort_session(tiny_bundle / entry["file"], precision).run(None, inputs)[0]
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() >= TOLERANCES[precision].min_cosine
        recorded = entry["validation"][name]
        assert recorded["min_cosine"] >= TOLERANCES[precision].min_cosine
        # the manifest holds the worst over the full batch and a batch of one; int8 rows depend on the batch
        # (dynamic quantization scales activations per batch), fp16 rows do not
        assert recorded["min_cosine"] <= cos.min() + 1e-6
        if precision == "fp16":
            assert recorded["min_cosine"] == pytest.approx(cos.min(), abs=1e-6)
        assert recorded["threshold_min_cosine"] == TOLERANCES[precision].min_cosine


def test_int8_graphs_are_dynamically_quantized(tiny_bundle):
    entry = manifest(tiny_bundle)["graphs"]["text_encoder"]["int8"]
    ops = {n.op_type for n in onnx.load(str(tiny_bundle / entry["file"])).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert entry["bytes"] < 0.5 * manifest(tiny_bundle)["graphs"]["text_encoder"]["fp32"]["bytes"]


def test_a_tensor_read_by_two_fp32_ops_converts_to_a_valid_graph(tmp_path):
    """ONNX Runtime's converter casts such a tensor once per reader, under one name and one output
    (the duplicate node names ONNX Runtime refuses); the conversion must still give a valid graph."""
    init = [numpy_helper.from_array(np.full(8, v, np.float32), n) for n, v in (("g", 1.0), ("b", 0.0), ("c", 0.5))]
    nodes = [helper.make_node("Add", ["x", "c"], ["h"], name="add0"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["l1"], name="ln1", axis=-1),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["l2"], name="ln2", axis=-1),
             helper.make_node("Add", ["l1", "l2"], ["y"], name="add1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "two_readers.onnx"))
    convert_to_fp16(tmp_path / "two_readers.onnx", tmp_path / "two_readers.fp16.onnx")
    converted = onnx.load(str(tmp_path / "two_readers.fp16.onnx"))
    outputs = collections.Counter(o for n in converted.graph.node for o in n.output)
    assert max(outputs.values()) == 1
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32) * 10
    want = ort_session(tmp_path / "two_readers.onnx", "fp32").run(None, {"x": x})[0]
    got = ort_session(tmp_path / "two_readers.fp16.onnx", "fp16").run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-2)
