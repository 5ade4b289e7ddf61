"""Score trained LinCIR / Pic2Word / TAT artifacts and the baselines on a shapes world's TEST queries.

The world's test splits are laid out as the official test files (no targets); their ground truth is in
`<world>/ground_truth/`. The splits are read with the evaluation harness's readers, the targets filled
in from the ground truth, and scored with its protocol: CIRR-style test1 (reference removed, R@k) and
CIRCO-style test (val+test gallery, mAP@k). Rows: LinCIR and Pic2Word (phi), Slerp on the base and on
the TAT-tuned encoder, the sum query (BGE-VL-CLIP's normalize(raw image + raw text)) on the base and on
a CLIP fine-tuned for it (`zscir_train.training.sum_tune`, row "sum+ft"), and the image-only, text-only
and average baselines of the base encoder.

    zscir-train world-eval --world DIR --lincir lincir.safetensors \
        --pic2word pic2word.safetensors --tat tat.safetensors --sum-tuned sum.safetensors --out results/train

`--merge` keeps the rows of an existing world.json in --out that this run does not score (an artifact not
given), after checking that it was scored on the same world (queries, galleries and the shared rows'
metrics must agree).

(the command is in `zscir_train.commands.world`).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from zscir_eval import circo, cirr
from zscir_eval.harness import Harness
from zscir_eval.templates import default_template, prompt_style
from zscir_eval.world import world_test_splits
from zscir_infer.atomic import atomic_write_json, atomic_write_text
from zscir_infer.cli import shown_path
from zscir_infer.contract import BASELINES, PHI, SLERP, SUM
from zscir_train.backbone import load_backbone
from zscir_train.checkpoint import load_phi_checkpoint
from zscir_train.reference import TorchReference

TABLE = (("cirr", "R@1"), ("cirr", "R@5"), ("cirr", "R@10"), ("circo", "mAP@5"), ("circo", "mAP@10"))
BATCH_SIZE = 128
ROW_ORDER = ("lincir", "pic2word", "slerp", "slerp+tat", "sum", "sum+ft", "image", "text", "average")
SAME_WORLD_TOLERANCE = 1e-6  # a shared row's metric, rescored, against the one in the merged report


class WorldScorer:
    """Scores encoders on the test splits; gallery features are cached per image encoder."""

    def __init__(self, world: Path, console: Console, batch_size: int = BATCH_SIZE):
        self.cirr, self.circo = world_test_splits(world)
        self.console, self.batch_size = console, batch_size
        self.galleries: dict[tuple[str, str], object] = {}

    def score(self, encoder, image_space: str, method: str) -> dict[str, float]:
        harness = Harness(encoder, image_space, None, self.batch_size, self.console)
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
                tat: Path | None, alpha: float, console: Console, device: str = "cpu",
                batch_size: int = BATCH_SIZE, sum_tuned: Path | None = None) -> dict:
    """The report: one row of test metrics per trained artifact given, Slerp and the baselines."""
    scorer = WorldScorer(world, console, batch_size)
    backbone = load_backbone(model, pretrained, device=device)
    rows: dict[str, dict] = {}
    for name, path in (("lincir", lincir), ("pic2word", pic2word)):
        if path is not None:
            phi, meta = load_phi_checkpoint(path, backbone)
            encoder = TorchReference(backbone, phi, meta, alpha=alpha, batch_size=batch_size)
            rows[name] = {"metrics": scorer.score(encoder, "base", PHI), "artifact": str(path), "run": run_record(path)}
    base = TorchReference(backbone, alpha=alpha, batch_size=batch_size)
    rows[SLERP] = {"metrics": scorer.score(base, "base", SLERP)}
    if tat is not None:
        tuned = TorchReference(load_backbone(model, str(tat), device=device), alpha=alpha, batch_size=batch_size)
        rows["slerp+tat"] = {"metrics": scorer.score(tuned, "tat", SLERP), "artifact": str(tat), "run": run_record(tat)}
    rows[SUM] = {"metrics": scorer.score(base, "base", SUM)}
    if sum_tuned is not None:
        tuned = TorchReference(load_backbone(model, str(sum_tuned), device=device), alpha=alpha, batch_size=batch_size)
        rows["sum+ft"] = {"metrics": scorer.score(tuned, "sum-ft", SUM), "artifact": str(sum_tuned),
                          "run": run_record(sum_tuned)}
    for method in BASELINES:
        rows[method] = {"metrics": scorer.score(base, "base", method)}
    return {"world": str(world), "backbone": {"name": model, "pretrained": pretrained and shown_path(pretrained)}, "slerp_alpha": alpha,
            "queries": {"cirr_test1": len(scorer.cirr.queries), "circo_test": len(scorer.circo.queries)},
            "gallery": {"cirr_test1": len(scorer.cirr.gallery), "circo_test": len(scorer.circo.gallery)}, "rows": rows}


class ReportMismatchError(ValueError):
    """--merge into a report scored on another world (or with another base encoder)."""


def merge_reports(old: dict, new: dict) -> dict:
    """`new` with the rows of `old` it lacks, in ROW_ORDER; refuses a report of another world."""
    for key in ("queries", "gallery", "backbone", "slerp_alpha"):
        if old.get(key) != new.get(key):
            raise ReportMismatchError(f"--merge: the existing report's {key} {old.get(key)!r} differs from this "
                                      f"run's {new.get(key)!r}; score into another --out.")
    for name in set(old["rows"]) & set(new["rows"]):
        if name in ("slerp", *BASELINES):  # the same encoder on the same queries: the same numbers
            for metric, value in new["rows"][name]["metrics"].items():
                if abs(old["rows"][name]["metrics"].get(metric, value) - value) > SAME_WORLD_TOLERANCE:
                    raise ReportMismatchError(f"--merge: row {name} {metric} is {value:.4f} here and "
                                              f"{old['rows'][name]['metrics'][metric]:.4f} in the existing report: "
                                              "not the same world or encoder.")
    rows = {**old["rows"], **new["rows"]}
    ordered = {name: rows[name] for name in ROW_ORDER if name in rows}
    ordered |= {name: row for name, row in rows.items() if name not in ordered}
    return {**new, "world": old.get("world", new["world"]), "rows": ordered}


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


def write_report(report: dict, out: Path) -> str:
    """world.json (the report) and world.md (its table) in `out`; returns the table."""
    table = format_table(report)
    atomic_write_json(out / "world.json", report)
    atomic_write_text(out / "world.md", table + "\n")
    return table
