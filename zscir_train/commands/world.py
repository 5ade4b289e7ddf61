"""`zscir-train world | world-clip | world-report | world-eval`: the synthetic shapes world, its tiny CLIP,
the training-free baselines on it, and the table of the trained methods on its test queries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zscir_infer.cli_style import BatchSize, Device, command, err_console
from zscir_infer.contract import DEFAULT_SLERP_ALPHA
from zscir_infer.errors import UsageError
from zscir_train.commands.options import Model, Pretrained, SlerpAlpha
from zscir_train.world import WORLD_CLIP_DIR, WORLD_CLIP_WEIGHTS

WORLD_EVAL_MODEL = "world-clip"
WORLD_EVAL_BATCH = 128

WorldSeed = Annotated[int, typer.Option(help="World seed: the same seed gives byte-identical outputs.")]
ImageSize = Annotated[int, typer.Option(min=16, help="Image side in pixels (world-clip is built for 64).")]
WorldDir = Annotated[Path, typer.Option(help="A world written by `zscir-train world`.")]


def world(
    out: Annotated[Path, typer.Option(help="Output directory (must be new or empty unless --force).")],
    seed: WorldSeed = 0,
    image_size: ImageSize = 64,
    train_images: Annotated[int, typer.Option(min=1)] = 4000,
    val_images: Annotated[int, typer.Option(min=8, help="CIRR dev gallery; >= 1152 holds every combination.")] = 1500,
    test_images: Annotated[int, typer.Option(min=8, help="CIRR test1 gallery and the demo gallery.")] = 3000,
    captions_per_image: Annotated[int, typer.Option(min=1)] = 3,
    corpus_captions: Annotated[int, typer.Option(min=1)] = 40_000,
    val_queries: Annotated[int, typer.Option(min=1)] = 300,
    test_queries: Annotated[int, typer.Option(min=1)] = 600,
    domain_queries: Annotated[int, typer.Option(min=1)] = 300,
    force: Annotated[bool, typer.Option(help="Replace an existing non-empty --out.")] = False,
) -> None:
    """Generate the shapes world: images, captions, CIRR/CIRCO query sets, domain-conversion set."""
    from zscir_train.world.generate import WorldConfig, generate_world

    for name, queries, images in (("val", val_queries, val_images), ("test", test_queries, test_images)):
        if queries > images:
            raise UsageError(f"--{name}-queries {queries} exceeds --{name}-images {images}: "
                             "each query needs its own reference image.")
    config = WorldConfig(seed=seed, image_size=image_size, train_images=train_images, val_images=val_images,
                         test_images=test_images, captions_per_image=captions_per_image,
                         corpus_captions=corpus_captions, val_queries=val_queries, test_queries=test_queries,
                         domain_queries=domain_queries)
    manifest = generate_world(config, out, force=force)
    typer.echo(f"world written to {out}: {json.dumps(manifest['counts'])}")


def world_clip(
    run_dir: Annotated[Path, typer.Option(help="Checkpoints and log.jsonl; an existing run resumes.")] = Path("runs/world-clip"),
    out: Annotated[Path, typer.Option(help="Where the fp16 safetensors weights are written.")] = WORLD_CLIP_DIR / WORLD_CLIP_WEIGHTS,
    steps: Annotated[int, typer.Option(min=1)] = 1500,
    batch_size: Annotated[int, typer.Option(min=2, help="Images (and captions) per optimizer step.")] = 256,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    seed: int = 0,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 2,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (fast on CPUs with AVX-512 BF16).")] = True,
) -> None:
    """Train the tiny shapes-world CLIP contrastively on CPU and write its weights."""
    from zscir_train.world.clip_train import WorldClipConfig, train_world_clip

    config = WorldClipConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=threads, bf16=bf16)
    summary = train_world_clip(config, run_dir, out)
    typer.echo(f"trained {summary['steps']} steps in {summary['elapsed_s']:.0f} s; weights: {out}")


def world_report(
    world: WorldDir,
    weights: Annotated[Path, typer.Option(help="world-clip weights (default: the committed ones).")] = WORLD_CLIP_DIR / WORLD_CLIP_WEIGHTS,
    out: Annotated[Path, typer.Option(help="Directory for report.json/.md and zero_shot.json/.md.")] = Path("results/world"),
    alpha: SlerpAlpha = DEFAULT_SLERP_ALPHA,
    record_zero_shot: Annotated[bool, typer.Option(help="Also write zero_shot.json next to the weights.")] = False,
) -> None:
    """Zero-shot attribute table and image/text/average/Slerp baselines on the test queries."""
    from zscir_train.world.report import write_world_report

    zero_shot, zero_shot_md, report_md = write_world_report(world, weights, out, alpha, record_zero_shot)
    typer.echo(f"Zero-shot attribute accuracy ({zero_shot['images']} held-out test images):\n{zero_shot_md}\n")
    typer.echo(report_md)


def world_eval(
    world: WorldDir,
    out: Annotated[Path, typer.Option(help="Folder for world.json and world.md.")],
    model: Model = WORLD_EVAL_MODEL,
    pretrained: Pretrained = None,
    lincir: Annotated[Path | None, typer.Option(help="A phi written by `zscir-train lincir`.")] = None,
    pic2word: Annotated[Path | None, typer.Option(help="A phi written by `zscir-train pic2word`.")] = None,
    tat: Annotated[Path | None, typer.Option(help="Merged CLIP weights written by `zscir-train tat`.")] = None,
    sum_tuned: Annotated[Path | None, typer.Option(
        help="A CLIP fine-tuned for the sum query by `zscir-train world-sum-tune` (row sum+ft).")] = None,
    merge: Annotated[bool, typer.Option(
        help="Keep the rows of --out's existing world.json that this run does not score (same world only).")] = False,
    alpha: SlerpAlpha = DEFAULT_SLERP_ALPHA,
    device: Device = "cpu",
    batch_size: BatchSize = WORLD_EVAL_BATCH,
) -> None:
    """Test-query table (CIRR R@k, CIRCO mAP@k) of the trained methods and the baselines.

    Without --pretrained, world-clip is the committed world-clip weights.
    """
    from zscir_train.training.world_eval import merge_reports, score_world, write_report

    if pretrained is None and model == WORLD_EVAL_MODEL:
        from zscir_train.world import world_clip_path

        pretrained = str(world_clip_path())
    report = score_world(world, model, pretrained, lincir, pic2word, tat, alpha, err_console,
                         device=device, batch_size=batch_size, sum_tuned=sum_tuned)
    if merge and (out / "world.json").is_file():
        report = merge_reports(json.loads((out / "world.json").read_text()), report)
    typer.echo(write_report(report, out))


def world_sum_tune(
    world: WorldDir,
    out: Annotated[Path, typer.Option(help="The fine-tuned CLIP (.safetensors); its run log goes beside it.")],
    model: Model = WORLD_EVAL_MODEL,
    pretrained: Pretrained = None,
    steps: Annotated[int, typer.Option(min=1)] = 300,
    batch_size: Annotated[int, typer.Option(min=2, help="Triplets per step.")] = 64,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-4,
    triplets: Annotated[int, typer.Option(min=1, help="Train-split triplets drawn (one per image per round).")]
    = 12_000,
    tune: Annotated[str, typer.Option(help="head: text tower + image pooling head (CPU minutes); all: both towers.")]
    = "head",
    seed: int = 0,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 1,
) -> None:
    """Fine-tune a CLIP for the sum query (BGE-VL's recipe) on the world's TRAIN composed triplets."""
    from zscir_train.training.sum_tune import SumTuneConfig, train_sum_tune

    if not str(out).endswith(".safetensors"):
        raise UsageError(f"--out {out}: the fine-tuned CLIP is written as safetensors; name it *.safetensors.")
    config = SumTuneConfig(world=str(world), out=str(out), model=model, pretrained=pretrained, steps=steps,
                           batch_size=batch_size, lr=lr, triplets=triplets, tune=tune, seed=seed, threads=threads)
    summary = train_sum_tune(config, log=lambda line: err_console.print(line, markup=False, highlight=False))
    typer.echo(json.dumps({k: summary[k] for k in ("steps", "train_seconds", "first_loss", "last_loss")} | {"out": str(out)}))


def register(app: typer.Typer) -> None:
    command(app, "world")(world)
    command(app, "world-clip")(world_clip)
    command(app, "world-report")(world_report)
    command(app, "world-eval")(world_eval)
    command(app, "world-sum-tune")(world_sum_tune)
