"""The PyTorch composed-query reference: substitution, batching, slerp and baselines."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zscir_infer.contract import TemplateError, fill_template
from zscir_train.checkpoint import meta_for
from zscir_train.composed import ComposedQueryEncoder, encode_text_with_pseudo, placeholder_token_id, slerp
from zscir_train.phi import build_phi
from zscir_train.reference import TorchReference

PROMPTS = [
    "a photo of $ that is red",
    "$",
    "a $ and another $ side by side, both as origami",
    "a photo of $ that " + "very " * 100 + "long",  # truncated at 77 tokens
    "no placeholder here at all",
]


@pytest.mark.parametrize("placeholder", ["$", "*"])
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_own_embedding_substitution_reproduces_encode_text(tiny_backbone, placeholder, batch):
    model = tiny_backbone.model
    pid = placeholder_token_id(tiny_backbone.tokenizer, placeholder)
    prompts = [p.replace("$", placeholder) for p in (PROMPTS * 2)[:batch]]
    ids = tiny_backbone.tokenizer(prompts)
    own = model.token_embedding.weight[pid].expand(batch, -1)
    with torch.no_grad():
        ours = encode_text_with_pseudo(model, ids, own, pid)
        ref = model.encode_text(ids)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_placeholder_ids():
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-32")
    assert placeholder_token_id(tok, "$") == 259
    assert placeholder_token_id(tok, "*") == 265


def test_substitution_changes_every_occurrence(tiny_backbone):
    model = tiny_backbone.model
    pid = placeholder_token_id(tiny_backbone.tokenizer, "$")
    pseudo = torch.randn(1, tiny_backbone.width)
    one = tiny_backbone.tokenizer(["a $ and a cat"])
    two = tiny_backbone.tokenizer(["a $ and a $"])
    with torch.no_grad():
        # replacing the second placeholder must matter: it is substituted too
        a = encode_text_with_pseudo(model, two, pseudo, pid)
        emb = model.token_embedding(two).clone()
        emb[0, 2] = pseudo[0]
        emb[0, 5] = pseudo[0]
        x = emb + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        b = x[0, two[0].argmax()] @ model.text_projection
        assert torch.allclose(a[0], b, atol=1e-5)
        assert not torch.allclose(a, encode_text_with_pseudo(model, one, pseudo, pid), atol=1e-3)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(40, 60), (32, 32), (90, 17), (33, 70), (64, 48), (20, 20)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def reference(tiny_backbone):
    torch.manual_seed(0)
    phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width)
    return TorchReference(tiny_backbone, phi, meta_for(phi, tiny_backbone, "lincir"), batch_size=4)


@pytest.mark.parametrize("method", ["phi", "slerp", "image", "text", "average"])
def test_batch_equals_items_one_by_one(reference, method):
    texts = ["make it red", "as a sketch", "turn the star into a circle", "on a black background", "smaller", "x"]
    queries = list(zip(_images(6), texts, strict=True))
    batch = reference.encode_queries(queries, method=method)
    single = np.concatenate([reference.encode_queries([q], method=method) for q in queries])
    assert batch.shape == (6, reference.embed_dim)
    np.testing.assert_allclose(batch, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_phi_query_uses_the_image(reference):
    ims = _images(2, seed=3)
    q = reference.encode_queries([(ims[0], "make it red"), (ims[1], "make it red")])
    assert float(q[0] @ q[1]) < 0.99999  # different images, different queries


def test_composed_encoder_matches_manual_path(reference, tiny_backbone):
    enc: ComposedQueryEncoder = reference.query_encoder
    feats = reference.image_features(_images(3))
    ids = tiny_backbone.tokenizer([fill_template("a photo of $ that {caption}", "is blue", "$")] * 3)
    with torch.no_grad():
        pseudo = enc.phi(feats)
        manual = F.normalize(encode_text_with_pseudo(tiny_backbone.model, ids, pseudo, 259), dim=-1)
        assert torch.allclose(enc(feats, ids), manual, atol=1e-6)


def test_slerp_endpoints_norm_and_parallel_case():
    torch.manual_seed(0)
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    assert torch.allclose(slerp(a, b, 0.0), F.normalize(a, dim=-1), atol=1e-6)
    assert torch.allclose(slerp(a, b, 1.0), F.normalize(b, dim=-1), atol=1e-6)
    mid = slerp(a, b, 0.3)
    assert torch.allclose(mid.norm(dim=-1), torch.ones(4), atol=1e-6)
    # the angle from a is 0.3 of the angle between a and b
    na, nb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    theta = torch.arccos((na * nb).sum(-1))
    assert torch.allclose(torch.arccos((mid * na).sum(-1).clamp(-1, 1)), 0.3 * theta, atol=1e-4)
    near = a + 1e-7 * torch.randn(4, 16)
    out = slerp(a, near, 0.5)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, F.normalize(a, dim=-1), atol=1e-5)
    same = slerp(a, a, 0.8)
    assert torch.isfinite(same).all() and torch.allclose(same, F.normalize(a, dim=-1), atol=1e-6)


def test_template_without_placeholder_is_a_clear_error(reference):
    with pytest.raises(TemplateError, match="does not contain the placeholder"):
        reference.encode_queries([(_images(1)[0], "red")], template="a photo that {caption}")
    with pytest.raises(TemplateError, match="caption"):
        fill_template("a photo of $", "red", "$")


def test_unknown_method(reference):
    with pytest.raises(ValueError, match="Unknown method"):
        reference.encode_queries([(_images(1)[0], "red")], method="magic")
