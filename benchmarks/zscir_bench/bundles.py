"""Bundles to measure speed on: a registered open_clip architecture with random weights and a random phi,
exported at fp32, fp16 and int8 like any trained model.

The backbone weights are written to a file first, so the bundle, the PyTorch reference and the cold-start
programs all load the same weights from disk (as they would a downloaded checkpoint). Everything lands
in a work folder and is reused by later runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SEED = 0


@dataclass(frozen=True)
class SpeedBundle:
    bundle: Path
    checkpoint: Path | None  # the phi checkpoint (None for slerp)
    weights: Path  # backbone weights (open_clip state_dict, safetensors)


def speed_bundle(model: str, work: Path, method: str = "lincir", show_progress: bool = True) -> SpeedBundle:
    """Export (once) a `method` bundle of `model` with random weights into `work`; fp32, fp16 and int8."""
    import torch
    from safetensors.torch import save_file
    from zscir_export.bundle import MANIFEST, ExportOptions, export_bundle
    from zscir_export.model_source import resolve_source

    from zscir_infer.atomic import atomic_path
    from zscir_train.backbone import load_backbone
    from zscir_train.checkpoint import METHOD_PHI_KIND, meta_for, save_phi_checkpoint
    from zscir_train.phi import build_phi

    stem = Path(model).stem
    work.mkdir(parents=True, exist_ok=True)
    weights = work / f"{stem}-random.safetensors"
    if not weights.is_file():
        torch.manual_seed(SEED)
        state = {k: v.contiguous() for k, v in load_backbone(model).model.state_dict().items()}
        with atomic_path(weights) as tmp:
            save_file(state, str(tmp))
    checkpoint = None
    if method != "slerp":
        checkpoint = work / f"{stem}-{method}-random-phi.safetensors"
        if not checkpoint.is_file():
            backbone = load_backbone(model, str(weights))
            torch.manual_seed(SEED)
            phi = build_phi(METHOD_PHI_KIND[method], backbone.embed_dim, backbone.width)
            save_phi_checkpoint(checkpoint, phi, meta_for(phi, backbone, method))
    bundle = work / f"{stem}-{method}"
    if not (bundle / MANIFEST).is_file():
        source = resolve_source(checkpoint, model, str(weights), method)
        export_bundle(source, ExportOptions(out=bundle, fp16=True, int8=True, force=True,
                                            show_progress=show_progress))
    return SpeedBundle(bundle, checkpoint, weights)
