"""The `sum` method in the torch-free runtime: normalize(raw image feature + raw text feature), BGE-VL's query."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_infer_runtime import read_golden
from zscir_infer import Runtime
from zscir_infer.bundle import BundleError
from zscir_infer.contract import METHODS, SUM, TRAINING_FREE_METHODS
from zscir_infer.runtime import average, normalize, sum_query

PARITY = 1e-5


def test_sum_is_a_contract_method():
    assert SUM in METHODS and SUM in TRAINING_FREE_METHODS


def test_sum_adds_raw_features_which_is_not_the_average_of_unit_ones():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    img *= 5.0  # a larger image norm: the sum leans towards the image, the average does not
    q = sum_query(img, txt)
    np.testing.assert_allclose(q, (img + txt) / np.linalg.norm(img + txt, axis=1, keepdims=True), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    assert np.abs(q - average(img, txt)).max() > 0.05
    same_norms = normalize(img) * 3.0, normalize(txt) * 3.0
    np.testing.assert_allclose(sum_query(*same_norms), average(*same_norms), rtol=0, atol=1e-6)
    assert ((q * normalize(img)).sum(1) > (average(img, txt) * normalize(img)).sum(1)).all()


def test_numpy_sum_equals_the_torch_reference():
    torch = pytest.importorskip("torch")
    from zscir_train.composed import sum_query as torch_sum

    rng = np.random.default_rng(1)
    img, txt = rng.normal(size=(6, 16)).astype(np.float32), rng.normal(size=(6, 16)).astype(np.float32)
    expected = torch_sum(torch.from_numpy(img), torch.from_numpy(txt)).numpy()
    np.testing.assert_allclose(sum_query(img, txt), expected, rtol=0, atol=1e-7)


def test_sum_on_a_bundle_is_the_sum_of_its_raw_graph_outputs(tiny_slerp_bundle):
    golden = read_golden(tiny_slerp_bundle)
    rt = Runtime(tiny_slerp_bundle)
    queries = list(zip(golden["images"], golden["texts"], strict=True))
    expected = normalize(golden["image_features"] + golden["text_features"])
    np.testing.assert_allclose(rt.encode_queries(queries, method="sum"), expected, rtol=0, atol=PARITY)
    np.testing.assert_allclose(golden["methods"]["sum"], expected, rtol=0, atol=PARITY)
    assert rt.default_method == "slerp"  # a slerp bundle keeps its default; sum is asked for


def test_sum_is_refused_when_a_graph_says_its_output_is_normalized(tiny_slerp_bundle, tmp_path):
    bundle = Path(shutil.copytree(tiny_slerp_bundle, tmp_path / "normalized"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graphs"]["text_encoder"]["fp32"]["normalized_output"] = True
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rt = Runtime(bundle)
    image = read_golden(tiny_slerp_bundle)["images"][0]
    with pytest.raises(BundleError, match="text_encoder .*normalized features.*method 'sum'"):
        rt.encode_queries([(image, "x")], method="sum")
    assert rt.encode_queries([(image, "x")], method="average").shape == (1, rt.embed_dim)
