"""The world test table: its baselines agree with the world report's independent numpy implementation,
and trained artifacts get their rows."""

import pytest

from zscir_train.backbone import load_backbone
from zscir_train.training.lincir import LinCIRConfig, train_lincir
from zscir_train.training.world_eval import format_table, score_world
from zscir_train.world.report import circo_scores, cirr_scores


@pytest.fixture(scope="module")
def lincir_phi(train_world, masking_cache, train_options, tmp_path_factory):
    out = tmp_path_factory.mktemp("world-eval") / "lincir.safetensors"
    train_lincir(LinCIRConfig(captions=[str(train_world / "corpus" / "captions.txt")], cache_dir=str(masking_cache),
                              out=str(out), **{**train_options, "steps": 2}))
    return out


def test_baselines_match_the_world_report(train_world, tiny_weights, lincir_phi, tmp_path):
    from rich.console import Console

    report = score_world(train_world, "zscir-tiny", str(tiny_weights), lincir_phi, None, None, 0.8, Console(quiet=True))
    assert list(report["rows"]) == ["lincir", "slerp", "sum", "image", "text", "average"]
    assert report["rows"]["lincir"]["run"]["steps"] == 2
    backbone = load_backbone("zscir-tiny", str(tiny_weights))
    cirr, _ = cirr_scores(backbone, train_world, 0.8)
    circo = circo_scores(backbone, train_world, 0.8)
    for method in ("slerp", "image", "text", "average"):
        ours = report["rows"][method]["metrics"]
        for k in (1, 5, 10):
            assert ours[f"cirr/R@{k}"] == pytest.approx(100 * cirr["baselines"][method][f"R@{k}"])
        assert ours["circo/mAP@10"] == pytest.approx(100 * circo["baselines"][method]["mAP@10"])
    table = format_table(report)
    assert table.count("\n") == 1 + len(report["rows"]) and "| lincir |" in table
