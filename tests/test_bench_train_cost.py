"""Training cost: the timed step is a real training step of zscir's tasks (phi learns, CLIP stays frozen),
the timed data is what each method's dataset produces, and the report's speed-ups are its own ratios."""

import json

import pytest
import torch
from typer.testing import CliRunner
from zscir_bench import train_cost as tc
from zscir_bench.cli import app
from zscir_bench.timing import QUICK_POLICY

runner = CliRunner()
BATCH = 4
LINCIR_PLACEHOLDER_ID = 259


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("train-cost")


@pytest.mark.parametrize("method", ["lincir", "pic2word"])
def test_a_timed_step_trains_phi_and_leaves_clip_frozen(method, work):
    folder = work / method
    folder.mkdir()
    if method == "lincir":
        task, cfg, make_batch, _ = tc.lincir_setup("zscir-tiny", BATCH, folder)
    else:
        task, cfg, make_batch = tc.pic2word_setup("zscir-tiny", BATCH, folder)
    clip_before = {k: v.clone() for k, v in task.backbone.model.state_dict().items()}
    phi_before = {k: v.clone() for k, v in task.module.state_dict().items()}
    loss = tc.TrainStep(task, cfg, "fp32")(make_batch())
    assert torch.isfinite(torch.tensor(loss))
    assert all(torch.equal(v, task.backbone.model.state_dict()[k]) for k, v in clip_before.items())
    assert any(not torch.equal(v, task.module.state_dict()[k]) for k, v in phi_before.items())


def test_each_method_makes_its_own_kind_of_batch(work):
    folder = work / "batches"
    folder.mkdir()
    _, _, lincir_batch, masking = tc.lincir_setup("zscir-tiny", BATCH, folder)
    original, masked = lincir_batch()
    assert original.shape == masked.shape == (BATCH, 77) and original.dtype == torch.int64
    assert (masked == LINCIR_PLACEHOLDER_ID).any(dim=1).all()  # every caption lost its keywords to `$`
    assert masking["captions"] >= tc.MASKING_CORPUS and masking["captions_per_s"] > 0
    _, _, pic2word_batch = tc.pic2word_setup("zscir-tiny", BATCH, folder)
    assert pic2word_batch().shape == (BATCH, 3, 32, 32)


def test_the_report_compares_both_methods_on_the_same_backbone_and_batch():
    row = tc.backbone_cost("zscir-tiny", BATCH, "fp32", 1, QUICK_POLICY, QUICK_POLICY)
    assert row["batch"] == BATCH and row["lincir"]["step"]["batch"] == row["pic2word"]["step"]["batch"] == BATCH
    assert row["speedup_compute"] == pytest.approx(row["pic2word"]["step_s"] / row["lincir"]["step_s"])
    for method in ("lincir", "pic2word"):
        m = row[method]
        assert m["samples_per_s_with_data"] == pytest.approx(BATCH / (m["step_s"] + m["data_s"]))
    assert row["lincir"]["optimizer"]["weight_decay"] == 0.01
    assert row["pic2word"]["optimizer"]["betas"] == [0.9, 0.98] and row["pic2word"]["optimizer"]["schedule"] == "cosine"


def test_cli_train_cost_writes_the_report(tmp_path):
    result = runner.invoke(app, ["train-cost", "--models", "zscir-tiny", "--batch", "2", "--quick", "--threads", "1",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "train_cost.json").read_text())
    assert [r["backbone"] for r in data["backbones"]] == ["zscir-tiny"]
    assert "LinCIR speed-up over Pic2Word" in (tmp_path / "train_cost.md").read_text()
    assert (tmp_path / "train_cost.png").stat().st_size > 0
