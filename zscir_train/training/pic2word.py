"""Pic2Word: train phi (IM2TEXT) from unlabeled images (DESIGN §1; google-research/composed_image_retrieval
`trainer.py` `get_loss_img2text`).

phi maps the frozen, unnormalized image features to a token; `a photo of *` is encoded with that token
at `*` (Pic2Word appends it to `a photo of` before EOT: the same sequence); symmetric InfoNCE between
the normalized image features and these text features at CLIP's own logit scale, over features
gathered from every rank. AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.1 except biases and norms,
linear warmup then cosine. Train images are RandomResizedCrop(scale 0.9-1.0) views.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import UnidentifiedImageError
from rich.console import Console
from torch import nn

from zscir_train.backbone import Backbone, load_backbone
from zscir_train.checkpoint import PIC2WORD_PLACEHOLDER, meta_for, save_phi_checkpoint
from zscir_train.composed import placeholder_token_id
from zscir_train.phi import PIC2WORD_DROPOUT, build_phi
from zscir_train.training.contrastive import TrainTransform, symmetric_info_nce
from zscir_train.training.lincir import set_dropout
from zscir_train.training.loop import (
    AUGMENT_STREAM,
    ConfigError,
    Dist,
    LoopConfig,
    MicroBatch,
    decay_groups,
    derived_seed,
    prepare_run,
    run,
)
from zscir_train.training.sources import ImageLocation, list_images
from zscir_train.training.text import encode_text_trimmed
from zscir_train.training.validation import DeviceReference, Validator

TRAIN_PROMPT = f"a photo of {PIC2WORD_PLACEHOLDER}"
CROP_SCALE = (0.9, 1.0)
PIC2WORD_WARMUP = 10_000  # open_clip/Pic2Word params.py default
MAX_UNREADABLE_IN_A_ROW = 16


@dataclass
class Pic2WordConfig(LoopConfig):
    out: str = "pic2word.safetensors"
    images: list[str] = field(default_factory=list)
    image_column: str | None = None
    image_root: str | None = None
    crop_scale: tuple[float, float] = CROP_SCALE
    phi_dropout: float = PIC2WORD_DROPOUT
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    schedule: str = "cosine"
    warmup_steps: int = PIC2WORD_WARMUP


class ImageDataset:
    """Augmented training views [3, S, S] of images; an unreadable file is replaced by the next one."""

    def __init__(self, images: list[ImageLocation], transform: TrainTransform, seed: int):
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def open(self, index: int):
        for shift in range(MAX_UNREADABLE_IN_A_ROW):
            location = self.images[(index + shift) % len(self.images)]
            try:
                return location.open()
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                warnings.warn(f"skipping unreadable image {location.path} ({exc})", stacklevel=2)
        raise OSError(f"{MAX_UNREADABLE_IN_A_ROW} unreadable images in a row from {self.images[index].path}: "
                      "check the image source.")

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, position = item
        return self.transform(self.open(index), derived_seed(AUGMENT_STREAM, self.seed, position))

    @staticmethod
    def collate(batch: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(batch)  # [b, 3, S, S]


class Pic2WordTask:
    name = "pic2word"

    def __init__(self, backbone: Backbone, phi: nn.Module, images: list[ImageLocation], cfg: Pic2WordConfig, d: Dist):
        self.backbone, self.cfg, self.dist, self.device = backbone, cfg, d, d.device
        self.module = phi.to(d.device)
        self.dataset = ImageDataset(images, TrainTransform(backbone.preprocess, cfg.crop_scale), cfg.seed)
        self.placeholder_id = placeholder_token_id(backbone.tokenizer, PIC2WORD_PLACEHOLDER)
        self.prompt_ids = backbone.tokenizer([TRAIN_PROMPT]).to(d.device)  # [1, L]

    def train_mode(self) -> None:
        self.module.train()  # phi only: dropout on; the CLIP model stays in eval mode

    def param_groups(self) -> list[dict]:
        return decay_groups(self.module, self.cfg.weight_decay, exempt_1d=True)

    def loss(self, model: nn.Module, pixels: torch.Tensor, micro: MicroBatch) -> torch.Tensor:
        clip = self.backbone.model
        with torch.no_grad():
            image = clip.encode_image(pixels.to(self.device, non_blocking=True)).float()  # [b, D] unnormalized
        token = model(image)  # [b, W]
        ids = self.prompt_ids.expand(len(token), -1)
        text = encode_text_trimmed(clip, ids, token, self.placeholder_id).float()  # [b, D]
        return symmetric_info_nce(F.normalize(image, dim=-1), F.normalize(text, dim=-1), clip.logit_scale.exp(), self.dist)

    def validate(self, validator: Validator) -> dict[str, float]:
        meta = meta_for(self.module, self.backbone, "pic2word")
        reference = DeviceReference(self.backbone, self.module, meta, batch_size=validator.batch_size)
        return validator.score(reference, "phi")

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

    def save(self, path: Path, training: dict) -> None:
        save_phi_checkpoint(path, self.module, meta_for(self.module, self.backbone, "pic2word", training=training))


def pic2word_task(cfg: Pic2WordConfig, d: Dist) -> Pic2WordTask:
    if not cfg.images:
        raise ConfigError("pic2word needs image sources: --images FOLDER|LIST|TSV|SHARDS [...].")
    images = list_images(cfg.images, cfg.image_column, cfg.image_root)
    backbone = load_backbone(cfg.model, cfg.pretrained, device=d.device)
    phi = build_phi("pic2word", backbone.embed_dim, backbone.width)
    set_dropout(phi, cfg.phi_dropout)
    return Pic2WordTask(backbone, phi, images, cfg, d)


def train_pic2word(cfg: Pic2WordConfig, console: Console | None = None) -> dict:
    """Train the IM2TEXT phi on the images; write cfg.out (the best validated or the last phi)."""
    console = console or Console(stderr=True)
    d = prepare_run(cfg)
    validator = Validator.from_config(cfg, console) if d.is_main else None
    return run(pic2word_task(cfg, d), cfg, d, validator, console)
