"""`zscir-export --method sum --model HF_FOLDER`: a bundle from a Hugging Face CLIP folder, whose runtime
features equal `transformers`' own (<= 1e-5) and whose default query is BGE-VL's sum."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402
from zscir_export.cli import app  # noqa: E402
from zscir_export.model_source import ExportSourceError, resolve_source  # noqa: E402

from tests.test_train_hf_clip import TEXTS, _features, _image, save_random_hf_clip  # noqa: E402
from zscir_infer import Runtime  # noqa: E402
from zscir_infer.runtime import normalize  # noqa: E402
from zscir_train.hf_clip import HFClipError  # noqa: E402

PARITY = 1e-5


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return save_random_hf_clip(tmp_path_factory.mktemp("hf") / "tiny-hf-clip", seed=3)


@pytest.fixture(scope="module")
def sum_bundle(hf_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "hf-sum"
    result = CliRunner().invoke(app, ["--method", "sum", "--model", str(hf_folder), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_the_manifest_records_the_sum_method_and_the_hf_source(sum_bundle, hf_folder):
    manifest = json.loads((sum_bundle / "manifest.json").read_text())
    assert manifest["method"] == "sum" and manifest["templates"]["default"] == "{caption}"
    assert manifest["backbone"]["name"] == "tiny-hf-clip"  # the folder's name, no machine path
    assert manifest["backbone"]["pretrained"] == "model.safetensors"
    assert manifest["backbone"]["huggingface"]["config_sha256"] == \
        __import__("hashlib").sha256((hf_folder / "config.json").read_bytes()).hexdigest()
    assert "sum" in manifest["golden"]["methods"]
    assert not any(g["fp32"]["normalized_output"] for g in manifest["graphs"].values())  # raw features
    assert Runtime(sum_bundle).default_method == "sum"


@pytest.mark.filterwarnings("ignore:Text .* is longer than 77 CLIP tokens")
def test_runtime_features_and_queries_equal_transformers(sum_bundle, hf_folder):
    model = transformers.CLIPModel.from_pretrained(hf_folder).eval()
    hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(hf_folder)
    rt = Runtime(sum_bundle)
    images = [_image(seed=i) for i in range(len(TEXTS))]
    pixels = rt.preprocess(images)
    hf_ids = hf_tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hf_img = _features(model.get_image_features(pixel_values=torch.from_numpy(pixels))).numpy()
        hf_txt = _features(model.get_text_features(input_ids=hf_ids)).numpy()
    assert np.abs(rt.image_features(pixels) - hf_img).max() <= PARITY
    assert np.abs(rt.text_features(TEXTS) - hf_txt).max() <= PARITY
    queries = list(zip(images, TEXTS, strict=True))
    # BGE-VL's query: normalize(get_image_features + get_text_features)
    bge = hf_img + hf_txt
    bge /= np.linalg.norm(bge, axis=1, keepdims=True)
    assert np.abs(rt.encode_queries(queries) - bge).max() <= PARITY  # the bundle's default: sum
    assert np.abs(rt.encode_queries(queries, method="image") - normalize(hf_img)).max() <= PARITY
    assert np.abs(rt.encode_queries(queries, method="text") - normalize(hf_txt)).max() <= PARITY
    # sum of raw features is not the average of unit ones (the norms differ): the raw outputs matter
    assert np.abs(rt.encode_queries(queries, method="average") - bge).max() > 1e-3


def test_the_bundle_tokenizer_gives_the_checkpoint_tokenizer_ids(sum_bundle, hf_folder):
    hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(hf_folder)
    ids = Runtime(sum_bundle).tokenizer.encode(TEXTS)
    hf_ids = hf_tokenizer(TEXTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    for ours, theirs in zip(ids, hf_ids, strict=True):
        eot = int(np.argmax(ours))
        assert list(ours[: eot + 1]) == theirs[: eot + 1]


def test_a_folder_with_another_vocabulary_is_refused(hf_folder, tmp_path):
    folder = Path(shutil.copytree(hf_folder, tmp_path / "other-vocab"))
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["vocab"]["zzz</w>"] = data["model"]["vocab"].pop("cat</w>")
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(HFClipError, match="vocabulary is not OpenAI CLIP's"):
        resolve_source(None, str(folder), method="sum")


def test_sum_source_errors_are_clear(hf_folder, tiny_lincir_ckpt):
    with pytest.raises(ExportSourceError, match="--method sum needs --model"):
        resolve_source(None, None, method="sum")
    with pytest.raises(ExportSourceError, match="--method sum exports no phi"):
        resolve_source(tiny_lincir_ckpt, method="sum")
    assert resolve_source(None, str(hf_folder), method="slerp").method == "slerp"  # the slerp bundle of it
