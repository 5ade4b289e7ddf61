"""Query-graph options of issue 13: the placeholder policy ("first" | "all", per method as its official code
does it) and LinCIR's --l2-normalize, in the PyTorch reference, the exported ONNX graph and the manifest."""

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner
from zscir_export.cli import app
from zscir_export.graphs import graph_specs
from zscir_export.validate import ort_session

from zscir_infer.contract import (
    METHOD_PLACEHOLDER_POLICY,
    PLACEHOLDER_ALL,
    PLACEHOLDER_FIRST,
    QUERY_ENCODER,
    fill_template,
)
from zscir_train.checkpoint import DEFAULT_TEMPLATES, METHOD_PLACEHOLDER, meta_for
from zscir_train.composed import ComposedQueryEncoder, encode_text_with_pseudo, placeholder_token_id
from zscir_train.phi import build_phi

FP32_ABS = 1e-5
CAPTIONS = ["costs $5 more", "is red", "$ and * and $ again, * too", "with * stars"]  # placeholders inside captions


def _prompts(method: str) -> list[str]:
    return [fill_template(DEFAULT_TEMPLATES[method], c, METHOD_PLACEHOLDER[method]) for c in CAPTIONS]


def _text_path(model, x, ids):
    """CLIP's text path from token embeddings (what the official codes run after substituting)."""
    x = x + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ model.text_projection


def lincir_official(model, ids, pseudo, pid):
    """navervision/lincir encode_with_pseudo_tokens_HF: torch.where at every placeholder."""
    x = torch.where((ids == pid).unsqueeze(-1), pseudo.unsqueeze(1), model.token_embedding(ids))
    return _text_path(model, x, ids)


def searle_official(model, ids, pseudo, pid):
    """miccunifi/SEARLE encode_with_pseudo_tokens: the first placeholder of each row (nonzero + counts)."""
    x = model.token_embedding(ids).clone()
    _, counts = torch.unique((ids == pid).nonzero(as_tuple=True)[0], return_counts=True)
    cum_sum = torch.cat((torch.zeros(1, dtype=torch.long), torch.cumsum(counts, dim=0)[:-1]))
    first = (ids == pid).nonzero()[cum_sum][:, 1]
    x[torch.arange(x.shape[0]), first] = pseudo
    return _text_path(model, x, ids)


def pic2word_official(model, ids, pseudo, pid):
    """google-research composed_image_retrieval encode_text_img_retrieval: row 0's first placeholder for all rows."""
    x = model.token_embedding(ids)
    at = (ids[0] == pid).nonzero()[0]
    x = torch.cat([x[:, :at], pseudo.view(len(ids), 1, -1), x[:, at + 1:]], dim=1)
    return _text_path(model, x, ids)


OFFICIAL = {"lincir": lincir_official, "searle": searle_official, "pic2word": pic2word_official}


@pytest.mark.parametrize("method", ["lincir", "searle", "pic2word"])
def test_the_reference_substitutes_as_each_methods_official_code(tiny_backbone, method):
    model, policy = tiny_backbone.model, METHOD_PLACEHOLDER_POLICY[method]
    pid = placeholder_token_id(tiny_backbone.tokenizer, METHOD_PLACEHOLDER[method])
    ids = tiny_backbone.tokenizer(_prompts(method))
    assert (ids == pid).sum(1).max() >= 2  # two placeholders in a prompt: the policies differ there
    torch.manual_seed(0)
    pseudo = torch.randn(len(ids), tiny_backbone.width)
    with torch.no_grad():
        ours = encode_text_with_pseudo(model, ids, pseudo, pid, policy)
        if method == "pic2word":  # official: unbatched (row 0's position); zscir: each row's own, row by row
            want = torch.cat([OFFICIAL[method](model, ids[i:i + 1], pseudo[i:i + 1], pid) for i in range(len(ids))])
        else:
            want = OFFICIAL[method](model, ids, pseudo, pid)
        other = encode_text_with_pseudo(model, ids, pseudo, pid,
                                        PLACEHOLDER_ALL if policy == PLACEHOLDER_FIRST else PLACEHOLDER_FIRST)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)
    several = (ids == pid).sum(1) >= 2
    assert (ours[several] - other[several]).abs().max() > 1e-3  # the other rule gives another query
    torch.testing.assert_close(ours[~several], other[~several], atol=1e-6, rtol=0)


def test_meta_carries_the_method_default_policy(tiny_backbone):
    for method, kind in (("lincir", "lincir"), ("searle", "lincir"), ("pic2word", "pic2word")):
        meta = meta_for(build_phi(kind, tiny_backbone.embed_dim, tiny_backbone.width), tiny_backbone, method)
        assert meta.policy == METHOD_PLACEHOLDER_POLICY[method]
        meta.placeholder_policy = None  # a checkpoint written before the field: derived from the method
        assert meta.policy == METHOD_PLACEHOLDER_POLICY[method]


@pytest.fixture(scope="module")
def query_onnx(tiny_backbone, tmp_path_factory):
    """The query graph exported per (policy, l2_normalize), with its PyTorch module."""
    torch.manual_seed(1)
    phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width).eval()
    out, base = {}, tmp_path_factory.mktemp("query")
    for policy in (PLACEHOLDER_FIRST, PLACEHOLDER_ALL):
        for l2 in (False, True):
            spec = next(s for s in graph_specs(tiny_backbone, phi, 259, policy, l2) if s.name == QUERY_ENCODER)
            ids = tiny_backbone.tokenizer(_prompts("lincir")).numpy().astype(np.int32)
            feats = np.random.default_rng(0).standard_normal((len(ids), tiny_backbone.embed_dim)).astype(np.float32)
            path = base / f"query-{policy}-{l2}.onnx"
            spec.export({"image_features": feats, "token_ids": ids}, path)
            out[policy, l2] = (spec, path, {"image_features": feats, "token_ids": ids})
    return out


@pytest.mark.parametrize("policy", [PLACEHOLDER_FIRST, PLACEHOLDER_ALL])
@pytest.mark.parametrize("l2", [False, True])
def test_the_onnx_query_graph_equals_the_reference_for_both_policies(query_onnx, policy, l2):
    spec, path, feeds = query_onnx[policy, l2]
    assert isinstance(spec.module, ComposedQueryEncoder)
    assert (spec.module.placeholder_policy, spec.module.l2_normalize) == (policy, l2)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "NonZero" not in ops and ("CumSum" in ops) == (policy == PLACEHOLDER_FIRST)  # static shapes
    session = ort_session(path, "fp32")
    want = spec.run_torch(feeds)["query_features"]
    for rows in (slice(None), slice(0, 1), slice(2, 3)):  # the batch, and single rows (dynamic batch)
        got = session.run(None, {n: a[rows] for n, a in feeds.items()})[0]
        np.testing.assert_allclose(got, want[rows], rtol=0, atol=FP32_ABS)


def test_the_policies_differ_only_on_prompts_with_several_placeholders(query_onnx):
    first = ort_session(query_onnx[PLACEHOLDER_FIRST, False][1], "fp32")
    every = ort_session(query_onnx[PLACEHOLDER_ALL, False][1], "fp32")
    feeds = query_onnx[PLACEHOLDER_FIRST, False][2]
    a, b = first.run(None, feeds)[0], every.run(None, feeds)[0]
    several = (feeds["token_ids"] == 259).sum(1) >= 2
    assert several.any() and (~several).any()
    assert np.abs(a[several] - b[several]).max() > 1e-3
    np.testing.assert_allclose(a[~several], b[~several], rtol=0, atol=FP32_ABS)


def test_l2_normalize_makes_the_query_independent_of_the_feature_scale(query_onnx):
    for l2 in (False, True):
        spec, path, feeds = query_onnx[PLACEHOLDER_ALL, l2]
        session = ort_session(path, "fp32")
        scaled = {**feeds, "image_features": feeds["image_features"] * 7.0}
        a, b = session.run(None, feeds)[0], session.run(None, scaled)[0]
        if l2:
            np.testing.assert_allclose(a, b, rtol=0, atol=FP32_ABS)
            with torch.no_grad():  # and it is phi(normalize(v)): the reference path spelled out
                module = spec.module
                v = F.normalize(torch.from_numpy(feeds["image_features"]), dim=-1)
                ids = torch.from_numpy(feeds["token_ids"]).long()
                manual = F.normalize(encode_text_with_pseudo(module.clip, ids, module.phi(v), 259), dim=-1)
            np.testing.assert_allclose(a, manual.numpy(), rtol=0, atol=FP32_ABS)
        else:
            assert np.abs(a - b).max() > 1e-3


def test_cli_l2_normalize_reaches_the_manifest_and_the_graph(tiny_lincir_ckpt, tmp_path):
    runner = CliRunner()
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["--quiet", "--ckpt", str(tiny_lincir_ckpt), "--l2-normalize", "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["phi"]["l2_normalize"] is True and m["placeholder"]["policy"] == PLACEHOLDER_ALL
    assert m["backbone"]["activation"] == "gelu"  # zscir-tiny: a plain open_clip config
    golden = out / "golden"
    entry = json.loads((golden / "golden.json").read_text())["graphs"][QUERY_ENCODER]
    feeds = {n: np.load(golden / f) for n, f in entry["inputs"].items()}
    session = ort_session(out / m["graphs"][QUERY_ENCODER]["fp32"]["file"], "fp32")
    a = session.run(None, feeds)[0]
    b = session.run(None, {**feeds, "image_features": feeds["image_features"] * 3.0})[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=FP32_ABS)
    slerp = runner.invoke(app, ["--quiet", "--method", "slerp", "--model", "zscir-tiny", "--l2-normalize",
                                "--out", str(tmp_path / "slerp")])
    assert slerp.exit_code == 1 and "--l2-normalize" in slerp.output and "no phi" in slerp.output
