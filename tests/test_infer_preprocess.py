"""Pillow/numpy preprocessing against open_clip's eval transform, and image loading."""

import io
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import pytest
from PIL import Image, ImageOps

from zscir_infer.contract import PreprocessConfig, PreprocessConfigError
from zscir_infer.preprocess import (
    ImageLoadError,
    ImageTooLargeError,
    load_and_preprocess,
    load_image,
    preprocess,
    preprocess_image,
)

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
TOLERANCE = 1e-6
MODES = ["RGB", "L", "P", "RGBA", "LA", "CMYK", "I;16", "F", "1", "I", "YCbCr", "PA"]
SIZES = [(1, 1), (3, 500), (500, 3), (224, 224), (455, 448), (640, 480), (224, 227)]  # odd crop margins too
EXIF_ROTATE_90_CW = 6  # the tag a phone writes for a portrait shot held upright


def synthetic_rgb(rng, width: int, height: int) -> np.ndarray:
    """[H, W, 3] uint8: gradients, a few flat rectangles and noise, so every resampling path matters."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    img = np.stack([x, y, (x + y) % 256], -1)  # [H, W, 3]
    for _ in range(4):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        img[y0 : y0 + rng.integers(1, height + 1), x0 : x0 + rng.integers(1, width + 1)] = rng.integers(0, 256, 3)
    img += rng.integers(-24, 25, img.shape, dtype=np.int8)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_image(rng, width: int, height: int, mode: str) -> Image.Image:
    rgb = Image.fromarray(synthetic_rgb(rng, width, height))
    if mode == "I;16":
        wide = np.asarray(rgb.convert("L"), dtype=np.int64) * 257 + rng.integers(0, 257, (height, width))
        return Image.fromarray(np.clip(wide, 0, 65535).astype(np.uint16))
    if mode == "F":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.float32) * 1.3 - 20.5)
    if mode == "I":
        return Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.int32) * 3 - 100)
    if mode in ("P", "PA"):
        palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        return palette if mode == "P" else palette.convert("PA")
    return rgb.convert(mode)


def open_clip_transform(cfg: PreprocessConfig):
    return open_clip.image_transform(
        cfg.image_size, is_train=False, mean=cfg.mean, std=cfg.std, resize_mode=cfg.resize_mode,
        interpolation=cfg.interpolation, fill_color=cfg.fill_color,
    )


def max_diff(image: Image.Image, cfg: PreprocessConfig, transform) -> float:
    ours = preprocess_image(image, cfg)
    assert ours.dtype == np.float32 and ours.shape == (3, cfg.image_size, cfg.image_size)
    return float(np.abs(ours - transform(image).numpy()).max())


def test_shortest_side_matches_open_clip_on_every_mode_and_shape():
    rng = np.random.default_rng(0)
    cfg = PreprocessConfig(224, MEAN, STD)
    transform = open_clip_transform(cfg)
    images = [synthetic_image(rng, w, h, mode) for w, h in SIZES for mode in MODES]
    images += [synthetic_image(rng, 4000, 3000, "RGB"), synthetic_image(rng, 3000, 4000, "L")]
    assert len(images) >= 50
    diffs = {(im.size, im.mode): max_diff(im, cfg, transform) for im in images}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOLERANCE, f"{worst}: {diffs[worst]}"


@pytest.mark.parametrize("resize_mode", ["squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_other_resize_modes_match_open_clip(resize_mode, interpolation):
    rng = np.random.default_rng(1)
    cfg = PreprocessConfig(64, MEAN, STD, interpolation, resize_mode, fill_color=37)
    transform = open_clip_transform(cfg)
    for w, h in [(1, 1), (3, 90), (90, 3), (64, 64), (65, 63), (200, 120), (120, 50), (31, 47)]:
        for mode in ["RGB", "L", "P", "RGBA", "I;16", "F"]:
            image = synthetic_image(rng, w, h, mode)
            assert max_diff(image, cfg, transform) <= TOLERANCE, (w, h, mode)


def test_longest_pads_with_fill_color():
    cfg = PreprocessConfig(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resize_mode="longest", fill_color=51)
    out = preprocess_image(Image.new("RGB", (16, 4), (255, 255, 255)), cfg)  # -> 8x2, padded 3 above and below
    assert np.allclose(out[:, :3], 51 / 255) and np.allclose(out[:, 3:5], 1.0) and np.allclose(out[:, 5:], 51 / 255)


def test_batch_and_backbone_config(tiny_backbone):
    cfg = PreprocessConfig.from_dict(tiny_backbone.preprocess.to_dict())
    rng = np.random.default_rng(2)
    images = [synthetic_image(rng, w, h, "RGB") for w, h in [(40, 30), (32, 32), (17, 90)]]
    batch = preprocess(images, cfg)
    assert batch.shape == (3, 3, cfg.image_size, cfg.image_size) and batch.dtype == np.float32
    reference = np.stack([tiny_backbone.transform(im).numpy() for im in images])
    assert np.abs(batch - reference).max() <= TOLERANCE
    assert np.array_equal(batch[1], preprocess_image(images[1], cfg))


def test_config_round_trip_and_errors():
    cfg = PreprocessConfig(224, MEAN, STD, resize_mode="squash")
    d = cfg.to_dict()
    assert d["crop"] == "none" and isinstance(d["mean"], list)
    assert PreprocessConfig.from_dict(d) == cfg
    for bad, message in [
        ({**d, "interpolation": "lanczos"}, "interpolation"),
        ({**d, "resize_mode": "crop"}, "resize_mode"),
        ({**d, "mean": [0.5, 0.5]}, "mean"),
        ({**d, "std": [1.0, 0.0, 1.0]}, "std"),
        ({**d, "image_size": 0}, "image_size"),
        ({**d, "crop": "center"}, "contradicts"),
        ({**d, "size": 224}, "unknown keys"),
        ({"mean": MEAN, "std": STD}, "lacks"),
    ]:
        with pytest.raises(PreprocessConfigError, match=message):
            PreprocessConfig.from_dict(bad)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode,fmt", [("RGB", "JPEG"), ("L", "PNG"), ("P", "GIF"), ("RGBA", "PNG"), ("LA", "PNG"), ("CMYK", "TIFF"),
                 ("1", "BMP"), ("RGB", "WEBP"), ("F", "TIFF"), ("I;16", "PNG")],
)
def test_load_image_gives_rgb_and_matches_open_clip_after_loading(tmp_path, mode, fmt):
    rng = np.random.default_rng(3)
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(_encode(synthetic_image(rng, 120, 90, mode), fmt))
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (120, 90)
    opened = Image.open(path)
    if mode != "I;16":  # open_clip's own conversion, then the same pixels
        assert np.array_equal(np.asarray(image), np.asarray(opened.convert("RGB")))
    cfg = PreprocessConfig(64, MEAN, STD)
    assert np.abs(load_and_preprocess(path, cfg) - open_clip_transform(cfg)(load_image(path)).numpy()).max() <= TOLERANCE


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128, 257, 32896, 65279, 65535]], dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(load_image(path))
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 128, 254, 255] and (rgb == rgb[..., :1]).all()


def test_exif_orientation_applied_by_default(tmp_path):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)  # left half red, right half blue, as stored
    pixels[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = EXIF_ROTATE_90_CW
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    upright = load_image(path)
    assert upright.size == (40, 60)  # rotated: width and height swap
    top, bottom = np.asarray(upright)[5, 20], np.asarray(upright)[55, 20]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red now on top, blue below
    assert np.array_equal(np.asarray(upright), np.asarray(ImageOps.exif_transpose(Image.open(path))))
    stored = load_image(path, exif_transpose=False)
    assert stored.size == (60, 40) and np.array_equal(np.asarray(stored), np.asarray(Image.open(path).convert("RGB")))


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but holds almost no data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    with pytest.raises(ImageTooLargeError, match="too large"):  # over Pillow's hard limit
        load_image(_png_header_claiming(30_000, 30_000))
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageTooLargeError, match="max_pixels"):
        load_image(_png_header_claiming(10_000, 10_000))
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(ImageTooLargeError, match="100x100 = 10,000 pixels"):
        load_image(small, max_pixels=5_000)
    assert load_image(small, max_pixels=10_000).size == (100, 100)


def test_unreadable_images_give_actionable_errors(tmp_path):
    with pytest.raises(ImageLoadError, match="missing.jpg cannot be read"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="not an image Pillow can decode"):
        load_image(b"certainly not an image")
    jpeg = _encode(synthetic_image(np.random.default_rng(4), 200, 200, "RGB"), "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageLoadError, match="truncated.jpg could not be decoded"):
        load_image(truncated)


def test_thread_pool_gives_the_serial_result(tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(synthetic_rgb(rng, int(rng.integers(50, 400)), int(rng.integers(50, 400)))).save(paths[-1])
    cfg = PreprocessConfig(96, MEAN, STD)
    serial = np.stack([load_and_preprocess(p, cfg) for p in paths])
    with ThreadPoolExecutor(4) as pool:
        parallel = np.stack(list(pool.map(lambda p: load_and_preprocess(p, cfg), paths)))
    assert np.array_equal(serial, parallel)


def test_runtime_preprocess_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; sys.modules['open_clip'] = None; import zscir_infer.preprocess"
    subprocess.run([sys.executable, "-c", code], check=True)
