"""The shapes world's CIRR and CIRCO exports through `zscir-eval`, unchanged, with the PyTorch reference.

The test splits' submission files, scored against the world's ground truth with the official formulas,
must give exactly what `zscir-eval --split val` reports when the same queries are laid out as a val split:
the submission path and the metric path rank the same way.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zscir_eval import LayoutError
from zscir_eval.cirr import read_cirr
from zscir_eval.cli import app
from zscir_eval.world import world_test_splits
from zscir_train.backbone import load_backbone
from zscir_train.checkpoint import meta_for, save_phi_checkpoint
from zscir_train.phi import build_phi
from zscir_train.world.generate import WorldConfig, generate_world

runner = CliRunner()
SMALL_WORLD = WorldConfig(
    seed=3,
    image_size=32,
    train_images=8,
    val_images=48,
    test_images=60,
    captions_per_image=1,
    corpus_captions=8,
    val_queries=16,
    test_queries=20,
    domain_queries=2,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world") / "world"
    generate_world(SMALL_WORLD, root)
    return root


@pytest.fixture(scope="module")
def ckpt(tiny_backbone, tmp_path_factory):
    """A phi checkpoint whose backbone has fixed weights (a file), so two runs encode identically."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(tiny_backbone.model.state_dict(), folder / "tiny.pt")
    backbone = load_backbone("zscir-tiny", str(folder / "tiny.pt"))
    torch.manual_seed(2)
    phi = build_phi("lincir", backbone.embed_dim, backbone.width)
    return save_phi_checkpoint(folder / "phi.safetensors", phi, meta_for(phi, backbone, "lincir"))


def zscir_eval(*args) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def read(path):
    return json.loads(path.read_text())


def test_world_test_splits_hold_the_test_queries_with_their_targets(world):
    cirr, circo = world_test_splits(world)
    cirr_truth = read(world / "ground_truth" / "cirr" / "cap.rc2.test1.json")
    circo_truth = read(world / "ground_truth" / "circo" / "test.json")
    assert len(cirr.queries) == len(circo.queries) == SMALL_WORLD.test_queries
    assert {q.pairid: q.target for q in cirr.queries} == {q["pairid"]: q["target_hard"] for q in cirr_truth}
    assert cirr.has_targets and circo.has_targets
    assert {q.id: (q.target, list(q.gt)) for q in circo.queries} == {
        q["id"]: (q["target_img_id"], q["gt_img_ids"]) for q in circo_truth
    }
    assert cirr.split == "test1" and circo.split == "test"
    assert all(ref.path.is_file() for ref in cirr.gallery + circo.gallery)


# The first entry of CIRR's published captions/cap.rc2.test1.json (Cuberick-Orion/CIRR, cirr_dataset branch)
CIRR_TEST1_ENTRY = {
    "pairid": 12063,
    "reference": "test1-147-1-img1",
    "caption": "remove all but one dog and add a woman hugging it",
    "img_set": {
        "id": 1,
        "members": [
            "test1-147-1-img1",
            "test1-1001-2-img0",
            "test1-83-1-img1",
            "test1-359-0-img1",
            "test1-906-0-img1",
            "test1-83-0-img1",
        ],
        "reference_rank": 3,
    },
}


def layout(value):
    """Key order and value types of a JSON entry, recursively (lists by their items' types)."""
    if isinstance(value, dict):
        return [(key, layout(v)) for key, v in value.items()]
    if isinstance(value, list):
        return ["list", sorted({type(v).__name__ for v in value})]
    return type(value).__name__


def test_the_world_test1_file_is_laid_out_as_cirr_publishes_it(world):
    # no targets in the official file (CIRR hides them); the world keeps them in ground_truth/
    official = read(world / "cirr" / "captions" / "cap.rc2.test1.json")
    assert all(layout(q) == layout(CIRR_TEST1_ENTRY) for q in official)
    assert not read_cirr(world / "cirr", "test1").has_targets
    truth = read(world / "ground_truth" / "cirr" / "cap.rc2.test1.json")
    assert [q["pairid"] for q in truth] == [q["pairid"] for q in official]
    assert all("target_hard" in q and "target_soft" in q for q in truth)


def test_a_folder_without_ground_truth_is_not_a_world(world, tmp_path):
    (tmp_path / "cirr").symlink_to(world / "cirr")
    with pytest.raises(LayoutError, match="zscir-train world"):
        world_test_splits(tmp_path)


@pytest.mark.parametrize("method", ["phi", "slerp", "image", "text", "average"])
def test_world_val_runs_every_method(world, ckpt, tmp_path, method):
    zscir_eval("cirr", "--root", world / "cirr", "--torch", ckpt, "--method", method, "--out", tmp_path)
    zscir_eval("circo", "--root", world / "circo", "--torch", ckpt, "--method", method, "--out", tmp_path)
    cirr, circo = read(tmp_path / f"cirr-val-{method}.json"), read(tmp_path / f"circo-val-{method}.json")
    assert cirr["num_queries"] == circo["num_queries"] == SMALL_WORLD.val_queries
    assert all(0 <= v <= 100 for v in [*cirr["metrics"].values(), *circo["metrics"].values()])
    assert cirr["metrics"]["R@50"] == 100.0  # 48 images minus the reference


def test_cirr_test_submission_scores_as_the_val_protocol(world, ckpt, tmp_path):
    zscir_eval("cirr", "--root", world / "cirr", "--torch", ckpt, "--split", "test", "--out", tmp_path)
    recall = read(tmp_path / "cirr-test1-phi-recall.json")
    subset = read(tmp_path / "cirr-test1-phi-recall_subset.json")
    truth = read(world / "ground_truth" / "cirr" / "cap.rc2.test1.json")
    # the same queries as a val split: ground-truth captions, the test1 gallery and images
    as_val = tmp_path / "cirr-as-val"
    (as_val / "captions").mkdir(parents=True)
    (as_val / "image_splits").mkdir()
    (as_val / "captions" / "cap.rc2.val.json").write_text(json.dumps(truth))
    (as_val / "image_splits" / "split.rc2.val.json").write_text(
        (world / "cirr" / "image_splits" / "split.rc2.test1.json").read_text()
    )
    (as_val / "test1").symlink_to(world / "cirr" / "test1")
    zscir_eval("cirr", "--root", as_val, "--torch", ckpt, "--out", tmp_path)
    metrics = read(tmp_path / "cirr-val-phi.json")["metrics"]

    ranks = np.array(
        [
            recall[str(q["pairid"])].index(q["target_hard"])
            if q["target_hard"] in recall[str(q["pairid"])]
            else 99
            for q in truth
        ]
    )
    subset_ranks = np.array(
        [
            subset[str(q["pairid"])].index(q["target_hard"])
            if q["target_hard"] in subset[str(q["pairid"])]
            else 99
            for q in truth
        ]
    )
    for k in (1, 5, 10, 50):
        assert metrics[f"R@{k}"] == pytest.approx(100 * np.mean(ranks < k))
    for k in (1, 2, 3):
        assert metrics[f"Rsubset@{k}"] == pytest.approx(100 * np.mean(subset_ranks < k))
    assert all(q["reference"] not in recall[str(q["pairid"])] for q in truth)


def test_circo_test_submission_scores_as_the_val_protocol(world, ckpt, tmp_path):
    zscir_eval("circo", "--root", world / "circo", "--torch", ckpt, "--split", "test", "--out", tmp_path)
    submission = read(tmp_path / "circo-test-phi-submission.json")
    truth = read(world / "ground_truth" / "circo" / "test.json")
    as_val = tmp_path / "circo-as-val"
    (as_val / "annotations").mkdir(parents=True)
    (as_val / "annotations" / "val.json").write_text(json.dumps(truth))
    (as_val / "COCO2017_unlabeled").symlink_to(world / "circo" / "COCO2017_unlabeled")
    zscir_eval("circo", "--root", as_val, "--torch", ckpt, "--out", tmp_path)
    metrics = read(tmp_path / "circo-val-phi.json")["metrics"]

    assert set(submission) == {str(q["id"]) for q in truth}
    for k in (5, 10, 25, 50):  # miccunifi/CIRCO src/evaluation.py on the submission file
        aps = []
        for q in truth:
            predictions = np.array(submission[str(q["id"])], dtype=int)
            assert len(set(predictions.tolist())) == len(predictions) == 50
            labels = np.isin(predictions, q["gt_img_ids"])
            precisions = np.cumsum(labels) * labels / np.arange(1, len(labels) + 1)
            aps.append(np.sum(precisions[:k]) / min(len(q["gt_img_ids"]), k))
        assert metrics[f"mAP@{k}"] == pytest.approx(100 * np.mean(aps))
