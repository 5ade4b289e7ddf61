"""load_backbone: registered names, custom architecture JSON, local weights, and its errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from zscir_train.backbone import BackboneError, load_backbone


def test_tiny_backbone_dims_and_frozen(tiny_backbone):
    assert (tiny_backbone.embed_dim, tiny_backbone.width, tiny_backbone.context_length) == (48, 80, 77)
    assert tiny_backbone.preprocess.image_size == 32
    assert not tiny_backbone.model.training
    assert all(not p.requires_grad for p in tiny_backbone.model.parameters())


def test_architecture_json_and_local_weights(tmp_path, tiny_backbone):
    arch = dict(tiny_backbone.arch)
    arch_path = tmp_path / "my-arch.json"
    arch_path.write_text(json.dumps(arch))
    weights = tmp_path / "weights.safetensors"
    state = {k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}
    save_file(state, str(weights))
    loaded = load_backbone(str(arch_path), str(weights))
    assert loaded.name == "my-arch"
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    ids = tiny_backbone.tokenizer(["a red star"])
    assert torch.allclose(loaded.model.encode_text(ids), tiny_backbone.model.encode_text(ids))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(BackboneError, match="Unknown model 'ViT-Q-99'"):
        load_backbone("ViT-Q-99")


def test_unknown_tag_and_missing_file(tmp_path):
    with pytest.raises(BackboneError, match="known tags"):
        load_backbone("zscir-tiny", "no-such-tag")
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone("zscir-tiny", str(tmp_path / "missing.safetensors"))
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(str(tmp_path / "missing.json"))


def test_bad_architecture_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(BackboneError, match="open_clip model config"):
        load_backbone(str(bad))


def test_download_failure_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    # Fail fast instead of retrying the network: the hub reads the variable once, at import.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneError, match="--pretrained PATH"):
        load_backbone("ViT-B-32", "openai")
