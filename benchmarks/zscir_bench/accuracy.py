"""`zscir-bench accuracy`: what export and quantization change, on the shapes world's test queries.

Every method (each phi checkpoint's pseudo-token method, slerp and the baselines) is evaluated with the
PyTorch reference and with the runtime at fp32, fp16 and int8, through the evaluation harness
(`zscir_infer.eval`) on the world's test split laid out as a val split with its ground truth
(`<world>/ground_truth`): CIRR protocol R@1/5/10 (reference removed) and CIRCO protocol mAP@10.
The bundles are exported from the checkpoints here, so the comparison is one command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from zscir_infer.eval import Harness, run_benchmark

CIRR_METRICS = ("R@1", "R@5", "R@10")
CIRCO_METRICS = ("mAP@10",)
METRICS = CIRR_METRICS + CIRCO_METRICS
BASELINES = ("slerp", "image", "text", "average")
DEFAULT_BACKENDS = ("torch", "ort-fp32", "ort-fp16", "ort-int8")
CIRR_TEST_SPLIT = "split.rc2.test1.json"
CIRR_TEST_IMAGES = "test1"
CIRCO_IMAGES = "COCO2017_unlabeled"


@dataclass(frozen=True)
class Encoders:
    """What one method family is evaluated with: a bundle and, for the PyTorch side, its sources."""

    label: str  # lincir | pic2word | slerp (the bundle's method)
    bundle: Path
    checkpoint: Path | None
    methods: tuple[str, ...]  # the harness methods run with it


def test_views(world: Path, root: Path) -> tuple[Path, Path]:
    """The world's test queries with their targets as CIRR and CIRCO *val* splits (symlinked images)."""
    cirr, circo = root / "cirr", root / "circo"
    (cirr / "captions").mkdir(parents=True, exist_ok=True)
    (cirr / "image_splits").mkdir(exist_ok=True)
    truth = world / "ground_truth"
    (cirr / "captions" / "cap.rc2.val.json").write_text((truth / "cirr" / "cap.rc2.test1.json").read_text())
    (cirr / "image_splits" / "split.rc2.val.json").write_text(
        (world / "cirr" / "image_splits" / CIRR_TEST_SPLIT).read_text())
    _link(world / "cirr" / CIRR_TEST_IMAGES, cirr / CIRR_TEST_IMAGES)
    (circo / "annotations").mkdir(parents=True, exist_ok=True)
    (circo / "annotations" / "val.json").write_text((truth / "circo" / "test.json").read_text())
    _link(world / "circo" / CIRCO_IMAGES, circo / CIRCO_IMAGES)
    return cirr, circo


def _link(target: Path, link: Path) -> None:
    if not link.exists():
        os.symlink(target.resolve(), link, target_is_directory=True)


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
        out.append(Encoders(label, bundle, ckpt, ("phi",) if ckpt else BASELINES))
    return out


def _encoder(enc: Encoders, backend: str, weights: str | None, threads: int):
    """(encoder, cache key of its image features) for a backend name."""
    if backend == "torch":
        import torch

        from zscir_bench.reference_model import reference_for_bundle

        torch.set_num_threads(threads)
        reference, provenance = reference_for_bundle(enc.bundle, enc.checkpoint, weights)
        if not provenance["same_numbers_as_bundle"]:
            raise ValueError(f"The PyTorch reference for {enc.bundle.name} would use random weights: pass the "
                             "backbone weights (--weights) so it computes what the bundle computes.")
        return reference, f"torch:{enc.bundle.name}"
    from zscir_bench.stages import parse_backend
    from zscir_infer.runtime import Runtime

    spec = parse_backend(backend)
    runtime = Runtime(enc.bundle, spec.backend, spec.device, spec.precision, threads=threads)
    return runtime, f"{backend}:{runtime.image_space_id}"


def evaluate(encoders: Sequence[Encoders], views: tuple[Path, Path], backends: Sequence[str], weights: str | None,
             threads: int, cache: Path, console: Console, progress: Callable[[str], None] | None = None) -> dict:
    """{method label: {backend: {metric: value}}}; a phi method is labelled by its bundle (lincir, ...)."""
    cirr, circo = views
    results: dict[str, dict[str, dict[str, float]]] = {}
    for enc in encoders:
        for backend in backends:
            encoder, key = _encoder(enc, backend, weights, threads)
            harness = Harness(encoder, key, cache, console=console)
            for method in enc.methods:
                label = enc.label if method == "phi" else method
                if progress:
                    progress(f"{label} on {backend}")
                r = run_benchmark(harness, "cirr", cirr, method=method).metrics
                c = run_benchmark(harness, "circo", circo, method=method).metrics
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
    encoders = export_for_accuracy(checkpoints, backbone, weights, work, show_progress=progress is not None)
    with tempfile.TemporaryDirectory() as tmp:
        views = test_views(world, Path(tmp) / "views")
        results = evaluate(encoders, views, backends, weights, threads, Path(tmp) / "cache", console, progress)
        num_queries = len(json.loads((views[0] / "captions" / "cap.rc2.val.json").read_text()))
    return {
        "world": world.name, "backbone": backbone, "weights": Path(weights).name if weights else None,
        "checkpoints": [c.name for c in checkpoints], "backends": list(backends), "metrics": list(METRICS),
        "num_queries": num_queries, "threads": threads, "results": results, "changes_vs_ort_fp32": changes(results),
        "notes": [
            "CIRR protocol (reference removed from the ranking) for R@k, CIRCO protocol for mAP@10, on the "
            "world's test queries with their ground truth.",
            "int8 = ONNX Runtime dynamic quantization (int8 weights, activations quantized per batch).",
        ],
    }
