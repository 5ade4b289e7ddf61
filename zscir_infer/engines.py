"""TensorRT engines from a bundle's ONNX graphs: profiles, cache keys, version dispatch, the build.

Torch-free, so a deployment machine can (re)build engines for its own GPU from the bundle alone
(engines are specific to a TensorRT version and a GPU compute capability). `zscir-export --engine trt`
calls the same `build_engine` at export time.

Version dispatch (DESIGN §5):
- TensorRT 10.x: fp16 by builder flag on the fp32 ONNX (weak typing), with normalization, softmax
  and reduction layers pinned to fp32 and the precision constraints preferred;
- TensorRT 11.x: weak typing is gone; an fp16 engine is the bundle's fp16 ONNX (LayerNorm, softmax and
  reductions already fp32 in the graph, I/O fp32) built as a strongly typed network.
fp32 engines are the fp32 ONNX on both, with TF32 off so "fp32" means fp32.

Everything here but `build_engine` and `local_build_target` is pure logic, tested without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from zscir_infer.atomic import atomic_path, atomic_write_bytes
from zscir_infer.contract import BATCH_AXIS, SEQUENCE_AXIS, SEQUENCE_MULTIPLE, sha256_file
from zscir_infer.errors import ZscirError

BATCH = BATCH_AXIS  # the dynamic batch axis name in the manifest's shapes
SEQUENCE = SEQUENCE_AXIS  # the dynamic token axis of sequence-adaptive text graphs (ids cut after the last EOT)
SEQUENCE_MIN = 1  # any length works; the runtime feeds multiples of SEQUENCE_MULTIPLE, or the context length
SEQUENCE_OPT = 4 * SEQUENCE_MULTIPLE  # 32: a typical composed-query prompt (8-20 tokens) rounds up below it
ENGINE_PRECISIONS = ("fp32", "fp16")  # int8 engines need Q/DQ graphs (explicit quantization): not exported
SUPPORTED_MAJORS = (10, 11)
WORKSPACE_BYTES = 4 << 30
CACHE_ENV = "ZSCIR_CACHE_DIR"
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")  # kept fp32 in a 10.x fp16 build
INSTALL_TRT = ("install the GPU extra (`pip install --extra-index-url https://pypi.nvidia.com 'zscir[gpu]'`) on a "
               "machine with an NVIDIA GPU")


class EngineError(ZscirError, RuntimeError):
    """An engine cannot be planned or built; the message says what to change."""


@dataclass(frozen=True)
class Profile:
    """An optimization profile over the batch axis: TensorRT tunes kernels for `opt`."""

    name: str
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise EngineError(
                f"Profile '{self.name}' needs 1 <= min <= opt <= max, got min={self.min}, opt={self.opt}, "
                f"max={self.max}."
            )

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_PROFILES = (Profile("latency", 1, 1, 8), Profile("throughput", 1, 32, 128))


def parse_profile(text: str) -> Profile:
    """'latency:1,1,8' -> Profile('latency', 1, 1, 8) (the CLI's --trt-profile)."""
    match = re.fullmatch(r"\s*([A-Za-z][\w-]*)\s*:\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*", text)
    if not match:
        raise EngineError(f"Profile '{text}' is not NAME:MIN,OPT,MAX (e.g. 'latency:1,1,8').")
    name, lo, opt, hi = match.groups()
    return Profile(name, int(lo), int(opt), int(hi))


def check_profiles(profiles: tuple[Profile, ...] | list[Profile]) -> tuple[Profile, ...]:
    profiles = tuple(profiles)
    if not profiles:
        raise EngineError("An engine needs at least one optimization profile.")
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise EngineError(f"Profile names must be unique, got {names}.")
    return profiles


def profile_shapes(inputs: list[dict], profile: Profile,
                   context_length: int | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Input name -> (min, opt, max) shapes: the manifest's shape with the batch axis set per profile.

    A sequence axis (token_ids of a sequence-adaptive text graph) spans SEQUENCE_MIN..context_length,
    tuned for min(SEQUENCE_OPT, context_length), in every profile.
    """
    shapes = {}
    for spec in inputs:
        dims = spec["shape"]
        if BATCH not in dims:
            raise EngineError(f"Input '{spec['name']}' has no '{BATCH}' axis ({dims}): the graph is not batched.")
        if any(not isinstance(d, int) for d in dims if d not in (BATCH, SEQUENCE)):
            raise EngineError(f"Input '{spec['name']}' has a dynamic axis other than '{BATCH}' and '{SEQUENCE}' "
                              f"({dims}).")
        if SEQUENCE in dims and (context_length is None or context_length < SEQUENCE_MIN):
            raise EngineError(f"Input '{spec['name']}' has a '{SEQUENCE}' axis ({dims}): its profile needs the "
                              f"bundle's context length (got {context_length!r}).")
        sequence = ((SEQUENCE_MIN, min(SEQUENCE_OPT, context_length), context_length) if SEQUENCE in dims
                    else (None, None, None))
        shapes[spec["name"]] = tuple(tuple(n if d == BATCH else s if d == SEQUENCE else d for d in dims)
                                     for n, s in zip((profile.min, profile.opt, profile.max), sequence, strict=True))
    return shapes


def parse_version(version: str) -> tuple[int, int]:
    match = re.match(r"^(\d+)\.(\d+)", version.strip())
    if not match:
        raise EngineError(f"TensorRT version '{version}' is not of the form MAJOR.MINOR[.PATCH].")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class BuildPlan:
    """How one engine is built, decided from the TensorRT version and the precision."""

    precision: str  # the engine's precision
    onnx_precision: str  # which of the bundle's graphs is parsed
    strongly_typed: bool  # network creation flag STRONGLY_TYPED (11.x: always)
    fp16_flag: bool  # BuilderFlag.FP16 (weak typing; 10.x only)
    fp32_layer_types: tuple[str, ...]  # LayerType names pinned to fp32 (10.x fp16 only)
    disable_tf32: bool


def plan_build(tensorrt_version: str, precision: str) -> BuildPlan:
    """The version dispatch: what to parse and which flags to set for this TensorRT and precision."""
    if precision not in ENGINE_PRECISIONS:
        raise EngineError(
            f"TensorRT engines are built in {ENGINE_PRECISIONS}, not '{precision}' (int8 needs a Q/DQ graph; "
            "use the int8 ONNX with ONNX Runtime instead)."
        )
    major, _ = parse_version(tensorrt_version)
    if major not in SUPPORTED_MAJORS:
        raise EngineError(
            f"TensorRT {tensorrt_version} is not supported: zscir builds with TensorRT 10.x or 11.x "
            "(`pip install 'tensorrt>=10,<12'`)."
        )
    if precision == "fp32":
        return BuildPlan("fp32", "fp32", strongly_typed=major >= 11, fp16_flag=False, fp32_layer_types=(),
                         disable_tf32=True)
    if major == 10:
        return BuildPlan("fp16", "fp32", strongly_typed=False, fp16_flag=True, fp32_layer_types=FP32_LAYER_TYPES,
                         disable_tf32=False)
    return BuildPlan("fp16", "fp16", strongly_typed=True, fp16_flag=False, fp32_layer_types=(), disable_tf32=False)


def cache_key(onnx_sha256: str, tensorrt_version: str, compute_capability: str, precision: str,
              profiles: tuple[Profile, ...] | list[Profile]) -> str:
    """sha256 over what makes an engine: the graph, TensorRT version, GPU generation, precision, profiles."""
    payload = {
        "onnx_sha256": onnx_sha256.lower(),
        "tensorrt_version": tensorrt_version,
        "compute_capability": compute_capability,
        "precision": precision,
        "profiles": [p.to_dict() for p in profiles],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def engine_file_name(graph: str, precision: str, key: str) -> str:
    return f"engines/{graph}.{precision}.{key[:16]}.plan"


def engine_entry(graph: str, precision: str, file: str, sha256: str, key: str, tensorrt_version: str,
                 compute_capability: str, profiles: tuple[Profile, ...], plan: BuildPlan, onnx_file: str) -> dict:
    """The manifest's `engines[i]` (bundle contract, DESIGN §3)."""
    return {
        "graph": graph,
        "precision": precision,
        "file": file,
        "sha256": sha256,
        "cache_key": key,
        "tensorrt_version": tensorrt_version,
        "compute_capability": compute_capability,
        "profiles": [p.to_dict() for p in profiles],
        "onnx": onnx_file,
        "strongly_typed": plan.strongly_typed,
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zscir") / "tensorrt"


def timing_cache_path(tensorrt_version: str, compute_capability: str, directory: Path | None = None,
                      device: str = "") -> Path:
    """One timing cache per TensorRT version, GPU generation and GPU model (an H100 PCIe and an H100 SXM
    share sm90 but not timings; TensorRT itself refuses a cache from another device)."""
    model = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    suffix = f"-{model}" if model else ""
    return (directory or cache_dir()) / f"timing-trt{tensorrt_version}-sm{compute_capability.replace('.', '')}{suffix}.cache"


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can build here; else why not (shown when a build is skipped or refused)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"the tensorrt package is not installed: {INSTALL_TRT}"
    try:
        local_build_target()
    except EngineError as exc:
        return str(exc)
    return None


def local_build_target() -> tuple[str, str]:
    """(TensorRT version, compute capability of GPU 0) on this machine."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineError(f"Building engines needs the tensorrt package: {INSTALL_TRT}.") from exc
    from zscir_infer.backends import BackendError
    from zscir_infer.backends.trt import device_compute_capability

    try:
        return trt.__version__, device_compute_capability(0)
    except BackendError as exc:
        raise EngineError(f"No usable CUDA GPU for TensorRT ({exc}).") from exc


def _parse_onnx(trt, network, logger, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        errors = "\n".join(f"  {parser.get_error(i)}" for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path.name}:\n{errors}")


def _pin_fp32_layers(trt, network, layer_types: tuple[str, ...]) -> None:
    pinned = {getattr(trt.LayerType, name) for name in layer_types}
    floats = {trt.float32, trt.float16}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in pinned and layer.get_output(0).dtype in floats:  # not integer (shape) reductions
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def build_engine(onnx_path: Path, inputs: list[dict], plan: BuildPlan, profiles: tuple[Profile, ...],
                 timing_cache: Path, workspace_bytes: int = WORKSPACE_BYTES,
                 context_length: int | None = None) -> bytes:
    """Serialized engine for one graph (real TensorRT 10/11 Python API; needs a GPU)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    _parse_onnx(trt, network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        _pin_fp32_layers(trt, network, plan.fp32_layer_types)
    if plan.disable_tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(inputs, profile, context_length).items():
            trt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(trt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, False):  # False: refuse a cache from another device or version
        logger.log(trt.Logger.WARNING, f"zscir: timing cache {timing_cache} does not fit this GPU/TensorRT; "
                                       "starting an empty one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above).")
    updated = config.get_timing_cache()
    if updated is not None:  # None when the builder kept no cache: nothing to save
        atomic_write_bytes(timing_cache, bytes(memoryview(updated.serialize())))
    return bytes(memoryview(serialized))


def build_bundle_engines(bundle_dir: Path, manifest: dict, precisions: tuple[str, ...] = ("fp16",),
                         profiles: tuple[Profile, ...] = DEFAULT_PROFILES, graphs: tuple[str, ...] | None = None,
                         timing_cache_dir: Path | None = None, reuse: bool = True) -> list[dict]:
    """Build (or reuse by cache key) the engines of a bundle's graphs; returns their manifest entries.

    Writes engine files under `bundle_dir/engines/` and keeps a copy in the user cache keyed by the
    cache key, so a rebuild for the same graph, TensorRT, GPU and profiles is a copy. The caller
    records the entries in the manifest (`write_engines_to_manifest` for an existing bundle).
    """
    profiles = check_profiles(profiles)
    version, capability = local_build_target()
    from zscir_infer.backends.trt import device_name

    timing_cache = timing_cache_path(version, capability, timing_cache_dir, device_name(0))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    for graph in graphs or tuple(manifest["graphs"]):
        for precision in precisions:
            plan = plan_build(version, precision)
            source = manifest["graphs"][graph].get(plan.onnx_precision)
            if source is None:
                raise EngineError(
                    f"A {precision} engine of {graph} with TensorRT {version} needs the bundle's "
                    f"{plan.onnx_precision} graph, which it lacks: re-export with --fp16."
                )
            key = cache_key(source["sha256"], version, capability, precision, profiles)
            file = engine_file_name(graph, precision, key)
            cached = cache_dir() / "engines" / f"{key}.plan"
            data = cached.read_bytes() if reuse and cached.is_file() else None
            if data is None:
                data = build_engine(bundle_dir / source["file"], source["inputs"], plan, profiles, timing_cache,
                                    context_length=manifest.get("context_length"))
                atomic_write_bytes(cached, data)
            atomic_write_bytes(bundle_dir / file, data)
            entries.append(engine_entry(graph, precision, file, sha256_file(bundle_dir / file), key, version,
                                        capability, profiles, plan, source["file"]))
    return entries


def write_engines_to_manifest(bundle_dir: Path, entries: list[dict]) -> dict:
    """Replace the manifest's engines for the same graph/precision/TensorRT/GPU by `entries`, atomically."""
    manifest_path = Path(bundle_dir) / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    new = {(e["graph"], e["precision"], e["tensorrt_version"], e["compute_capability"]) for e in entries}
    kept = [e for e in manifest.get("engines") or []
            if (e["graph"], e["precision"], e["tensorrt_version"], e["compute_capability"]) not in new]
    manifest["engines"] = kept + entries
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def add_engines_to_bundle(bundle_dir: str | os.PathLike, precisions: tuple[str, ...] = ("fp16",),
                          profiles: tuple[Profile, ...] = DEFAULT_PROFILES, graphs: tuple[str, ...] | None = None,
                          timing_cache_dir: Path | None = None) -> dict:
    """On a deployment machine: build this GPU's engines from an existing bundle and record them in its
    manifest (engines of other GPUs or TensorRT versions stay listed). Returns the new manifest."""
    bundle_dir = Path(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    entries = build_bundle_engines(bundle_dir, manifest, precisions, profiles, graphs, timing_cache_dir)
    return write_engines_to_manifest(bundle_dir, entries)
