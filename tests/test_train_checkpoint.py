"""phi checkpoints: our safetensors format, official LinCIR/SEARLE/Pic2Word files, and bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from zscir_train.checkpoint import (
    CheckpointError,
    PhiMeta,
    load_phi_checkpoint,
    meta_for,
    save_phi_checkpoint,
)
from zscir_train.phi import build_phi
from zscir_train.reference import TorchReference


def _queries():
    rng = np.random.default_rng(1)
    ims = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]
    return list(zip(ims, ["make it red", "as a sketch", "two of them"], strict=True))


@pytest.mark.parametrize("method", ["lincir", "searle", "pic2word"])
def test_official_checkpoint_matches_our_format(tmp_path, tiny_backbone, method):
    torch.manual_seed(0)
    kind = "pic2word" if method == "pic2word" else "lincir"
    phi = build_phi(kind, tiny_backbone.embed_dim, tiny_backbone.width)
    state = phi.state_dict()
    official = tmp_path / f"{method}_official.pt"
    if kind == "lincir":
        assert {"layers.0.weight", "layers.3.weight", "layers.6.weight"} <= set(state)
        torch.save({"epoch": 7, "Phi": state}, official)
    else:
        assert {"fc_out.weight", "layers.0.0.weight", "layers.1.0.weight"} <= set(state)
        torch.save({"epoch": 3, "state_dict_img2text": {f"module.{k}": v for k, v in state.items()}}, official)
    ours = save_phi_checkpoint(tmp_path / "ours.pt", phi, meta_for(phi, tiny_backbone, method))

    phi_a, meta_a = load_phi_checkpoint(official, tiny_backbone, method=method)
    phi_b, meta_b = load_phi_checkpoint(ours, tiny_backbone)
    assert meta_a.method == meta_b.method == method
    assert meta_a.placeholder == meta_b.placeholder == ("*" if kind == "pic2word" else "$")
    assert meta_b.backbone_name == "zscir-tiny"
    assert meta_a.source == f"official-{method}"  # an official SEARLE file says searle, not lincir
    assert meta_a.policy == meta_b.policy == ("all" if method == "lincir" else "first")
    qa = TorchReference(tiny_backbone, phi_a, meta_a).encode_queries(_queries())
    qb = TorchReference(tiny_backbone, phi_b, meta_b).encode_queries(_queries())
    np.testing.assert_array_equal(qa, qb)


def test_meta_roundtrip(tmp_path, tiny_backbone):
    phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width)
    meta = meta_for(phi, tiny_backbone, "lincir", training={"steps": 5, "lr": 1e-4})
    path = save_phi_checkpoint(tmp_path / "phi.safetensors", phi, meta)
    _, loaded = load_phi_checkpoint(path)
    assert loaded == meta
    assert isinstance(loaded, PhiMeta)


def test_policy_l2_normalize_and_activation_travel_with_the_checkpoint(tmp_path, tiny_backbone):
    phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width)
    meta = meta_for(phi, tiny_backbone, "lincir", placeholder_policy="first", l2_normalize=True)
    assert meta.backbone_activation == tiny_backbone.activation == "gelu"
    _, loaded = load_phi_checkpoint(save_phi_checkpoint(tmp_path / "phi.safetensors", phi, meta))
    assert (loaded.policy, loaded.l2_normalize, loaded.backbone_activation) == ("first", True, "gelu")
    reference = TorchReference(tiny_backbone, phi, loaded)
    assert (reference.query_encoder.placeholder_policy, reference.query_encoder.l2_normalize) == ("first", True)


def test_an_unknown_placeholder_policy_is_refused(tmp_path, tiny_backbone):
    phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width)
    meta = meta_for(phi, tiny_backbone, "lincir", placeholder_policy="second")
    path = save_phi_checkpoint(tmp_path / "phi.safetensors", phi, meta)
    with pytest.raises(CheckpointError, match="placeholder policy 'second'"):
        load_phi_checkpoint(path)


def test_other_backbone_width_is_refused(tmp_path, tiny_backbone):
    phi = build_phi("lincir", tiny_backbone.embed_dim, 512)
    torch.save({"Phi": phi.state_dict()}, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"W=512.*zscir-tiny.*W=80"):
        load_phi_checkpoint(tmp_path / "wide.pt", tiny_backbone)


def test_truncated_files_are_clear_errors(tmp_path, tiny_backbone):
    phi = build_phi("lincir", tiny_backbone.embed_dim, tiny_backbone.width)
    good_st = save_phi_checkpoint(tmp_path / "a.safetensors", phi, meta_for(phi, tiny_backbone, "lincir"))
    torch.save({"Phi": phi.state_dict()}, tmp_path / "b.pt")
    for good in (good_st, tmp_path / "b.pt"):
        data = good.read_bytes()
        cut = tmp_path / f"cut_{good.name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=cut.name):
            load_phi_checkpoint(cut)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt"):
        load_phi_checkpoint(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_phi_checkpoint(tmp_path / "nope.pt")


def test_foreign_dictionary_and_code_are_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="expected 'Phi'"):
        load_phi_checkpoint(tmp_path / "other.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"Phi": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_phi_checkpoint(tmp_path / "evil.pt")
