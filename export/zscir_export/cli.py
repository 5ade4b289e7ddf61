"""`zscir-export`: a trained model -> a validated deployment bundle (+ TensorRT engines, a Triton repository).

    zscir-export --ckpt lincir.safetensors --fp16
    zscir-export --ckpt lincir_vitl.pt --model ViT-L-14 --pretrained openai --out bundle/ --force
    zscir-export --method slerp --model ViT-B-32 --pretrained laion2b_s34b_b79k --int8
    zscir-export --ckpt tat.safetensors --triton models/ --triton-kind gpu --triton-tensorrt
    zscir-export --ckpt lincir.safetensors --fp16 --engine trt --triton models/ --triton-engine tensorrt_plan
    zscir-export --method sum --model path/to/BGE-VL-base      # a Hugging Face CLIP folder (or: bge-vl-base)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from zscir_export.bundle import ExportOptions, ExportResult, export_bundle
from zscir_export.model_source import resolve_source
from zscir_export.report import export_report
from zscir_export.tensorrt_build import EngineOptions
from zscir_export.triton import (
    DEFAULT_MAX_BATCH,
    DEFAULT_PREFERRED_BATCHES,
    ENGINES,
    ONNX,
    TENSORRT_PLAN,
    TritonError,
    TritonOptions,
    write_triton_repository,
)
from zscir_infer.atomic import atomic_write_json
from zscir_infer.cli_style import DEFAULT_BUNDLE, Profile, command, err_console
from zscir_infer.contract import DEFAULT_SLERP_ALPHA, EXPORT_SOURCES, PREPROCESS_CHOICES, SEARLE_TARGET_RATIO
from zscir_infer.engines import DEFAULT_PROFILES, EngineError, parse_profile
from zscir_infer.errors import OutputExistsError

BUNDLE_ENV = "ZSCIR_BUNDLE"
ENGINE_KINDS = ("trt",)

app = typer.Typer(add_completion=False, help="Export a zscir model to a validated ONNX bundle (DESIGN §3).")

Ckpt = Annotated[Path | None, typer.Option(
    "--ckpt", help="zscir phi or TAT checkpoint (.safetensors), or an official LinCIR/SEARLE/Pic2Word .pt.")]
Model = Annotated[str | None, typer.Option(
    "--model", help="open_clip model name, architecture JSON, Hugging Face CLIP folder (config.json + weights) or "
    "preset (bge-vl-base, bge-vl-large); needed for official checkpoints, slerp and sum.")]
Pretrained = Annotated[str | None, typer.Option("--pretrained", help="open_clip pretrained tag or weights file.")]
Method = Annotated[str | None, typer.Option(
    "--method", help=f"One of {', '.join(EXPORT_SOURCES)}; 'searle' for an official SEARLE file; 'slerp' and 'sum' "
    "(normalize(raw image + raw text), BGE-VL's query) need no --ckpt.")]
Preprocess = Annotated[str | None, typer.Option(
    "--preprocess", help=f"Image preprocessing the bundle records: {' or '.join(PREPROCESS_CHOICES)} (SEARLE's pad to "
    f"ratio {SEARLE_TARGET_RATIO}, then clip's). Default: targetpad for --method searle, as its authors evaluate; clip otherwise.")]
Out = Annotated[Path | None, typer.Option(
    "--out", help=f"Bundle directory (default ${BUNDLE_ENV} or {DEFAULT_BUNDLE}).")]


def _engine_options(engine: str | None, precisions: list[str], profiles: list[str],
                    timing_cache_dir: Path | None) -> EngineOptions | None:
    if engine is None:
        return None
    if engine not in ENGINE_KINDS:
        raise EngineError(f"--engine {engine}: the engine kinds are {ENGINE_KINDS}.")
    parsed = tuple(parse_profile(p) for p in profiles) or DEFAULT_PROFILES
    return EngineOptions(tuple(precisions), parsed, timing_cache_dir)


def _print_result(result: ExportResult) -> None:
    table = Table(title=f"Bundle {result.bundle} ({result.seconds:.1f} s)")
    for column in ("graph", "precision", "MB", "export s", "output", "max abs", "min cosine", "ok"):
        table.add_column(column)
    for g in result.graphs:
        for c in g.checks:
            table.add_row(g.graph, g.precision, f"{g.bytes / 2**20:.1f}", f"{g.seconds:.2f}", c.output,
                          f"{c.max_abs:.2e}", f"{c.min_cosine:.7f}", "yes" if c.passed else "NO")
    err_console.print(table)


@command(app)
def export(
    ckpt: Ckpt = None,
    model: Model = None,
    pretrained: Pretrained = None,
    method: Method = None,
    preprocess: Preprocess = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write fp16 graphs (fp32 I/O, fp32 norms).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write int8 graphs (dynamic quantization, CPU).")] = False,
    out: Out = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out (and --triton).")] = False,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Default slerp text weight.")]
    = DEFAULT_SLERP_ALPHA,
    l2_normalize: Annotated[bool, typer.Option(
        "--l2-normalize", help="L2-normalize the image features before phi, in the query graph (LinCIR's "
        "--l2_normalize, for a phi trained with it; off by default, as in LinCIR).")] = False,
    engine: Annotated[str | None, typer.Option("--engine", help="'trt': build TensorRT engines (needs a GPU).")]
    = None,
    trt_precision: Annotated[list[str], typer.Option("--trt-precision", help="Engine precision(s): fp16, fp32.")]
    = ["fp16"],  # noqa: B006 (typer reads list defaults)
    profile: Profile = None,
    timing_cache_dir: Annotated[Path | None, typer.Option(help="Where TensorRT timing caches are kept.")] = None,
    triton: Annotated[Path | None, typer.Option("--triton", help="Also write a Triton model repository here.")]
    = None,
    triton_precision: Annotated[str | None, typer.Option(
        help="Graphs for Triton (default fp16 with --fp16; with tensorrt_plan the first --trt-precision).")]
    = None,
    triton_max_batch: Annotated[int, typer.Option(min=1)] = DEFAULT_MAX_BATCH,
    triton_kind: Annotated[str, typer.Option(help="Triton instance kind: gpu or cpu.")] = "gpu",
    triton_instances: Annotated[int, typer.Option(min=1)] = 1,
    triton_tensorrt: Annotated[bool, typer.Option(help="ONNX Runtime's TensorRT accelerator in Triton (its "
                                                  "profiles: --profile).")] = False,
    triton_engine: Annotated[str, typer.Option(help=f"Triton encoders: {' or '.join(ENGINES)} (the bundle's "
                                               "TensorRT engines, e.g. from --engine trt).")] = ONNX,
    triton_compute_capability: Annotated[str | None, typer.Option(
        help="tensorrt_plan: the engines for this GPU generation (e.g. 9.0) when the bundle holds several.")] = None,
    triton_tensorrt_version: Annotated[str | None, typer.Option(
        help="tensorrt_plan: the engines of this TensorRT version (the Triton container's, e.g. 10.3).")] = None,
    triton_trt_cache_dir: Annotated[str | None, typer.Option(
        help="--triton-tensorrt: absolute directory on the server for engine and timing caches (default "
             "/models/<model>/trt_cache).")] = None,
    triton_ensemble: Annotated[bool, typer.Option(
        help="Also write Python-backend preprocessing/tokenizer models and ensembles that take raw image bytes "
             "and text (the server needs zscir installed: docs/triton.md).")] = True,
    report: Annotated[Path | None, typer.Option(help="Write the export's figures (JSON) here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or table.")] = False,
) -> None:
    """Export, validate against PyTorch, and write a bundle atomically."""
    out = out or Path(os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE)
    engine_options = _engine_options(engine, trt_precision, profile or [], timing_cache_dir)
    triton_options = None
    if triton is not None:
        if triton.exists() and not force:
            raise OutputExistsError(f"{triton} already exists: pass --force to replace it, or choose another --triton.")
        if triton_engine == TENSORRT_PLAN and engine is None:
            raise TritonError("--triton-engine tensorrt_plan serves the engines --engine trt builds: add it (on a "
                              "GPU like the server's), or use --triton-engine onnx.")
        default_precision = trt_precision[0] if triton_engine == TENSORRT_PLAN else "fp16" if fp16 else "fp32"
        preferred = tuple(b for b in DEFAULT_PREFERRED_BATCHES if b <= triton_max_batch) or (triton_max_batch,)
        triton_options = TritonOptions(triton_precision or default_precision, triton_max_batch, preferred,
                                       instance_kind=triton_kind, instance_count=triton_instances,
                                       tensorrt=triton_tensorrt, engine=triton_engine,
                                       compute_capability=triton_compute_capability,
                                       tensorrt_version=triton_tensorrt_version,
                                       profiles=tuple(parse_profile(p) for p in profile or []) or DEFAULT_PROFILES,
                                       trt_cache_dir=triton_trt_cache_dir, ensemble=triton_ensemble)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists: pass --force to replace it, or choose another --out.")
    source = resolve_source(ckpt, model, pretrained, method, preprocess)
    if source.backbone.pretrained is None:
        err_console.print(f"[yellow]warning:[/yellow] {escape(source.backbone.name)} has no pretrained weights: the "
                          "bundle gets a fresh random draw of them (fine for tests and timing, not for retrieval).")
    options = ExportOptions(out, fp16=fp16, int8=int8, force=force, alpha=alpha, l2_normalize=l2_normalize,
                            engine=engine_options, show_progress=not quiet)
    result = export_bundle(source, options)
    if triton_options is not None:
        write_triton_repository(out, triton, triton_options, force=force)
    if report is not None:
        atomic_write_json(report, export_report(result))
    if not quiet:
        _print_result(result)
    typer.echo(json.dumps({"bundle": str(out), "seconds": round(result.seconds, 2)}))


if __name__ == "__main__":
    app()
