"""ImageNet-R domain conversion: Pic2Word's list files, labels per domain, set recall by hand."""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zscir_eval.imagenet_r import DOMAINS, domain_metrics, imagenet_r_metrics, read_imagenet_r
from zscir_eval.metrics import official_set_recall_at_k, set_recall_at_k
from zscir_eval.templates import DOMAIN_TEMPLATE, phi_template, plain_text


def test_reader(imagenet_r_root):
    data = read_imagenet_r(imagenet_r_root)
    assert data.query_classes.tolist() == [2, 2, 14]
    # the ImageNet-R images, then (as in the real file) the 10,000 -- here 3 -- query photos themselves
    assert data.gallery_labels.tolist() == [2, 2002, 1014, 14, 3014, 2] + [99, 1099, 2099, 3099] * 2 + [
        6002,
        6002,
        6014,
    ]
    assert [ref.key for ref in data.gallery[-3:]] == [ref.key for ref in data.queries]
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


def official_recall(ranking, query_labels, target_labels, k):
    """Pic2Word eval_utils.get_metrics_imgnet (its recall lines, num_classes 7000), as an oracle."""
    query_onehot = F.one_hot(torch.as_tensor(query_labels), num_classes=7000).float()
    target_onehot = F.one_hot(torch.as_tensor(target_labels), num_classes=7000).float()
    ranking = torch.as_tensor(ranking)
    value = 0
    for x in range(0, len(query_labels), 100):
        label_matrix = query_onehot[x : x + 100] @ target_onehot.t()
        matrix_k = torch.zeros_like(label_matrix)
        rank_k = ranking[x : x + 100, :k]
        matrix_k[torch.arange(matrix_k.size(0)).unsqueeze(1), rank_k] = 1
        num_correct = torch.sum(matrix_k * label_matrix, dim=1)
        num_total = torch.sum(label_matrix, dim=1)
        value += torch.mean(num_correct / (num_total + 1e-5)) * len(label_matrix)
    return float(value / len(query_labels))


def test_official_arithmetic_matches_pic2word_and_stays_within_its_bound(imagenet_r_root):
    data = read_imagenet_r(imagenet_r_root)
    # q2 (class 14) has one origami item (2): found at rank 1, exact R@1 = 1, official 1 / (1 + 1e-5)
    I = np.array([[1, 0, 3, 4, 5], [0, 1, 3, 4, 5], [2, 0, 1, 3, 4]])
    exact = domain_metrics(data, "origami", I)
    official = domain_metrics(data, "origami", I, recall=official_set_recall_at_k)
    assert exact["R@10"] == pytest.approx(100 / 3)
    assert (
        official["R@10"] == pytest.approx(100 / 3 / (1 + 1e-5), rel=1e-6) and official["R@10"] < exact["R@10"]
    )
    # a random ranking over 250 queries (three batches of 100): equal to the official code in float32
    rng = np.random.default_rng(0)
    gallery_labels = rng.choice([2, 14, 99, 1002, 1014, 2002, 3014, 6002], size=40)
    query_labels = rng.choice([2, 14, 5], size=250)
    ranking = np.stack([rng.permutation(40) for _ in range(250)])
    for k in (1, 10, 40):
        ours = official_set_recall_at_k(ranking, query_labels, gallery_labels, (k,))[k]
        assert ours == pytest.approx(
            100 * official_recall(ranking, query_labels, gallery_labels, k), rel=1e-6
        )
        exact_k = set_recall_at_k(ranking, query_labels, gallery_labels, (k,))[k]
        assert 0 <= exact_k - ours <= 1e-3  # at most 1e-3 / n_relevant points per query
