"""Fine-tune a CLIP for the `sum` query on composed triplets, as BGE-VL-CLIP (MegaPairs) is trained.

BGE-VL-CLIP is a standard CLIP fine-tuned contrastively on (reference image, instruction text, target
image) triplets with the query normalize(image feature + text feature) against the target's image
feature, the reference image itself as a hard negative. This module does the same on the shapes world:

- triplets from the TRAIN split only (`images.jsonl`, split "train"): references and targets are train
  images, texts from the world's non-held-out modification templates (`zscir_train.world.queries`); the
  val and test queries, their images and the held-out phrasings are never seen;
- loss: InfoNCE of the sum query against the batch's target images and reference images (the references
  are the hard negatives), at the model's own logit scale (fixed); every candidate image with the target's
  attributes is a positive (multi-positive: the world has many images of one combination);
- what is tuned (AdamW, constant learning rate after a short warmup): `tune="all"`, both towers whole, as
  BGE-VL; `tune="head"` (the default, for a few CPU minutes), the whole text tower and the image tower's
  pooling head (a ModifiedResNet's attention pool, world-clip's), its convolutional trunk frozen: the
  trunk's outputs of the train images are computed once, so a step costs a text pass and the head only.
  Normalization layers stay in eval mode either way (a ResNet's BatchNorm statistics do not drift).

The artifact is the whole open_clip state dict as safetensors with `zscir` metadata (format "zscir-clip",
method "sum"): `load_backbone(model, PATH)` loads it, `zscir-export --ckpt PATH` exports a sum bundle.

    zscir-train world-sum-tune --world WORLD --out runs/world-sum/sum-tuned.safetensors --steps 300
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from zscir_infer.atomic import atomic_path, atomic_write_text
from zscir_infer.contract import SUM
from zscir_train.backbone import Backbone, load_backbone
from zscir_train.training.text import encode_text_trimmed
from zscir_train.world import WorldError, WorldFileMissingError
from zscir_train.world.attributes import ATTRIBUTES, ShapeSpec
from zscir_train.world.queries import build_queries, spec_codes

CLIP_FT_FORMAT = "zscir-clip"
CLIP_FT_FORMAT_VERSION = 1
METADATA_KEY = "zscir"
TRIPLET_STREAM = 0x53554D  # "SUM": the triplet RNG stream, apart from the world's own streams
LOGIT_SCALE_MAX = 100.0


@dataclass
class SumTuneConfig:
    world: str
    out: str
    model: str = "world-clip"
    pretrained: str | None = None  # None with world-clip: the committed weights
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-5
    weight_decay: float = 0.1
    warmup_steps: int = 20
    triplets: int = 12_000  # drawn in rounds of one query per train image
    seed: int = 0
    threads: int = 2
    log_every: int = 25
    tune: str = "head"  # head | all (see the module docstring)


@dataclass
class Triplets:
    references: np.ndarray  # [N] index into the image tensor
    targets: np.ndarray  # [N]
    texts: list[str]
    target_codes: np.ndarray  # [N, A] attribute codes of the target combination
    image_codes: np.ndarray  # [I, A] attribute codes of every train image


def train_images(world: Path) -> tuple[list[str], dict[str, ShapeSpec]]:
    """(image paths relative to the world, name -> spec) of the world's TRAIN split."""
    index = world / "images.jsonl"
    if not index.is_file():
        raise WorldFileMissingError(f"{index} is missing: pass a world written by `zscir-train world`.")
    paths, specs = [], {}
    for line in index.read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            paths.append(record["path"])
            specs[record["name"]] = ShapeSpec.from_dict({a: record[a] for a in ATTRIBUTES})
    if not specs:
        raise WorldFileMissingError(f"{index} lists no train image.")
    return paths, specs


def _round_rng(seed: int, round_: int) -> np.random.Generator:
    return np.random.default_rng([TRIPLET_STREAM, seed, round_])


def build_triplets(specs: dict[str, ShapeSpec], count: int, seed: int) -> Triplets:
    """`count` composed triplets over the train images (held-out templates excluded), in rounds."""
    names = list(specs)
    position = {n: i for i, n in enumerate(names)}
    refs, targets, texts, target_specs = [], [], [], []
    round_ = 0
    while len(refs) < count:
        wanted = min(len(names), count - len(refs))
        try:  # one query per train image and round ...
            queries = build_queries(_round_rng(seed, round_), specs, wanted, allow_held_out=False)
        except WorldError:  # ... unless a small world has references with no target in reach: half as many
            queries = build_queries(_round_rng(seed, round_), specs, max(wanted // 2, 1), allow_held_out=False)
        for q in queries:
            refs.append(position[q.reference])
            targets.append(position[q.target])
            texts.append(q.text)
            target_specs.append(q.target_spec)
        round_ += 1
    return Triplets(np.array(refs), np.array(targets), texts, spec_codes(target_specs), spec_codes(list(specs.values())))


def load_pixels(world: Path, paths: list[str], backbone: Backbone) -> torch.Tensor:
    """Every train image through the backbone's eval transform, once: [I, 3, S, S]."""
    return torch.stack([backbone.transform(Image.open(world / p).convert("RGB")) for p in paths])


TUNE_MODES = ("head", "all")


class ImageSide:
    """Raw image features of train images by index, through what is tuned: the whole tower, or the pooling
    head over trunk outputs computed once (tune="head")."""

    def __init__(self, model, pixels: torch.Tensor, tune: str, batch: int = 256):
        if tune not in TUNE_MODES:
            raise ValueError(f"tune {tune!r}: use one of {TUNE_MODES}.")
        visual = model.visual
        self.model, self.tune = model, tune
        if tune == "all":
            self.inputs, self.forward = pixels, model.encode_image
            return
        if not hasattr(visual, "attnpool") or not hasattr(visual, "layer4"):
            raise ValueError(f"tune='head' tunes a ModifiedResNet's attention pool; {type(visual).__name__} has none: "
                             "use tune='all'.")
        visual.requires_grad_(False)
        visual.attnpool.requires_grad_(True)
        with torch.no_grad():
            self.inputs = torch.cat([_trunk(visual, pixels[i:i + batch]) for i in range(0, len(pixels), batch)])
        self.forward = visual.attnpool

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.forward(self.inputs[indices])


def _trunk(visual, x: torch.Tensor) -> torch.Tensor:
    """A ModifiedResNet up to its attention pool (stem, layer1..4)."""
    x = visual.stem(x.to(visual.conv1.weight.dtype))
    return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))


def sum_loss(model, images_of: ImageSide, ids: torch.Tensor, refs: torch.Tensor, targets: torch.Tensor,
             positives: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Multi-positive InfoNCE of normalize(f_img(ref) + f_txt(text)) over [targets; refs] image features.

    positives [b, 2b] bool: which candidates show the target's attributes (the own target always)."""
    images = images_of(torch.cat([refs, targets]))  # [2b, D], raw
    b = len(refs)
    query = F.normalize(images[:b] + encode_text_trimmed(model, ids), dim=-1)  # the sum query
    candidates = F.normalize(torch.cat([images[b:], images[:b]]), dim=-1)  # targets, then references
    logits = logit_scale * query @ candidates.T  # [b, 2b]
    return (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positives, float("-inf")), 1)).mean()


def _positives(tr: Triplets, rows: np.ndarray) -> torch.Tensor:
    want = tr.target_codes[rows]  # [b, A]
    cand = np.concatenate([tr.image_codes[tr.targets[rows]], tr.image_codes[tr.references[rows]]])  # [2b, A]
    return torch.from_numpy((want[:, None, :] == cand[None, :, :]).all(-1))


def save_tuned_clip(path: Path, backbone: Backbone, training: dict) -> Path:
    """The whole CLIP as safetensors with zscir metadata (format "zscir-clip", method "sum")."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    meta = {"format": CLIP_FT_FORMAT, "format_version": CLIP_FT_FORMAT_VERSION, "method": SUM,
            "base": backbone.name, "base_pretrained": backbone.pretrained, "activation": backbone.activation,
            "training": training}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta, default=str)})
    return Path(path)


def train_sum_tune(cfg: SumTuneConfig, log=print) -> dict:
    """Fine-tune cfg.model on the world's train triplets with the sum query; write cfg.out; return the run log."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    world = Path(cfg.world)
    pretrained = cfg.pretrained
    if pretrained is None and cfg.model == "world-clip":
        from zscir_train.world import world_clip_path

        pretrained = str(world_clip_path())
    backbone = load_backbone(cfg.model, pretrained)
    paths, specs = train_images(world)
    triplets = build_triplets(specs, cfg.triplets, cfg.seed)
    pixels = load_pixels(world, paths, backbone)
    ids_all = backbone.tokenizer(triplets.texts)  # [N, L]
    model = backbone.model.eval().requires_grad_(True)  # eval: no dropout, BatchNorm statistics frozen
    model.logit_scale.requires_grad_(False)
    images_of = ImageSide(model, pixels, cfg.tune)
    logit_scale = min(float(model.logit_scale.exp()), LOGIT_SCALE_MAX)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng([TRIPLET_STREAM, cfg.seed, 1 << 20])
    order = rng.permutation(len(triplets.texts))
    cursor, losses, records = 0, [], []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if cursor + cfg.batch_size > len(order):
            order, cursor = rng.permutation(len(triplets.texts)), 0
        rows = order[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / max(cfg.warmup_steps, 1))
        loss = sum_loss(model, images_of, ids_all[rows], torch.from_numpy(triplets.references[rows]),
                        torch.from_numpy(triplets.targets[rows]), _positives(triplets, rows), logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {"step": step, "loss": float(np.mean(losses[-cfg.log_every:])),
                      "seconds": round(time.perf_counter() - start, 1)}
            records.append(record)
            log(json.dumps(record))
    seconds = time.perf_counter() - start
    model.requires_grad_(False)
    summary = {"steps": cfg.steps, "train_seconds": round(seconds, 1),
               "samples_per_s": round(cfg.steps * cfg.batch_size / seconds, 1), "triplets": len(triplets.texts),
               "first_loss": losses[0], "last_loss": float(np.mean(losses[-min(len(losses), cfg.log_every):])),
               "config": asdict(cfg), "log": records}
    out = Path(cfg.out)
    save_tuned_clip(out, backbone, {k: v for k, v in summary.items() if k != "log"})
    run_dir = out.with_name(out.name.split(".")[0] + "-run")  # where world-eval finds the run's figures
    run_dir.mkdir(parents=True, exist_ok=True)
    end = {"event": "end", **{k: summary[k] for k in ("train_seconds", "samples_per_s", "steps")}}
    atomic_write_text(run_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in [*records, end]))
    return summary
