"""`zscir-export --preprocess`: SEARLE's target-pad preprocessing recorded in the manifest and reproduced by
the torch-free runtime, and the default per method (SEARLE pads, as its authors evaluate)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from zscir_export.cli import app
from zscir_export.model_source import ExportSourceError, resolve_source

from tests.test_infer_preprocess import synthetic_image
from tests.test_infer_runtime import PARITY, read_golden
from tests.test_infer_targetpad import searle_targetpad_transform
from zscir_infer import Runtime
from zscir_infer.bundle import load_bundle
from zscir_infer.contract import SEARLE_TARGET_RATIO
from zscir_train.backbone import load_backbone
from zscir_train.phi import build_phi
from zscir_train.reference import TorchReference
from zscir_train.targetpad import with_preprocess

runner = CliRunner()


@pytest.fixture(scope="module")
def searle_pt(tiny_backbone, tmp_path_factory):
    """An official-format SEARLE checkpoint (`{'epoch', 'Phi'}`) for zscir-tiny's dims."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width)
    path = tmp_path_factory.mktemp("ckpt") / "searle.pt"
    torch.save({"epoch": 3, "Phi": phi.state_dict()}, path)
    return path


def test_searle_exports_with_targetpad_by_default_and_clip_on_request(searle_pt, tiny_clip_weights):
    weights = str(tiny_clip_weights)
    modes = {
        (method, preprocess): resolve_source(searle_pt, "zscir-tiny", weights, method, preprocess).backbone.preprocess
        for method, preprocess in [("searle", None), ("searle", "clip"), ("lincir", None), ("lincir", "targetpad")]
    }
    assert modes["searle", None].resize_mode == "targetpad" and modes["searle", None].target_ratio == SEARLE_TARGET_RATIO
    assert modes["searle", "clip"].resize_mode == "shortest" and modes["searle", "clip"].target_ratio is None
    assert modes["lincir", None].resize_mode == "shortest"
    assert modes["lincir", "targetpad"].resize_mode == "targetpad"
    slerp = resolve_source(None, "zscir-tiny", weights, "slerp", "targetpad")
    assert slerp.backbone.preprocess.resize_mode == "targetpad"
    with pytest.raises(ExportSourceError, match="Unknown preprocessing 'pad'"):
        resolve_source(searle_pt, "zscir-tiny", weights, "searle", "pad")


def test_a_searle_export_with_targetpad_matches_pytorch_on_a_wide_image(searle_pt, tiny_clip_weights, tmp_path):
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["--quiet", "--ckpt", str(searle_pt), "--method", "searle", "--model", "zscir-tiny",
                                 "--pretrained", str(tiny_clip_weights), "--preprocess", "targetpad",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    preprocess = json.loads((out / "manifest.json").read_text())["preprocess"]
    assert preprocess["resize_mode"] == "targetpad" and preprocess["target_ratio"] == SEARLE_TARGET_RATIO
    assert preprocess["crop"] == "center" and preprocess["fill_color"] == 0
    bundle = load_bundle(out)  # the manifest against the schema
    bundle.verify_all(rehash=True)
    assert bundle.preprocess.resize_mode == "targetpad"

    image = synthetic_image(np.random.default_rng(15), 96, 64, "RGB")  # 3:2, padded to 96 x 76
    backbone = with_preprocess(load_backbone("zscir-tiny", str(tiny_clip_weights)), "targetpad")
    with Runtime(bundle) as rt:
        got = rt.encode_images([image])
        golden = read_golden(out)  # the export's own reference, which pads too (images 0-3 are >= 1.25)
        np.testing.assert_allclose(rt.image_features(rt.preprocess(golden["images"])), golden["image_features"],
                                   rtol=0, atol=PARITY)
    np.testing.assert_allclose(got, TorchReference(backbone).encode_images([image]), rtol=0, atol=PARITY)
    searle = searle_targetpad_transform(SEARLE_TARGET_RATIO, bundle.preprocess.image_size)
    with torch.no_grad():
        theirs = torch.nn.functional.normalize(backbone.model.encode_image(searle(image)[None]), dim=-1).numpy()
    np.testing.assert_allclose(got, theirs, rtol=0, atol=PARITY)
    clip_pixels = load_backbone("zscir-tiny", str(tiny_clip_weights)).transform(image)[None]
    with torch.no_grad():
        clip = torch.nn.functional.normalize(backbone.model.encode_image(clip_pixels), dim=-1).numpy()
    assert np.abs(got - clip).max() > 10 * PARITY  # the mode matters on this image
