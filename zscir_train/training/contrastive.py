"""Symmetric InfoNCE over the global batch (Pic2Word, TAT), and the training-time image transform."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from zscir_train.backbone import PreprocessConfig
from zscir_train.training.loop import Dist

CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect range, as open_clip's train transform


def gather_rows(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """[b, D] -> [world * b, D] in rank order; only this rank's rows keep their autograd graph."""
    if d.world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(d.world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[d.rank] = x
    return torch.cat(parts)


def symmetric_info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float, d: Dist) -> torch.Tensor:
    """(CE(image->text) + CE(text->image)) / 2 over the global batch; inputs [b, D] L2-normalized.

    Every rank computes the full loss, but its graph reaches only its own rows; DDP then averages the
    ranks' gradients, which would give 1/world of dL/dtheta. Scaling the gradient (not the value) by
    world restores it exactly, so N ranks match one process with the same global batch.
    """
    all_image, all_text = gather_rows(image, d), gather_rows(text, d)
    logits = logit_scale * all_image @ all_text.T  # [N, N]
    labels = torch.arange(len(logits), device=logits.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    if d.world_size > 1:
        loss = loss * d.world_size - loss.detach() * (d.world_size - 1)
    return loss


class TrainTransform:
    """RandomResizedCrop(scale) to the model's input size with its interpolation, ToTensor, Normalize.

    The crop is drawn from a seed given per sample, so it depends on the sample's position in the data
    stream only (identical across ranks, workers and resumes).
    """

    def __init__(self, preprocess: PreprocessConfig, scale: tuple[float, float]):
        self.size = [preprocess.image_size, preprocess.image_size]
        self.scale = tuple(scale)
        self.mean, self.std = list(preprocess.mean), list(preprocess.std)
        self.interpolation = InterpolationMode(preprocess.interpolation)

    def __call__(self, image: Image.Image, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            top, left, height, width = RandomResizedCrop.get_params(image, self.scale, CROP_RATIO)
        image = TF.resized_crop(image, top, left, height, width, self.size, self.interpolation, antialias=True)
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)  # [3, S, S]
