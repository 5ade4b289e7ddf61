"""`zscir-export` end to end with CliRunner: checkpoint kinds, reports, and the errors users can act on."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from zscir_export.cli import app
from zscir_export.validate import ort_session

from zscir_train.backbone import load_backbone
from zscir_train.phi import build_phi

runner = CliRunner()


def export(*args):
    return runner.invoke(app, ["--quiet", *map(str, args)])


def manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_a_zscir_checkpoint_needs_nothing_else(tiny_lincir_ckpt, tmp_path):
    out, report, triton = tmp_path / "bundle", tmp_path / "report.json", tmp_path / "triton"
    result = export("--ckpt", tiny_lincir_ckpt, "--out", out, "--report", report, "--triton", triton)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["bundle"] == str(out)
    m = manifest(out)
    assert m["method"] == "lincir" and m["backbone"]["name"] == "zscir-tiny" and set(m["graphs"]["query_encoder"]) == {"fp32"}
    figures = json.loads(report.read_text())
    assert {(g["graph"], g["precision"]) for g in figures["graphs"]} == {
        ("image_encoder", "fp32"), ("query_encoder", "fp32"), ("text_encoder", "fp32")}
    assert all(c["passed"] and c["min_cosine"] >= 0.99999 for g in figures["graphs"] for c in g["checks"])
    assert sorted(p.parent.name for p in triton.glob("*/config.pbtxt")) == [
        "composed_query", "image_embedding", "image_encoder", "normalize", "preprocess", "query_encoder",
        "query_tokenizer", "text_embedding", "text_encoder", "text_tokenizer"]  # encoders + raw-input ensembles
    again = export("--ckpt", tiny_lincir_ckpt, "--out", out)
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output


def test_an_official_searle_checkpoint_with_its_backbone(tiny_backbone, tiny_clip_weights, tmp_path):
    phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width)
    ckpt = tmp_path / "searle.pt"
    torch.save({"epoch": 7, "Phi": phi.state_dict()}, ckpt)
    missing = export("--ckpt", ckpt, "--method", "searle", "--out", tmp_path / "a")
    assert missing.exit_code == 1 and "does not record its backbone" in missing.output and "--model" in missing.output
    out = tmp_path / "b"
    result = export("--ckpt", ckpt, "--method", "searle", "--model", "zscir-tiny", "--pretrained", tiny_clip_weights,
                    "--out", out)
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["method"] == "searle" and m["source"]["kind"] == "official-searle" and m["placeholder"]["id"] == 259
    assert m["placeholder"]["policy"] == "first"  # SEARLE's own code substitutes the first placeholder only


def test_a_tat_checkpoint_exports_its_tuned_image_encoder(tiny_clip_weights, tmp_path):
    from zscir_train.training.tat import save_tat_checkpoint

    tuned = load_backbone("zscir-tiny", str(tiny_clip_weights))
    with torch.no_grad():
        tuned.model.visual.proj.mul_(1.5).add_(0.01)
    ckpt = save_tat_checkpoint(tmp_path / "tat.safetensors", tuned, {"rank": 4}, {"steps": 1})
    out = tmp_path / "bundle"
    result = export("--ckpt", ckpt, "--out", out)
    assert result.exit_code == 0, result.output
    m = manifest(out)
    assert m["method"] == "slerp" and m["source"]["kind"] == "tat" and "query_encoder" not in m["graphs"]
    pixels = torch.randn(2, 3, 32, 32)
    got = ort_session(out / m["graphs"]["image_encoder"]["fp32"]["file"], "fp32").run(None, {"pixels": pixels.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, tuned.model.encode_image(pixels).numpy(), rtol=0, atol=1e-5)
        untuned = load_backbone("zscir-tiny", str(tiny_clip_weights)).model.encode_image(pixels).numpy()
    assert np.abs(got - untuned).max() > 1e-2
    refused = export("--ckpt", ckpt, "--method", "lincir", "--out", tmp_path / "x")
    assert refused.exit_code == 1 and "TAT checkpoint" in refused.output


def test_a_phi_for_another_backbone_is_refused_naming_both_dims(tiny_clip_weights, tmp_path):
    ckpt = tmp_path / "lincir_wide.pt"
    torch.save({"Phi": build_phi("lincir", 64, 80).state_dict()}, ckpt)
    result = export("--ckpt", ckpt, "--model", "zscir-tiny", "--pretrained", tiny_clip_weights, "--out", tmp_path / "b")
    assert result.exit_code == 1
    assert "D=64" in result.output and "D=48" in result.output and not (tmp_path / "b").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_checkpoint_is_refused(tiny_lincir_ckpt, tmp_path, damage):
    ckpt = tmp_path / ("broken.pt" if damage == "garbage" else "broken.safetensors")
    data = tiny_lincir_ckpt.read_bytes()
    ckpt.write_bytes(b"\x00not a checkpoint" * 50 if damage == "garbage" else data[: len(data) // 2])
    result = export("--ckpt", ckpt, "--model", "zscir-tiny", "--out", tmp_path / "b")
    assert result.exit_code == 1 and str(ckpt.name) in result.output
    assert ("could not be read" if damage == "garbage" else "damaged") in result.output


def test_arguments_that_describe_nothing_exportable(tmp_path):
    cases = [
        ([], "Nothing to export"),
        (["--method", "slerp"], "needs --model"),
        (["--method", "slerp", "--model", "ViT-Nope-99"], "Unknown model 'ViT-Nope-99'"),
        (["--method", "magic", "--model", "zscir-tiny"], "Unknown method 'magic'"),
        (["--ckpt", tmp_path / "missing.safetensors"], "does not exist"),
        (["--method", "slerp", "--model", "zscir-tiny", "--engine", "trt", "--profile", "fast"], "NAME:MIN,OPT,MAX"),
        (["--method", "slerp", "--model", "zscir-tiny", "--engine", "trt", "--profile", "x:4,2,8"], "min <= opt"),
        (["--method", "slerp", "--model", "zscir-tiny", "--engine", "onnx"], "engine kinds"),
        (["--method", "slerp", "--model", "zscir-tiny", "--triton", tmp_path / "t", "--triton-kind", "cpu",
          "--triton-tensorrt"], "GPU instances"),
    ]
    for args, message in cases:
        result = export(*args, "--out", tmp_path / "out")
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, (args, result.output)
    assert not (tmp_path / "out").exists()


def test_engines_without_tensorrt_are_refused_with_the_reason(tmp_path):
    from zscir_infer.engines import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the refusal does not apply")
    result = export("--method", "slerp", "--model", "zscir-tiny", "--engine", "trt", "--out", tmp_path / "b")
    assert result.exit_code == 1 and "cannot build engines on this machine" in result.output
    assert "deployment machine" in result.output and not (tmp_path / "b").exists()
