"""Frozen open_clip backbones and their preprocessing, loaded from a name, a tag, a file or a JSON.

`load_backbone("ViT-L-14", "openai")` gives the model the papers use; `load_backbone("zscir-tiny")` a tiny
random one for tests; `load_backbone("path/to/arch.json", "weights.safetensors")` a custom architecture
(the shapes-world CLIP is defined this way).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch

from zscir_infer.contract import PreprocessConfig, PreprocessConfigError
from zscir_infer.errors import ZscirError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
ARCH_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


class BackboneError(ZscirError, ValueError):
    """A backbone cannot be built from what was given; the message says what to change."""


@functools.cache
def register_model_configs() -> None:
    """Make zscir's architectures (zscir-tiny, world-clip) known to open_clip; once per process."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class Backbone:
    model: torch.nn.Module  # open_clip CLIP, frozen, eval mode
    name: str  # registered open_clip name, or the stem of a custom architecture JSON
    pretrained: str | None  # tag, local weights path, or None for random weights
    embed_dim: int  # D: projected embedding size (image and text)
    width: int  # W: text transformer width (phi's output, one token embedding)
    context_length: int
    preprocess: PreprocessConfig
    transform: object = field(repr=False)  # open_clip eval transform: PIL image -> [3, H, W]
    tokenizer: object = field(repr=False)  # open_clip tokenizer: list[str] -> LongTensor [B, context_length]
    arch: dict = field(default_factory=dict, repr=False)  # the open_clip model config

    @property
    def source(self) -> str:
        return self.pretrained or "random-init"


def _register_architecture(name: str) -> str:
    """Accept a path to an open_clip architecture JSON: register it and return its model name."""
    path = Path(name)
    if path.suffix != ".json":
        return name
    if not path.is_file():
        raise BackboneError(f"Architecture file {path} does not exist: pass an open_clip model name or a JSON path.")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BackboneError(f"Architecture file {path} is not valid JSON: {exc}") from exc
    missing = [k for k in ARCH_KEYS if k not in cfg]
    if missing:
        raise BackboneError(f"Architecture file {path} lacks {missing}: it must be an open_clip model config.")
    open_clip.add_model_config(path)
    return path.stem


def _check_pretrained(name: str, pretrained: str | None) -> None:
    if pretrained is None or os.path.isfile(pretrained):
        return
    if Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}:
        raise BackboneError(f"Pretrained weights file {pretrained} does not exist.")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise BackboneError(
            f"'{pretrained}' is neither a weights file nor a pretrained tag of {name}; "
            f"known tags: {', '.join(tags) or 'none (custom architecture: pass a weights file)'}."
        )


def _text_width(model: torch.nn.Module) -> int:
    if hasattr(model, "token_embedding"):
        return model.token_embedding.weight.shape[1]
    raise BackboneError(
        f"{type(model).__name__} has no CLIP text transformer (token_embedding): pseudo-token composition "
        "needs an open_clip CLIP model with the standard text tower."
    )


def _embed_dim(model: torch.nn.Module) -> int:
    proj = model.text_projection
    return int(proj.out_features if isinstance(proj, torch.nn.Linear) else proj.shape[1])


def load_backbone(name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu") -> Backbone:
    """An open_clip CLIP, frozen in eval mode, with its preprocessing and tokenizer.

    name: a registered open_clip name ("ViT-L-14"), one of zscir's configs ("zscir-tiny", "world-clip"),
    or a path to an architecture JSON. pretrained: an open_clip tag ("openai"), a local weights file,
    or None for random weights (tests, benchmarks of speed).
    """
    register_model_configs()
    name = _register_architecture(str(name))
    if name not in open_clip.list_models():
        raise BackboneError(
            f"Unknown model '{name}': not an open_clip architecture. Use one of open_clip.list_models() "
            f"(e.g. ViT-B-32, ViT-L-14), zscir's {sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json'))}, "
            "or a path to an architecture JSON."
        )
    _check_pretrained(name, pretrained)
    try:
        model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    except RuntimeError as exc:
        if "download" in str(exc).lower():
            raise BackboneError(
                f"Could not fetch pretrained weights '{pretrained}' for {name} (no network?). Download the "
                "weights on a connected machine and pass the file with --pretrained PATH, or fill the "
                "Hugging Face cache and set HF_HUB_OFFLINE=1."
            ) from exc
        raise
    model.eval().requires_grad_(False)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp["size"]
    try:
        preprocess = PreprocessConfig(
            image_size=int(size if isinstance(size, int) else size[0]),
            mean=tuple(float(m) for m in pp["mean"]),
            std=tuple(float(s) for s in pp["std"]),
            interpolation=pp.get("interpolation", "bicubic"),
            resize_mode=pp.get("resize_mode", "shortest"),
            fill_color=int(pp.get("fill_color", 0)),
        )
    except PreprocessConfigError as exc:
        raise BackboneError(f"{name}: open_clip's preprocessing is not one zscir can export ({exc}).") from exc
    tokenizer = open_clip.get_tokenizer(name)
    return Backbone(
        model=model,
        name=name,
        pretrained=pretrained,
        embed_dim=_embed_dim(model),
        width=_text_width(model),
        context_length=int(model.context_length),
        preprocess=preprocess,
        transform=transform,
        tokenizer=tokenizer,
        arch=open_clip.get_model_config(name) or {},
    )
