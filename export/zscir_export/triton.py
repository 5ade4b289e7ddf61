"""A Triton Inference Server model repository for a bundle: its encoders, and ensembles that take raw bytes.

    REPO/image_encoder/config.pbtxt, REPO/image_encoder/1/model.onnx   (likewise query_encoder, text_encoder;
                                                                         1/model.plan with engine tensorrt_plan)
    REPO/preprocess/1/model.py        Python backend: IMAGE (encoded image bytes) -> pixels
    REPO/query_tokenizer/1/model.py   Python backend: TEXT -> the bundle's template filled -> token ids (phi)
    REPO/text_tokenizer/1/model.py    Python backend: TEXT -> token ids
    REPO/normalize/1/model.py         Python backend: features -> unit rows
    REPO/compose/1/model.py           Python backend: slerp / sum of image and text features (encoder bundles)
    REPO/composed_query/              ensemble: IMAGE, TEXT -> QUERY (the bundle's default method)
    REPO/text_embedding/              ensemble: TEXT -> TEXT_EMBEDDING (unit), TEXT_FEATURES (raw)
    REPO/image_embedding/             ensemble: IMAGE -> IMAGE_EMBEDDING (unit), IMAGE_FEATURES (raw)

Encoders. Each config declares the graph's tensors without the batch axis (`max_batch_size` > 0 makes
Triton batch along the first axis, the graphs' dynamic `batch`), dynamic batching with preferred batch
sizes and a queue delay, and an instance group. The token ids of sequence-adaptive text graphs (manifest
shape [batch, "sequence"]) have `dims: [ -1 ]`: any length up to the context; Triton's dynamic batcher
joins only requests of one shape, so ids are cut as the runtime cuts them
(`zscir_infer.contract.trimmed_sequence_length`: multiples of 8). Two flavours (`TritonOptions.engine`):
- "onnx": the ONNX Runtime backend, optionally with its TensorRT execution accelerator (`tensorrt`), given
  explicit optimization profiles (`trt_profile_{min,opt,max}_shapes`, one profile per `profiles` entry,
  shapes from `zscir_infer.engines.profile_shapes`), engine and timing caches at an absolute path on the
  server (`trt_cache_dir`, default REPO/<model>/trt_cache as mounted at /models) and, for fp16 graphs,
  `trt_layer_norm_fp32_fallback`. Every key emitted is one Triton's onnxruntime_backend parses
  (src/onnxruntime.cc); an unknown key would fail the model load.
- "tensorrt_plan": the bundle's native TensorRT engines (manifest `engines`, built on the target GPU with
  `zscir-infer engines BUNDLE`) as model.plan, every optimization profile listed in the instance group.
  An engine runs only on its GPU generation with its TensorRT version (the container's), so a bundle
  holding several for one graph is narrowed with `compute_capability` / `tensorrt_version`.

Ensembles (`ensemble`, default on) run tokenization and preprocessing in Triton's Python backend with
zscir_infer's own code (the container needs zscir installed: docs/triton.md); each Python model's version directory
holds `model.py` (zscir_export/triton_models/model.py) and `zscir.json` (its settings from the manifest),
plus the bundle's tokenizer.json for the tokenizers, so it needs nothing of the bundle. The composed query
is exactly `zscir_infer.Runtime.encode_queries` with the bundle's default method: phi = the query encoder
on the image features and the ids of the default template filled with the text (its output is already
unit length, as the runtime returns it); slerp / sum = the Runtime's formulas on the raw image and text
features (alpha from the manifest).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

from zscir_infer.atomic import atomic_directory
from zscir_infer.bundle import Bundle, BundleError, load_bundle
from zscir_infer.contract import (
    AVERAGE,
    BATCH_AXIS,
    GRAPH_INPUTS,
    IMAGE_ENCODER,
    IMAGE_FEATURES,
    PHI,
    PIXELS,
    QUERY_ENCODER,
    SEQUENCE_AXIS,
    SLERP,
    SUM,
    TEXT_ENCODER,
    TOKEN_IDS,
    TemplateError,
    fill_template,
)
from zscir_infer.engines import (
    DEFAULT_PROFILES,
    ENGINE_PRECISIONS,
    EngineError,
    Profile,
    check_profiles,
    profile_shapes,
)
from zscir_infer.errors import ZscirError

TRITON_DTYPE = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
INSTANCE_KINDS = ("gpu", "cpu")
ONNX, TENSORRT_PLAN = "onnx", "tensorrt_plan"
ENGINES = (ONNX, TENSORRT_PLAN)
MODEL_FILE = {ONNX: "model.onnx", TENSORRT_PLAN: "model.plan"}
MODEL_VERSION = "1"
DEFAULT_MAX_BATCH = 128
DEFAULT_PREFERRED_BATCHES = (8, 32)
DEFAULT_QUEUE_DELAY_US = 100
TRT_WORKSPACE_BYTES = 4 << 30
# ORT graph optimization level 1 (basic + extended, no layout transforms): avoids the NchwcTransformer
# crash on fp16 graphs on CPU (microsoft/onnxruntime#28392).
ORT_LEVEL_WITHOUT_LAYOUT = 1
SERVER_REPOSITORY = "/models"  # where the repository is mounted in the server (NGC's examples)
TRT_CACHE = "trt_cache"  # ORT-TensorRT engine and timing caches, per model
ENGINES_COMMAND = "zscir-infer engines BUNDLE --precision {precision}"

# --- the Python-backend models and the ensembles ---------------------------------------------------------
PYTHON_MODEL_SOURCE = "model.py"  # in zscir_export.triton_models; Triton loads <model>/<version>/model.py
SETTINGS_FILE = "zscir.json"  # the Python model's settings, beside model.py (read by triton_models/model.py)
TOKENIZER_FILE = "tokenizer.json"
PREPROCESS, QUERY_TOKENIZER, TEXT_TOKENIZER, NORMALIZE, COMPOSE = (
    "preprocess", "query_tokenizer", "text_tokenizer", "normalize", "compose")
COMPOSED_QUERY, TEXT_EMBEDDING, IMAGE_EMBEDDING = "composed_query", "text_embedding", "image_embedding"
IMAGE_IN, TEXT_IN = "IMAGE", "TEXT"  # ensemble inputs: encoded image bytes, UTF-8 text (TYPE_STRING)
QUERY_OUT = "QUERY"
TEXT_EMBEDDING_OUT, TEXT_FEATURES_OUT = "TEXT_EMBEDDING", "TEXT_FEATURES"
IMAGE_EMBEDDING_OUT, IMAGE_FEATURES_OUT = "IMAGE_EMBEDDING", "IMAGE_FEATURES"
FEATURES_IN, EMBEDDING_OUT = "features", "embedding"  # the normalize model
COMPOSE_IMAGE_IN, COMPOSE_TEXT_IN, COMPOSE_OUT = "image_features", "text_features", "query"
COMPOSE_METHODS = (SLERP, SUM, AVERAGE)  # training-free compositions the compose model runs
STRING = "TYPE_STRING"


class TritonError(ZscirError, ValueError):
    """The repository cannot be written as asked; the message says what to change."""


@dataclass(frozen=True)
class TritonOptions:
    precision: str = "fp32"
    max_batch_size: int = DEFAULT_MAX_BATCH
    preferred_batch_sizes: tuple[int, ...] = DEFAULT_PREFERRED_BATCHES
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instance_kind: str = "gpu"  # the encoders' instances; the Python models run on CPU
    instance_count: int = 1
    tensorrt: bool = False  # ONNX Runtime's TensorRT accelerator (engine "onnx", GPU instances only)
    engine: str = ONNX  # "onnx" (ONNX Runtime backend) or "tensorrt_plan" (the bundle's TensorRT engines)
    compute_capability: str | None = None  # tensorrt_plan: the engines built for this GPU generation
    tensorrt_version: str | None = None  # tensorrt_plan: ... by this TensorRT version (a prefix: "10.3")
    profiles: tuple[Profile, ...] = DEFAULT_PROFILES  # the accelerator's optimization profiles (batch axis)
    trt_cache_dir: str | None = None  # absolute, on the server; default /models/<model>/trt_cache
    ensemble: bool = True  # the Python models and ensembles that take raw image bytes and text

    def __post_init__(self):
        if self.instance_kind not in INSTANCE_KINDS:
            raise TritonError(f"Instance kind '{self.instance_kind}' is not one of {INSTANCE_KINDS}.")
        if self.engine not in ENGINES:
            raise TritonError(f"Triton engine '{self.engine}' is not one of {ENGINES}.")
        if self.max_batch_size < 1 or self.instance_count < 1:
            raise TritonError("max batch size and instance count must be at least 1.")
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise TritonError(f"Preferred batch sizes {self.preferred_batch_sizes} must lie in "
                              f"[1, {self.max_batch_size}].")
        if self.tensorrt and self.instance_kind != "gpu":
            raise TritonError("TensorRT acceleration needs GPU instances (--triton-kind gpu).")
        if self.engine == TENSORRT_PLAN:
            self._check_plan()
        elif self.compute_capability is not None or self.tensorrt_version is not None:
            raise TritonError("A compute capability or TensorRT version picks TensorRT engines: it needs "
                              "--triton-engine tensorrt_plan.")
        if self.tensorrt:
            try:
                profiles = check_profiles(self.profiles)
            except EngineError as exc:
                raise TritonError(str(exc)) from exc
            largest = max(p.max for p in profiles)
            if self.max_batch_size > largest:
                raise TritonError(f"Max batch size {self.max_batch_size} exceeds the largest TensorRT profile "
                                  f"({largest}): lower --triton-max-batch or add a larger --profile.")
        if self.trt_cache_dir is not None and not PurePosixPath(self.trt_cache_dir).is_absolute():
            raise TritonError(f"TensorRT cache directory {self.trt_cache_dir!r} must be an absolute path on the "
                              "Triton server (ONNX Runtime resolves a relative one against the server's working "
                              "directory).")

    def _check_plan(self) -> None:
        if self.instance_kind != "gpu":
            raise TritonError("TensorRT engines run on GPU instances (--triton-kind gpu).")
        if self.tensorrt:
            raise TritonError("--triton-tensorrt is ONNX Runtime's TensorRT accelerator; with "
                              "--triton-engine tensorrt_plan the engines are TensorRT already: drop one.")
        if self.precision not in ENGINE_PRECISIONS:
            raise TritonError(f"TensorRT engines are {ENGINE_PRECISIONS}, not {self.precision}: choose "
                              "--triton-precision fp16 or fp32.")
        if self.compute_capability is not None:
            object.__setattr__(self, "compute_capability", _compute_capability(self.compute_capability))


def _compute_capability(value: str) -> str:
    """'9.0', '90', 'sm_90' -> '9.0' (the manifest's form)."""
    digits = str(value).lower().removeprefix("sm_").replace(".", "")
    if not digits.isdigit() or len(digits) < 2:
        raise TritonError(f"Compute capability {value!r} is not of the form '9.0' or 'sm_90'.")
    return f"{digits[:-1]}.{digits[-1]}"


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model's config: dims without the batch axis (-1: any length)."""

    name: str
    data_type: str  # TYPE_FP32, TYPE_STRING, ...
    dims: tuple[int, ...]

    def pbtxt(self) -> str:
        return f'  {{ name: "{self.name}" data_type: {self.data_type} dims: [ {", ".join(map(str, self.dims))} ] }}'


@dataclass(frozen=True)
class Step:
    """One step of an ensemble: {the model's tensor name: the ensemble's tensor name} both ways."""

    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]

    def pbtxt(self) -> str:
        maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in self.inputs.items()]
        maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in self.outputs.items()]
        return f'    {{ model_name: "{self.model}" model_version: -1 {" ".join(maps)} }}'


@dataclass
class Repository:
    """The models being written: name -> (inputs, outputs), so ensembles are wired from what was declared."""

    root: Path
    io: dict[str, tuple[list[Tensor], list[Tensor]]] = field(default_factory=dict)
    configs: list[str] = field(default_factory=list)

    def add(self, name: str, config: str, inputs: list[Tensor], outputs: list[Tensor]) -> Path:
        version_dir = self.root / name / MODEL_VERSION
        version_dir.mkdir(parents=True)  # Triton wants a version directory, an ensemble's stays empty
        (self.root / name / "config.pbtxt").write_text(config, encoding="utf-8")
        self.io[name] = (inputs, outputs)
        self.configs.append(name)
        return version_dir

    def output(self, model: str) -> Tensor:
        return self.io[model][1][0]

    def graph_input(self, graph: str, role: str) -> Tensor:
        """A graph's input of a contract role (the manifest lists them in GRAPH_INPUTS order)."""
        return self.io[graph][0][GRAPH_INPUTS[graph].index(role)]


def _tensor(spec: dict) -> Tensor:
    """A graph tensor of the manifest as a config tensor: without the batch axis, a sequence axis is -1."""
    if spec["shape"][0] != BATCH_AXIS or BATCH_AXIS in spec["shape"][1:]:
        raise TritonError(f"Tensor {spec['name']} {spec['shape']}: Triton batching needs the batch axis first.")
    unknown = [d for d in spec["shape"][1:] if not isinstance(d, int) and d != SEQUENCE_AXIS]
    if unknown:
        raise TritonError(f"Tensor {spec['name']} {spec['shape']}: unknown dynamic axis {unknown}.")
    return Tensor(spec["name"], TRITON_DTYPE[spec["dtype"]], tuple(-1 if d == SEQUENCE_AXIS else d
                                                                    for d in spec["shape"][1:]))


def _header(name: str, platform: str, options: TritonOptions, inputs: list[Tensor], outputs: list[Tensor]) -> list[str]:
    return [
        f'name: "{name}"',
        platform,
        f"max_batch_size: {options.max_batch_size}",
        "input [", ",\n".join(t.pbtxt() for t in inputs), "]",
        "output [", ",\n".join(t.pbtxt() for t in outputs), "]",
    ]


def _batching(options: TritonOptions) -> list[str]:
    return [
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in options.preferred_batch_sizes)} ]",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
    ]


def _parameters(values: dict[str, str]) -> list[str]:
    return [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()]


def _shapes(shapes: list[tuple[int, ...]]) -> str:
    return "x".join(str(d) for d in shapes)


def trt_profile_parameters(graph: dict, profiles: tuple[Profile, ...], context_length: int) -> dict[str, str]:
    """ONNX Runtime TensorRT EP's explicit profiles: 'name:1x3x224x224,...', one name:shape per input and
    profile, profiles in order (ORT reads the k-th occurrence of an input as its shape in profile k)."""
    per_profile = [profile_shapes(list(graph["inputs"]), p, context_length) for p in profiles]
    return {f"trt_profile_{kind}_shapes": ",".join(f"{name}:{_shapes(shapes[name][i])}"
                                                  for shapes in per_profile for name in shapes)
            for i, kind in enumerate(("min", "opt", "max"))}


def trt_cache_path(name: str, options: TritonOptions) -> str:
    base = options.trt_cache_dir
    return f"{base.rstrip('/')}/{name}" if base else f"{SERVER_REPOSITORY}/{name}/{TRT_CACHE}"


def model_config(name: str, graph: dict, options: TritonOptions, context_length: int | None = None) -> str:
    """config.pbtxt text of an ONNX Runtime model for one graph entry of the manifest."""
    inputs, outputs = [_tensor(t) for t in graph["inputs"]], [_tensor(t) for t in graph["outputs"]]
    kind = "KIND_GPU" if options.instance_kind == "gpu" else "KIND_CPU"
    lines = [*_header(name, 'backend: "onnxruntime"', options, inputs, outputs), *_batching(options),
             f"instance_group [ {{ count: {options.instance_count} kind: {kind} }} ]"]
    optimization = []
    if graph["precision"] == "fp16" and options.instance_kind == "cpu":
        optimization.append(f"  graph {{ level: {ORT_LEVEL_WITHOUT_LAYOUT} }}")
    if options.tensorrt:
        fp16 = graph["precision"] == "fp16"
        cache = trt_cache_path(name, options)
        parameters = {
            "precision_mode": "FP16" if fp16 else "FP32",
            "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": cache,
            **({"trt_layer_norm_fp32_fallback": "1"} if fp16 else {}),
            **trt_profile_parameters(graph, options.profiles, context_length or 0),
        }
        optimization += [
            "  execution_accelerators {",
            "    gpu_execution_accelerator: [ {",
            '      name: "tensorrt"',
            *(f'      parameters {{ key: "{k}" value: "{v}" }}' for k, v in parameters.items()),
            "    } ]",
            "  }",
        ]
    if optimization:
        lines += ["optimization {", *optimization, "}"]
    lines += _parameters({"zscir_sha256": graph["sha256"]})
    return "\n".join(lines) + "\n"


def plan_config(name: str, graph: dict, engine: dict, options: TritonOptions) -> str:
    """config.pbtxt text of a TensorRT plan model: every profile of the engine available to its instances."""
    inputs, outputs = [_tensor(t) for t in graph["inputs"]], [_tensor(t) for t in graph["outputs"]]
    profiles = ", ".join(f'"{i}"' for i in range(len(engine["profiles"])))
    lines = [*_header(name, 'platform: "tensorrt_plan"', options, inputs, outputs), *_batching(options),
             f"instance_group [ {{ count: {options.instance_count} kind: KIND_GPU profile: [ {profiles} ] }} ]",
             *_parameters({"zscir_sha256": engine["sha256"], "zscir_tensorrt_version": engine["tensorrt_version"],
                           "zscir_compute_capability": engine["compute_capability"]})]
    return "\n".join(lines) + "\n"


def pick_engine(bundle: Bundle, graph: str, options: TritonOptions) -> dict:
    """The manifest's engine entry for a graph at the options' precision, GPU generation and TensorRT version."""
    precision = options.precision
    command = ENGINES_COMMAND.format(precision=precision).replace("BUNDLE", str(bundle.path))
    engines = [e for e in bundle.manifest.get("engines") or () if e["graph"] == graph and e["precision"] == precision]
    if not engines:
        raise TritonError(f"The bundle has no {precision} TensorRT engine for {graph}: build the engines on the GPU "
                          f"Triton runs on, with the TensorRT version of its container (`{command}`), or use "
                          "--triton-engine onnx.")
    chosen = [e for e in engines
              if (options.compute_capability is None
                  or _compute_capability(e["compute_capability"]) == options.compute_capability)
              and (options.tensorrt_version is None
                   or f"{e['tensorrt_version']}.".startswith(f"{options.tensorrt_version.rstrip('.')}."))]
    if len(chosen) == 1:
        return chosen[0]
    listed = "; ".join(f"TensorRT {e['tensorrt_version']}, compute capability {e['compute_capability']}"
                       for e in engines)
    if not chosen:
        raise TritonError(f"None of the bundle's {precision} {graph} engines ({listed}) matches compute capability "
                          f"{options.compute_capability or 'any'} and TensorRT {options.tensorrt_version or 'any'}: "
                          f"build one on that GPU with `{command}`.")
    raise TritonError(f"The bundle has several {precision} {graph} engines ({listed}): choose the server's with "
                      "--triton-compute-capability (and --triton-tensorrt-version).")


def _source_graph(bundle: Bundle, graph: str, engine: dict) -> dict:
    """The manifest entry of the ONNX graph an engine was built from (its tensors are the engine's)."""
    variants = bundle.manifest["graphs"][graph]
    built_from = [g for g in variants.values() if g["file"] == engine.get("onnx")]
    return built_from[0] if built_from else variants.get(engine["precision"]) or variants["fp32"]


def _copy(bundle: Bundle, entry: dict, target: Path) -> None:
    """Copy the bundle file a manifest entry names, after checking its sha256 against the manifest."""
    (named,) = [f for f in bundle.files() if f.path == bundle.path / entry["file"]]
    try:
        shutil.copyfile(bundle.verified(named), target)
    except BundleError as exc:
        raise TritonError(str(exc)) from exc


def _write_encoder(repo: Repository, bundle: Bundle, name: str, options: TritonOptions) -> None:
    variants = bundle.manifest["graphs"][name]
    if options.engine == TENSORRT_PLAN:
        engine = pick_engine(bundle, name, options)
        graph = _source_graph(bundle, name, engine)
        largest = max(p["max"] for p in engine["profiles"])
        if options.max_batch_size > largest:
            raise TritonError(f"Max batch size {options.max_batch_size} exceeds the largest profile of the {name} "
                              f"engine ({largest}): lower --triton-max-batch, or rebuild the engines with a larger "
                              "--profile.")
        config = plan_config(name, graph, engine, options)
    else:
        graph = variants.get(options.precision)
        if graph is None:
            raise TritonError(f"The bundle has no {options.precision} {name}: export with "
                              f"--{options.precision} or choose another --triton-precision.")
        config = model_config(name, graph, options, bundle.context_length)
    version_dir = repo.add(name, config, [_tensor(t) for t in graph["inputs"]], [_tensor(t) for t in graph["outputs"]])
    if options.engine == TENSORRT_PLAN:
        _copy(bundle, engine, version_dir / MODEL_FILE[TENSORRT_PLAN])
        return
    _copy(bundle, graph, version_dir / MODEL_FILE[ONNX])
    for extra in graph.get("external_data", []):  # the graph names its data file: keep that name
        _copy(bundle, extra, version_dir / Path(extra["file"]).name)
    if options.tensorrt and options.trt_cache_dir is None:
        (repo.root / name / TRT_CACHE).mkdir()  # the default cache: REPO/<model>/trt_cache on the server


# --- Python models and ensembles ---------------------------------------------------------------------------
def _python_config(name: str, options: TritonOptions, inputs: list[Tensor], outputs: list[Tensor]) -> str:
    lines = [*_header(name, 'backend: "python"', options, inputs, outputs), *_batching(options),
             f"instance_group [ {{ count: {options.instance_count} kind: KIND_CPU }} ]"]
    return "\n".join(lines) + "\n"


def _write_python(repo: Repository, name: str, options: TritonOptions, inputs: list[Tensor], outputs: list[Tensor],
                  settings: dict) -> Path:
    version_dir = repo.add(name, _python_config(name, options, inputs, outputs), inputs, outputs)
    source = resources.files("zscir_export.triton_models") / PYTHON_MODEL_SOURCE
    (version_dir / PYTHON_MODEL_SOURCE).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    (version_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return version_dir


def _ensemble_config(name: str, options: TritonOptions, inputs: list[Tensor], outputs: list[Tensor],
                     steps: list[Step]) -> str:
    lines = [*_header(name, 'platform: "ensemble"', options, inputs, outputs),
             "ensemble_scheduling {", "  step [", ",\n".join(s.pbtxt() for s in steps), "  ]", "}"]
    return "\n".join(lines) + "\n"


def _write_tokenizer(repo: Repository, bundle: Bundle, name: str, graph: str, template: str | None,
                     options: TritonOptions) -> None:
    ids = repo.graph_input(graph, TOKEN_IDS)
    causal = bundle.text_causal and -1 in ids.dims
    placeholder = bundle.placeholder if template is not None else None
    if template is not None:
        try:  # refused here, not on every request
            fill_template(template, "", placeholder)
        except TemplateError as exc:
            raise TritonError(f"Bundle {bundle.path}: {exc}") from exc
    settings = {"role": "tokenize", "tokenizer": TOKENIZER_FILE, "tokenizer_sha256": bundle.tokenizer_file.sha256,
                "context_length": bundle.context_length, "template": template, "placeholder": placeholder,
                "placeholder_id": bundle.placeholder_id if placeholder is not None else None, "trim": causal}
    version_dir = _write_python(repo, name, options, [Tensor(TEXT_IN, STRING, (1,))], [ids], settings)
    _copy(bundle, bundle.manifest["tokenizer"], version_dir / TOKENIZER_FILE)


def _write_ensembles(repo: Repository, bundle: Bundle, options: TritonOptions) -> None:
    pixels = repo.graph_input(IMAGE_ENCODER, PIXELS)
    image_features = repo.output(IMAGE_ENCODER)
    text_features = repo.output(TEXT_ENCODER)
    image_bytes, text = Tensor(IMAGE_IN, STRING, (1,)), Tensor(TEXT_IN, STRING, (1,))
    _write_python(repo, PREPROCESS, options, [image_bytes], [pixels],
                  {"role": "preprocess", "preprocess": bundle.preprocess.to_dict()})
    _write_python(repo, NORMALIZE, options, [Tensor(FEATURES_IN, "TYPE_FP32", image_features.dims)],
                  [Tensor(EMBEDDING_OUT, "TYPE_FP32", image_features.dims)], {"role": "normalize"})
    _write_tokenizer(repo, bundle, TEXT_TOKENIZER, TEXT_ENCODER, None, options)
    preprocess = Step(PREPROCESS, {IMAGE_IN: IMAGE_IN}, {pixels.name: pixels.name})
    tokenize_text = Step(TEXT_TOKENIZER, {TEXT_IN: TEXT_IN}, {repo.output(TEXT_TOKENIZER).name: "text_token_ids"})
    text_ids = repo.graph_input(TEXT_ENCODER, TOKEN_IDS).name
    encode_text = Step(TEXT_ENCODER, {text_ids: "text_token_ids"}, {text_features.name: TEXT_FEATURES_OUT})
    encode_image = Step(IMAGE_ENCODER, {pixels.name: pixels.name}, {image_features.name: IMAGE_FEATURES_OUT})
    unit = image_features.dims

    def normalize(features: str, embedding: str) -> Step:
        return Step(NORMALIZE, {FEATURES_IN: features}, {EMBEDDING_OUT: embedding})

    ensembles = {
        TEXT_EMBEDDING: ([text], [TEXT_EMBEDDING_OUT, TEXT_FEATURES_OUT],
                         [tokenize_text, encode_text, normalize(TEXT_FEATURES_OUT, TEXT_EMBEDDING_OUT)]),
        IMAGE_EMBEDDING: ([image_bytes], [IMAGE_EMBEDDING_OUT, IMAGE_FEATURES_OUT],
                          [preprocess, encode_image, normalize(IMAGE_FEATURES_OUT, IMAGE_EMBEDDING_OUT)]),
    }
    method = bundle.default_method
    if method == PHI:
        _write_tokenizer(repo, bundle, QUERY_TOKENIZER, QUERY_ENCODER, bundle.templates["default"], options)
        query_ids = repo.graph_input(QUERY_ENCODER, TOKEN_IDS).name
        query_image = repo.graph_input(QUERY_ENCODER, IMAGE_FEATURES).name
        steps = [preprocess, encode_image,
                 Step(QUERY_TOKENIZER, {TEXT_IN: TEXT_IN}, {repo.output(QUERY_TOKENIZER).name: "query_token_ids"}),
                 Step(QUERY_ENCODER, {query_image: IMAGE_FEATURES_OUT, query_ids: "query_token_ids"},
                      {repo.output(QUERY_ENCODER).name: QUERY_OUT})]
    elif method in COMPOSE_METHODS:
        if method == SUM:
            try:
                bundle.check_raw_features()
            except BundleError as exc:
                raise TritonError(str(exc)) from exc
        _write_python(repo, COMPOSE, options, [Tensor(COMPOSE_IMAGE_IN, "TYPE_FP32", unit),
                                               Tensor(COMPOSE_TEXT_IN, "TYPE_FP32", unit)],
                      [Tensor(COMPOSE_OUT, "TYPE_FP32", unit)],
                      {"role": "compose", "method": method, "alpha": bundle.slerp_alpha})
        steps = [preprocess, encode_image, tokenize_text, encode_text,
                 Step(COMPOSE, {COMPOSE_IMAGE_IN: IMAGE_FEATURES_OUT, COMPOSE_TEXT_IN: TEXT_FEATURES_OUT},
                      {COMPOSE_OUT: QUERY_OUT})]
    else:  # pragma: no cover - Bundle.default_method is phi, slerp or sum
        raise TritonError(f"The composed_query ensemble cannot run method {method!r}.")
    ensembles[COMPOSED_QUERY] = ([image_bytes, text], [QUERY_OUT], steps)
    for name, (inputs, outputs, steps) in ensembles.items():
        declared = [_produced(repo, steps, o) for o in outputs]
        repo.add(name, _ensemble_config(name, options, inputs, declared, steps), inputs, declared)


def _produced(repo: Repository, steps: list[Step], name: str) -> Tensor:
    """An ensemble output as the step that produces it declares it (type and dims), under its ensemble name."""
    for step in steps:
        for model_output, tensor in step.outputs.items():
            if tensor == name:
                (declared,) = [t for t in repo.io[step.model][1] if t.name == model_output]
                return Tensor(name, declared.data_type, declared.dims)
    raise TritonError(f"No ensemble step produces {name}.")  # pragma: no cover - the wiring above is fixed


def write_triton_repository(bundle_dir: Path, repository: Path, options: TritonOptions,
                            force: bool = False) -> list[Path]:
    """Write the model repository (atomically: all models or none); return the config files.

    Every file copied from the bundle is checked against its sha256 in the manifest first."""
    try:
        bundle = load_bundle(bundle_dir)
    except BundleError as exc:
        raise TritonError(str(exc)) from exc
    if options.ensemble and not {IMAGE_ENCODER, TEXT_ENCODER} <= set(bundle.manifest["graphs"]):
        raise TritonError(f"Bundle {bundle.path} lacks the image or text encoder the ensembles need; write the "
                          "repository with --no-triton-ensemble.")
    repository = Path(repository)
    with atomic_directory(repository, force) as tmp:
        repo = Repository(tmp)
        for name in bundle.manifest["graphs"]:
            _write_encoder(repo, bundle, name, options)
        if options.ensemble:
            _write_ensembles(repo, bundle, options)
        configs = [repository / name / "config.pbtxt" for name in repo.configs]
    return configs

