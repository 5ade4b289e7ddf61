"""SEARLE's target-pad preprocessing on the torch side: the reference for the runtime's `targetpad` mode.

SEARLE (Baldrati et al.) evaluates and writes its test submissions with `targetpad_transform(1.25, size)`:
its `TargetPad` (pad an image whose long/short ratio is at least 1.25 to that ratio, centered, black),
then CLIP's resize and center crop. `with_preprocess(backbone, "targetpad")` gives the backbone with
that transform and the matching `PreprocessConfig`, so the PyTorch reference, the export's validation
pixels and the golden files all follow the mode the manifest records (`zscir-export --preprocess`).
The arithmetic is written out in `zscir_infer.contract.PreprocessConfig`.
"""

from __future__ import annotations

from dataclasses import replace

import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import Compose

from zscir_infer.contract import CLIP_PREPROCESS, PREPROCESS_CHOICES, SEARLE_TARGET_RATIO, TARGETPAD
from zscir_train.backbone import Backbone, BackboneError


class TargetPad:
    """SEARLE's `data_utils.TargetPad`, with the pad value as a parameter (SEARLE's is 0)."""

    def __init__(self, target_ratio: float, fill: int = 0):
        self.target_ratio = target_ratio
        self.fill = fill

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if max(w, h) / min(w, h) < self.target_ratio:
            return image
        padded_short = max(w, h) / self.target_ratio
        hp = max(int((padded_short - w) / 2), 0)
        vp = max(int((padded_short - h) / 2), 0)
        return TF.pad(image, [hp, vp, hp, vp], self.fill, "constant")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_ratio={self.target_ratio}, fill={self.fill})"


def with_preprocess(backbone: Backbone, mode: str, target_ratio: float = SEARLE_TARGET_RATIO) -> Backbone:
    """The backbone with the eval preprocessing `mode` (contract.PREPROCESS_CHOICES).

    "clip" returns it unchanged (open_clip's own transform). "targetpad" puts TargetPad in front of
    open_clip's transform, which must be the shortest-side resize and center crop that SEARLE's
    `targetpad_transform` continues with.
    """
    if mode not in PREPROCESS_CHOICES:
        raise BackboneError(f"Unknown preprocessing {mode!r}: use one of {PREPROCESS_CHOICES}.")
    if mode == CLIP_PREPROCESS:
        return backbone
    if backbone.preprocess.resize_mode == TARGETPAD:
        raise BackboneError(f"{backbone.name} already has target-pad preprocessing; apply it once.")
    if backbone.preprocess.resize_mode != "shortest" or not isinstance(backbone.transform, Compose):
        raise BackboneError(
            f"{backbone.name} preprocesses with resize_mode {backbone.preprocess.resize_mode!r}; targetpad "
            "continues with CLIP's shortest-side resize and center crop only: export it with --preprocess clip."
        )
    preprocess = backbone.preprocess.with_targetpad(target_ratio)
    transform = Compose([TargetPad(target_ratio, preprocess.fill_color), *backbone.transform.transforms])
    return replace(backbone, preprocess=preprocess, transform=transform)
