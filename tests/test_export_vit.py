"""A real architecture: ViT-B-32 (random weights) through export and validation, fp32 and fp16 (slow)."""

import json

import numpy as np
import pytest
from zscir_export.bundle import ExportOptions, export_bundle
from zscir_export.model_source import ExportSource
from zscir_export.validate import TOLERANCES, ort_session


@pytest.mark.slow
def test_vit_b_32_exports_and_validates_at_fp32_and_fp16(tmp_path):
    import torch

    from zscir_train.backbone import load_backbone
    from zscir_train.checkpoint import meta_for
    from zscir_train.phi import build_phi

    backbone = load_backbone("ViT-B-32")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        phi = build_phi("lincir", backbone.embed_dim, backbone.width).eval()
    source = ExportSource(backbone, "lincir", phi, meta_for(phi, backbone, "lincir"), {"kind": "zscir"})
    result = export_bundle(source, ExportOptions(tmp_path / "bundle", fp16=True))
    assert {(g.graph, g.precision) for g in result.graphs} == {
        (g, p) for g in ("image_encoder", "query_encoder", "text_encoder") for p in ("fp32", "fp16")}
    for g in result.graphs:
        for c in g.checks:
            assert c.passed and c.min_cosine >= TOLERANCES[g.precision].min_cosine, c.describe()
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["embed_dim"] == 512 and manifest["preprocess"]["image_size"] == 224
    fp16 = manifest["graphs"]["image_encoder"]["fp16"]
    assert fp16["bytes"] < 0.55 * manifest["graphs"]["image_encoder"]["fp32"]["bytes"]
    base = tmp_path / "bundle" / "golden"
    golden = json.loads((base / "golden.json").read_text())["graphs"]["query_encoder"]
    feeds = {n: np.load(base / f) for n, f in golden["inputs"].items()}
    got = ort_session(tmp_path / "bundle" / manifest["graphs"]["query_encoder"]["fp32"]["file"], "fp32").run(None, feeds)[0]
    np.testing.assert_allclose(got, np.load(base / golden["outputs"]["query_features"]), rtol=0, atol=1e-5)
