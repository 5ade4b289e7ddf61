"""The harness end to end with the real PyTorch reference (tiny random open_clip): every benchmark's
metrics equal an independent numpy computation from the encoder's own outputs; caching; missing files."""

import inspect

import numpy as np
import pytest
import torch

from tests.fixtures.eval_layouts import write_image
from zscir_eval import Harness, MissingImagesError, QueryEncoder, run_benchmark, write_result
from zscir_eval.cirr import read_cirr
from zscir_eval.fashioniq import read_fashioniq
from zscir_eval.genecis import read_genecis
from zscir_eval.harness import fashioniq_query_features
from zscir_eval.imagenet_r import read_imagenet_r
from zscir_eval.templates import LINCIR, PIC2WORD
from zscir_infer.contract import METHODS
from zscir_train.checkpoint import meta_for
from zscir_train.phi import build_phi
from zscir_train.reference import TorchReference


class CountingReference(TorchReference):
    """The real reference, counting the images it encodes (to see the gallery cache at work)."""

    encoded = 0

    def encode_images(self, images):
        self.encoded += len(images)
        return super().encode_images(images)


@pytest.fixture(scope="module")
def reference(tiny_backbone):
    torch.manual_seed(0)
    phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width)
    return CountingReference(tiny_backbone, phi, meta_for(phi, tiny_backbone, "lincir"), batch_size=4)


def open_all(refs):
    return [ref.load() for ref in refs]


def recall(scores: np.ndarray, targets: list[int], ks) -> dict[str, float]:
    """R@k from a full score matrix by numpy argsort: the oracle for the FAISS path."""
    ranks = np.array(
        [
            int(np.where(np.argsort(-s, kind="stable") == t)[0][0])
            for s, t in zip(scores, targets, strict=True)
        ]
    )
    return {f"R@{k}": 100 * float((ranks < k).mean()) for k in ks}


@pytest.mark.parametrize("method", METHODS)
def test_cirr_matches_numpy_oracle(reference, cirr_root, tmp_path, method):
    result = run_benchmark(Harness(reference, "tiny", tmp_path), "cirr", cirr_root, method=method)
    data = read_cirr(cirr_root)
    names = [ref.key for ref in data.gallery]
    xb = reference.encode_images(open_all(data.gallery))
    pairs = [(ref.load(), q.caption) for ref, q in zip(data.references(), data.queries, strict=True)]
    kwargs = {"template": "a photo of $ that {caption}"} if method == "phi" else {}
    xq = reference.encode_queries(pairs, method=method, **kwargs)
    scores = xq @ xb.T
    for row, q in zip(scores, data.queries, strict=True):
        row[names.index(q.reference)] = -np.inf  # the reference leaves the ranking
    targets = [names.index(q.target) for q in data.queries]
    expected = recall(scores, targets, (1, 5, 10, 50))
    subset = scores.copy()
    for row, q in zip(subset, data.queries, strict=True):
        outside = [i for i, n in enumerate(names) if n not in q.members or n == q.reference]
        row[outside] = -np.inf
    expected |= {k.replace("R@", "Rsubset@"): v for k, v in recall(subset, targets, (1, 2, 3)).items()}
    assert {k: result.metrics[k] for k in expected} == pytest.approx(expected)
    assert result.template == ("a photo of {placeholder} that {caption}" if method == "phi" else "{caption}")


def test_the_runtime_and_the_reference_are_query_encoders(reference, tiny_bundle):
    from zscir_infer import Runtime

    with Runtime(tiny_bundle) as runtime:
        assert isinstance(runtime, QueryEncoder) and isinstance(reference, QueryEncoder)
        assert (runtime.placeholder, runtime.embed_dim) == (reference.placeholder, reference.embed_dim)
    assert not isinstance(object(), QueryEncoder)
    wanted = set(inspect.signature(QueryEncoder.encode_queries).parameters)
    for cls in (Runtime, TorchReference):
        assert wanted <= set(inspect.signature(cls.encode_queries).parameters), cls


def test_gallery_is_encoded_once_and_cached(reference, cirr_root, tmp_path):
    harness = Harness(reference, "tiny", tmp_path / "cache")
    start = reference.encoded
    first = run_benchmark(harness, "cirr", cirr_root, method="image")
    assert reference.encoded - start == 8  # the gallery; queries go through encode_queries
    second = run_benchmark(harness, "cirr", cirr_root, method="average")
    assert reference.encoded - start == 8  # read back from the gallery store
    assert [p.name for p in (tmp_path / "cache").glob("gallery-*/gallery.json")] == ["gallery.json"]
    run_benchmark(
        Harness(reference, "another-image-space", tmp_path / "cache"), "cirr", cirr_root, method="image"
    )
    assert reference.encoded - start == 16  # the store is keyed by the image space
    write_image(read_cirr(cirr_root).gallery[3].path, 99)  # a changed file is encoded again
    third = run_benchmark(harness, "cirr", cirr_root, method="image")
    assert reference.encoded - start == 17
    assert first.num_queries == second.num_queries == third.num_queries == 3


class InterruptedReference(CountingReference):
    """The real reference, stopped (as by Ctrl-C) when asked to encode its second gallery batch."""

    def encode_images(self, images):
        if self.encoded:
            raise KeyboardInterrupt
        return super().encode_images(images)


def test_an_interrupted_gallery_keeps_its_finished_batches(reference, cirr_root, tmp_path):
    interrupted = InterruptedReference(reference.backbone)  # same image tower, so the same image space
    with pytest.raises(KeyboardInterrupt):
        Harness(interrupted, "tiny", tmp_path, batch_size=3).gallery_features(read_cirr(cirr_root).gallery)
    start = reference.encoded
    xb = Harness(reference, "tiny", tmp_path, batch_size=3).gallery_features(read_cirr(cirr_root).gallery)
    assert reference.encoded - start == 8 - 3  # the first batch of 3 was kept
    np.testing.assert_allclose(xb, reference.encode_images(open_all(read_cirr(cirr_root).gallery)), atol=1e-6)


def test_circo_image_baseline_retrieves_the_reference_first(reference, circo_root, tmp_path):
    # CIRCO keeps the reference in the gallery: the image-only query (the reference's own feature) must
    # rank it first; the submission lists COCO ids.
    result = run_benchmark(
        Harness(reference, "tiny", tmp_path), "circo", circo_root, split="test", method="image"
    )
    sub = result.submissions["submission"]
    assert sub["0"][0] == 101 and sub["1"][0] == 102
    assert all(len(ids) == 8 for ids in sub.values())
    paths = write_result(result, tmp_path / "out")
    assert [p.name for p in paths] == ["circo-test-image.json", "circo-test-image-submission.json"]


@pytest.mark.parametrize(("style", "n_orders"), [(LINCIR, 2), (PIC2WORD, 1)])
def test_fashioniq_query_features_average_the_caption_orders(
    reference, fashioniq_root, tmp_path, style, n_orders
):
    category = read_fashioniq(fashioniq_root).categories[1]
    template = "a photo of {placeholder} that {caption}"
    ours = fashioniq_query_features(Harness(reference, "tiny", tmp_path), category, "phi", template, style)
    images = open_all(category.references())
    feats = []
    for order in [(0, 1), (1, 0)][2 - n_orders :]:
        # LinCIR strips ".?, " from each caption; Pic2Word joins them raw ("is red. and ...")
        captions = [q.captions if style == LINCIR else q.raw_captions for q in category.queries]
        texts = [f"{c[order[0]]} and {c[order[1]]}" for c in captions]
        feats.append(
            reference.encode_queries(
                list(zip(images, texts, strict=True)), "phi", "a photo of $ that {caption}"
            )
        )
    expected = np.mean(feats, axis=0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_fashioniq_runs_all_categories(reference, fashioniq_root, tmp_path):
    result = run_benchmark(Harness(reference, "tiny", tmp_path), "fashioniq", fashioniq_root, method="phi")
    assert {"dress/R@10", "shirt/R@50", "toptee/R@10", "avg/R@10", "avg/R@50", "avg"} <= set(result.metrics)
    assert result.num_queries == 6


def test_genecis_matches_numpy_oracle_on_crops(reference, genecis_root, tmp_path):
    result = run_benchmark(Harness(reference, "tiny", tmp_path), "genecis", genecis_root, method="phi")
    for task in read_genecis(genecis_root).tasks:
        ranks_scores, targets = [], []
        for q in task.queries:
            gallery = reference.encode_images(open_all([q.target, *q.distractors]))  # target first
            xq = reference.encode_queries(
                [(q.reference.load(), q.condition)], "phi", "a photo of $ that {caption}"
            )
            ranks_scores.append(np.pad((xq @ gallery.T)[0], (0, 3), constant_values=-np.inf)[:4])
            targets.append(0)
        expected = recall(np.stack(ranks_scores), targets, (1, 2, 3))
        assert {k: result.metrics[f"{task.name}/{k}"] for k in expected} == pytest.approx(expected)


@pytest.mark.parametrize("method", ["phi", "image"])
def test_imagenet_r_uses_the_domain_prompt(reference, imagenet_r_root, tmp_path, method):
    result = run_benchmark(Harness(reference, "tiny", tmp_path), "imagenet-r", imagenet_r_root, method=method)
    data = read_imagenet_r(imagenet_r_root)
    xb = reference.encode_images(open_all(data.gallery))  # 14 images: the top 10 is a real cut
    v_img = reference.image_features(open_all(data.queries))
    for d, domain in enumerate(("cartoon", "origami", "toy", "sculpture")):
        ids = reference.backbone.tokenizer([f"a {domain} of $"] * len(data.queries))
        with torch.no_grad():
            composed = reference.query_encoder(v_img, ids).numpy()
        xq = composed if method == "phi" else reference.encode_images(open_all(data.queries))
        top = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
        labels = data.query_classes + 1000 * d
        found = (data.gallery_labels[top] == labels[:, None]).sum(1)
        total = (data.gallery_labels[None, :] == labels[:, None]).sum(1)
        expected = 100 * np.mean(np.where(total > 0, found / np.maximum(total, 1), 0))
        assert result.metrics[f"{domain}/R@10"] == pytest.approx(expected)


def test_missing_images_are_reported_then_skipped(reference, cirr_root, tmp_path):
    data = read_cirr(cirr_root)
    by_key = {ref.key: ref for ref in data.gallery}
    by_key["dev-4-1-img0"].path.unlink()  # the reference of pairid 12
    by_key["dev-5-2-img1"].path.unlink()  # only a gallery image and a subset member
    harness = Harness(reference, "tiny", tmp_path)
    with pytest.raises(MissingImagesError, match="2 of the image files") as info:
        run_benchmark(harness, "cirr", cirr_root)
    assert "dev-4-1-img0.png" in str(info.value) and "--skip-missing" in str(info.value)
    result = run_benchmark(harness, "cirr", cirr_root, skip_missing=True)
    assert result.excluded == {"queries": 1, "gallery": 2, "missing_files": 2}
    assert result.num_queries == 2


def test_a_template_without_placeholder_is_refused_for_phi(reference, cirr_root, tmp_path):
    with pytest.raises(ValueError, match="placeholder"):
        run_benchmark(
            Harness(reference, "tiny", tmp_path), "cirr", cirr_root, template="a photo that {caption}"
        )


def test_a_part_left_without_queries_is_an_error(reference, fashioniq_root, tmp_path):
    for candidate in ("B0000000X", "B0000003X"):  # both dress queries' reference images
        (fashioniq_root / "images" / f"{candidate}.jpg").unlink()
    with pytest.raises(ValueError, match="no query left to evaluate in dress"):
        run_benchmark(Harness(reference, "tiny", tmp_path), "fashioniq", fashioniq_root, skip_missing=True)
