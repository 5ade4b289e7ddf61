"""Score trained LinCIR / Pic2Word / TAT artifacts and the baselines on a shapes world's TEST queries.

The world's test splits are laid out as the official test files (no targets); their ground truth is in
`<world>/ground_truth/`. The splits are read with the evaluation harness's readers, the targets filled
in from the ground truth, and scored with its protocol: CIRR-style test1 (reference removed, R@k) and
CIRCO-style test (val+test gallery, mAP@k). Rows: LinCIR and Pic2Word (phi), Slerp on the base and on
the TAT-tuned encoder, and the image-only, text-only and average baselines of the base encoder.

    zscir-train world-eval --world DIR --lincir lincir.safetensors \
        --pic2word pic2word.safetensors --tat tat.safetensors --out results/train
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from zscir_infer.atomic import atomic_write_json, atomic_write_text
from zscir_infer.cli import shown_path
from zscir_infer.eval import circo, cirr
from zscir_infer.eval.harness import Harness
from zscir_infer.eval.templates import default_template, prompt_style
from zscir_train.backbone import load_backbone
from zscir_train.checkpoint import load_phi_checkpoint
from zscir_train.composed import DEFAULT_SLERP_ALPHA
from zscir_train.training.validation import DeviceReference

TABLE = (("cirr", "R@1"), ("cirr", "R@5"), ("cirr", "R@10"), ("circo", "mAP@5"), ("circo", "mAP@10"))
BATCH_SIZE = 128


def world_test_splits(world: Path) -> tuple[cirr.CirrSplit, circo.CircoSplit]:
    """The world's CIRR test1 and CIRCO test splits with their ground-truth targets filled in."""
    cirr_split = cirr.read_cirr(world / "cirr", "test1")
    truth = {q["pairid"]: q["target_hard"] for q in json.loads((world / "ground_truth" / "cirr" / "cap.rc2.test1.json").read_text())}
    cirr_split = replace(cirr_split, queries=[replace(q, target=truth[q.pairid]) for q in cirr_split.queries])
    circo_split = circo.read_circo(world / "circo", "test")
    gt = {q["id"]: q for q in json.loads((world / "ground_truth" / "circo" / "test.json").read_text())}
    circo_split = replace(circo_split, queries=[
        replace(q, target=int(gt[q.id]["target_img_id"]), gt=tuple(int(g) for g in gt[q.id]["gt_img_ids"]),
                semantic_aspects=tuple(gt[q.id]["semantic_aspects"])) for q in circo_split.queries])
    return cirr_split, circo_split


class WorldScorer:
    """Scores encoders on the test splits; gallery features are cached per image encoder."""

    def __init__(self, world: Path, console: Console):
        self.cirr, self.circo = world_test_splits(world)
        self.console = console
        self.galleries: dict[tuple[str, str], object] = {}

    def score(self, encoder, image_space: str, method: str) -> dict[str, float]:
        harness = Harness(encoder, image_space, None, BATCH_SIZE, self.console)
        style = prompt_style(encoder)
        out = {}
        for name, data in (("cirr", self.cirr), ("circo", self.circo)):
            key = (image_space, name)
            if key not in self.galleries:
                self.galleries[key] = harness.gallery_features(data.gallery)
            xb = self.galleries[key]
            template = default_template(name, method, style)
            xq = harness.query_features(data.references(), [q.caption for q in data.queries], template, method)
            if name == "cirr":
                metrics = cirr.cirr_metrics(data, *cirr.cirr_rankings(data, xq, xb))
            else:
                metrics = circo.circo_metrics(data, circo.circo_rankings(data, xq, xb))
            out |= {f"{name}/{k}": float(v) for k, v in metrics.items()}
        return out


def run_record(artifact: Path) -> dict:
    """The `end` record of the artifact's training run (time, samples/s), if its run log is beside it."""
    log = artifact.with_name(artifact.name.split(".")[0] + "-run") / "log.jsonl"
    if not log.is_file():
        return {}
    ends = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("event") == "end"]
    return {k: ends[-1][k] for k in ("train_seconds", "samples_per_s", "steps", "best") if k in ends[-1]} if ends else {}


def score_world(world: Path, model: str, pretrained: str | None, lincir: Path | None, pic2word: Path | None,
                tat: Path | None, alpha: float, console: Console) -> dict:
    scorer = WorldScorer(world, console)
    backbone = load_backbone(model, pretrained)
    rows: dict[str, dict] = {}
    for name, path in (("lincir", lincir), ("pic2word", pic2word)):
        if path is not None:
            phi, meta = load_phi_checkpoint(path, backbone)
            encoder = DeviceReference(backbone, phi, meta, alpha=alpha, batch_size=BATCH_SIZE)
            rows[name] = {"metrics": scorer.score(encoder, "base", "phi"), "artifact": str(path), "run": run_record(path)}
    base = DeviceReference(backbone, alpha=alpha, batch_size=BATCH_SIZE)
    rows["slerp"] = {"metrics": scorer.score(base, "base", "slerp")}
    if tat is not None:
        tuned = DeviceReference(load_backbone(model, str(tat)), alpha=alpha, batch_size=BATCH_SIZE)
        rows["slerp+tat"] = {"metrics": scorer.score(tuned, "tat", "slerp"), "artifact": str(tat), "run": run_record(tat)}
    for method in ("image", "text", "average"):
        rows[method] = {"metrics": scorer.score(base, "base", method)}
    return {"world": str(world), "backbone": {"name": model, "pretrained": pretrained and shown_path(pretrained)}, "slerp_alpha": alpha,
            "queries": {"cirr_test1": len(scorer.cirr.queries), "circo_test": len(scorer.circo.queries)},
            "gallery": {"cirr_test1": len(scorer.cirr.gallery), "circo_test": len(scorer.circo.gallery)}, "rows": rows}


def format_table(report: dict) -> str:
    header = "| method | " + " | ".join(f"{b.upper()} {m}" for b, m in TABLE) + " | train time | samples/s |"
    lines = [header, "|" + "---|" * (len(TABLE) + 3)]
    for name, row in report["rows"].items():
        run = row.get("run", {})
        time = f"{run['train_seconds']:.0f} s" if "train_seconds" in run else "-"
        rate = f"{run['samples_per_s']:.0f}" if "samples_per_s" in run else "-"
        values = " | ".join(f"{row['metrics'][f'{b}/{m}']:.2f}" for b, m in TABLE)
        lines.append(f"| {name} | {values} | {time} | {rate} |")
    return "\n".join(lines)


def world_eval(
    world: Annotated[Path, typer.Option(help="A world written by `zscir-train world`.")],
    out: Annotated[Path, typer.Option(help="Folder for world.json and world.md.")],
    model: Annotated[str, typer.Option()] = "world-clip",
    pretrained: Annotated[str | None, typer.Option(help="Base weights (default: the committed world-clip).")] = None,
    lincir: Annotated[Path | None, typer.Option()] = None,
    pic2word: Annotated[Path | None, typer.Option()] = None,
    tat: Annotated[Path | None, typer.Option(help="Merged CLIP weights written by `zscir-train tat`.")] = None,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Slerp text weight.")] = DEFAULT_SLERP_ALPHA,
) -> None:
    """Test-query table (CIRR R@k, CIRCO mAP@k) of the trained methods and the baselines."""
    if pretrained is None and model == "world-clip":
        from zscir_train.world import world_clip_path

        pretrained = str(world_clip_path())
    report = score_world(world, model, pretrained, lincir, pic2word, tat, alpha, Console(stderr=True))
    table = format_table(report)
    atomic_write_json(out / "world.json", report)
    atomic_write_text(out / "world.md", table + "\n")
    typer.echo(table)
