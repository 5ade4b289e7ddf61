"""Text-Anchored Tuning (Slerp paper, DESIGN §1): LoRA on the image encoder, text encoder frozen.

Image-caption pairs; the image features (LoRA-tuned encoder) are pulled towards the frozen text
features of their captions with a symmetric InfoNCE at a fixed temperature (default: the backbone's own
1 / exp(logit_scale), not learned), gathered over ranks. This narrows the modality gap, which is what
makes Slerp composition work better. LoRA rank 16, alpha 16, dropout 0.1 (see lora.py for where it
attaches). The artifact is the full open_clip state dict with LoRA merged into the image encoder, as
safetensors with `zscir` metadata (format "zscir-tat"), so `load_backbone(name, pretrained=PATH)`,
export and Slerp use the tuned encoder unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import save_file
from torch import nn

from zscir_infer.atomic import atomic_path
from zscir_infer.contract import DEFAULT_SLERP_ALPHA, SLERP
from zscir_train.backbone import Backbone, load_backbone
from zscir_train.reference import TorchReference
from zscir_train.training.config import ConfigError, LoopConfig
from zscir_train.training.contrastive import CROP_SCALE, ImageDataset, TrainTransform, symmetric_info_nce
from zscir_train.training.distributed import Dist
from zscir_train.training.loop import MicroBatch, decay_groups, prepare_run, run
from zscir_train.training.lora import add_lora, lora_parameters, merged_state_dict
from zscir_train.training.sources import ImageLocation, list_pairs
from zscir_train.training.state import AUGMENT_STREAM, derived_seed
from zscir_train.training.text import encode_text_trimmed
from zscir_train.training.validation import Validator

TAT_FORMAT = "zscir-tat"
TAT_FORMAT_VERSION = 1
METADATA_KEY = "zscir"
SAFETENSORS_SUFFIX = ".safetensors"  # open_clip picks its loader by this suffix


@dataclass
class TATConfig(LoopConfig):
    out: str = "tat.safetensors"
    pairs: list[str] = field(default_factory=list)
    image_column: str | None = None
    caption_column: str | None = None
    image_root: str | None = None
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    temperature: float | None = None  # None: the backbone's 1 / exp(logit_scale), kept fixed
    crop_scale: tuple[float, float] = CROP_SCALE
    slerp_alpha: float = DEFAULT_SLERP_ALPHA  # for validation
    schedule: str = "cosine"


class PairDataset(ImageDataset):
    """(augmented image [3, S, S], caption ids [L]) per pair."""

    def __init__(self, pairs: list[tuple[ImageLocation, str]], transform: TrainTransform, tokenizer, seed: int):
        super().__init__([image for image, _ in pairs], transform, seed)
        self.captions = [caption for _, caption in pairs]
        self.tokenizer = tokenizer

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, position = item
        pixels = self.transform(self.open(index), derived_seed(AUGMENT_STREAM, self.seed, position))
        return pixels, self.tokenizer([self.captions[index]])[0]

    @staticmethod
    def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


class TATTask:
    name = "tat"

    def __init__(self, backbone: Backbone, pairs: list[tuple[ImageLocation, str]], cfg: TATConfig, d: Dist):
        self.backbone, self.cfg, self.dist, self.device = backbone, cfg, d, d.device
        size = backbone.preprocess.image_size
        probe = torch.zeros(1, 3, size, size, device=d.device)
        self.adapted = add_lora(backbone.model.visual, probe, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        self.module = backbone.model.visual.to(d.device)
        transform = TrainTransform(backbone.preprocess, cfg.crop_scale)
        self.dataset = PairDataset(pairs, transform, backbone.tokenizer, cfg.seed)
        scale = 1.0 / cfg.temperature if cfg.temperature else backbone.model.logit_scale.exp().item()
        self.logit_scale = float(scale)

    def train_mode(self) -> None:
        """LoRA dropout on; normalization layers stay in eval mode (a ResNet's BatchNorm statistics are
        part of the frozen encoder and must not drift)."""
        self.module.train()
        for m in self.module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def param_groups(self) -> list[dict]:
        return decay_groups(self.module, self.cfg.weight_decay, exempt_1d=True)

    def loss(self, model: nn.Module, batch, micro: MicroBatch) -> torch.Tensor:
        pixels, ids = (t.to(self.device, non_blocking=True) for t in batch)
        image = model(pixels).float()  # [b, D], through the LoRA-adapted encoder
        with torch.no_grad():
            text = encode_text_trimmed(self.backbone.model, ids).float()  # [b, D], frozen anchor
        return symmetric_info_nce(F.normalize(image, dim=-1), F.normalize(text, dim=-1), self.logit_scale, self.dist)

    def validate(self, validator: Validator) -> dict[str, float]:
        self.module.eval()  # no LoRA dropout while scoring
        reference = TorchReference(self.backbone, alpha=self.cfg.slerp_alpha, batch_size=validator.batch_size,
                                   device=self.device)
        return validator.score(reference, SLERP, frozen_image_encoder=False)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in lora_parameters(self.module).items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = lora_parameters(self.module)
        if set(params) != set(state):
            raise ConfigError("--resume: the saved LoRA tensors do not match this model's (other --lora-rank?).")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def save(self, path: Path, training: dict) -> None:
        save_tat_checkpoint(path, self.backbone, self.lora_info(), training)

    def lora_info(self) -> dict:
        return {"rank": self.cfg.lora_rank, "alpha": self.cfg.lora_alpha, "dropout": self.cfg.lora_dropout,
                "adapted_weights": self.adapted, "logit_scale": self.logit_scale}


def save_tat_checkpoint(path: Path, backbone: Backbone, lora: dict, training: dict) -> Path:
    """The whole CLIP with LoRA merged into the image encoder, as safetensors with zscir metadata."""
    state = {k: v.cpu().contiguous() for k, v in merged_state_dict(backbone.model).items()}
    meta = {"format": TAT_FORMAT, "format_version": TAT_FORMAT_VERSION, "base": backbone.name,
            "base_pretrained": backbone.pretrained, "activation": backbone.activation, "lora": lora,
            "training": training}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta, default=str)})
    return Path(path)


def tat_task(cfg: TATConfig, d: Dist) -> TATTask:
    if not cfg.pairs:
        raise ConfigError("tat needs image-caption pairs: --pairs JSONL|CSV|TSV|SHARDS [...].")
    if not str(cfg.out).endswith(SAFETENSORS_SUFFIX):
        raise ConfigError(f"--out {cfg.out}: TAT writes open_clip weights, which open_clip reads as safetensors only "
                          f"with the '{SAFETENSORS_SUFFIX}' suffix; name the file *{SAFETENSORS_SUFFIX}.")
    pairs = list_pairs(cfg.pairs, cfg.image_column, cfg.caption_column, cfg.image_root)
    backbone = load_backbone(cfg.model, cfg.pretrained, device=d.device)
    return TATTask(backbone, pairs, cfg, d)


def train_tat(cfg: TATConfig, console: Console | None = None) -> dict:
    """LoRA-tune the image encoder on the pairs; write cfg.out (merged CLIP weights, best or last)."""
    console = console or Console(stderr=True)
    d = prepare_run(cfg)
    validator = Validator.from_config(cfg, console) if d.is_main else None
    return run(tat_task(cfg, d), cfg, d, validator, console)
