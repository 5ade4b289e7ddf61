"""fp16 graphs: ONNX Runtime's float16 converter, with fp32 I/O and the numerically fragile ops kept fp32.

`onnxruntime.transformers.float16.convert_float_to_float16` (maintained with ONNX Runtime) does the
conversion; `keep_io_types=True` keeps the graph's inputs and outputs float32 (the runtime and TensorRT
see the same signature at every precision) and `op_block_list` keeps LayerNorm, softmax and the
reductions in fp32 (variance and exp overflow in fp16; L2 norms lose digits). What the converter
leaves behind is repaired with documented, semantics-preserving steps, then checked:
- its new nodes are appended at the end, so the graph is sorted topologically again;
- a tensor read by two fp32 ops gets two identical Cast nodes with one output name (the "duplicate
  node names" ONNX Runtime refuses, DESIGN §8): identical duplicates are dropped.
(`onnxconverter_common.float16` 1.16 crashes in `remove_unnecessary_cast_node` on these graphs.)

ONNX Runtime 1.24-1.31 on x86-64 crashes (segfault) creating a CPU session for an fp16 graph with a
Transpose feeding a MatMul, in its NchwcTransformer (microsoft/onnxruntime#28392); that optimizer only
serves convolutions, so sessions for fp16 graphs disable it (`ORT_DISABLED_OPTIMIZERS`, recorded in
the manifest for the runtime).
"""

from __future__ import annotations

import collections
from pathlib import Path

import onnx
from onnxruntime.transformers import float16
from onnxruntime.transformers.onnx_model import OnnxModel

from zscir_export.graphs import save_onnx
from zscir_infer.errors import ZscirError

FP32_OPS = (
    "LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceL1",
    "ReduceMax", "ReduceMin", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp", "ArgMax", "ArgMin",
)
ORT_DISABLED_OPTIMIZERS = ("NchwcTransformer",)  # microsoft/onnxruntime#28392, see the module docstring


class Fp16ConversionError(ZscirError, RuntimeError):
    """The converted graph is not a valid ONNX graph with the original signature."""


def convert_to_fp16(src: Path, dst: Path) -> None:
    """Write the fp16 version of the fp32 graph `src` to `dst` (fp32 inputs/outputs, fp32 norms)."""
    # A path, not a ModelProto: the converter then infers shapes on disk, which works above 2 GiB.
    model = float16.convert_float_to_float16(
        str(src), keep_io_types=True, op_block_list=sorted(set(FP32_OPS) | set(float16.DEFAULT_OP_BLOCK_LIST)),
    )
    OnnxModel.graph_topological_sort(model.graph)
    _drop_identical_duplicates(model.graph)
    _check_signature(model, src)
    save_onnx(model, dst)
    try:
        onnx.checker.check_model(str(dst))
    except onnx.checker.ValidationError as exc:
        raise Fp16ConversionError(f"The fp16 version of {src.name} is not a valid ONNX graph: {exc}") from exc


def _node_key(node: onnx.NodeProto) -> bytes:
    return node.SerializeToString(deterministic=True)


def _drop_identical_duplicates(graph: onnx.GraphProto) -> None:
    """Remove nodes that repeat another node exactly (same op, inputs, outputs, attributes, name)."""
    seen, kept = set(), []
    for node in graph.node:
        key = _node_key(node)
        if key not in seen:
            seen.add(key)
            kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
        infos = list({v.name: v for v in reversed(graph.value_info)}.values())[::-1]  # first of each name
        del graph.value_info[:]
        graph.value_info.extend(infos)
    producers = collections.Counter(out for node in graph.node for out in node.output if out)
    clashes = sorted(name for name, count in producers.items() if count > 1)
    if clashes:
        raise Fp16ConversionError(
            f"The fp16 converter produced tensors written by two different nodes: {clashes[:5]}; "
            "this is a converter bug (report it with the graph), the fp32 graph is unaffected."
        )
    names = collections.Counter(node.name for node in graph.node if node.name)
    for node in graph.node:  # distinct nodes with one name: names carry no meaning, make them unique
        if names[node.name] > 1:
            node.name = f"{node.name}_{node.output[0]}"


def _check_signature(model: onnx.ModelProto, src: Path) -> None:
    original = onnx.load(str(src), load_external_data=False)

    def signature(m):
        return [(v.name, v.type.tensor_type.elem_type) for v in (*m.graph.input, *m.graph.output)]

    if signature(model) != signature(original):
        raise Fp16ConversionError(
            f"The fp16 version of {src.name} changed the graph's inputs/outputs: {signature(original)} -> "
            f"{signature(model)}; they must stay as exported (fp32 in, fp32 out)."
        )
