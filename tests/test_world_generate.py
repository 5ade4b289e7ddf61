"""The shapes-world generator: determinism, ground truth, official CIRR/CIRCO layouts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zscir_train.cli import app as world_app
from zscir_train.world import formats
from zscir_train.world.attributes import ATTRIBUTES, VOCABULARY, ShapeSpec, all_specs
from zscir_train.world.captions import STYLE_ADJECTIVES, matches, random_caption, zero_shot_prompt
from zscir_train.world.generate import WorldConfig, generate_world, split_specs
from zscir_train.world.queries import TEMPLATES, phrase

SYNONYM_DRAWS = 40  # enough draws to meet every synonym pair of old and new value
SMALL = dict(train_images=40, val_images=160, test_images=240, captions_per_image=2, corpus_captions=200,
             val_queries=30, test_queries=60, domain_queries=20)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(WorldConfig(seed=3, **SMALL), out)
    return out


def load(path: Path):
    return json.loads(path.read_text())


def specs_by_name(world: Path) -> dict[str, ShapeSpec]:
    records = [json.loads(line) for line in (world / "images.jsonl").read_text().splitlines()]
    return {r["name"]: ShapeSpec.from_dict(r) for r in records}


def test_same_seed_gives_byte_identical_world_and_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    generate_world(WorldConfig(seed=3, **SMALL), again)
    assert tree_digest(again) == tree_digest(world)
    other = tmp_path / "other"
    generate_world(WorldConfig(seed=4, **SMALL), other)
    digest, other_digest = tree_digest(world), tree_digest(other)
    images = [k for k in digest if k.startswith("images/")]
    assert set(images) == {k for k in other_digest if k.startswith("images/")}
    assert sum(digest[k] != other_digest[k] for k in images) > 0.9 * len(images)
    for name in ("corpus/captions.txt", "cirr/captions/cap.rc2.val.json", "circo/annotations/test.json"):
        assert digest[name] != other_digest[name]


def test_refuses_to_overwrite_without_force(world):
    with pytest.raises(FileExistsError, match="--force"):
        generate_world(WorldConfig(seed=3, **SMALL), world)


def test_images_have_size_and_splits_are_disjoint(world):
    records = [json.loads(line) for line in (world / "images.jsonl").read_text().splitlines()]
    assert [sum(r["split"] == s for r in records) for s in ("train", "val", "test")] == [40, 160, 240]
    assert len({r["name"] for r in records}) == len(records)
    with Image.open(world / records[0]["path"]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    pixels = {hashlib.sha256((world / r["path"]).read_bytes()).hexdigest() for r in records}
    assert len(pixels) == len(records), "every image is a distinct rendering"


def test_split_specs_cover_every_combination_when_large_enough():
    config = WorldConfig(val_images=len(all_specs()) + 5)
    assert set(split_specs(config, "val")) == set(all_specs())


def test_every_ground_truth_has_the_target_attributes_and_none_is_missing(world):
    specs = specs_by_name(world)
    for split in ("val", "test"):
        cirr_gallery = {n for n in specs if n.startswith("dev-" if split == "val" else "test1-")}
        circo_gallery = {n for n in specs if not n.startswith("train-")}
        for record in map(json.loads, (world / "queries" / f"{split}.jsonl").read_text().splitlines()):
            target = ShapeSpec.from_dict(record["target_attributes"])
            reference = specs[record["reference"]]
            assert reference == ShapeSpec.from_dict(record["reference_attributes"])
            changed = [a for a in ATTRIBUTES if getattr(reference, a) != getattr(target, a)]
            assert changed == record["changed"] and 1 <= len(changed) <= 2
            assert record["targets"][0] == record["target"] and record["circo_targets"][0] == record["target"]
            assert set(record["targets"]) == {n for n in cirr_gallery if specs[n] == target}
            assert set(record["circo_targets"]) == {n for n in circo_gallery if specs[n] == target}


def test_cirr_files_have_the_official_keys_types_and_members(world):
    specs = specs_by_name(world)
    for split, with_target in (("val", True), ("test1", False)):
        queries = load(world / "cirr" / "captions" / f"cap.rc2.{split}.json")
        image_split = load(world / "cirr" / "image_splits" / f"split.rc2.{split}.json")
        assert all((world / "cirr" / rel).is_file() for rel in image_split.values())
        folder = formats.CIRR_SPLIT_DIRS[split]
        assert all(rel == f"./{folder}/{name}.png" for name, rel in image_split.items())
        for q in queries:
            keys = formats.CIRR_QUERY_KEYS if with_target else formats.CIRR_TEST_QUERY_KEYS
            set_keys = formats.CIRR_IMG_SET_KEYS if with_target else formats.CIRR_TEST_IMG_SET_KEYS
            assert tuple(q) == keys and tuple(q["img_set"]) == set_keys
            assert isinstance(q["pairid"], int) and isinstance(q["caption"], str) and q["caption"]
            members = q["img_set"]["members"]
            assert isinstance(q["img_set"]["id"], int) and len(members) == 6 == len(set(members))
            assert all(m in image_split for m in members)
            assert members[q["img_set"]["reference_rank"]] == q["reference"]
            if with_target:
                assert members[q["img_set"]["target_rank"]] == q["target_hard"]
                assert isinstance(q["target_soft"], dict) and q["target_soft"][q["target_hard"]] == 1.0
                assert all(isinstance(v, float) for v in q["target_soft"].values())
                target = specs[q["target_hard"]]
                assert all(specs[n] == target for n in q["target_soft"])
                assert specs[q["reference"]] != target


def test_cirr_test_ground_truth_matches_the_official_test_file(world):
    official = load(world / "cirr" / "captions" / "cap.rc2.test1.json")
    truth = load(world / "ground_truth" / "cirr" / "cap.rc2.test1.json")
    assert [q["pairid"] for q in official] == [q["pairid"] for q in truth]
    assert all(tuple(q) == formats.CIRR_QUERY_KEYS for q in truth)
    assert all(q["img_set"]["members"][q["img_set"]["target_rank"]] == q["target_hard"] for q in truth)


def test_circo_files_have_the_official_keys_and_types(world):
    info = load(world / "circo" / formats.CIRCO_IMAGE_INFO)["images"]
    ids = {im["id"] for im in info}
    assert len(ids) == len(info) == 400 and all(isinstance(i, int) for i in ids)
    assert ids != set(range(len(info))) and ids != set(range(1, len(info) + 1)), "ids must not be row numbers"
    image_dir = world / "circo" / formats.CIRCO_IMAGE_DIR
    assert all((image_dir / im["file_name"]).is_file() for im in info)
    for split, keys in (("val", formats.CIRCO_QUERY_KEYS), ("test", formats.CIRCO_TEST_QUERY_KEYS)):
        queries = load(world / "circo" / "annotations" / f"{split}.json")
        assert [q["id"] for q in queries] == list(range(len(queries)))
        for q in queries:
            assert tuple(q) == keys
            assert q["reference_img_id"] in ids and isinstance(q["relative_caption"], str)
            assert isinstance(q["shared_concept"], str)
            if split == "val":
                assert q["gt_img_ids"][0] == q["target_img_id"] and set(q["gt_img_ids"]) <= ids
                assert q["reference_img_id"] not in q["gt_img_ids"]
                assert q["semantic_aspects"] and set(q["semantic_aspects"]) <= set(ATTRIBUTES)


def test_circo_ids_point_at_the_same_pixels_as_the_named_images(world):
    records = [json.loads(line) for line in (world / "queries" / "test.jsonl").read_text().splitlines()]
    truth = {q["id"]: q for q in load(world / "ground_truth" / "circo" / "test.json")}
    info = {im["id"]: im["file_name"] for im in load(world / "circo" / formats.CIRCO_IMAGE_INFO)["images"]}
    image_dir = world / "circo" / formats.CIRCO_IMAGE_DIR
    for record in records[:10]:
        q = truth[record["circo_id"]]
        by_id = (image_dir / info[q["target_img_id"]]).read_bytes()
        assert by_id == (world / "images" / "test" / f"{record['target']}.png").read_bytes()


def held_out_phrases() -> set[str]:
    """Every held-out template rendered with every value change (and several synonym draws)."""
    rng = np.random.default_rng(0)
    phrases = set()
    for template in (t for t in TEMPLATES if t.held_out):
        values = list(VOCABULARY[template.attribute])
        for old, new in ((a, b) for a in values for b in values if a != b):
            phrases |= {phrase(rng, template, old, new) for _ in range(SYNONYM_DRAWS)}
    return phrases


def test_held_out_phrasings_only_in_test_queries_and_never_in_training_text(world):
    val = [json.loads(line) for line in (world / "queries" / "val.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (world / "queries" / "test.jsonl").read_text().splitlines()]
    assert not any(r["held_out"] for r in val) and any(r["held_out"] for r in test)
    assert any(not r["held_out"] for r in test)
    phrases = held_out_phrases()
    assert all(any(p in r["text"] for p in phrases) for r in test if r["held_out"])
    assert not any(p in r["text"] for r in val for p in phrases)
    training_text = (world / "corpus" / "captions.txt").read_text() + (world / "train" / "pairs.jsonl").read_text()
    assert not any(p in training_text for p in phrases)


def test_training_outputs(world):
    pairs = [json.loads(line) for line in (world / "train" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 40 * 2 and all((world / p["image"]).is_file() for p in pairs)
    unlabeled = (world / "train" / "unlabeled.txt").read_text().split()
    assert len(unlabeled) == 40 and all(p.startswith("images/train/") for p in unlabeled)
    corpus = (world / "corpus" / "captions.txt").read_text().splitlines()
    assert len(corpus) == 200 and len(set(corpus)) > 150


def test_domain_set_relevance(world):
    specs = specs_by_name(world)
    gallery = load(world / "domain" / "gallery.json")
    assert all(g["domain"] != "render" for g in gallery)
    names = {g["image"] for g in gallery}
    for q in load(world / "domain" / "queries.json"):
        reference = specs[q["reference"]]
        assert reference.style == "render" and q["target_domain"] != "render"
        expected = {n for n in names
                    if (specs[n].shape, specs[n].color, specs[n].style) == (reference.shape, reference.color, q["target_domain"])}
        assert set(q["relevant"]) == expected and expected


def test_captions_describe_what_they_mention():
    rng = np.random.default_rng(0)
    for spec in all_specs()[::37]:
        caption, mention = random_caption(rng, spec)
        for attribute in mention:
            words = VOCABULARY[attribute][getattr(spec, attribute)]
            if attribute == "style":
                words = (*words, STYLE_ADJECTIVES[spec.style])
            assert any(w in caption for w in words), (caption, attribute)
        assert matches(spec, spec, mention)
    prompts = {a: [zero_shot_prompt(a, v) for v in VOCABULARY[a]] for a in ATTRIBUTES}
    assert all(len(set(p)) == len(p) for p in prompts.values())


def test_cli_generates_and_rejects_bad_counts(tmp_path):
    runner = CliRunner()
    args = ["world", "--out", str(tmp_path / "w"), "--train-images", "8", "--val-images", "40", "--test-images",
            "40", "--corpus-captions", "10", "--val-queries", "5", "--test-queries", "5", "--domain-queries", "3"]
    result = runner.invoke(world_app, args)
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "w" / "world.json")["counts"]["queries"] == {"val": 5, "test": 5}
    bad = runner.invoke(world_app, [*args[:3], "--force", "--test-queries", "50", "--test-images", "40"])
    assert bad.exit_code != 0 and "exceeds" in bad.output
