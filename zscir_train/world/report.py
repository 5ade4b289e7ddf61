"""Training-free baselines on the world's test queries with the tiny CLIP (`zscir-train world-report`).

Image only, text only, average and Slerp (alpha 0.8, raw modification text), scored CIRR-style
(reference removed, Recall@k, subset Recall@k), CIRCO-style (mAP@k over a val+test gallery) and on the
domain-conversion set. These are the numbers the trained methods (LinCIR, Pic2Word, TAT) must beat.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zscir_infer.atomic import atomic_write_text
from zscir_infer.contract import AVERAGE, DEFAULT_SLERP_ALPHA, IMAGE, SLERP, TEXT, sha256_file
from zscir_infer.preprocess import load_image
from zscir_train.backbone import Backbone
from zscir_train.composed import average, slerp
from zscir_train.world import WORLD_CLIP_ZERO_SHOT, WorldFileMissingError, formats, metrics

BASELINES = (IMAGE, TEXT, AVERAGE, SLERP)  # the training-free methods, in the report's order
RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)
MAP_KS = (5, 10, 25, 50)
DOMAIN_KS = (10, 50)
ENCODE_BATCH = 256
DOMAIN_TEXT = "as a {}"  # the domain-conversion change, phrased like the CIR modification texts


@torch.no_grad()
def encode_image_files(backbone: Backbone, paths: list[Path]) -> np.ndarray:
    """Normalized features [N, D] through the backbone's own eval transform (what the runtime mirrors)."""
    chunks = []
    for start in range(0, len(paths), ENCODE_BATCH):
        batch = [backbone.transform(load_image(p)) for p in paths[start : start + ENCODE_BATCH]]
        chunks.append(backbone.model.encode_image(torch.stack(batch), normalize=True))
    return torch.cat(chunks).numpy()


@torch.no_grad()
def encode_texts(backbone: Backbone, texts: list[str]) -> np.ndarray:
    chunks = [backbone.model.encode_text(backbone.tokenizer(texts[i : i + ENCODE_BATCH]), normalize=True)
              for i in range(0, len(texts), ENCODE_BATCH)]
    return torch.cat(chunks).numpy()


def compose(method: str, image: np.ndarray, text: np.ndarray, alpha: float = DEFAULT_SLERP_ALPHA) -> np.ndarray:
    """Query features [Q, D] of a baseline from normalized reference-image and text features."""
    if method == IMAGE:
        return image
    if method == TEXT:
        return text
    v_img, v_txt = torch.from_numpy(image), torch.from_numpy(text)
    if method == AVERAGE:
        return average(v_img, v_txt).numpy()
    if method == SLERP:
        return F.normalize(slerp(v_img, v_txt, alpha), dim=-1).numpy()
    raise ValueError(f"unknown baseline {method!r}; expected one of {BASELINES}")


def cirr_scores(backbone: Backbone, world: Path, alpha: float) -> tuple[dict, dict[str, np.ndarray]]:
    """CIRR test1, read from the official layout (ground truth from world/ground_truth): Recall@k and
    subset Recall@k per baseline, and Recall@k split by held-out vs. seen phrasing.
    Also returns the gallery features by image name (the domain set reuses them)."""
    cirr = world / "cirr"
    split = json.loads((cirr / "image_splits" / "split.rc2.test1.json").read_text())
    gallery = list(split)
    position = {n: i for i, n in enumerate(gallery)}
    G = encode_image_files(backbone, [cirr / split[n] for n in gallery])  # [N, D]
    queries = json.loads((world / "ground_truth" / "cirr" / "cap.rc2.test1.json").read_text())
    held_out = {r["cirr_pairid"]: r["held_out"] for r in _query_records(world, "test")}
    reference = np.array([position[q["reference"]] for q in queries])
    target = np.array([position[q["target_hard"]] for q in queries])
    members = np.array([[position[m] for m in q["img_set"]["members"]] for q in queries])
    is_held_out = np.array([held_out[q["pairid"]] for q in queries])
    image, text = G[reference], encode_texts(backbone, [q["caption"] for q in queries])
    results = {}
    for method in BASELINES:
        D = compose(method, image, text, alpha) @ G.T  # [Q, N]
        ranked = metrics.rank(D, max(RECALL_KS), exclude=reference)
        row = {f"R@{k}": v for k, v in metrics.recall_at_k(ranked, target, RECALL_KS).items()}
        subset = metrics.subset_recall_at_k(D, members, reference, target, SUBSET_KS)
        row |= {f"subset_R@{k}": v for k, v in subset.items()}
        for name, mask in (("held_out", is_held_out), ("seen", ~is_held_out)):
            row |= {f"{name}_R@{k}": v for k, v in metrics.recall_at_k(ranked[mask], target[mask], (1, 5, 10)).items()}
        results[method] = row
    summary = {"queries": len(queries), "held_out_queries": int(is_held_out.sum()), "gallery": len(gallery),
               "baselines": results}
    return summary, {n: G[i] for n, i in position.items()}


def circo_scores(backbone: Backbone, world: Path, alpha: float) -> dict:
    """CIRCO test, read from the official layout (ground truth from world/ground_truth): mAP@k per
    baseline over the val+test gallery, no reference removal."""
    circo = world / "circo"
    info = json.loads((circo / formats.CIRCO_IMAGE_INFO).read_text())["images"]
    image_dir = circo / formats.CIRCO_IMAGE_DIR
    position = {im["id"]: i for i, im in enumerate(info)}
    G = encode_image_files(backbone, [image_dir / im["file_name"] for im in info])  # [N, D]
    queries = json.loads((world / "ground_truth" / "circo" / "test.json").read_text())
    image = G[[position[q["reference_img_id"]] for q in queries]]
    text = encode_texts(backbone, [q["relative_caption"] for q in queries])
    relevant = [{position[i] for i in q["gt_img_ids"]} for q in queries]
    results = {}
    for method in BASELINES:
        ranked = metrics.rank(compose(method, image, text, alpha) @ G.T, max(MAP_KS))
        results[method] = {f"mAP@{k}": v for k, v in metrics.map_at_k(ranked, relevant, MAP_KS).items()}
    return {"queries": len(queries), "gallery": len(info), "baselines": results}


def domain_scores(backbone: Backbone, world: Path, features: dict[str, np.ndarray], alpha: float) -> dict:
    """Domain conversion (render-style query -> same shape and color in the asked style): R@k."""
    gallery = json.loads((world / "domain" / "gallery.json").read_text())
    queries = json.loads((world / "domain" / "queries.json").read_text())
    position = {g["image"]: i for i, g in enumerate(gallery)}
    G = np.stack([features[g["image"]] for g in gallery])
    image = np.stack([features[q["reference"]] for q in queries])
    text = encode_texts(backbone, [DOMAIN_TEXT.format(q["domain_word"]) for q in queries])
    relevant = [{position[n] for n in q["relevant"]} for q in queries]
    results = {}
    for method in BASELINES:
        ranked = metrics.rank(compose(method, image, text, alpha) @ G.T, max(DOMAIN_KS))
        results[method] = {f"R@{k}": v for k, v in metrics.domain_recall_at_k(ranked, relevant, DOMAIN_KS).items()}
    return {"queries": len(queries), "gallery": len(gallery), "text": DOMAIN_TEXT, "baselines": results}


def _query_records(world: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (world / "queries" / f"{split}.jsonl").read_text().splitlines()]


def world_report(backbone: Backbone, world: Path, alpha: float = DEFAULT_SLERP_ALPHA) -> dict:
    """Every baseline on the test queries of a generated world."""
    manifest = json.loads((world / "world.json").read_text())
    cirr, features = cirr_scores(backbone, world, alpha)
    return {
        "backbone": {"name": backbone.name,
                     "weights": Path(backbone.pretrained).name if backbone.pretrained else None,
                     "sha256": sha256_file(Path(backbone.pretrained)) if backbone.pretrained else None},
        "world": {"config": manifest["config"], "counts": manifest["counts"]},
        "slerp_alpha": alpha,
        "cirr_test1": cirr,
        "circo_test": circo_scores(backbone, world, alpha),
        "domain_conversion": domain_scores(backbone, world, features, alpha),
    }


def format_report(report: dict) -> str:
    """Markdown: one table per benchmark, one row per baseline."""
    cirr, circo, domain = report["cirr_test1"], report["circo_test"], report["domain_conversion"]
    lines = [
        f"CIRR-style test1 ({cirr['queries']} queries, {cirr['held_out_queries']} with held-out phrasing; "
        f"gallery {cirr['gallery']}, reference removed) and CIRCO-style test ({circo['queries']} queries, "
        f"gallery {circo['gallery']}):",
        "",
        "| baseline | R@1 | R@5 | R@10 | R@50 | subset R@1 | mAP@5 | mAP@10 | mAP@25 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in BASELINES:
        r, m = cirr["baselines"][method], circo["baselines"][method]
        lines.append(f"| {method} | " + " | ".join(f"{100 * v:.2f}" for v in (
            r["R@1"], r["R@5"], r["R@10"], r["R@50"], r["subset_R@1"], m["mAP@5"], m["mAP@10"], m["mAP@25"])) + " |")
    lines += ["", "CIRR-style R@k by phrasing (held-out templates never appear in training or val):", "",
              "| baseline | seen R@1 | seen R@5 | seen R@10 | held-out R@1 | held-out R@5 | held-out R@10 |",
              "|---|---|---|---|---|---|---|"]
    for method in BASELINES:
        r = cirr["baselines"][method]
        lines.append(f"| {method} | " + " | ".join(
            f"{100 * r[f'{p}_R@{k}']:.2f}" for p in ("seen", "held_out") for k in (1, 5, 10)) + " |")
    lines += ["", f"Domain conversion ({domain['queries']} render-style queries, gallery {domain['gallery']}, "
              f"text '{domain['text']}'):", "", "| baseline | R@10 | R@50 |", "|---|---|---|"]
    for method in BASELINES:
        r = domain["baselines"][method]
        lines.append(f"| {method} | {100 * r['R@10']:.2f} | {100 * r['R@50']:.2f} |")
    return "\n".join(lines)


def write_world_report(world: Path, weights: Path, out: Path, alpha: float = DEFAULT_SLERP_ALPHA,
                       record_zero_shot: bool = False) -> tuple[dict, str, str]:
    """The zero-shot attribute table and the baseline report of world-clip `weights` on `world`, written
    to `out` (report.json/.md, zero_shot.json/.md; with record_zero_shot also zero_shot.json beside the
    weights). Returns (zero-shot table, its markdown, the report's markdown)."""
    from zscir_train.backbone import load_backbone
    from zscir_train.world.zeroshot import format_table, zero_shot_table

    if not (world / "world.json").is_file():
        raise WorldFileMissingError(f"{world} has no world.json: generate it first with `zscir-train world --out {world}`.")
    if not weights.is_file():
        raise WorldFileMissingError(f"weights file {weights} does not exist.")
    backbone = load_backbone("world-clip", str(weights))
    zero_shot = zero_shot_table(backbone)
    report = world_report(backbone, world, alpha)
    zero_shot_md = format_table(zero_shot["attributes"])
    report_md = format_report(report)
    formats.write_json(out / "zero_shot.json", zero_shot)
    formats.write_json(out / "report.json", report)
    atomic_write_text(out / "zero_shot.md", zero_shot_md + "\n")
    atomic_write_text(out / "report.md", report_md + "\n")
    if record_zero_shot:
        formats.write_json(weights.parent / WORLD_CLIP_ZERO_SHOT, zero_shot)
    return zero_shot, zero_shot_md, report_md
