"""`zscir-train lincir | pic2word | tat`: parse the options, apply the preset, call the trainer.

Every option left out comes from the preset (`--preset NAME`), else from the method's defaults (the
papers' settings). Sources are given as `--captions SRC [SRC ...]` (likewise `--images`, `--pairs`):
the first after the option, the rest as arguments; repeating the option works too.

Several processes: `torchrun --nproc-per-node 8 $(which zscir-train) lincir --preset lincir-vit-l-14 ...`
(NCCL on GPUs, gloo on CPUs; `--batch-size` stays the global batch, so the recipe does not change with
the number of processes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zscir_infer.cli_style import command, err_console
from zscir_train.commands.options import Model, Pretrained
from zscir_train.training.config import list_presets, resolve_config

Preset = Annotated[str | None, typer.Option(help=f"Settings by name ({', '.join(list_presets())}) or a JSON path.")]
Out = Annotated[Path | None, typer.Option(help="The trained artifact (phi checkpoint; TAT: merged CLIP *.safetensors).")]
RunDir = Annotated[Path | None, typer.Option(help="Checkpoints, best/last artifacts, log.jsonl (default: <out>-run).")]
Steps = Annotated[int | None, typer.Option(min=1, help="Optimizer steps.")]
# --batch-size, --precision and --threads mean something else here than cli_style's BatchSize, Precision
# and Threads (an encoder call's batch, an exported graph variant, threads per graph): own help texts.
GlobalBatch = Annotated[int | None, typer.Option(
    "--batch-size", min=1, help="Global batch per optimizer step (all ranks, all accumulation).")]
GradAccum = Annotated[int | None, typer.Option(min=1, help="Micro-batches accumulated per step.")]
Lr = Annotated[float | None, typer.Option(min=0.0, help="Peak learning rate (AdamW).")]
WeightDecay = Annotated[float | None, typer.Option(min=0.0)]
WarmupSteps = Annotated[int | None, typer.Option(min=0, help="Linear warmup steps.")]
Schedule = Annotated[str | None, typer.Option(help="constant | cosine (after warmup).")]
Autocast = Annotated[str | None, typer.Option(
    "--precision", help="auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16.")]
Seed = Annotated[int | None, typer.Option()]
LogEvery = Annotated[int | None, typer.Option(min=1, help="Steps between log.jsonl records.")]
CheckpointEvery = Annotated[int | None, typer.Option(min=1, help="Steps between resumable checkpoints.")]
ValEvery = Annotated[int | None, typer.Option(min=0, help="Steps between validations (0: none; the best is kept).")]
ValWorld = Annotated[Path | None, typer.Option(help="A shapes world: validate on its CIRR- and CIRCO-style val splits.")]
ValCirr = Annotated[Path | None, typer.Option(help="CIRR root: validate on its val split.")]
ValCirco = Annotated[Path | None, typer.Option(help="CIRCO root: validate on its val split.")]
ValMetric = Annotated[str | None, typer.Option(help="Selection metric, e.g. cirr/R@1 (default), circo/mAP@5.")]
NumWorkers = Annotated[int | None, typer.Option(min=0, help="DataLoader worker processes per rank.")]
TorchThreads = Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads per process.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --run-dir (weights, optimizer, step, RNG).")]
ShowProgress = Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar.")]
PhiDropout = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Dropout inside phi.")]
ImageRoot = Annotated[Path | None, typer.Option(help="Folder that relative image paths in list/CSV/JSONL files are under.")]
ImageColumn = Annotated[str | None, typer.Option(help="Image path column/field (name, or 0-based index for headerless CSV/TSV).")]
CaptionColumn = Annotated[str | None, typer.Option(help="Caption column/field (name, or 0-based index; CC3M TSV: 0).")]
More = Annotated[list[str] | None, typer.Argument(help="More sources (after the first one given with the option).", show_default=False)]


def _common(**options) -> dict:
    """Options as config overrides: paths to strings, flags that were not given dropped."""
    out = {}
    for key, value in options.items():
        if key == "resume":
            value = True if value else None
        out[key] = str(value) if isinstance(value, Path) else value
    return out


def _sources(first: list[str] | None, more: list[str] | None) -> list[str] | None:
    sources = [*(first or []), *(more or [])]
    return sources or None


def _train(method: str, train, config_cls, preset: str | None, overrides: dict) -> None:
    cfg = resolve_config(config_cls, method, preset, overrides)
    summary = train(cfg, err_console)
    best = summary.get("best") or {}
    chosen = f"best {best['metric']} = {best['value']:.2f} at step {best['step']}" if best else "last step"
    typer.echo(f"{method}: {cfg.steps} steps, {summary['samples_per_s']:.1f} samples/s; wrote {cfg.out} ({chosen})")
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "best"}))


def lincir(
    captions: Annotated[list[str] | None, typer.Option(help="Caption sources: .txt, .csv/.tsv, .jsonl, .parquet, .tar shards, folders.")] = None,
    more: More = None,
    preset: Preset = None, model: Model = None, pretrained: Pretrained = None, out: Out = None, run_dir: RunDir = None,
    steps: Steps = None, batch_size: GlobalBatch = None, grad_accum: GradAccum = None, lr: Lr = None,
    weight_decay: WeightDecay = None, warmup_steps: WarmupSteps = None, schedule: Schedule = None,
    precision: Autocast = None, seed: Seed = None, log_every: LogEvery = None, checkpoint_every: CheckpointEvery = None,
    val_every: ValEvery = None, val_world: ValWorld = None, val_cirr: ValCirr = None, val_circo: ValCirco = None,
    val_metric: ValMetric = None, num_workers: NumWorkers = None, threads: TorchThreads = None, resume: Resume = False,
    progress: ShowProgress = None, phi_dropout: PhiDropout = None, caption_column: CaptionColumn = None,
    spacy_model: Annotated[str | None, typer.Option(help="spaCy pipeline for POS tags (default en_core_web_sm).")] = None,
    spacy_processes: Annotated[int | None, typer.Option(min=1, help="nlp.pipe processes for the one-time masking.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Masked-corpus cache (default $ZSCIR_CACHE_DIR or ~/.cache/zscir).")] = None,
    noise_scale: Annotated[float | None, typer.Option(min=0.0, help="s ~ U(0, noise_scale) on the text embedding.")] = None,
) -> None:
    """LinCIR: train phi from captions alone (self-masking projection + noise, MSE to the text embedding)."""
    options = {k: v for k, v in locals().items() if k not in ("more", "preset")}  # every option, by name
    from zscir_train.training.lincir import LinCIRConfig, train_lincir

    options["captions"] = _sources(captions, more)
    _train("lincir", train_lincir, LinCIRConfig, preset, _common(**options))


def pic2word(
    images: Annotated[list[str] | None, typer.Option(help="Image sources: folders, .txt lists, CSV/TSV (filepath), .jsonl, .tar shards.")] = None,
    more: More = None,
    preset: Preset = None, model: Model = None, pretrained: Pretrained = None, out: Out = None, run_dir: RunDir = None,
    steps: Steps = None, batch_size: GlobalBatch = None, grad_accum: GradAccum = None, lr: Lr = None,
    weight_decay: WeightDecay = None, warmup_steps: WarmupSteps = None, schedule: Schedule = None,
    precision: Autocast = None, seed: Seed = None, log_every: LogEvery = None, checkpoint_every: CheckpointEvery = None,
    val_every: ValEvery = None, val_world: ValWorld = None, val_cirr: ValCirr = None, val_circo: ValCirco = None,
    val_metric: ValMetric = None, num_workers: NumWorkers = None, threads: TorchThreads = None, resume: Resume = False,
    progress: ShowProgress = None, phi_dropout: PhiDropout = None, image_column: ImageColumn = None,
    image_root: ImageRoot = None,
) -> None:
    """Pic2Word: train phi from unlabeled images (symmetric InfoNCE with `a photo of *`)."""
    options = {k: v for k, v in locals().items() if k not in ("more", "preset")}  # every option, by name
    from zscir_train.training.pic2word import Pic2WordConfig, train_pic2word

    options["images"] = _sources(images, more)
    _train("pic2word", train_pic2word, Pic2WordConfig, preset, _common(**options))


def tat(
    pairs: Annotated[list[str] | None, typer.Option(help="Image-caption pairs: .jsonl, CSV/TSV (filepath, title), .parquet, .tar shards.")] = None,
    more: More = None,
    preset: Preset = None, model: Model = None, pretrained: Pretrained = None, out: Out = None, run_dir: RunDir = None,
    steps: Steps = None, batch_size: GlobalBatch = None, grad_accum: GradAccum = None, lr: Lr = None,
    weight_decay: WeightDecay = None, warmup_steps: WarmupSteps = None, schedule: Schedule = None,
    precision: Autocast = None, seed: Seed = None, log_every: LogEvery = None, checkpoint_every: CheckpointEvery = None,
    val_every: ValEvery = None, val_world: ValWorld = None, val_cirr: ValCirr = None, val_circo: ValCirco = None,
    val_metric: ValMetric = None, num_workers: NumWorkers = None, threads: TorchThreads = None, resume: Resume = False,
    progress: ShowProgress = None, image_column: ImageColumn = None, caption_column: CaptionColumn = None,
    image_root: ImageRoot = None,
    lora_rank: Annotated[int | None, typer.Option(min=1, help="LoRA rank (16).")] = None,
    lora_alpha: Annotated[float | None, typer.Option(min=0.0, help="LoRA alpha (16).")] = None,
    lora_dropout: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="LoRA input dropout (0.1).")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="Fixed softmax temperature (default: 1/CLIP's logit scale).")] = None,
) -> None:
    """Text-Anchored Tuning: LoRA on the image encoder towards the frozen text encoder; writes merged weights."""
    options = {k: v for k, v in locals().items() if k not in ("more", "preset")}  # every option, by name
    from zscir_train.training.tat import TATConfig, train_tat

    options["pairs"] = _sources(pairs, more)
    _train("tat", train_tat, TATConfig, preset, _common(**options))


def register(app: typer.Typer) -> None:
    command(app, "lincir")(lincir)
    command(app, "pic2word")(pic2word)
    command(app, "tat")(tat)
