"""Pic2Word: train phi (IM2TEXT) from unlabeled images (DESIGN §1; google-research/composed_image_retrieval
`trainer.py` `get_loss_img2text`).

phi maps the frozen, unnormalized image features to a token; `a photo of *` is encoded with that token
at `*` (Pic2Word appends it to `a photo of` before EOT: the same sequence); symmetric InfoNCE between
the normalized image features and these text features at CLIP's own logit scale, over features
gathered from every rank. AdamW betas (0.9, 0.98), eps 1e-6, weight decay 0.1 except biases and norms,
linear warmup then cosine. Train images are RandomResizedCrop(scale 0.9-1.0) views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from zscir_train.backbone import Backbone, load_backbone
from zscir_train.checkpoint import PIC2WORD_PLACEHOLDER
from zscir_train.phi import PIC2WORD_DROPOUT, build_phi
from zscir_train.training.config import ConfigError, LoopConfig
from zscir_train.training.contrastive import CROP_SCALE, ImageDataset, TrainTransform, symmetric_info_nce
from zscir_train.training.distributed import Dist
from zscir_train.training.loop import MicroBatch, decay_groups, prepare_run, run
from zscir_train.training.phi_task import PhiTask, set_dropout
from zscir_train.training.sources import ImageLocation, list_images
from zscir_train.training.text import encode_text_trimmed
from zscir_train.training.validation import Validator

TRAIN_PROMPT = f"a photo of {PIC2WORD_PLACEHOLDER}"
PIC2WORD_WARMUP = 10_000  # open_clip/Pic2Word params.py default


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


class Pic2WordTask(PhiTask):
    name = "pic2word"

    def __init__(self, backbone: Backbone, phi: nn.Module, images: list[ImageLocation], cfg: Pic2WordConfig, d: Dist):
        super().__init__(backbone, phi, d.device)
        self.cfg, self.dist = cfg, d
        self.dataset = ImageDataset(images, TrainTransform(backbone.preprocess, cfg.crop_scale), cfg.seed)
        self.prompt_ids = backbone.tokenizer([TRAIN_PROMPT]).to(d.device)  # [1, L]

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
