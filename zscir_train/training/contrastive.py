"""What the image-side methods (Pic2Word, TAT) share: symmetric InfoNCE over the global batch, the
training-time image transform, and the dataset of augmented views."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from zscir_infer.contract import PreprocessConfig
from zscir_train.training.distributed import Dist
from zscir_train.training.sources import ImageLocation, SourceError
from zscir_train.training.state import AUGMENT_STREAM, derived_seed

CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect range, as open_clip's train transform
CROP_SCALE = (0.9, 1.0)  # Pic2Word's RandomResizedCrop scale (TAT uses it too)
MAX_UNREADABLE_IN_A_ROW = 16


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


class ImageDataset:
    """Augmented training views [3, S, S] of images; an unreadable file is replaced by the next one."""

    def __init__(self, images: list[ImageLocation], transform: TrainTransform, seed: int):
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def open(self, index: int) -> Image.Image:
        for shift in range(MAX_UNREADABLE_IN_A_ROW):
            location = self.images[(index + shift) % len(self.images)]
            try:
                return location.open()
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                warnings.warn(f"skipping unreadable image {location.path} ({exc})", stacklevel=2)
        raise SourceError(f"{MAX_UNREADABLE_IN_A_ROW} unreadable images in a row from {self.images[index].path}: "
                          "check the image source.")

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, position = item
        return self.transform(self.open(index), derived_seed(AUGMENT_STREAM, self.seed, position))

    @staticmethod
    def collate(batch: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(batch)  # [b, 3, S, S]
