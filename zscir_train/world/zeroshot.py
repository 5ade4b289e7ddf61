"""Zero-shot attribute accuracy of a CLIP on shapes-world images: one prompt per value, argmax."""

from __future__ import annotations

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from zscir_train.world.attributes import ATTRIBUTES, ShapeSpec, values_of
from zscir_train.world.captions import zero_shot_prompt
from zscir_train.world.generate import WorldConfig, render_image, split_specs

ENCODE_BATCH = 256


def to_pixels(images: list[Image.Image], mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD) -> torch.Tensor:
    """Normalize images that already have the model's size ([B, 3, H, W] float32).

    Equal to open_clip's eval transform at that size (its resize and crop are then identities).
    """
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])  # [B, H, W, 3]
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def encode_images(model, pixels: torch.Tensor) -> torch.Tensor:
    """Normalized image features [N, D], in batches."""
    chunks = [model.encode_image(pixels[i : i + ENCODE_BATCH], normalize=True) for i in range(0, len(pixels), ENCODE_BATCH)]
    return torch.cat(chunks)


@torch.no_grad()
def encode_prompts(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    return model.encode_text(tokenizer(prompts), normalize=True)  # [P, D]


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, image_features: torch.Tensor, specs: list[ShapeSpec]) -> dict:
    """Per attribute: accuracy, chance level, prompts and confusion matrix (rows = truth)."""
    table = {}
    for attribute in ATTRIBUTES:
        values = values_of(attribute)
        prompts = [zero_shot_prompt(attribute, v) for v in values]
        predicted = (image_features @ encode_prompts(model, tokenizer, prompts).T).argmax(dim=1).numpy()
        truth = np.array([values.index(getattr(s, attribute)) for s in specs])
        confusion = np.zeros((len(values), len(values)), dtype=np.int64)
        np.add.at(confusion, (truth, predicted), 1)
        table[attribute] = {
            "accuracy": float((predicted == truth).mean()),
            "chance": 1.0 / len(values),
            "values": values,
            "prompts": prompts,
            "confusion": confusion.tolist(),
        }
    return table


def format_table(table: dict) -> str:
    """A markdown table: attribute, number of values, chance, accuracy."""
    lines = ["| attribute | values | chance | zero-shot accuracy |", "|---|---|---|---|"]
    for attribute, row in table.items():
        lines.append(f"| {attribute} | {len(row['values'])} | {row['chance']:.3f} | {row['accuracy']:.4f} |")
    return "\n".join(lines)


@torch.no_grad()
def zero_shot_table(backbone, config: WorldConfig | None = None, count: int | None = None) -> dict:
    """Zero-shot accuracy on the held-out test-split images of a world (rendered in memory, identical to
    the PNGs `zscir-train world` writes), preprocessed by the backbone's own eval transform."""
    config = config or WorldConfig()
    specs = split_specs(config, "test")[: count or config.test_images]
    pixels = torch.stack([backbone.transform(render_image(config, "test", i, s)) for i, s in enumerate(specs)])
    table = zero_shot_accuracy(backbone.model, backbone.tokenizer, encode_images(backbone.model, pixels), specs)
    return {"images": len(specs), "world_seed": config.seed, "split": "test", "attributes": table}
