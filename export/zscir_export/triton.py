"""A Triton Inference Server model repository for a bundle's encoders (ONNX Runtime backend).

    REPO/image_encoder/config.pbtxt, REPO/image_encoder/1/model.onnx   (likewise query_encoder, text_encoder)

Each config declares the graph's tensors without the batch axis (`max_batch_size` > 0 makes Triton
batch along the first axis, which is the graphs' dynamic `batch`), dynamic batching with preferred
batch sizes and a queue delay, an instance group, and optionally ONNX Runtime's TensorRT execution
accelerator. The token ids of sequence-adaptive text graphs (manifest shape [batch, "sequence"]) have
`dims: [ -1 ]`: any length up to the context. Triton's dynamic batcher joins only requests of one shape,
so a client that cuts its ids after the end-of-text token should round the length as the runtime does
(`zscir_infer.contract.trimmed_sequence_length`: multiples of 8). Tokenization and preprocessing stay
with the client (the bundle's tokenizer.json and manifest `preprocess`): Triton serves tensors.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from zscir_export.bundle import default_permissions
from zscir_infer.atomic import atomic_directory
from zscir_infer.contract import BATCH_AXIS, SEQUENCE_AXIS
from zscir_infer.errors import ZscirError

TRITON_DTYPE = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
INSTANCE_KINDS = ("gpu", "cpu")
MODEL_FILE = "model.onnx"
MODEL_VERSION = "1"
DEFAULT_MAX_BATCH = 128
DEFAULT_PREFERRED_BATCHES = (8, 32)
DEFAULT_QUEUE_DELAY_US = 100
TRT_WORKSPACE_BYTES = 4 << 30
# ORT graph optimization level 1 (basic + extended, no layout transforms): avoids the NchwcTransformer
# crash on fp16 graphs on CPU (microsoft/onnxruntime#28392).
ORT_LEVEL_WITHOUT_LAYOUT = 1


class TritonError(ZscirError, ValueError):
    """The repository cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class TritonOptions:
    precision: str = "fp32"
    max_batch_size: int = DEFAULT_MAX_BATCH
    preferred_batch_sizes: tuple[int, ...] = DEFAULT_PREFERRED_BATCHES
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instance_kind: str = "gpu"
    instance_count: int = 1
    tensorrt: bool = False  # ONNX Runtime's TensorRT accelerator (GPU instances only)

    def __post_init__(self):
        if self.instance_kind not in INSTANCE_KINDS:
            raise TritonError(f"Instance kind '{self.instance_kind}' is not one of {INSTANCE_KINDS}.")
        if self.max_batch_size < 1 or self.instance_count < 1:
            raise TritonError("max batch size and instance count must be at least 1.")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise TritonError(f"Preferred batch sizes {self.preferred_batch_sizes} must lie in "
                              f"[1, {self.max_batch_size}].")
        if self.tensorrt and self.instance_kind != "gpu":
            raise TritonError("TensorRT acceleration needs GPU instances (--triton-kind gpu).")


def _tensor(spec: dict) -> str:
    """One tensor of a config: dims without the batch axis; a dynamic sequence axis is -1 (any length)."""
    if spec["shape"][0] != BATCH_AXIS or BATCH_AXIS in spec["shape"][1:]:
        raise TritonError(f"Tensor {spec['name']} {spec['shape']}: Triton batching needs the batch axis first.")
    unknown = [d for d in spec["shape"][1:] if not isinstance(d, int) and d != SEQUENCE_AXIS]
    if unknown:
        raise TritonError(f"Tensor {spec['name']} {spec['shape']}: unknown dynamic axis {unknown}.")
    dims = ", ".join("-1" if d == SEQUENCE_AXIS else str(d) for d in spec["shape"][1:])
    return f'  {{ name: "{spec["name"]}" data_type: {TRITON_DTYPE[spec["dtype"]]} dims: [ {dims} ] }}'


def model_config(name: str, graph: dict, options: TritonOptions) -> str:
    """config.pbtxt text for one graph entry of the manifest."""
    preferred = ", ".join(str(b) for b in options.preferred_batch_sizes)
    kind = "KIND_GPU" if options.instance_kind == "gpu" else "KIND_CPU"
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {options.max_batch_size}",
        "input [", ",\n".join(_tensor(t) for t in graph["inputs"]), "]",
        "output [", ",\n".join(_tensor(t) for t in graph["outputs"]), "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {preferred} ]",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        f"instance_group [ {{ count: {options.instance_count} kind: {kind} }} ]",
    ]
    optimization = []
    if graph["precision"] == "fp16" and options.instance_kind == "cpu":
        optimization.append(f"  graph {{ level: {ORT_LEVEL_WITHOUT_LAYOUT} }}")
    if options.tensorrt:
        precision_mode = "FP16" if graph["precision"] == "fp16" else "FP32"
        optimization += [
            "  execution_accelerators {",
            "    gpu_execution_accelerator: [ {",
            '      name: "tensorrt"',
            f'      parameters {{ key: "precision_mode" value: "{precision_mode}" }}',
            f'      parameters {{ key: "max_workspace_size_bytes" value: "{TRT_WORKSPACE_BYTES}" }}',
            '      parameters { key: "trt_engine_cache_enable" value: "1" }',
            '      parameters { key: "trt_timing_cache_enable" value: "1" }',
            "    } ]",
            "  }",
        ]
    if optimization:
        lines += ["optimization {", *optimization, "}"]
    lines.append(f'parameters {{ key: "zscir_sha256" value: {{ string_value: "{graph["sha256"]}" }} }}')
    return "\n".join(lines) + "\n"


def write_triton_repository(bundle_dir: Path, repository: Path, options: TritonOptions,
                            force: bool = False) -> list[Path]:
    """Write the model repository (atomically: all models or none); return the config files."""
    bundle_dir = Path(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    configs = []
    with atomic_directory(repository, force) as tmp:
        for name, variants in manifest["graphs"].items():
            graph = variants.get(options.precision)
            if graph is None:
                raise TritonError(f"The bundle has no {options.precision} {name}: export with "
                                  f"--{options.precision} or choose another --triton-precision.")
            version_dir = tmp / name / MODEL_VERSION
            version_dir.mkdir(parents=True)
            shutil.copyfile(bundle_dir / graph["file"], version_dir / MODEL_FILE)
            for extra in graph.get("external_data", []):  # the graph names its data file: keep that name
                shutil.copyfile(bundle_dir / extra["file"], version_dir / Path(extra["file"]).name)
            (tmp / name / "config.pbtxt").write_text(model_config(name, graph, options), encoding="utf-8")
            configs.append(repository / name / "config.pbtxt")
        default_permissions(tmp)
    return configs
