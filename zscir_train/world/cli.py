"""`zscir-train world`, `world-clip` and `world-report`: the synthetic shapes world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zscir_train.world import WORLD_CLIP_DIR, WORLD_CLIP_WEIGHTS, WORLD_CLIP_ZERO_SHOT

world_app = typer.Typer(help="The synthetic shapes world: generator, tiny CLIP, CIR query sets, baselines.")

Seed = Annotated[int, typer.Option(help="World seed: the same seed gives byte-identical outputs.")]
ImageSize = Annotated[int, typer.Option(min=16, help="Image side in pixels (world-clip is built for 64).")]


@world_app.command("world")
def world(
    out: Annotated[Path, typer.Option(help="Output directory (must be new or empty unless --force).")],
    seed: Seed = 0,
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
            raise typer.BadParameter(f"--{name}-queries {queries} exceeds --{name}-images {images}: "
                                     "each query needs its own reference image.")
    config = WorldConfig(seed=seed, image_size=image_size, train_images=train_images, val_images=val_images,
                         test_images=test_images, captions_per_image=captions_per_image,
                         corpus_captions=corpus_captions, val_queries=val_queries, test_queries=test_queries,
                         domain_queries=domain_queries)
    try:
        manifest = generate_world(config, out, force=force)
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"world written to {out}: {json.dumps(manifest['counts'])}")


@world_app.command("world-clip")
def world_clip(
    run_dir: Annotated[Path, typer.Option(help="Checkpoints and log.jsonl; an existing run resumes.")] = Path("runs/world-clip"),
    out: Annotated[Path, typer.Option(help="Where the fp16 safetensors weights are written.")] = WORLD_CLIP_DIR / WORLD_CLIP_WEIGHTS,
    steps: Annotated[int, typer.Option(min=1)] = 1500,
    batch_size: Annotated[int, typer.Option(min=2)] = 256,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    seed: int = 0,
    threads: Annotated[int, typer.Option(min=1)] = 2,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (fast on CPUs with AVX-512 BF16).")] = True,
) -> None:
    """Train the tiny shapes-world CLIP contrastively on CPU and write its weights."""
    from zscir_train.world.clip_train import WorldClipConfig, train_world_clip

    config = WorldClipConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=threads, bf16=bf16)
    summary = train_world_clip(config, run_dir, out)
    typer.echo(f"trained {summary['steps']} steps in {summary['elapsed_s']:.0f} s; weights: {out}")


@world_app.command("world-report")
def world_report(
    world: Annotated[Path, typer.Option(help="A directory written by `zscir-train world`.")],
    weights: Annotated[Path, typer.Option(help="world-clip weights (default: the committed ones).")] = WORLD_CLIP_DIR / WORLD_CLIP_WEIGHTS,
    out: Annotated[Path, typer.Option(help="Directory for report.json/.md and zero_shot.json/.md.")] = Path("results/world"),
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Slerp text weight.")] = 0.8,
    record_zero_shot: Annotated[bool, typer.Option(help="Also write zero_shot.json next to the weights.")] = False,
) -> None:
    """Zero-shot attribute table and image/text/average/Slerp baselines on the test queries."""
    from zscir_train.backbone import load_backbone
    from zscir_train.world import formats
    from zscir_train.world.report import format_report
    from zscir_train.world.report import world_report as run_report
    from zscir_train.world.zeroshot import format_table, zero_shot_table

    if not (world / "world.json").is_file():
        raise typer.BadParameter(f"{world} has no world.json: generate it first with `zscir-train world --out {world}`.")
    if not weights.is_file():
        raise typer.BadParameter(f"weights file {weights} does not exist.")
    backbone = load_backbone("world-clip", str(weights))
    zero_shot = zero_shot_table(backbone)
    report = run_report(backbone, world, alpha)
    zero_shot_md = format_table(zero_shot["attributes"])
    report_md = format_report(report)
    formats.write_json(out / "zero_shot.json", zero_shot)
    formats.write_json(out / "report.json", report)
    (out / "zero_shot.md").write_text(zero_shot_md + "\n")
    (out / "report.md").write_text(report_md + "\n")
    if record_zero_shot:
        formats.write_json(weights.parent / WORLD_CLIP_ZERO_SHOT, zero_shot)
    typer.echo(f"Zero-shot attribute accuracy ({zero_shot['images']} held-out test images):\n{zero_shot_md}\n")
    typer.echo(report_md)


def register(app: typer.Typer) -> None:
    app.command("world")(world)
    app.command("world-clip")(world_clip)
    app.command("world-report")(world_report)


if __name__ == "__main__":
    world_app()
