"""`zscir-eval` through typer's CliRunner with the PyTorch reference (`--torch CKPT`, tiny backbone)."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import zscir_train.backbone
from zscir_eval.cirr import read_cirr
from zscir_eval.cli import app
from zscir_infer.cli_style import EXIT_USAGE, EXIT_USER_ERROR
from zscir_train.checkpoint import meta_for, save_phi_checkpoint
from zscir_train.phi import build_phi

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tiny_backbone, tmp_path_factory):
    torch.manual_seed(1)
    phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width)
    return save_phi_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "phi.safetensors", phi, meta_for(phi, tiny_backbone, "lincir")
    )


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cirr_val_writes_metrics(ckpt, cirr_root, tmp_path):
    result = invoke("cirr", "--root", cirr_root, "--torch", ckpt, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cirr-val-phi.json").read_text())
    assert summary["num_queries"] == 3 and summary["template"] == "a photo of {placeholder} that {caption}"
    assert set(summary["metrics"]) >= {"R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"}
    assert summary["metrics"]["R@10"] == 100.0  # every target is among the 7 candidates
    assert "Rsubset@1" in result.stdout


def test_the_placeholder_may_be_written_out(tiny_lincir_ckpt, cirr_root, tmp_path):
    # the contract's syntax, as `zscir-infer query --template` takes it: `$` or {placeholder}
    # (a checkpoint naming its backbone weights: both runs encode with the same network)
    for name, template in (("field", "a photo of {placeholder} that {caption}"), ("literal", "a photo of $ that {caption}")):
        result = invoke(
            "cirr", "--root", cirr_root, "--torch", tiny_lincir_ckpt, "--template", template, "--out", tmp_path / name
        )
        assert result.exit_code == 0, result.output
    field, literal = (json.loads((tmp_path / n / "cirr-val-phi.json").read_text()) for n in ("field", "literal"))
    assert literal["template"] == "a photo of $ that {caption}"
    assert literal["metrics"] == field["metrics"]


def test_cirr_test_writes_both_submission_files(ckpt, tmp_path):
    from tests.fixtures.eval_layouts import make_cirr

    root = make_cirr(tmp_path / "cirr", split="test", layout="searle")
    result = invoke("cirr", "--root", root, "--torch", ckpt, "--split", "test", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    recall = json.loads((tmp_path / "out" / "cirr-test1-phi-recall.json").read_text())
    subset = json.loads((tmp_path / "out" / "cirr-test1-phi-recall_subset.json").read_text())
    assert (recall["version"], recall["metric"], subset["metric"]) == ("rc2", "recall", "recall_subset")
    assert set(recall) - {"version", "metric"} == {"10", "11", "12"}
    assert all(len(v) == 3 for k, v in subset.items() if k not in ("version", "metric"))
    for q in read_cirr(root, "test").queries:  # the whole gallery but the reference, ranked
        assert len(recall[str(q.pairid)]) == 7 and q.reference not in recall[str(q.pairid)]


def test_circo_test_submission(ckpt, circo_root, tmp_path):
    result = invoke(
        "circo",
        "--root",
        circo_root,
        "--torch",
        ckpt,
        "--split",
        "test",
        "--method",
        "slerp",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    sub = json.loads((tmp_path / "circo-test-slerp-submission.json").read_text())
    assert set(sub) == {"0", "1"} and all(sorted(ids) == list(range(101, 109)) for ids in sub.values())


def test_missing_images_exit_nonzero_unless_skipped(ckpt, circo_root, tmp_path):
    (
        circo_root / "COCO2017_unlabeled" / "unlabeled2017" / "000000000108.jpg"
    ).unlink()  # a ground truth of q0
    result = invoke("circo", "--root", circo_root, "--torch", ckpt, "--out", tmp_path)
    assert result.exit_code == EXIT_USER_ERROR
    assert "1 of the image files" in result.stderr and "000000000108.jpg" in result.stderr
    assert "--skip-missing" in result.stderr
    result = invoke("circo", "--root", circo_root, "--torch", ckpt, "--out", tmp_path, "--skip-missing")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "circo-val-phi.json").read_text())
    assert summary["excluded"] == {"queries": 0, "gallery": 1, "missing_files": 1}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--split", "test"), 1, "only"),  # FashionIQ test has no targets
        (("--template", "a photo of {caption}"), 1, "placeholder"),
        (("--template", "{placeholder} {colour}"), 1, "unknown field"),
    ],
)
def test_errors_say_what_to_change(ckpt, fashioniq_root, tmp_path, args, code, message):
    result = invoke("fashioniq", "--root", fashioniq_root, "--torch", ckpt, "--out", tmp_path, *args)
    assert result.exit_code == code
    assert message in result.stderr


def test_bundle_and_torch_are_exclusive(ckpt, cirr_root, tmp_path):
    result = invoke("cirr", "--root", cirr_root, "--torch", ckpt, "--bundle", tmp_path)
    assert result.exit_code == 2 and "exactly one" in result.output


def test_torch_on_the_command_line_wins_over_the_bundle_in_the_environment(ckpt, cirr_root, tmp_path):
    args = ["cirr", "--root", cirr_root, "--torch", ckpt, "--method", "image", "--out", tmp_path]
    result = runner.invoke(app, [str(a) for a in args], env={"ZSCIR_BUNDLE": str(tmp_path / "no-bundle")})
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cirr-val-image.json").read_text())["encoder"].startswith("torch:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--torch", "CKPT", "--device", "cuda"), "--device cuda: only a --bundle takes"),
        (("--backbone", "zscir-tiny", "--pretrained", "WEIGHTS", "--method", "phi"), "needs an encoder with a phi"),
    ],
)
def test_options_that_do_not_go_together_are_usage_errors(
    ckpt, tiny_clip_weights, cirr_root, tmp_path, args, message
):
    args = [{"CKPT": ckpt, "WEIGHTS": tiny_clip_weights}.get(a, a) for a in args]
    result = invoke("cirr", "--root", cirr_root, *args, "--out", tmp_path)
    assert result.exit_code == EXIT_USAGE
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "cache").exists()  # refused before any image was encoded


def test_gallery_cache_follows_the_architecture_not_its_name(tiny_backbone, cirr_root, tmp_path):
    # the same weights under the same architecture name, but the JSON edited: another feature space
    arch = json.loads((Path(zscir_train.backbone.MODEL_CONFIG_DIR) / "zscir-tiny.json").read_text())
    arch_file, weights = tmp_path / "eval-arch.json", tmp_path / "weights.pt"
    torch.save(tiny_backbone.model.state_dict(), weights)
    args = (
        "cirr",
        "--root",
        cirr_root,
        "--backbone",
        arch_file,
        "--pretrained",
        weights,
        "--method",
        "image",
        "--out",
        tmp_path / "out",
    )
    arch_file.write_text(json.dumps(arch))
    assert invoke(*args).exit_code == 0
    assert invoke(*args).exit_code == 0
    assert len(list((tmp_path / "out" / "cache").glob("gallery-*"))) == 1
    arch["vision_cfg"]["pool_type"] = "avg"  # same parameters, another network
    arch_file.write_text(json.dumps(arch))
    assert invoke(*args).exit_code == 0
    assert len(list((tmp_path / "out" / "cache").glob("gallery-*"))) == 2


@pytest.mark.parametrize("method", ["phi", "slerp"])  # the query graph; the text graph (baselines use both)
def test_bundle_and_torch_reference_rank_alike(tiny_bundle, tiny_lincir_ckpt, tmp_path, method):
    # export parity on a benchmark: the fp32 bundle and the PyTorch checkpoint it came from give the
    # same full rankings (CIRR test1 submission) and the same CIRCO metrics
    from tests.fixtures.eval_layouts import make_circo, make_cirr

    cirr_test, circo = make_cirr(tmp_path / "cirr", split="test"), make_circo(tmp_path / "circo")
    for name, encoder in (("bundle", ("--bundle", tiny_bundle)), ("torch", ("--torch", tiny_lincir_ckpt))):
        out = tmp_path / name
        for args in (("cirr", "--root", cirr_test, "--split", "test"), ("circo", "--root", circo)):
            result = invoke(*args, *encoder, "--method", method, "--out", out)
            assert result.exit_code == 0, result.output
    for file in (f"cirr-test1-{method}-recall.json", f"cirr-test1-{method}-recall_subset.json"):
        assert (tmp_path / "bundle" / file).read_text() == (tmp_path / "torch" / file).read_text()
    bundle, torch_ = (
        json.loads((tmp_path / n / f"circo-val-{method}.json").read_text()) for n in ("bundle", "torch")
    )
    assert bundle["metrics"] == pytest.approx(torch_["metrics"])
    assert bundle["encoder"].startswith("bundle:") and torch_["encoder"].startswith("torch:")


def test_pic2word_bundle_gets_the_pic2word_prompt(
    tiny_pic2word_bundle, tiny_pic2word_pt, tiny_clip_weights, cirr_root, tmp_path
):
    runs = {
        "bundle": ("--bundle", tiny_pic2word_bundle),
        "torch": ("--torch", tiny_pic2word_pt, "--backbone", "zscir-tiny", "--pretrained", tiny_clip_weights),
    }
    for name, encoder in runs.items():
        result = invoke("cirr", "--root", cirr_root, *encoder, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
    bundle, torch_ = (json.loads((tmp_path / n / "cirr-val-phi.json").read_text()) for n in runs)
    assert bundle["template"] == torch_["template"] == "a photo of {placeholder} , {caption}"
    assert bundle["metrics"] == pytest.approx(torch_["metrics"])
