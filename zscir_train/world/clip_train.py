"""Contrastive training of the tiny shapes-world CLIP on CPU (`zscir-train world-clip`).

What makes it learn in well under an hour on 2 cores:
- a convolutional image tower (open_clip's ModifiedResNet, CLIP's RN architecture, width 16): shape is
  the hard attribute, and ViTs learn it from far more samples than this budget holds. Measured here with
  a supervised shape probe (batch 128): a 192x4 ViT, patch 8 or 16, stayed at chance (0.13-0.16) after
  100-150 steps, the ResNet reached 0.32 after 100; in contrastive training the ViT was still at chance
  on shape (linear probe 0.23) after 450 steps of 256 while every other attribute was learned;
- endless fresh data: every step renders its own batch (~0.7 ms an image), so nothing overfits;
- hard negatives in-batch: images come in groups that share all attributes but one (shape most often),
  and half the batch in groups of all 8 shapes on one base, where only shape tells captions apart
  (color and background, learned first, otherwise leave little gradient for shape);
- multi-positive targets: a caption often mentions only some attributes ("a red shape"), and every
  image it is true of is a positive (`captions.matches`), not just its own image;
- the text tower runs on the shortest prefix holding every EOT: with a causal mask the features at
  EOT are exactly those of the full 77-token pass (`encode_text_prefix`), at a third of the cost;
- bf16 autocast on CPUs that have it (AVX-512 BF16 here: ~1.5x faster steps).

The run directory holds `checkpoint.pt` (model, optimizer, step; written atomically every
`checkpoint_every` steps, so an interrupted run resumes) and `log.jsonl`. Batches are a function of
(seed, step), so a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import save_file

from zscir_infer.atomic import atomic_path
from zscir_train.backbone import register_model_configs
from zscir_train.world import WorldError
from zscir_train.world.attributes import ATTRIBUTES, ShapeSpec, all_specs, values_of
from zscir_train.world.captions import describe, random_mention
from zscir_train.world.render import render
from zscir_train.world.zeroshot import encode_images, to_pixels, zero_shot_accuracy

MODEL_NAME = "world-clip"
# Which attribute a group variant changes: shape is the hardest to learn, so it is changed most.
VARIANT_WEIGHTS = {"shape": 0.4, "color": 0.15, "background": 0.15, "size": 0.15, "style": 0.15}
EVAL_IMAGES = 512
EVAL_SEED_OFFSET = 1_000_003  # eval images come from a seed stream no training step uses
LOGIT_SCALE_MAX = 100.0
# Options that may differ when a run resumes: they change speed, not the data or the math.
RESUMABLE_CHANGES = ("threads", "checkpoint_every", "eval_every")


@dataclass
class WorldClipConfig:
    steps: int = 1500
    batch_size: int = 256
    group_size: int = 4  # images per group sharing all attributes but one
    shape_groups: int = 16  # groups of all 8 shapes on one base (16 x 8 = half of 256): shape is the only cue inside them
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.1
    image_size: int = 64
    seed: int = 0
    threads: int = 2
    bf16: bool = True
    checkpoint_every: int = 50
    eval_every: int = 100


def create_world_clip(image_size: int = 64) -> torch.nn.Module:
    """A randomly initialized world-clip (the architecture in model_configs/world-clip.json)."""
    register_model_configs()
    cfg = open_clip.get_model_config(MODEL_NAME)
    if cfg["vision_cfg"]["image_size"] != image_size:
        raise WorldError(
            f"world-clip.json is built for {cfg['vision_cfg']['image_size']} px images, not {image_size}: "
            "train at its size or add a config for the new one."
        )
    return open_clip.create_model(MODEL_NAME)


def encode_text_prefix(model, ids: torch.Tensor) -> torch.Tensor:
    """model.encode_text(ids) (unnormalized, [B, D]) computed on the first L tokens only.

    L = the last EOT position + 1. The causal mask makes positions <= EOT independent of the padding
    after it, so the pooled EOT features equal the full 77-token pass (a test checks this).
    """
    length = int(ids.argmax(dim=-1).max()) + 1
    ids = ids[:, :length]  # [B, L]
    x = model.token_embedding(ids) + model.positional_embedding[:length]  # [B, L, W]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]  # [B, W]
    return pooled @ model.text_projection  # [B, D]


def sample_group_specs(rng: np.random.Generator, config: WorldClipConfig) -> tuple[list[ShapeSpec], list[bool]]:
    """Batch specs in groups, and which of them must have shape-mentioning captions.

    First `shape_groups` groups of every shape on one random base (only shape tells them apart), then
    groups of `group_size` around a random base whose variants change one attribute each.
    """
    combos = all_specs()
    shapes = values_of("shape")
    names = list(VARIANT_WEIGHTS)
    weights = np.array([VARIANT_WEIGHTS[a] for a in names])
    specs: list[ShapeSpec] = []
    for _ in range(config.shape_groups):
        base = combos[int(rng.integers(len(combos)))]
        specs += [base.with_values(shape=shape) for shape in shapes]
    needs_shape = [True] * len(specs)
    while len(specs) < config.batch_size:
        base = combos[int(rng.integers(len(combos)))]
        specs.append(base)
        for _ in range(config.group_size - 1):
            attribute = names[int(rng.choice(len(names), p=weights))]
            others = [v for v in values_of(attribute) if v != getattr(base, attribute)]
            specs.append(base.with_values(**{attribute: others[int(rng.integers(len(others)))]}))
    needs_shape += [False] * (len(specs) - len(needs_shape))
    return specs[: config.batch_size], needs_shape[: config.batch_size]


def sample_batch(seed: int, step: int, config: WorldClipConfig):
    """(pixels [B, 3, H, W], captions, positives [B, B] bool: image i matches caption j)."""
    rng = np.random.default_rng([seed, step])
    specs, needs_shape = sample_group_specs(rng, config)
    images = [render(spec, rng, config.image_size) for spec in specs]
    captions, mentions = [], []
    for spec, shape_needed in zip(specs, needs_shape, strict=True):
        mention = random_mention(rng) | ({"shape"} if shape_needed else set())
        captions.append(describe(rng, spec, frozenset(mention)))
        mentions.append(frozenset(mention))
    return to_pixels(images), captions, positive_matrix(specs, mentions)


def positive_matrix(specs: list[ShapeSpec], mentions) -> torch.Tensor:
    """[B, B] bool: caption j (of specs[j], mentioning mentions[j]) is true of image i (`captions.matches`)."""
    codes = np.array([[values_of(a).index(getattr(s, a)) for a in ATTRIBUTES] for s in specs])  # [B, A]
    mentioned = np.array([[a in m for a in ATTRIBUTES] for m in mentions])  # [B, A]
    equal = codes[:, None, :] == codes[None, :, :]  # [B_image, B_caption, A]
    return torch.from_numpy((equal | ~mentioned[None, :, :]).all(axis=2))


def multi_positive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE whose targets spread uniformly over every positive (logits [B, B], image x text)."""
    target = positives.float()
    image_to_text = -(F.log_softmax(logits, dim=1) * target / target.sum(1, keepdim=True)).sum(1).mean()
    text_to_image = -(F.log_softmax(logits.T, dim=1) * target.T / target.T.sum(1, keepdim=True)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


def learning_rate(step: int, config: WorldClipConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def build_optimizer(model, config: WorldClipConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def eval_set(config: WorldClipConfig) -> tuple[torch.Tensor, list[ShapeSpec]]:
    """Held-out images (a seed stream no training step draws from) for the progress log."""
    rng = np.random.default_rng([config.seed, EVAL_SEED_OFFSET])
    combos = all_specs()
    specs = [combos[int(rng.integers(len(combos)))] for _ in range(EVAL_IMAGES)]
    return to_pixels([render(s, rng, config.image_size) for s in specs]), specs


def save_weights(model, path: Path) -> None:
    """The plain open_clip state_dict as fp16 safetensors (keys exactly as model.state_dict()).

    fp16 halves the 49408-row token table so the file stays small enough to commit;
    `load_state_dict` casts back to the model's fp32 parameters.
    """
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "architecture": MODEL_NAME})


def train_world_clip(config: WorldClipConfig, run_dir: Path, weights_out: Path) -> dict:
    """Train (or resume) in `run_dir`, write the fp16 safetensors to `weights_out`; returns the final eval."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = create_world_clip(config.image_size)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    optimizer = build_optimizer(model, config)
    start, elapsed = 0, 0.0
    checkpoint_path = run_dir / "checkpoint.pt"
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        changed = {k: (v, asdict(config)[k]) for k, v in state["config"].items()
                   if k not in RESUMABLE_CHANGES and asdict(config)[k] != v}
        if changed:
            raise WorldError(
                f"{checkpoint_path} was written with other training options {changed} (saved, given); "
                "use a fresh --run-dir, or the same options to resume."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed = state["step"], state["elapsed_s"]
    eval_pixels, eval_specs = eval_set(config)
    log = open(run_dir / "log.jsonl", "a")
    log.write(json.dumps({"start_step": start, "config": asdict(config)}) + "\n")
    began = time.monotonic() - elapsed
    columns = [TextColumn("world-clip"), BarColumn(), TextColumn("{task.completed}/{task.total} {task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=config.steps, completed=start, info="")
        for step in range(start, config.steps):
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            pixels, captions, positives = sample_batch(config.seed, step, config)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                image_features = F.normalize(model.encode_image(pixels).float(), dim=-1)  # [B, D]
                text_features = F.normalize(encode_text_prefix(model, tokenizer(captions)).float(), dim=-1)
            logits = model.logit_scale.exp() * image_features @ text_features.T  # [B, B]
            loss = multi_positive_loss(logits, positives)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(LOGIT_SCALE_MAX))
            record = {"step": step + 1, "loss": round(loss.item(), 4), "lr": learning_rate(step, config),
                      "elapsed_s": round(time.monotonic() - began, 1)}
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                model.eval()
                table = zero_shot_accuracy(model, tokenizer, encode_images(model, eval_pixels), eval_specs)
                record["zero_shot"] = {a: round(table[a]["accuracy"], 4) for a in ATTRIBUTES}
            log.write(json.dumps(record) + "\n")
            log.flush()
            progress.update(task, advance=1, info=f"loss {loss.item():.3f} {record.get('zero_shot', '')}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                with atomic_path(checkpoint_path) as tmp:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "step": step + 1, "elapsed_s": record["elapsed_s"], "config": asdict(config)}, tmp)
    log.close()
    model.eval()
    save_weights(model, weights_out)
    return {"steps": config.steps, "elapsed_s": round(time.monotonic() - began, 1)}
