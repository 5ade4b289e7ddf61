"""Writing a bundle: graphs at each precision, validation, tokenizer, golden files, engines, manifest.

Everything is written into a temporary directory beside `--out` and renamed into place only after
every graph passed validation (`zscir_infer.atomic.atomic_directory`): an interrupted or failed
export leaves no half bundle. The manifest (DESIGN §3, `manifest.schema.json`) is written last and
checked against the schema before the rename.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from time import perf_counter

import jsonschema
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from zscir_export.fp16 import ORT_DISABLED_OPTIMIZERS, convert_to_fp16
from zscir_export.golden import sample_images, write_golden
from zscir_export.graphs import EXPORT_BATCH, GraphSpec, graph_files, graph_specs
from zscir_export.int8 import quantize_to_int8
from zscir_export.model_source import ExportSource, ExportSourceError
from zscir_export.tensorrt_build import EngineOptions, build_engines, require_tensorrt
from zscir_export.tokenizer_json import TOKENIZER_FILE, build_clip_tokenizer_json
from zscir_export.validate import (
    OutputCheck,
    check_activation,
    check_graph,
    raise_on_failures,
    validation_feeds,
)
from zscir_infer.atomic import atomic_directory, atomic_write_json
from zscir_infer.contract import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    CAUSAL_KEY,
    DEFAULT_SLERP_ALPHA,
    MANIFEST,
    METHODS,
    NORM_EPS,
    PLACEHOLDER_ALL,
    SLERP_PARALLEL_COS,
    TEXT_TOWER_KEY,
    TRAINING_FREE_METHODS,
    PreprocessConfig,
    manifest_schema_path,
    sha256_file,
)
from zscir_train import __version__
from zscir_train.composed import is_causal_text_tower, placeholder_token_id
from zscir_train.reference import TorchReference

SLERP_TEMPLATE = "{caption}"  # slerp and sum encode the caption raw, without a template
VERSIONED_PACKAGES = ("torch", "onnx", "onnxruntime", "open_clip_torch")


@dataclass
class ExportOptions:
    out: Path
    fp16: bool = False
    int8: bool = False
    force: bool = False
    alpha: float = DEFAULT_SLERP_ALPHA
    l2_normalize: bool = False  # LinCIR's --l2_normalize: normalize image features before phi (in the graph)
    engine: EngineOptions | None = None
    show_progress: bool = False

    @property
    def precisions(self) -> tuple[str, ...]:
        fp16 = self.fp16 or (self.engine is not None and "fp16" in self.engine.precisions)
        return ("fp32",) + (("fp16",) if fp16 else ()) + (("int8",) if self.int8 else ())


@dataclass
class GraphResult:
    graph: str
    precision: str
    files: list[str]
    bytes: int
    seconds: float  # export (fp32) or conversion (fp16, int8), validation excluded
    checks: list[OutputCheck] = field(default_factory=list)


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict
    graphs: list[GraphResult]
    seconds: float


def _file_entry(bundle_dir: Path, path: Path) -> dict:
    return {"file": path.relative_to(bundle_dir).as_posix(), "sha256": sha256_file(path),
            "bytes": path.stat().st_size}


def _write_graph(spec: GraphSpec, precision: str, bundle_dir: Path, feeds: dict[str, np.ndarray]) -> float:
    path = bundle_dir / spec.file_name(precision)
    start = perf_counter()
    if precision == "fp32":
        spec.export({n: a[:EXPORT_BATCH] for n, a in feeds.items()}, path)
    elif precision == "fp16":
        convert_to_fp16(bundle_dir / spec.file_name("fp32"), path)
    else:
        quantize_to_int8(bundle_dir / spec.file_name("fp32"), path)
    return perf_counter() - start


def _graph_entry(spec: GraphSpec, precision: str, bundle_dir: Path, checks: list[OutputCheck],
                 seconds: float) -> dict:
    graph, *external = graph_files(bundle_dir / spec.file_name(precision))
    entry = {**_file_entry(bundle_dir, graph), "opset": spec.opset, "precision": precision, **spec.manifest_io(),
             "normalized_output": spec.normalized_output,
             "validation": {c.output: c.to_manifest() for c in checks}, "export_seconds": round(seconds, 3)}
    if external:
        entry["external_data"] = [_file_entry(bundle_dir, p) for p in external]
    if precision == "fp16":
        entry["onnxruntime"] = {"disabled_optimizers": list(ORT_DISABLED_OPTIMIZERS),
                                "session_config": {ORT_DISABLE_OPTIMIZERS_KEY: ",".join(ORT_DISABLED_OPTIMIZERS)},
                                "reason": "microsoft/onnxruntime#28392: NchwcTransformer crashes on fp16 graphs"}
    return entry


def _pretrained_label(pretrained: str | None) -> str | None:
    """A tag as is; a weights file by its name (no machine paths in a bundle)."""
    return Path(pretrained).name if pretrained and Path(pretrained).is_file() else pretrained


def _backbone_entry(backbone) -> dict:
    """manifest["backbone"]; a Hugging Face folder is named by its folder name (no machine paths in a bundle)
    and described by backbone.huggingface (config and weights sha256)."""
    name = Path(backbone.name).name if backbone.huggingface else backbone.name
    entry = {"name": name, "pretrained": _pretrained_label(backbone.pretrained), "arch": backbone.arch,
             "activation": backbone.activation}
    if backbone.pretrained and Path(backbone.pretrained).is_file():
        entry["pretrained_sha256"] = sha256_file(Path(backbone.pretrained))
    if backbone.huggingface:
        entry["huggingface"] = dict(backbone.huggingface)
    return entry


def _versions() -> dict:
    return {name: metadata.version(name) for name in VERSIONED_PACKAGES}


def text_tower_entry(backbone) -> dict:
    """manifest["text"]: whether the text tower is causal with EOT pooling, so that the text and query
    graphs (token_ids [batch, sequence]) may be fed ids cut after the batch's last end-of-text token."""
    return {CAUSAL_KEY: is_causal_text_tower(backbone.model), "pooling": "eot_argmax"}


def build_manifest(source: ExportSource, alpha: float, tokenizer: dict, graphs: dict, golden: dict,
                   engines: list[dict]) -> dict:
    backbone, meta = source.backbone, source.meta
    placeholder = None
    if meta is not None:
        placeholder = {"text": meta.placeholder, "id": placeholder_token_id(backbone.tokenizer, meta.placeholder),
                       "policy": meta.policy}
    phi = None
    if meta is not None:
        phi = {"kind": meta.phi_kind, "hidden_dim": meta.hidden_dim, "training": meta.training,
               "l2_normalize": meta.l2_normalize}
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "zscir_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": source.method,
        "backbone": _backbone_entry(backbone),
        "source": source.info,
        "embed_dim": backbone.embed_dim,
        "width": backbone.width,
        "context_length": backbone.context_length,
        "placeholder": placeholder,
        "phi": phi,
        "templates": {"default": meta.template if meta is not None else SLERP_TEMPLATE},
        "slerp_alpha": alpha,
        "preprocess": PreprocessConfig.from_dict(backbone.preprocess.to_dict()).to_dict(),
        "tokenizer": tokenizer,
        TEXT_TOWER_KEY: text_tower_entry(backbone),
        "composition": composition_entry(alpha),
        "resize": RESIZE_ENTRY,
        "graphs": graphs,
        "engines": engines,
        "golden": golden,
        "exporter": {"tool": "torch.onnx.export(dynamo=False)", "versions": _versions()},
    }


# What a consumer outside Python needs beyond the graphs (issue 16: cpp/ implements exactly these).
ORT_DISABLE_OPTIMIZERS_KEY = "optimization.disable_specified_optimizers"  # ONNX Runtime session config entry
RESIZE_ENTRY = {
    "algorithm": "pillow-resample",
    "reference": "Pillow's Image.resize(size, BICUBIC or BILINEAR) with reducing_gap None (libImaging/Resample.c), "
                 "on the decoded 8-bit RGB image; cpp/src/image.cpp implements it",
    "filter": "bicubic: Keys cubic a = -0.5, support 2; bilinear: triangle, support 1",
    "antialias": "scale = in / out per axis; the filter is stretched by max(scale, 1) (support * max(scale, 1)); "
                 "output pixel x samples input pixels [int(c - support + 0.5), int(c + support + 0.5)) clipped to "
                 "the image, c = (x + 0.5) * scale, weights filter((i - c + 0.5) / max(scale, 1)) divided by their sum",
    "fixed_point": "each weight w -> (int)(w * 2^22 + 0.5) (w >= 0) or (int)(w * 2^22 - 0.5) (w < 0); a pass sums "
                   "pixel * weight into an int starting at 2^21, then takes (sum >> 22) clipped to 0..255",
    "passes": "horizontal pass then vertical pass, each only when that axis changes size; uint8 between passes. "
              "Pillow 13 may run the vertical pass first when the two axes scale by different factors (squash "
              "of a non-square image); the aspect-preserving modes (shortest, longest, targetpad) run horizontal first",
    "decode": "RGB: alpha dropped (not composited), palette expanded, grayscale replicated, 16-bit channels keep "
              "their high byte, 16-bit grayscale (v + 128) // 257; EXIF orientation applied (ImageOps.exif_transpose)",
    "normalize": "float32: (v / 255 - mean) / std per channel, CHW",
}


def composition_entry(alpha: float) -> dict:
    """The query formulas' constants (zscir_infer.runtime), stated for consumers outside Python."""
    return {
        "norm_eps": NORM_EPS,
        "normalize": "x / max(||x||_2, norm_eps), float32",
        "slerp": {"alpha": alpha, "parallel_cos": SLERP_PARALLEL_COS,
                  "formula": "a, b = normalize(image), normalize(text); cos = clip(a.b, -1, 1); t = acos(cos); "
                             "q = normalize(sin((1 - alpha) t) / sin t * a + sin(alpha t) / sin t * b); when "
                             "|cos| > parallel_cos: q = normalize((1 - alpha) a + alpha b); alpha = text weight"},
        "average": "normalize(normalize(image) + normalize(text))",
        "sum": "normalize(image + text) of the raw (unnormalized) image_encoder and text_encoder outputs",
        "phi": "query_encoder(image_encoder(pixels), token ids of the template filled with the caption); its "
               "output is already normalized; the placeholder's positions receive phi's token (placeholder.policy)",
        "texts": "methods other than phi tokenize the caption as given (no template)",
    }


def check_manifest(manifest: dict) -> None:
    """The manifest against the repository's JSON Schema (the runtime validates with the same file)."""
    schema = json.loads(manifest_schema_path().read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(manifest)


def default_permissions(directory: Path) -> None:
    """Temporary files and directories are private (0600/0700); a published bundle gets the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _progress(show: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=not show, transient=False)


def with_l2_normalize(source: ExportSource) -> ExportSource:
    """The source with LinCIR's --l2_normalize on (image features normalized before phi, inside the graph)."""
    if source.meta is None:
        raise ExportSourceError(f"--l2-normalize normalizes phi's input, but a {source.method} bundle has no phi: drop it.")
    return dataclasses.replace(source, meta=dataclasses.replace(source.meta, l2_normalize=True))


def export_bundle(source: ExportSource, options: ExportOptions) -> ExportResult:
    """Export, validate and write the bundle at options.out; raises ValidationError listing every failure."""
    out = Path(options.out)
    if out.exists() and not options.force:
        raise FileExistsError(f"{out} already exists: pass --force to replace it, or choose another --out.")
    if options.l2_normalize:
        source = with_l2_normalize(source)
    if options.engine is not None:
        require_tensorrt()
    start = perf_counter()
    backbone, meta = source.backbone, source.meta
    placeholder_id = placeholder_token_id(backbone.tokenizer, meta.placeholder) if meta else None
    specs = graph_specs(backbone, source.phi, placeholder_id, meta.policy if meta else PLACEHOLDER_ALL,
                        bool(meta and meta.l2_normalize))
    feeds = validation_feeds(specs, backbone, sample_images(), meta and meta.template, meta and meta.placeholder)
    steps = len(specs) * (1 + len(options.precisions)) + 3 + (options.engine is not None)
    graphs, results, references, activation_checks = {}, [], {}, []
    with _progress(options.show_progress) as progress, atomic_directory(out, options.force) as tmp:
        task = progress.add_task(f"Exporting {backbone.name} ({source.method})", total=steps)
        tokenizer = build_clip_tokenizer_json(tmp / TOKENIZER_FILE, backbone.context_length)
        tokenizer["sha256"] = sha256_file(tmp / TOKENIZER_FILE)
        progress.advance(task)
        for spec in specs:
            progress.update(task, description=f"PyTorch reference: {spec.name}")
            references[spec.name] = spec.run_torch(feeds[spec.name])
            progress.advance(task)
            for precision in options.precisions:
                progress.update(task, description=f"{spec.name} {precision}: export and validate")
                seconds = _write_graph(spec, precision, tmp, feeds[spec.name])
                checks = check_graph(spec, tmp / spec.file_name(precision), precision, feeds[spec.name],
                                     references[spec.name])
                if precision == "fp32":
                    activation_checks += check_activation(spec, tmp / spec.file_name(precision), backbone.activation)
                entry = _graph_entry(spec, precision, tmp, checks, seconds)
                graphs.setdefault(spec.name, {})[precision] = entry
                files = [entry["file"]] + [e["file"] for e in entry.get("external_data", [])]
                size = entry["bytes"] + sum(e["bytes"] for e in entry.get("external_data", []))
                results.append(GraphResult(spec.name, precision, files, size, seconds, checks))
                progress.advance(task)
        raise_on_failures([c for r in results for c in r.checks] + activation_checks)
        progress.update(task, description="golden files")
        reference = TorchReference(backbone, source.phi, meta, alpha=options.alpha)
        golden = write_golden(tmp, reference, METHODS if source.phi is not None else TRAINING_FREE_METHODS, feeds,
                              references)
        progress.advance(task)
        engines = []
        if options.engine is not None:
            progress.update(task, description="TensorRT engines")
            engines = build_engines(tmp, graphs, options.engine, backbone.context_length)
            progress.advance(task)
        manifest = build_manifest(source, options.alpha, tokenizer, graphs, golden, engines)
        check_manifest(manifest)
        atomic_write_json(tmp / MANIFEST, manifest)
        default_permissions(tmp)
        progress.update(task, description=f"Bundle written: {out}", completed=steps)
    return ExportResult(out, manifest, results, perf_counter() - start)
