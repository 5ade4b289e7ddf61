"""SEARLE's target-pad preprocessing: the runtime (Pillow/numpy) against SEARLE's own transform, the config
and schema that carry it, and the torch-side transform the PyTorch reference uses.

`SearleTargetPad` and `searle_targetpad_transform` are SEARLE's `src/data_utils.py` (miccunifi/SEARLE),
written out here as their code has them (mean and std hard-coded, fill 0): the oracle the runtime and
zscir's torch side are both checked against.
"""

import json

import jsonschema
import numpy as np
import PIL
import pytest
import torchvision.transforms.functional as FT
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

from tests.test_infer_preprocess import synthetic_image
from zscir_infer.contract import (
    SEARLE_TARGET_RATIO,
    TARGETPAD,
    PreprocessConfig,
    PreprocessConfigError,
    manifest_schema_path,
)
from zscir_infer.preprocess import preprocess_image, target_pad_sizes
from zscir_train.backbone import BackboneError
from zscir_train.targetpad import TargetPad, with_preprocess

SEARLE_MEAN = (0.48145466, 0.4578275, 0.40821073)
SEARLE_STD = (0.26862954, 0.26130258, 0.27577711)
TOLERANCE = 1e-6
RATIOS = (1.24, 1.25, 1.26, 1.33, 1.5, 2.0)
SHORT_SIDES = (37, 101, 224, 333)  # odd pixel counts, below, at and above the crop size


def _convert_image_to_rgb(image):
    return image.convert("RGB")


class SearleTargetPad:
    def __init__(self, target_ratio: float, size: int):
        self.size = size
        self.target_ratio = target_ratio

    def __call__(self, image: PIL.Image.Image) -> PIL.Image.Image:
        w, h = image.size
        actual_ratio = max(w, h) / min(w, h)
        if actual_ratio < self.target_ratio:  # check if the ratio is above or below the target ratio
            return image
        scaled_max_wh = max(w, h) / self.target_ratio  # rescale the pad to match the target ratio
        hp = max(int((scaled_max_wh - w) / 2), 0)
        vp = max(int((scaled_max_wh - h) / 2), 0)
        padding = [hp, vp, hp, vp]
        return FT.pad(image, padding, 0, 'constant')


def searle_targetpad_transform(target_ratio: float, dim: int):
    return Compose([
        SearleTargetPad(target_ratio, dim),
        Resize(dim, interpolation=InterpolationMode.BICUBIC),
        CenterCrop(dim),
        _convert_image_to_rgb,
        ToTensor(),
        Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])


def targetpad_config(size: int, ratio: float = SEARLE_TARGET_RATIO) -> PreprocessConfig:
    return PreprocessConfig(size, SEARLE_MEAN, SEARLE_STD).with_targetpad(ratio)


def sizes_around(ratio: float) -> list[tuple[int, int]]:
    """Landscape and portrait sizes at, just below and just above `ratio`, for several short sides."""
    out = []
    for short in SHORT_SIDES:
        for long in {int(short * ratio) - 1, int(short * ratio), round(short * ratio), int(short * ratio) + 1}:
            out += [(long, short), (short, long)]
    return out


@pytest.mark.parametrize("ratio", RATIOS)
def test_runtime_equals_searles_transform_around_its_ratio(ratio):
    """Images whose own ratio is `ratio` (and its neighbours), through SEARLE's 1.25 target pad."""
    rng = np.random.default_rng(int(ratio * 100))
    for dim in (224, 63):
        cfg, searle = targetpad_config(dim), searle_targetpad_transform(SEARLE_TARGET_RATIO, dim)
        for w, h in sizes_around(ratio):
            image = synthetic_image(rng, w, h, "RGB")
            diff = np.abs(preprocess_image(image, cfg) - searle(image).numpy()).max()
            assert diff <= TOLERANCE, (dim, w, h, diff)


@pytest.mark.parametrize("target_ratio", RATIOS)
def test_runtime_equals_searles_transform_at_other_target_ratios(target_ratio):
    rng = np.random.default_rng(7)
    cfg, searle = targetpad_config(64, target_ratio), searle_targetpad_transform(target_ratio, 64)
    for w, h in [(125, 100), (100, 125), (5, 4), (301, 200), (200, 301), (97, 61), (61, 97), (3, 90), (1, 1),
                 (640, 480), (481, 640), (1201, 900)]:
        for mode in ("RGB", "L", "P", "RGBA"):
            image = synthetic_image(rng, w, h, mode)
            diff = np.abs(preprocess_image(image, cfg) - searle(image).numpy()).max()
            assert diff <= TOLERANCE, (target_ratio, w, h, mode, diff)


def test_pad_sizes_are_searles_on_every_small_size():
    """target_pad_sizes (what a C++ port copies) against the size SEARLE's pad produces, w, h in 1..96."""
    for ratio in RATIOS:
        pad = SearleTargetPad(ratio, 0)
        for w in range(1, 97):
            for h in range(1, 97):
                pad_x, pad_y = target_pad_sizes(w, h, ratio)
                assert pad(Image.new("L", (w, h))).size == (w + 2 * pad_x, h + 2 * pad_y), (ratio, w, h)


def test_pad_sizes_by_hand():
    assert target_pad_sizes(124, 100, 1.25) == (0, 0)  # below the ratio: untouched
    assert target_pad_sizes(125, 100, 1.25) == (0, 0)  # at it: padded by nothing
    assert target_pad_sizes(300, 200, 1.25) == (0, 20)  # t = 240: 20 rows above and 20 below
    assert target_pad_sizes(200, 300, 1.25) == (20, 0)
    assert target_pad_sizes(301, 200, 1.25) == (0, 20)  # t = 240.8: (240.8 - 200) / 2 = 20.4 truncates
    assert target_pad_sizes(400, 300, 1.25) == (0, 10)  # 4:3 -> 400 x 320
    assert target_pad_sizes(500, 300, 1.25) == (0, 50)  # 5:3 -> 500 x 400


def test_pad_is_black_and_centered():
    cfg = PreprocessConfig(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), interpolation="bilinear").with_targetpad(2.0)
    white = Image.new("RGB", (64, 16), (255, 255, 255))  # 4:1 -> t = 32: 8 black rows above and below
    out = preprocess_image(white, cfg)  # 64 x 32 -> 32 x 16 -> center 16 x 16
    assert np.allclose(out[:, :3], 0.0) and np.allclose(out[:, 5:11], 1.0) and np.allclose(out[:, 13:], 0.0)
    assert np.allclose(out, out[:, ::-1])  # symmetric: the pad is split evenly


def test_fill_color_from_the_config_reaches_both_sides():
    cfg = targetpad_config(32).with_targetpad(SEARLE_TARGET_RATIO, fill_color=37)
    torch_side = Compose([TargetPad(SEARLE_TARGET_RATIO, 37), *searle_targetpad_transform(1.25, 32).transforms[1:]])
    image = synthetic_image(np.random.default_rng(8), 90, 45, "RGB")
    assert np.abs(preprocess_image(image, cfg) - torch_side(image).numpy()).max() <= TOLERANCE
    assert np.abs(preprocess_image(image, cfg) - preprocess_image(image, targetpad_config(32))).max() > 0.1


def test_config_round_trip_and_old_manifests_unchanged():
    old = {"image_size": 224, "mean": list(SEARLE_MEAN), "std": list(SEARLE_STD), "interpolation": "bicubic",
           "resize_mode": "shortest", "fill_color": 0, "crop": "center"}
    assert PreprocessConfig.from_dict(old).to_dict() == old  # no target_ratio key appears
    cfg = targetpad_config(224)
    d = cfg.to_dict()
    assert d["resize_mode"] == TARGETPAD and d["target_ratio"] == 1.25 and d["crop"] == "center"
    assert d["fill_color"] == 0 and PreprocessConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert PreprocessConfig.from_dict({**d, "target_ratio": 2}).target_ratio == 2.0
    for bad, message in [
        ({k: v for k, v in d.items() if k != "target_ratio"}, "target_ratio must be a number"),
        ({**d, "target_ratio": 0.8}, ">= 1"),
        ({**d, "target_ratio": float("nan")}, ">= 1"),
        ({**d, "target_ratio": True}, ">= 1"),
        ({**d, "target_ratio": "1.25"}, ">= 1"),
        ({**old, "target_ratio": 1.25}, "applies only to resize_mode 'targetpad'"),
        ({**d, "crop": "none"}, "contradicts"),
    ]:
        with pytest.raises(PreprocessConfigError, match=message):
            PreprocessConfig.from_dict(bad)
    with pytest.raises(PreprocessConfigError, match="shortest-side resize"):
        PreprocessConfig(224, SEARLE_MEAN, SEARLE_STD, resize_mode="squash").with_targetpad()


def test_schema_states_the_mode_and_requires_its_ratio():
    schema = json.loads(manifest_schema_path().read_text())["properties"]["preprocess"]
    validator = jsonschema.Draft202012Validator(schema)
    old = PreprocessConfig(224, SEARLE_MEAN, SEARLE_STD).to_dict()
    new = targetpad_config(224).to_dict()
    assert not list(validator.iter_errors(old)) and not list(validator.iter_errors(new))
    assert not list(validator.iter_errors({"image_size": 224, "mean": [0, 0, 0], "std": [1, 1, 1]}))
    without_ratio = {k: v for k, v in new.items() if k != "target_ratio"}
    for bad in (without_ratio, {**old, "target_ratio": 1.25}, {**new, "target_ratio": 0.5},
                {**new, "resize_mode": "pad"}):
        assert list(validator.iter_errors(bad)), bad
    assert "trunc((t - h) / 2)" in schema["properties"]["resize_mode"]["description"]


def test_torch_reference_transform_is_searles(tiny_backbone):
    """with_preprocess: the backbone's transform (used by TorchReference, validation and golden files)."""
    padded = with_preprocess(tiny_backbone, TARGETPAD)
    assert padded.preprocess == tiny_backbone.preprocess.with_targetpad() and padded.model is tiny_backbone.model
    assert with_preprocess(tiny_backbone, "clip") is tiny_backbone
    size = padded.preprocess.image_size
    searle = searle_targetpad_transform(SEARLE_TARGET_RATIO, size)
    rng = np.random.default_rng(9)
    for w, h in [(150, 100), (100, 150), (133, 100), (126, 100), (124, 100), (201, 100), (31, 47)]:
        image = synthetic_image(rng, w, h, "RGB")
        torch_side = padded.transform(image).numpy()
        assert np.abs(torch_side - searle(image).numpy()).max() <= TOLERANCE, (w, h)
        assert np.abs(torch_side - preprocess_image(image, padded.preprocess)).max() <= TOLERANCE, (w, h)
    with pytest.raises(BackboneError, match="one of"):
        with_preprocess(tiny_backbone, "letterbox")
    with pytest.raises(BackboneError, match="already"):
        with_preprocess(padded, TARGETPAD)
