"""OpenAI weights run with QuickGELU (issue 13): the `openai` tag, OpenAI-format files, TAT tuned from them,
the presets and the README's paths; a forced mismatch warns. No network: open_clip's download is pointed at
a local OpenAI-format state dict."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zscir_infer.contract import GELU, QUICK_GELU
from zscir_train.backbone import (
    ActivationMismatchWarning,
    choose_activation,
    load_backbone,
    weights_activation,
)

PRESETS = Path(__file__).parents[1] / "zscir_train" / "training" / "presets"
SAME = 1e-5  # the tag's model against a -quickgelu model holding the same weights
OPENAI_EXTRAS = {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
                 "vocab_size": torch.tensor(49408)}


@pytest.fixture(scope="module")
def openai_b32(tmp_path_factory):
    """A random ViT-B-32 in OpenAI's key layout (what open_clip's `openai` tag downloads), as a local file."""
    import open_clip

    with torch.random.fork_rng():
        torch.manual_seed(13)
        model = open_clip.create_model("ViT-B-32-quickgelu")
    path = tmp_path_factory.mktemp("openai") / "ViT-B-32.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def offline_openai(monkeypatch, openai_b32):
    """open_clip's `openai` download answered by the local file (factory imports download_pretrained)."""
    from open_clip import factory

    calls = []

    def download(cfg, *args, **kwargs):
        calls.append(cfg)
        return str(openai_b32)

    monkeypatch.setattr(factory, "download_pretrained", download)
    return calls


def _features(backbone):
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 224, 224)
    ids = backbone.tokenizer(["a photo of a dog", "a photo of $ that is made of origami", ""])
    with torch.no_grad():
        return backbone.model.encode_image(pixels), backbone.model.encode_text(ids)


def test_openai_tag_builds_quick_gelu_and_equals_the_quickgelu_config(offline_openai, openai_b32):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither open_clip's mismatch warning nor ours
        tagged = load_backbone("ViT-B-32", "openai")
    assert offline_openai, "the openai tag must go through open_clip's download"
    assert tagged.activation == QUICK_GELU and tagged.arch["quick_gelu"] is True
    quick = load_backbone("ViT-B-32-quickgelu", str(openai_b32))  # the config says QuickGELU
    gelu = load_backbone("ViT-B-32", str(openai_b32))  # a plain state dict: the config (GELU) decides
    assert (quick.activation, gelu.activation) == (QUICK_GELU, GELU)
    for got, want, other in zip(_features(tagged), _features(quick), _features(gelu), strict=True):
        assert (got - want).abs().max().item() <= SAME
        assert (got - other).abs().max().item() > 1e-3  # GELU is a different model on the same weights


def test_forcing_gelu_on_openai_weights_warns_naming_both(offline_openai):
    with pytest.warns(ActivationMismatchWarning, match="trained with quick_gelu.*built with gelu"):
        forced = load_backbone("ViT-B-32", "openai", activation="gelu")
    assert forced.activation == GELU and not forced.arch.get("quick_gelu", False)


def test_openai_format_files_are_recognised(tmp_path, tiny_backbone):
    """OpenAI's TorchScript download and a state dict with OpenAI's extras get QuickGELU and load."""
    model = tiny_backbone.model
    pixels, ids = torch.randn(1, 3, 32, 32), tiny_backbone.tokenizer(["a red star"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's and torch.jit's deprecation notes
        traced = torch.jit.trace(model, (pixels, ids), strict=False)
        torchscript = tmp_path / "tiny-openai.pt"
        torch.jit.save(traced, str(torchscript))
    with_extras = tmp_path / "tiny-openai-state.pt"
    torch.save({**model.state_dict(), **OPENAI_EXTRAS}, with_extras)
    plain = tmp_path / "tiny-plain.pt"
    torch.save(model.state_dict(), plain)
    assert weights_activation("zscir-tiny", str(plain)) is None
    for path in (torchscript, with_extras):
        assert weights_activation("zscir-tiny", str(path)) == QUICK_GELU
        loaded = load_backbone("zscir-tiny", str(path))
        assert loaded.activation == QUICK_GELU
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[key], value), key
    assert load_backbone("zscir-tiny", str(plain)).activation == GELU


def test_a_tat_checkpoint_of_openai_weights_keeps_quick_gelu(tmp_path, tiny_backbone):
    path = tmp_path / "tat.safetensors"
    meta = {"format": "zscir-tat", "base": "ViT-L-14", "base_pretrained": "openai"}
    save_file({"x": torch.zeros(1)}, str(path), metadata={"zscir": json.dumps(meta)})
    assert weights_activation("ViT-L-14", str(path)) == QUICK_GELU
    meta["base_pretrained"] = "laion2b_s32b_b82k"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"zscir": json.dumps(meta)})
    assert weights_activation("ViT-L-14", str(path)) is None  # GELU-trained tag: the config decides


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS.glob("*.json")))
def test_presets_get_the_activation_of_their_weights(preset):
    cfg = json.loads((PRESETS / preset).read_text())["config"]
    want = QUICK_GELU if cfg["pretrained"] == "openai" else GELU
    assert choose_activation(cfg["model"], cfg["pretrained"]) == want
    if preset.endswith("vit-l-14.json"):  # lincir/pic2word/tat-vit-l-14: the papers' ViT-L/14 openai
        assert want == QUICK_GELU


@pytest.mark.parametrize("model", ["ViT-L-14", "ViT-B-32", "RN50"])
def test_readme_and_export_help_paths_get_quick_gelu(model):
    # `zscir-export --model ViT-L-14 --pretrained openai`, `load_backbone("ViT-L-14", "openai")`
    assert choose_activation(model, "openai") == QUICK_GELU
    assert choose_activation(f"{model}-quickgelu", "openai") == QUICK_GELU


def test_exporting_an_official_phi_with_the_openai_tag_records_quick_gelu(offline_openai, tmp_path):
    from zscir_export.bundle import _backbone_entry
    from zscir_export.model_source import resolve_source

    from zscir_train.phi import build_phi

    phi = build_phi("lincir", 512, 512)
    ckpt = tmp_path / "lincir_vitb32.pt"
    torch.save({"epoch": 1, "Phi": phi.state_dict()}, ckpt)
    source = resolve_source(ckpt, "ViT-B-32", "openai", "searle")
    assert source.backbone.activation == QUICK_GELU
    assert source.info["kind"] == "official-searle"
    assert _backbone_entry(source.backbone)["activation"] == QUICK_GELU


def test_an_unknown_activation_is_refused():
    from zscir_train.backbone import BackboneError

    with pytest.raises(BackboneError, match="Unknown activation"):
        load_backbone("zscir-tiny", activation="relu")
