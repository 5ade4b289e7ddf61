"""The sum fine-tune (`zscir_train.training.sum_tune`, BGE-VL's recipe) on a small shapes world, end to end:
train-split triplets only, the loss goes down, the checkpoint round-trips through load_backbone and export,
and the tuned sum query beats the image-only baseline on the world's test queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from rich.console import Console  # noqa: E402

from tests.fixtures.train import make_world  # noqa: E402
from zscir_train.training.sum_tune import (  # noqa: E402
    CLIP_FT_FORMAT,
    ImageSide,
    SumTuneConfig,
    build_triplets,
    train_images,
    train_sum_tune,
)
from zscir_train.world.queries import TEMPLATES  # noqa: E402

SUM_WORLD = dict(seed=11, image_size=64, train_images=240, val_images=96, test_images=160, captions_per_image=1,
                 corpus_captions=10, val_queries=8, test_queries=40, domain_queries=2)


@pytest.fixture(scope="module")
def sum_world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory, "sum-world", SUM_WORLD)


@pytest.fixture(scope="module")
def tuned(sum_world, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sum-tune") / "sum.safetensors"
    summary = train_sum_tune(SumTuneConfig(world=str(sum_world), out=str(out), steps=40, batch_size=24, lr=1e-4,
                                           triplets=960, threads=1, log_every=10), log=lambda line: None)
    return out, summary


def test_triplets_come_from_the_train_split_with_training_templates_only(sum_world):
    paths, specs = train_images(sum_world)
    assert all(p.startswith("images/train/") for p in paths) and len(specs) == SUM_WORLD["train_images"]
    triplets = build_triplets(specs, 500, seed=0)
    assert len(triplets.texts) == 500 and (triplets.references != triplets.targets).all()
    held_out = [t.text.split("{")[0].strip() for t in TEMPLATES if t.held_out and t.text.split("{")[0].strip()]
    assert not any(text.startswith(prefix) for text in triplets.texts for prefix in held_out)
    test_texts = {json.loads(line)["text"] for line in (sum_world / "queries" / "test.jsonl").read_text().splitlines()}
    assert len(test_texts) == SUM_WORLD["test_queries"]


def test_the_loss_goes_down(tuned):
    _, summary = tuned
    first, last = summary["log"][0]["loss"], summary["log"][-1]["loss"]
    assert last < 0.8 * first, summary["log"]


def test_the_checkpoint_round_trips_and_exports_as_a_sum_bundle(tuned):
    from safetensors import safe_open
    from zscir_export.model_source import resolve_source

    from zscir_train.backbone import load_backbone

    path, _ = tuned
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["zscir"])
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert meta["format"] == CLIP_FT_FORMAT and meta["method"] == "sum" and meta["base"] == "world-clip"
    loaded = load_backbone("world-clip", str(path)).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    source = resolve_source(path)
    assert source.method == "sum" and source.info["kind"] == "clip-ft"


def test_tuned_sum_beats_the_image_baseline_and_the_untuned_sum(sum_world, tuned):
    from zscir_train.training.world_eval import score_world
    from zscir_train.world import world_clip_path

    path, _ = tuned
    report = score_world(sum_world, "world-clip", str(world_clip_path()), None, None, None, 0.8,
                         Console(quiet=True), batch_size=64, sum_tuned=path)
    rows = report["rows"]
    score = {name: rows[name]["metrics"]["cirr/R@10"] + rows[name]["metrics"]["circo/mAP@10"] for name in rows}
    assert score["sum+ft"] > score["image"] and score["sum+ft"] > score["sum"], score
    assert rows["sum+ft"]["run"]["steps"] == 40  # the run log beside the artifact


def test_head_tuning_needs_a_resnet_pooling_head(tiny_backbone):
    with pytest.raises(ValueError, match="tune='all'"):
        ImageSide(tiny_backbone.model, torch.zeros(2, 3, 32, 32), "head")
