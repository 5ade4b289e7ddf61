"""Sequence-adaptive text graphs in the runtime: each batch's ids are cut after its last end-of-text token
(rounded up to a multiple of 8, capped at the context) when the bundle's text tower is causal; the
features equal the full-length runtime and the PyTorch reference for every method and prompt length."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from zscir_infer import Runtime
from zscir_infer.backends.ort import OrtSession
from zscir_infer.contract import SEQUENCE_MULTIPLE, trimmed_ids, trimmed_sequence_length

PARITY = 1e-5  # fp32 max abs vs the PyTorch reference (as the golden parity tests)
SAME = 1e-6  # trimmed vs full length: the same graph, the same features
BUNDLES = ("tiny_bundle", "tiny_slerp_bundle", "tiny_pic2word_bundle")  # phi "all", slerp, phi "first"
WORD_COUNTS = (0, 1, 2, 3, 5, 7, 8, 9, 12, 15, 16, 20, 25, 31, 40, 50, 60, 66, 68, 69, 70, 71, 72, 74, 75, 76, 90)


def captions() -> list[str]:
    """Prompts of 2 (empty caption) up to 77 (the cap; 90 words are truncated) tokens: 'red' is one token."""
    return [" ".join(["red"] * n) for n in WORD_COUNTS]


def golden_images(bundle: Path) -> list[Path]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    golden_file = bundle / manifest["golden"]["file"]
    return [golden_file.parent / name for name in json.loads(golden_file.read_text())["images"]]


def reference_for(request, bundle_fixture):
    from zscir_export.model_source import resolve_source

    from zscir_train.reference import TorchReference

    weights = str(request.getfixturevalue("tiny_clip_weights"))
    if bundle_fixture == "tiny_bundle":
        source = resolve_source(request.getfixturevalue("tiny_lincir_ckpt"))
    elif bundle_fixture == "tiny_pic2word_bundle":
        source = resolve_source(request.getfixturevalue("tiny_pic2word_pt"), "zscir-tiny", weights)
    else:
        source = resolve_source(None, "zscir-tiny", weights, "slerp")
    return TorchReference(source.backbone, source.phi, source.meta)


@pytest.fixture
def fed_lengths(monkeypatch):
    """The token_ids length of every graph call: [(graph file stem, length)]."""
    seen = []
    infer = OrtSession.infer

    def recording(self, feeds):
        for name, value in feeds.items():
            if "token_ids" in name:
                seen.append((Path(self.path).name.split(".")[0], value.shape[1], value))
        return infer(self, feeds)

    monkeypatch.setattr(OrtSession, "infer", recording)
    return seen


def test_the_trimmed_length_rule():
    assert SEQUENCE_MULTIPLE == 8
    rule = {0: 8, 1: 8, 7: 8, 8: 16, 11: 16, 15: 16, 16: 24, 63: 64, 64: 72, 71: 72, 72: 77, 75: 77, 76: 77}
    assert {eot: trimmed_sequence_length(eot, 77) for eot in rule} == rule
    assert trimmed_sequence_length(3, 5) == 5  # never above the context


def test_trimmed_ids_cut_a_batch_after_its_last_eot():
    ids = np.zeros((2, 77), np.int32)
    ids[0, :4] = [49406, 320, 1125, 49407]  # EOT at 3
    ids[1, :10] = [49406, *range(320, 328), 49407]  # EOT at 9: the batch is cut at 16
    cut = trimmed_ids(ids)
    assert cut.shape == (2, 16) and np.shares_memory(cut, ids) and (cut == ids[:, :16]).all()
    assert trimmed_ids(ids, context_length=12).shape == (2, 12)  # never above the context
    full = np.zeros((1, 8), np.int32)
    full[0, :2] = [49406, 49407]
    assert trimmed_ids(full) is full  # nothing to cut: the ids themselves
    empty = np.zeros((0, 77), np.int32)
    assert trimmed_ids(empty) is empty


@pytest.mark.parametrize("bundle_fixture", BUNDLES)
def test_every_method_and_prompt_length_equals_full_length_and_pytorch(request, bundle_fixture, fed_lengths):
    bundle = request.getfixturevalue(bundle_fixture)
    images = golden_images(bundle)
    texts = captions()
    queries = [(images[i % len(images)], t) for i, t in enumerate(texts)]
    reference = reference_for(request, bundle_fixture)
    trimmed, full = Runtime(bundle, batch_size=4), Runtime(bundle, batch_size=4, trim_sequence=False)
    methods = ("slerp", "image", "text", "average") + (("phi",) if trimmed.bundle.has_phi else ())
    assert trimmed.bundle.text_causal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 90-word caption is truncated (TruncationWarning)
        for method in methods:
            fed_lengths.clear()
            got = trimmed.encode_queries(queries, method=method)
            cut = [length for _, length, _ in fed_lengths]
            fed_lengths.clear()
            want_full = full.encode_queries(queries, method=method)
            assert all(length == 77 for _, length, _ in fed_lengths)
            np.testing.assert_allclose(got, want_full, rtol=0, atol=SAME, err_msg=f"{bundle_fixture} {method}")
            np.testing.assert_allclose(got, reference.encode_queries(queries, method=method), rtol=0, atol=PARITY,
                                       err_msg=f"{bundle_fixture} {method} vs PyTorch")
            if method != "image":
                assert min(cut) < 77 and max(cut) == 77, (method, cut)  # short batches were cut, the cap reached
    # one prompt at a time: every length from 1 to 77 tokens, alone in its batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = trimmed.token_ids([" ".join(["red"] * n) for n in range(0, 80)])
        assert sorted(set(ids.argmax(1) + 1)) == list(range(2, 78))
        one = np.concatenate([trimmed.run_graph("text_encoder", {"token_ids": ids[i:i + 1]}) for i in range(len(ids))])
        whole = np.concatenate([full.run_graph("text_encoder", {"token_ids": ids[i:i + 1]}) for i in range(len(ids))])
    np.testing.assert_allclose(one, whole, rtol=0, atol=SAME)
    single = trimmed.run_graph("text_encoder", {"token_ids": np.array([[49406]], dtype=np.int32)})  # L = 1
    assert single.shape == (1, trimmed.embed_dim) and np.isfinite(single).all()


def test_each_batch_is_fed_its_longest_eot_plus_one_rounded_to_8(tiny_bundle, fed_lengths):
    rt = Runtime(tiny_bundle, batch_size=3)
    texts = ["a", "red", "a photo of a red circle", " ".join(["red"] * 20), "x", " ".join(["red"] * 80), "b"]
    images = golden_images(tiny_bundle)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt.encode_texts(texts)
        rt.encode_queries([(images[0], t) for t in texts], method="phi")
    assert {graph for graph, _, _ in fed_lengths} == {"text_encoder", "query_encoder"}
    for graph, length, ids in fed_lengths:
        full = rt.token_ids(["dummy"])  # the context length
        eot = int(ids.argmax(1).max())
        assert length == min(-(-(eot + 1) // 8) * 8, full.shape[1]), (graph, length, eot)
        assert (ids.argmax(1) < length).all()
    text_lengths = [length for graph, length, _ in fed_lengths if graph == "text_encoder"]
    assert text_lengths == [8, 77, 8]  # batches of 3: (a, red, a photo...: EOT at 7), (.., 80 reds: cut), (b)


def test_bundles_without_the_causal_flag_or_the_sequence_axis_run_at_full_length(tiny_bundle, tmp_path, fed_lengths):
    """Bundles written before sequence-adaptive graphs (no `text`, ids [batch, 77]) keep full length."""
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["text"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with Runtime(old) as rt:
        assert not rt.bundle.text_causal and not rt.sequence_adaptive("text_encoder")
        rt.encode_texts(["a", "red"])
    assert [length for _, length, _ in fed_lengths] == [77]
    manifest["text"] = {"causal": True}  # causal, but the graphs' ids are declared [batch, 77]
    for graph in ("text_encoder", "query_encoder"):
        for entry in manifest["graphs"][graph].values():
            for tensor in entry["inputs"]:
                tensor["shape"] = [77 if d == "sequence" else d for d in tensor["shape"]]
    (old / "manifest.json").write_text(json.dumps(manifest))
    fed_lengths.clear()
    with Runtime(old) as rt:
        assert rt.bundle.text_causal and not rt.sequence_adaptive("text_encoder")
        rt.encode_texts(["a", "red"])
    assert [length for _, length, _ in fed_lengths] == [77]
