"""`zscir-bench accuracy`: what export and quantization change, on the shapes world's test queries.

Every method (each phi checkpoint's pseudo-token method, slerp and the baselines) is evaluated with the
PyTorch reference and with the runtime at fp32, fp16 and int8, through the evaluation harness
(`zscir_eval`) on the world's test split with its ground truth (`zscir_eval.world.world_test_splits`):
CIRR protocol R@1/5/10 (reference removed) and CIRCO protocol mAP@10.
The bundles are exported from the checkpoints here, so the comparison is one command.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from zscir_eval import Harness, score_split
from zscir_eval.circo import CircoSplit
from zscir_eval.cirr import CirrSplit
from zscir_eval.world import world_test_splits
from zscir_infer.contract import PHI, TRAINING_FREE_METHODS
from zscir_infer.errors import ZscirError

CIRR_METRICS = ("R@1", "R@5", "R@10")
CIRCO_METRICS = ("mAP@10",)
METRICS = CIRR_METRICS + CIRCO_METRICS
DEFAULT_BACKENDS = ("torch", "ort-fp32", "ort-fp16", "ort-int8")


class AccuracySetupError(ZscirError, ValueError):
    """The comparison cannot be run as asked; the message says which option to pass."""


@dataclass(frozen=True)
class Encoders:
    """What one method family is evaluated with: a bundle and, for the PyTorch side, its sources."""

    label: str  # lincir | pic2word | slerp (the bundle's method)
    bundle: Path
    checkpoint: Path | None
    methods: tuple[str, ...]  # the harness methods run with it


def export_for_accuracy(checkpoints: Sequence[Path], backbone: str, weights: str | None, work: Path,
                        show_progress: bool = False) -> list[Encoders]:
    """fp32/fp16/int8 bundles for every phi checkpoint and a slerp bundle of the backbone (kept in work)."""
    from zscir_export.bundle import MANIFEST, ExportOptions, export_bundle
    from zscir_export.model_source import resolve_source

    out = []
    sources = [(c, c.stem, None) for c in checkpoints] + [(None, f"{Path(backbone).stem}-slerp", "slerp")]
    for ckpt, name, method in sources:
        bundle = work / name
        if not (bundle / MANIFEST).is_file():
            source = resolve_source(ckpt, None if ckpt else backbone, None if ckpt else weights, method)
            export_bundle(source, ExportOptions(out=bundle, fp16=True, int8=True, force=True,
                                                show_progress=show_progress))
        label = json.loads((bundle / MANIFEST).read_text())["method"]
        out.append(Encoders(label, bundle, ckpt, (PHI,) if ckpt else TRAINING_FREE_METHODS))
    return out


def _encoder(enc: Encoders, backend: str, weights: str | None, threads: int):
    """(encoder, cache key of its image features) for a backend name."""
    if backend == "torch":
        import torch

        from zscir_bench.reference_model import reference_for_bundle

        torch.set_num_threads(threads)
        reference, provenance = reference_for_bundle(enc.bundle, enc.checkpoint, weights)
        if not provenance["same_numbers_as_bundle"]:
            raise AccuracySetupError(f"The PyTorch reference for {enc.bundle.name} would use random weights: pass the "
                             "backbone weights (--weights) so it computes what the bundle computes.")
        return reference, f"torch:{enc.bundle.name}"
    from zscir_bench.stages import parse_backend
    from zscir_infer.runtime import Runtime

    spec = parse_backend(backend)
    runtime = Runtime(enc.bundle, spec.backend, spec.device, spec.precision, threads=threads)
    return runtime, f"{backend}:{runtime.image_space_id}"


def evaluate(encoders: Sequence[Encoders], splits: tuple[CirrSplit, CircoSplit], backends: Sequence[str],
             weights: str | None, threads: int, cache: Path, console: Console,
             progress: Callable[[str], None] | None = None) -> dict:
    """{method label: {backend: {metric: value}}}; a phi method is labelled by its bundle (lincir, ...)."""
    cirr, circo = splits
    results: dict[str, dict[str, dict[str, float]]] = {}
    for enc in encoders:
        for backend in backends:
            encoder, key = _encoder(enc, backend, weights, threads)
            harness = Harness(encoder, key, cache, console=console)
            for method in enc.methods:
                label = enc.label if method == PHI else method
                if progress:
                    progress(f"{label} on {backend}")
                r = score_split(harness, "cirr", cirr, method=method).metrics
                c = score_split(harness, "circo", circo, method=method).metrics
                results.setdefault(label, {})[backend] = {**{m: r[m] for m in CIRR_METRICS},
                                                          **{m: c[m] for m in CIRCO_METRICS}}
    return results


def changes(results: dict, base: str = "ort-fp32") -> dict:
    """{method: {backend: {metric: points changed vs base}}}."""
    return {
        method: {b: {m: v[m] - per_backend[base][m] for m in v} for b, v in per_backend.items() if b != base}
        for method, per_backend in results.items() if base in per_backend
    }


def run_accuracy(world: Path, checkpoints: Sequence[Path], backbone: str, weights: str | None, work: Path, *,
                 backends: Sequence[str] = DEFAULT_BACKENDS, threads: int,
                 progress: Callable[[str], None] | None = None) -> dict:
    import tempfile

    console = Console(stderr=True)
    splits = world_test_splits(world)  # first: a folder that is not a world fails before the export
    encoders = export_for_accuracy(checkpoints, backbone, weights, work, show_progress=progress is not None)
    with tempfile.TemporaryDirectory() as tmp:
        results = evaluate(encoders, splits, backends, weights, threads, Path(tmp) / "cache", console, progress)
    return {
        "world": world.name, "backbone": backbone, "weights": Path(weights).name if weights else None,
        "checkpoints": [c.name for c in checkpoints], "backends": list(backends), "metrics": list(METRICS),
        "num_queries": len(splits[0].queries), "threads": threads, "results": results, "changes_vs_ort_fp32": changes(results),
        "notes": [
            "CIRR protocol (reference removed from the ranking) for R@k, CIRCO protocol for mAP@10, on the "
            "world's test queries with their ground truth.",
            "int8 = ONNX Runtime dynamic quantization (int8 weights, activations quantized per batch).",
        ],
    }
