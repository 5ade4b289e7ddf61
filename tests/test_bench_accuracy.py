"""Accuracy across backends on a small shapes world: the test split is scored with its ground truth, the
exported fp32 graphs rank like PyTorch, and the report holds every method x backend."""

import pytest
from typer.testing import CliRunner
from zscir_bench import accuracy as acc
from zscir_bench.cli import app
from zscir_bench.report import accuracy_targets

from zscir_infer.contract import TRAINING_FREE_METHODS
from zscir_train.world.generate import WorldConfig, generate_world

runner = CliRunner()
SMALL_WORLD = WorldConfig(seed=5, image_size=32, train_images=8, val_images=40, test_images=60, captions_per_image=1,
                          corpus_captions=8, val_queries=10, test_queries=24, domain_queries=2)
BACKENDS = ("torch", "ort-fp32", "ort-int8")
ONE_QUERY = 100 / SMALL_WORLD.test_queries  # points one query is worth


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world") / "world"
    generate_world(SMALL_WORLD, root)
    return root


@pytest.fixture(scope="module")
def accuracy_report(world, tiny_lincir_ckpt, tiny_clip_weights, tmp_path_factory):
    work = tmp_path_factory.mktemp("accuracy-work")
    return acc.run_accuracy(world, [tiny_lincir_ckpt], "zscir-tiny", str(tiny_clip_weights), work,
                            backends=BACKENDS, threads=1)


def test_every_method_and_backend_is_scored(accuracy_report):
    results = accuracy_report["results"]
    assert set(results) == {"lincir", *TRAINING_FREE_METHODS}
    for per_backend in results.values():
        assert list(per_backend) == list(BACKENDS)
        for metrics in per_backend.values():
            assert set(metrics) == set(acc.METRICS) and all(0 <= v <= 100 for v in metrics.values())
            assert metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"]
    assert accuracy_report["num_queries"] == SMALL_WORLD.test_queries


def test_exported_fp32_ranks_like_pytorch(accuracy_report):
    """Export must not change what is retrieved: fp32 graphs agree with PyTorch to within one query."""
    for method, per_backend in accuracy_report["results"].items():
        for metric in acc.METRICS:
            assert per_backend["ort-fp32"][metric] == pytest.approx(per_backend["torch"][metric], abs=ONE_QUERY + 1e-9), \
                (method, metric)


def test_changes_are_differences_to_fp32_and_feed_the_int8_target(accuracy_report):
    results, changes = accuracy_report["results"], accuracy_report["changes_vs_ort_fp32"]
    delta = changes["lincir"]["ort-int8"]["R@10"]
    assert delta == pytest.approx(results["lincir"]["ort-int8"]["R@10"] - results["lincir"]["ort-fp32"]["R@10"])
    target = next(t for t in accuracy_targets(accuracy_report) if "(lincir)" in t["target"])
    assert target["met"] == (abs(delta) <= 1.0)


def test_cli_accuracy_refuses_a_folder_that_is_not_a_world(tmp_path):
    result = runner.invoke(app, ["accuracy", "--world", str(tmp_path), "--backbone", "zscir-tiny"])
    assert result.exit_code != 0 and "zscir-train world" in result.output
