"""Hugging Face CLIP checkpoints through `load_backbone` (zscir_train.hf_clip), held to `transformers` itself.

A random `transformers.CLIPModel` of a small config is saved with `save_pretrained` (plus a CLIP tokenizer
built from open_clip's vocabulary and a CLIPImageProcessor), loaded by zscir without transformers, and its
image and text features compared with `get_image_features` / `get_text_features` (<= 1e-5). transformers is
a test dependency only; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from zscir_train.backbone import load_backbone  # noqa: E402
from zscir_train.hf_clip import MODELS_ENV, HFClipError, resolve_preset  # noqa: E402

PARITY = 1e-5
# (HTML entities aside: open_clip unescapes "&amp;", the Hugging Face tokenizer does not; see zscir_train.hf_clip)
TEXTS = ["a photo of a cat", "make it red and much LARGER!", "", "🎉 café  neon-lights, at 9pm <b>", "x " * 120]
SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def _features(out) -> torch.Tensor:
    """transformers 5 returns a model output with the projected pooler_output; 4.x a tensor."""
    return getattr(out, "pooler_output", out)


def write_clip_tokenizer(folder: Path) -> None:
    """OpenAI CLIP's BPE (open_clip's vocabulary) as a Hugging Face CLIPTokenizer in `folder`."""
    from open_clip.tokenizer import SimpleTokenizer

    clip = SimpleTokenizer()
    vocab = {SPECIALS.get(token, token): i for token, i in clip.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(clip.bpe_ranks, key=clip.bpe_ranks.__getitem__)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)


def save_random_hf_clip(folder: Path, hidden_act: str = "quick_gelu", eos_token_id: int = 2, seed: int = 0,
                        resample: int = 3, mean=None, std=None, bin_weights: bool = False) -> Path:
    """A random CLIPModel (ViT 64 x 2 layers at 32 px, text 32 x 2 layers, D=24), tokenizer and processor."""
    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": hidden_act,
                     "eos_token_id": eos_token_id},
        vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8, "hidden_act": hidden_act},
        projection_dim=24)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.CLIPModel(config).eval()
        with torch.no_grad():  # a non-default logit scale, so its mapping is checked too
            model.logit_scale.fill_(3.1)
    model.save_pretrained(folder)
    if bin_weights:
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    write_clip_tokenizer(folder)
    processor = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "resample": resample}
    if mean is not None:
        processor |= {"image_mean": mean, "image_std": std}
    transformers.CLIPImageProcessor(**processor).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return save_random_hf_clip(tmp_path_factory.mktemp("hf") / "tiny-hf-clip")


@pytest.fixture(scope="module")
def hf_model(hf_folder):
    return transformers.CLIPModel.from_pretrained(hf_folder).eval()


def _image(shape=(40, 56), seed=0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8))


def _compare(backbone, model, folder: Path) -> tuple[float, float]:
    """Max abs difference of image and text features: zscir's open_clip model against transformers'."""
    pixels = torch.stack([backbone.transform(_image(seed=i)) for i in range(3)])
    hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    hf_ids = hf_tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    ids = backbone.tokenizer(TEXTS)
    for row, (ours, theirs) in enumerate(zip(ids, hf_ids, strict=True)):  # same ids up to end-of-text
        eot = int(ours.argmax())
        assert ours[: eot + 1].tolist() == theirs[: eot + 1].tolist(), TEXTS[row]
    with torch.no_grad():
        image = (backbone.model.encode_image(pixels) - _features(model.get_image_features(pixel_values=pixels))).abs()
        text = (backbone.model.encode_text(ids) - _features(model.get_text_features(input_ids=hf_ids))).abs()
    return float(image.max()), float(text.max())


def test_features_equal_transformers(hf_folder, hf_model):
    backbone = load_backbone(str(hf_folder))
    image, text = _compare(backbone, hf_model, hf_folder)
    assert image <= PARITY and text <= PARITY, (image, text)
    assert (backbone.embed_dim, backbone.width, backbone.context_length) == (24, 32, 77)
    assert backbone.activation == "quick_gelu" and backbone.arch["quick_gelu"] is True
    assert float(backbone.model.logit_scale) == pytest.approx(3.1)
    assert backbone.pretrained == str(hf_folder / "model.safetensors")
    assert backbone.huggingface["folder"] == "tiny-hf-clip" and len(backbone.huggingface["weights_sha256"]) == 64


def test_gelu_new_eos_and_bin_weights_equal_transformers(tmp_path):
    """Exact GELU, a config with eos_token_id 49407 (first-EOS pooling), weights as pytorch_model.bin."""
    folder = save_random_hf_clip(tmp_path / "gelu", hidden_act="gelu", eos_token_id=49407, seed=1, bin_weights=True)
    backbone = load_backbone(str(folder))
    assert backbone.activation == "gelu" and backbone.pretrained.endswith("pytorch_model.bin")
    image, text = _compare(backbone, transformers.CLIPModel.from_pretrained(folder).eval(), folder)
    assert image <= PARITY and text <= PARITY, (image, text)


def test_preprocessing_comes_from_the_folder(tmp_path):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    folder = save_random_hf_clip(tmp_path / "pp", resample=2, mean=mean, std=std)
    pp = load_backbone(str(folder)).preprocess
    assert (pp.image_size, pp.interpolation, pp.resize_mode) == (32, "bilinear", "shortest")
    assert pp.mean == pytest.approx(mean) and pp.std == pytest.approx(std)


def test_pixels_match_the_clip_image_processor_up_to_rounding(hf_folder):
    """Same resize, crop and normalization as CLIPImageProcessor: within one 8-bit level (transformers
    resamples without rounding to 8 bits) where both crops start at the same offset."""
    backbone = load_backbone(str(hf_folder))
    processor = transformers.CLIPImageProcessor.from_pretrained(hf_folder)
    level = 1 / 255 / min(backbone.preprocess.std) + 1e-4
    for shape in ((40, 56), (64, 64), (48, 33)):  # long side - 32 after the resize: 12, 0, 0
        image = _image(shape)
        ours = backbone.transform(image)[None]
        theirs = processor(images=image, return_tensors="pt")["pixel_values"]
        assert float((ours - theirs).abs().max()) <= level, shape


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _copy(hf_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(hf_folder, tmp_path / "copy"))


def _swap_vocab(data: dict) -> None:
    vocab = data["model"]["vocab"]
    vocab["cat</w>"], vocab["dog</w>"] = vocab["dog</w>"], vocab["cat</w>"]


@pytest.mark.parametrize(("file", "edit", "message"), [
    ("tokenizer.json", _swap_vocab, "tokenizer.json: the tokenizer's vocabulary is not OpenAI CLIP's"),
    ("tokenizer.json", lambda d: d["model"]["merges"].reverse(), "BPE merges differ"),
    ("config.json", lambda d: d["text_config"].update(hidden_act="gelu_new"), "hidden_act 'gelu_new'"),
    ("config.json", lambda d: d["vision_config"].update(hidden_act="gelu"), "differs from vision hidden_act"),
    ("config.json", lambda d: d["text_config"].update(eos_token_id=7), "eos_token_id 7"),
    ("config.json", lambda d: d.update(model_type="siglip"), "model_type 'siglip'"),
    ("preprocessor_config.json", lambda d: d.update(crop_size={"height": 28, "width": 28}), "must be equal"),
    ("preprocessor_config.json", lambda d: d.update(resample=0), "resample 0"),
])
def test_what_does_not_map_is_refused_naming_the_file(hf_folder, tmp_path, file, edit, message):
    folder = _copy(hf_folder, tmp_path)
    _edit_json(folder / file, edit)
    with pytest.raises(HFClipError, match=message):
        load_backbone(str(folder))


def test_unknown_or_missing_weights_are_refused(hf_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(hf_folder, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    save_file({**state, "extra_head.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(HFClipError, match="extra_head.weight"):
        load_backbone(str(folder))
    del state["text_model.final_layer_norm.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(HFClipError, match="lacks the CLIPModel weight 'text_model.final_layer_norm.bias'"):
        load_backbone(str(folder))
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(HFClipError, match="no preprocessor_config.json"):
        load_backbone(str(folder))


class _RunsCode:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_bin_with_code_is_never_executed(hf_folder, tmp_path, capsys):
    folder = _copy(hf_folder, tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"x": _RunsCode()}, folder / "pytorch_model.bin")
    with pytest.raises(HFClipError, match="weights_only"):
        load_backbone(str(folder))
    assert "code ran" not in capsys.readouterr().out


def test_presets_resolve_local_folders_only(hf_folder, tmp_path, monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(HFClipError, match="huggingface-cli download BAAI/BGE-VL-base"):
        load_backbone("bge-vl-base")
    # a hub cache: models--BAAI--BGE-VL-large/snapshots/<rev>, refs/main naming the revision
    repo = tmp_path / "cache" / "models--BAAI--BGE-VL-large"
    shutil.copytree(hf_folder, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    backbone = load_backbone("bge-vl-large")
    assert backbone.name == "bge-vl-large" and backbone.huggingface["hub_id"] == "BAAI/BGE-VL-large"
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "models"))
    shutil.copytree(hf_folder, tmp_path / "models" / "BGE-VL-base")
    assert resolve_preset("bge-vl-base") == tmp_path / "models" / "BGE-VL-base"


def test_open_clip_weights_of_the_same_architecture_load_over_the_folder(hf_folder, tmp_path):
    """A checkpoint tuned from the folder (open_clip keys, e.g. TAT or the sum fine-tune) round-trips."""
    from safetensors.torch import save_file

    base = load_backbone(str(hf_folder))
    state = {k: (v + 0.01 if k == "text_projection" else v).contiguous() for k, v in base.model.state_dict().items()}
    save_file(state, str(tmp_path / "tuned.safetensors"))
    tuned = load_backbone(str(hf_folder), str(tmp_path / "tuned.safetensors"))
    assert torch.equal(tuned.model.text_projection, state["text_projection"])
    assert tuned.pretrained == str(tmp_path / "tuned.safetensors")
