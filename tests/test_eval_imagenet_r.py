"""ImageNet-R domain conversion: Pic2Word's list files, labels per domain, set recall by hand."""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking

import numpy as np
import pytest

from zscir_eval.imagenet_r import DOMAINS, domain_metrics, imagenet_r_metrics, read_imagenet_r
from zscir_eval.metrics import set_recall_at_k
from zscir_eval.templates import DOMAIN_TEMPLATE, phi_template, plain_text


def test_reader(imagenet_r_root):
    data = read_imagenet_r(imagenet_r_root)
    assert data.query_classes.tolist() == [2, 2, 14]
    assert data.gallery_labels.tolist() == [2, 2002, 1014, 14, 3014, 2] + [99, 1099, 2099, 3099] * 2
    assert all(ref.path.is_file() for ref in data.queries + data.gallery)
    assert data.queries[0].key == "imgnet/real/n04086273/ILSVRC2012_val_00000000.JPEG"
    same = read_imagenet_r(imagenet_r_root / "imgnet")  # ROOT may be the imgnet folder itself
    assert [r.path for r in same.gallery] == [r.path for r in data.gallery]


def test_prompts():
    assert phi_template(DOMAIN_TEMPLATE, "*", "origami") == "a origami of *{caption}"
    assert plain_text(DOMAIN_TEMPLATE, domain="cartoon") == "a cartoon of"  # Pic2Word's text-only prompt


def test_domain_recall_by_hand(imagenet_r_root):
    # gallery: 0 cls2 cartoon, 1 cls2 toy, 2 cls14 origami, 3 cls14 cartoon, 4 cls14 sculpture, 5 cls2 cartoon
    data = read_imagenet_r(imagenet_r_root)
    I = np.array([[0, 1, 2, 5, 3], [1, 2, 3, 4, 0], [3, 0, 1, 2, 4]])
    # cartoon: q0, q1 (class 2) have 2 relevant (0, 5); q2 (class 14) has 1 (3)
    #   top 1: q0 1/2, q1 0, q2 1 -> R@1 = (0.5 + 0 + 1) / 3; top 5: 1, 1/2, 1 -> R@5 = 2.5 / 3
    cartoon = {1: 100 * 1.5 / 3, 5: 100 * 2.5 / 3}
    labels = data.query_classes + 1000 * DOMAINS.index("cartoon")
    assert set_recall_at_k(I, labels, data.gallery_labels, (1, 5)) == pytest.approx(cartoon)
    # toy: only q0/q1 have one relevant item (1): q0 finds it at rank 2, q1 at rank 1, q2 none exists
    #   R@10 = R@50 = (1 + 1 + 0) / 3
    assert domain_metrics(data, "toy", I) == pytest.approx({"R@10": 200 / 3, "R@50": 200 / 3})


def test_average_over_domains():
    per = {d: {"R@10": 10.0 * (i + 1), "R@50": 50.0} for i, d in enumerate(DOMAINS)}
    m = imagenet_r_metrics(per)
    assert m["origami/R@10"] == 20.0 and m["avg/R@10"] == pytest.approx(25.0) and m["avg/R@50"] == 50.0
