"""The PyTorch reference for a bundle: the same backbone and phi, run by open_clip and zscir_train.

With the phi checkpoint (and the backbone weights it names) the reference computes the same numbers as
the bundle. Without them it is built from the manifest's architecture with random weights and a random
phi of the bundle's form: the same operations on the same shapes, so the same speed (dense kernels do
not depend on the values); the report records which it was.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip

from zscir_infer.bundle import load_bundle
from zscir_train.backbone import load_backbone
from zscir_train.checkpoint import METHOD_PHI_KIND, check_dims, load_phi_checkpoint, meta_for
from zscir_train.phi import build_phi
from zscir_train.reference import TorchReference

RANDOM_NOTE = "random weights of the bundle's architecture (timing only: speed does not depend on the values)"


def _backbone_from_manifest(manifest: dict, weights: str | None):
    """load_backbone on the manifest's open_clip name, or on its architecture written to a JSON file."""
    name, arch = manifest["backbone"]["name"], manifest["backbone"].get("arch")
    if name in open_clip.list_models() or not arch:
        return load_backbone(name, weights)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(arch))
        return load_backbone(str(path), weights)


def _usable_weights(pretrained: str | None) -> str | None:
    """A recorded pretrained value this machine can load: an existing file or a cached open_clip tag."""
    if pretrained is None or Path(pretrained).is_file():
        return pretrained
    return None


def reference_for_bundle(bundle_dir: str | Path, checkpoint: str | Path | None = None,
                         weights: str | None = None) -> tuple[TorchReference, dict]:
    """(TorchReference, provenance) matching the bundle; weights overrides the backbone weights."""
    manifest = load_bundle(bundle_dir, verify=False).manifest
    phi, meta = load_phi_checkpoint(checkpoint) if checkpoint else (None, None)
    recorded = meta.backbone_pretrained if meta else manifest["backbone"].get("pretrained")
    weights = weights or _usable_weights(recorded)
    backbone = _backbone_from_manifest(manifest, weights)
    if meta is not None:
        check_dims(meta, backbone, Path(checkpoint))
    method = manifest["method"]
    if phi is None and method in METHOD_PHI_KIND:
        phi = build_phi(METHOD_PHI_KIND[method], backbone.embed_dim, backbone.width)
        meta = meta_for(phi, backbone, method)
    provenance = {
        "backbone": backbone.name,
        "weights": Path(weights).name if weights else RANDOM_NOTE,
        "phi": Path(checkpoint).name if checkpoint else (RANDOM_NOTE if phi is not None else "none (slerp)"),
        "same_numbers_as_bundle": (checkpoint is not None or method == "slerp") and weights is not None,
    }
    if meta is not None and "default" in (manifest.get("templates") or {}):
        meta.template = manifest["templates"]["default"]  # the prompt the bundle's queries use
    return TorchReference(backbone, phi, meta), provenance
