"""`zscir-train world`: generate the shapes world into a directory, deterministically for a seed.

Layout of the output (paths relative to it; `world.json` describes them too):
    world.json                      config, attribute vocabulary, templates, counts, file index
    images/{train,val,test}/*.png   every image once; names: train-00000, dev-00000, test1-00000
    images.jsonl                    one line per image: name, split, path, attributes
    train/pairs.jsonl               image-caption pairs (several captions per train image): TAT, CLIP
    train/unlabeled.txt             train image paths without captions: Pic2Word
    corpus/captions.txt             text-only captions of random attribute combinations: LinCIR
    queries/{val,test}.jsonl        every composed query with all its metadata (held-out phrasing, ...)
    cirr/, circo/                   the same queries in the official layouts (see formats.py)
    ground_truth/                   test-split queries with their targets (CIRR/CIRCO val layouts)
    domain/{gallery,queries}.json   domain conversion: render-style query -> same shape+color in a style
The gallery of the demo is images/test (the CIRR test1 gallery); CIRCO's gallery is val + test.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from zscir_infer.atomic import atomic_directory, recover_directory
from zscir_train.world import WorldExistsError, formats
from zscir_train.world.attributes import ATTRIBUTES, VOCABULARY, ShapeSpec, all_specs, name_of
from zscir_train.world.captions import random_caption
from zscir_train.world.queries import TEMPLATES, Query, build_queries
from zscir_train.world.render import render

FORMAT_VERSION = 1
WORLD_STREAM = 0x5A57  # first entropy word of every world RNG, so no stream equals a CLIP-training one
PNG_COMPRESS_LEVEL = 6
SPLIT_PREFIX = {"train": "train", "val": "dev", "test": "test1"}
SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
CIRCO_MAX_ID = 600_000  # CIRCO ids look like COCO ids: sparse ints, never the row index
SOURCE_DOMAIN = "render"
PURPOSE = {"layout": 10, "image": 11, "pairs": 12, "corpus": 13, "queries": 14, "circo_ids": 15, "domain": 16}


@dataclass
class WorldConfig:
    seed: int = 0
    image_size: int = 64
    train_images: int = 4000
    captions_per_image: int = 3
    val_images: int = 1500
    test_images: int = 3000
    corpus_captions: int = 40_000
    val_queries: int = 300
    test_queries: int = 600
    domain_queries: int = 300

    def split_size(self, split: str) -> int:
        return {"train": self.train_images, "val": self.val_images, "test": self.test_images}[split]


def world_rng(config: WorldConfig, purpose: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([WORLD_STREAM, config.seed, PURPOSE[purpose], *keys])


def split_specs(config: WorldConfig, split: str) -> list[ShapeSpec]:
    """Attribute combinations of a split: every combination in turn (shuffled), so a split at least as
    large as the attribute space holds every combination at least once."""
    combos = all_specs()
    count = config.split_size(split)
    rng = world_rng(config, "layout", SPLIT_CODE[split])
    rounds = -(-count // len(combos))
    order = np.concatenate([rng.permutation(len(combos)) for _ in range(rounds)])[:count]
    return [combos[int(i)] for i in order]


def image_name(split: str, index: int) -> str:
    return f"{SPLIT_PREFIX[split]}-{index:05d}"


def render_image(config: WorldConfig, split: str, index: int, spec: ShapeSpec) -> Image.Image:
    return render(spec, world_rng(config, "image", SPLIT_CODE[split], index), config.image_size)


def png_bytes(image: Image.Image) -> bytes:
    """PNG with fixed settings and no metadata, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _link(source: Path, destination: Path) -> None:
    """Hard link (no extra space) where the filesystem allows it, else a copy."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def write_images(config: WorldConfig, root: Path, progress: Progress) -> dict[str, dict[str, ShapeSpec]]:
    """Render and write every split; returns split -> {image name: spec}."""
    splits: dict[str, dict[str, ShapeSpec]] = {}
    records = []
    total = sum(config.split_size(s) for s in SPLIT_CODE)
    task = progress.add_task("images", total=total)
    for split in SPLIT_CODE:
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        splits[split] = {}
        for index, spec in enumerate(split_specs(config, split)):
            name = image_name(split, index)
            (folder / f"{name}.png").write_bytes(png_bytes(render_image(config, split, index, spec)))
            splits[split][name] = spec
            records.append(json.dumps({"name": name, "split": split, "path": f"images/{split}/{name}.png", **spec.as_dict()}))
            progress.advance(task)
    _write_lines(root / "images.jsonl", records)
    return splits


def write_training_text(config: WorldConfig, root: Path, train: dict[str, ShapeSpec]) -> None:
    """Image-caption pairs and unlabeled list over the train images; the text-only caption corpus."""
    pairs = []
    for index, (name, spec) in enumerate(train.items()):
        rng = world_rng(config, "pairs", index)
        for _ in range(config.captions_per_image):
            caption, mention = random_caption(rng, spec)
            pairs.append(json.dumps({"image": f"images/train/{name}.png", "caption": caption,
                                     "mentions": [a for a in ATTRIBUTES if a in mention]}))
    _write_lines(root / "train" / "pairs.jsonl", pairs)
    _write_lines(root / "train" / "unlabeled.txt", [f"images/train/{name}.png" for name in train])
    rng = world_rng(config, "corpus")
    combos = all_specs()
    corpus = [random_caption(rng, combos[int(i)])[0] for i in rng.integers(len(combos), size=config.corpus_captions)]
    _write_lines(root / "corpus" / "captions.txt", corpus)


def circo_image_ids(config: WorldConfig, names: list[str]) -> dict[str, int]:
    ids = world_rng(config, "circo_ids").choice(CIRCO_MAX_ID - 1, size=len(names), replace=False) + 1
    return {name: int(i) for name, i in zip(names, ids, strict=True)}


def _query_record(query: Query, split: str, pairid: int, circo_id: int, circo_gt: list[str]) -> str:
    record = {
        "split": split, "cirr_pairid": pairid, "circo_id": circo_id, "reference": query.reference,
        "target": query.target, "targets": query.targets, "circo_targets": circo_gt, "text": query.text,
        "changed": query.changed, "held_out": query.held_out, "members": query.members,
        "reference_attributes": query.reference_spec.as_dict(), "target_attributes": query.target_spec.as_dict(),
    }
    return json.dumps(record)


def write_queries(config: WorldConfig, root: Path, splits: dict[str, dict[str, ShapeSpec]]) -> dict[str, int]:
    """CIR queries for val and test in CIRR and CIRCO layouts, the metadata and test ground truth."""
    circo_gallery = {**splits["val"], **splits["test"]}
    image_ids = circo_image_ids(config, list(circo_gallery))
    by_spec: dict[ShapeSpec, list[str]] = {}
    for name, spec in circo_gallery.items():
        by_spec.setdefault(spec, []).append(name)
    cirr_root, circo_root = root / "cirr", root / "circo"
    for split, folder in formats.CIRR_SPLIT_DIRS.items():
        split_key = "val" if split == "val" else "test"
        for name in splits[split_key]:
            _link(root / "images" / split_key / f"{name}.png", cirr_root / folder / f"{name}.png")
        formats.write_json(cirr_root / "image_splits" / f"split.rc2.{split}.json",
                           formats.cirr_split_file(list(splits[split_key]), split))
    for name, image_id in image_ids.items():
        split_key = "val" if name.startswith(SPLIT_PREFIX["val"]) else "test"
        _link(root / "images" / split_key / f"{name}.png",
              circo_root / formats.CIRCO_IMAGE_DIR / f"{image_id:012d}.png")
    formats.write_json(circo_root / formats.CIRCO_IMAGE_INFO, formats.circo_image_info(image_ids, config.image_size))

    counts = {}
    pairid = 0
    for split, count, cirr_split in (("val", config.val_queries, "val"), ("test", config.test_queries, "test1")):
        rng = world_rng(config, "queries", SPLIT_CODE[split])
        queries = build_queries(rng, splits[split], count, allow_held_out=split == "test")
        cirr, cirr_gt, circo, circo_gt, records = [], [], [], [], []
        for query_id, query in enumerate(queries):
            gt_names = [query.target, *(n for n in by_spec[query.target_spec] if n != query.target)]
            cirr_gt.append(formats.cirr_query(query, pairid, query_id, with_target=True))
            cirr.append(formats.cirr_query(query, pairid, query_id, with_target=split == "val"))
            circo_gt.append(formats.circo_query(query, query_id, image_ids, gt_names, with_target=True))
            circo.append(formats.circo_query(query, query_id, image_ids, gt_names, with_target=split == "val"))
            records.append(_query_record(query, split, pairid, query_id, gt_names))
            pairid += 1
        formats.write_json(cirr_root / "captions" / f"cap.rc2.{cirr_split}.json", cirr)
        formats.write_json(circo_root / "annotations" / f"{split}.json", circo)
        if split == "test":
            formats.write_json(root / "ground_truth" / "cirr" / f"cap.rc2.{cirr_split}.json", cirr_gt)
            formats.write_json(root / "ground_truth" / "circo" / f"{split}.json", circo_gt)
        _write_lines(root / "queries" / f"{split}.jsonl", records)
        counts[split] = len(queries)
    return counts


def write_domain_set(config: WorldConfig, root: Path, test: dict[str, ShapeSpec]) -> int:
    """Pic2Word-style domain conversion on the test images: a render-style query and a target style;
    relevant = gallery images (all non-render test images) of the same shape and color in that style."""
    gallery = {n: s for n, s in test.items() if s.style != SOURCE_DOMAIN}
    sources = [n for n, s in test.items() if s.style == SOURCE_DOMAIN]
    domains = [d for d in VOCABULARY["style"] if d != SOURCE_DOMAIN]
    by_class_domain: dict[tuple[str, str, str], list[str]] = {}
    for n, s in gallery.items():
        by_class_domain.setdefault((s.shape, s.color, s.style), []).append(n)
    rng = world_rng(config, "domain")
    queries = []
    for index in rng.permutation(len(sources)):
        if len(queries) == config.domain_queries:
            break
        name = sources[int(index)]
        spec = test[name]
        reachable = [d for d in domains if (spec.shape, spec.color, d) in by_class_domain]
        if not reachable:  # only in galleries too small to hold every class in every style
            continue
        domain = reachable[int(rng.integers(len(reachable)))]
        queries.append({
            "id": len(queries), "reference": name, "path": f"images/test/{name}.png",
            "class": f"{spec.color} {spec.shape}", "source_domain": SOURCE_DOMAIN, "target_domain": domain,
            "domain_word": name_of("style", domain), "relevant": by_class_domain[(spec.shape, spec.color, domain)],
        })
    formats.write_json(root / "domain" / "queries.json", queries)
    formats.write_json(root / "domain" / "gallery.json", [
        {"image": n, "path": f"images/test/{n}.png", "class": f"{s.color} {s.shape}", "domain": s.style}
        for n, s in gallery.items()
    ])
    return len(queries)


def generate_world(config: WorldConfig, out: Path, force: bool = False) -> dict:
    """Write the world to `out` (built in a hidden sibling folder, then renamed); returns world.json's content."""
    recover_directory(out)  # a killed earlier run may have left the previous world set aside
    if out.exists() and any(out.iterdir()) and not force:
        raise WorldExistsError(f"{out} exists and is not empty: choose another --out or pass --force to replace it.")
    with atomic_directory(out, force=True) as partial:
        manifest = write_world(config, partial)
    return manifest


def write_world(config: WorldConfig, root: Path) -> dict:
    """Every file of the world under `root`; returns world.json's content."""
    with Progress() as progress:
        splits = write_images(config, root, progress)
    write_training_text(config, root, splits["train"])
    query_counts = write_queries(config, root, splits)
    domain_count = write_domain_set(config, root, splits["test"])
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": asdict(config),
        "attributes": {a: {v: list(words) for v, words in VOCABULARY[a].items()} for a in ATTRIBUTES},
        "templates": [asdict(t) for t in TEMPLATES],
        "counts": {"images": {s: len(v) for s, v in splits.items()}, "queries": query_counts,
                   "domain_queries": domain_count, "pairs": config.train_images * config.captions_per_image,
                   "corpus_captions": config.corpus_captions},
        "gallery": "images/test",
        "cirr_root": "cirr",
        "circo_root": "circo",
    }
    formats.write_json(root / "world.json", manifest)
    return manifest
