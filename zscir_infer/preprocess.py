"""Image loading and open_clip's eval preprocessing in Pillow and numpy, bit for bit.

`preprocess_image(img, cfg)` equals `open_clip.image_transform(cfg.image_size, is_train=False, ...)(img)`
(max abs difference 0 in the tests) for a PIL image of any mode, because it makes the same Pillow calls
in the same order as torchvision does on PIL input, then the same float32 arithmetic:
- resize: "shortest" (the default) scales the short side to image_size and the long side to
  int(image_size * long / short) (truncated, as torchvision does), skipped when the size already fits;
  "squash" scales to image_size x image_size; "longest" scales the long side to image_size
  (round(x / ratio)) and pads with fill_color. Pillow resizes with antialiasing, in the image's own
  mode (mode "1" and "P" images are resized nearest, as Pillow does for torchvision too);
  "targetpad" first pads as SEARLE's `TargetPad` does (below), then resizes as "shortest";
- target pad (SEARLE's `targetpad_transform(1.25, size)`, the preprocessing of its validation and test
  submission scripts): an image whose long/short ratio is at least target_ratio r (float64 division)
  gets t = long / r, pad_x = max(int((t - w) / 2), 0), pad_y = max(int((t - h) / 2), 0) (int truncates
  toward zero), pad_x columns of fill_color on both the left and the right and pad_y rows on both the
  top and the bottom, the same `ImageOps.expand` call torchvision's F.pad makes; a ratio below r is
  left as is. Only the short side grows, so a 5:3 picture becomes 5:4 and the center crop keeps the
  middle 4/5 of its width (the clip mode keeps 3/5) with a black band above and below;
- crop: center crop, offsets int(round((h - crop) / 2.0));
- image.convert("RGB"), after the crop as in open_clip's transform (_convert_to_rgb);
- ToTensor then Normalize: (uint8 / 255 - mean) / std in float32, here through a lookup table holding
  exactly those float32 values.

Loading (`load_image`) decides what open_clip leaves to the caller, and both the runtime and the parity
tests apply it before the transform:
- EXIF orientation IS applied by default (`ImageOps.exif_transpose`): phone photos come rotated by a
  tag, and an upright image is what the user sees and means. open_clip never reads the tag, so pass
  exif_transpose=False to feed the stored pixels exactly as a plain `Image.open` + open_clip would.
- every mode becomes RGB with `image.convert("RGB")` (open_clip's _convert_to_rgb; alpha is dropped,
  CMYK converted without ICC), except 16-bit grayscale ("I;16*"), which is scaled to 8 bits first:
  Pillow's convert clips 16-bit values at 255 and would turn such images white.
- more than max_pixels decoded pixels is refused before decoding (decompression bombs).

All of it is pure per image: `load_and_preprocess` is safe to run in a thread pool, and Pillow releases
the GIL while decoding and resizing, so threads scale on the gallery indexer.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from zscir_infer.contract import TARGETPAD, PreprocessConfig
from zscir_infer.errors import ZscirError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own warning limit (about 0.25 GB of RGB pixels)
EXIF_ORIENTATION_TAG = 0x0112
UINT8_MAX = 255
UINT16_TO_UINT8 = 257  # 65535 / 255: the full 16-bit range onto the full 8-bit range
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}  # contract.INTERPOLATIONS

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image


class ImageLoadError(ZscirError, ValueError):
    """An image cannot be read; the message names the source and what to do."""


class ImageTooLargeError(ImageLoadError):
    """An image has more pixels than allowed (a decompression bomb, or a raise of max_pixels is needed)."""


def _decode(fp: BinaryIO | io.BytesIO, name: str, max_pixels: int, exif_transpose: bool) -> Image.Image:
    """Decode an untrusted file into RGB; every failure is an ImageLoadError naming it.

    Pillow's decoders fail on damaged files with many exception types (OSError, ValueError, SyntaxError,
    EOFError, struct.error, ...; the fuzz tests meet them): for an untrusted file any of them means
    "cannot be decoded".
    """
    try:
        image = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name} is too large to decode safely ({exc}); downscale the file.") from exc
    except Exception as exc:
        raise ImageLoadError(f"{name} is not an image Pillow can decode ({exc}); remove or convert it.") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
            "(a decompression bomb guard): downscale the file, or raise max_pixels if you trust it."
        )
    try:
        image.load()
        return _to_rgb(image, exif_transpose)  # a damaged EXIF block fails here
    except Exception as exc:
        raise ImageLoadError(f"{name} could not be decoded ({exc}): the file is truncated or corrupt.") from exc


def _to_rgb(image: Image.Image, exif_transpose: bool) -> Image.Image:
    if exif_transpose and image.getexif().get(EXIF_ORIENTATION_TAG, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.uint32)  # [H, W]
        image = Image.fromarray(((wide + UINT16_TO_UINT8 // 2) // UINT16_TO_UINT8).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(
    source: ImageSource, *, exif_transpose: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """A decoded RGB image from a path, bytes, a binary file or a PIL image (see the module doc)."""
    if isinstance(source, Image.Image):
        return _to_rgb(source, exif_transpose)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(source), f"<{len(source)} bytes>", max_pixels, exif_transpose)
    if isinstance(source, (str, os.PathLike)):
        try:
            fp = open(source, "rb")  # ours to close: Pillow keeps multi-frame files (MPO, GIF) open
        except OSError as exc:
            raise ImageLoadError(f"Image {source} cannot be read: {exc.strerror}.") from exc
        with fp:
            return _decode(fp, str(source), max_pixels, exif_transpose)
    return _decode(source, getattr(source, "name", "<file object>"), max_pixels, exif_transpose)


def _pad(image: Image.Image, ltrb: tuple[int, int, int, int], fill: int) -> Image.Image:
    """torchvision's F.pad on PIL, constant mode (fill parsed per band as its _parse_fill does)."""
    bands = len(image.getbands())
    value = fill if image.mode == "F" else int(fill)
    padded = ImageOps.expand(image, border=ltrb, fill=(value,) * bands if bands > 1 else value)
    if image.mode == "P":
        padded.putpalette(image.getpalette())
    return padded


def _center_crop_or_pad(image: Image.Image, size: int, fill: int) -> Image.Image:
    width, height = image.size
    if size > width or size > height:
        pad_w, pad_h = max(size - width, 0), max(size - height, 0)
        image = _pad(image, (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2), fill)
        width, height = image.size
        if (width, height) == (size, size):
            return image
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def target_pad_sizes(width: int, height: int, target_ratio: float) -> tuple[int, int]:
    """(pad_x, pad_y) of SEARLE's TargetPad: pixels added on EACH of left/right and top/bottom."""
    if max(width, height) / min(width, height) < target_ratio:
        return 0, 0
    padded_short = max(width, height) / target_ratio  # float64, as SEARLE computes it
    return max(int((padded_short - width) / 2), 0), max(int((padded_short - height) / 2), 0)


def _target_pad(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    pad_x, pad_y = target_pad_sizes(*image.size, cfg.target_ratio)
    return _pad(image, (pad_x, pad_y, pad_x, pad_y), cfg.fill_color) if pad_x or pad_y else image


def _resized_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(width, height) after open_clip's resize, with torchvision's and timm's rounding."""
    size = cfg.image_size
    if cfg.resize_mode == "squash":
        return size, size
    if cfg.resize_mode == "longest":  # open_clip ResizeKeepRatio(longest=1)
        ratio = max(height / size, width / size)
        # At least one pixel: open_clip rounds a very thin image's short side to 0 and Pillow refuses it.
        return max(1, round(width / ratio)), max(1, round(height / ratio))
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resize_and_crop(image: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The PIL part of open_clip's eval transform: (target pad,) resize, crop (or pad), convert to RGB."""
    if cfg.resize_mode == TARGETPAD:
        image = _target_pad(image, cfg)
    new_size = _resized_size(*image.size, cfg)
    if new_size != image.size:
        image = image.resize(new_size, RESAMPLE[cfg.interpolation])
    if cfg.resize_mode != "squash":
        image = _center_crop_or_pad(image, cfg.image_size, cfg.fill_color)
    return image if image.mode == "RGB" else image.convert("RGB")


@functools.lru_cache(maxsize=8)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: (v / 255 - mean) / std for every uint8 v, in float32 like ToTensor + Normalize."""
    scaled = np.arange(UINT8_MAX + 1, dtype=np.float32) / np.float32(UINT8_MAX)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    table = (scaled[None, :] - mean32) / std32
    table.setflags(write=False)
    return table


def preprocess_image(image: Image.Image, cfg: PreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """One PIL image (any mode) -> [3, S, S] float32, equal to open_clip's eval transform."""
    pixels = np.asarray(resize_and_crop(image, cfg))  # [S, S, 3] uint8
    table = _normalize_table(cfg.mean, cfg.std)
    if out is None:
        out = np.empty((3, cfg.image_size, cfg.image_size), dtype=np.float32)
    for c in range(3):
        np.take(table[c], pixels[:, :, c], out=out[c])
    return out


def preprocess(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """PIL images -> pixels [B, 3, S, S] float32 for the image encoder."""
    batch = np.empty((len(images), 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    for i, image in enumerate(images):
        preprocess_image(image, cfg, out=batch[i])
    return batch


def load_and_preprocess(
    source: ImageSource,
    cfg: PreprocessConfig,
    *,
    exif_transpose: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode and preprocess one image -> [3, S, S] float32; pure, for thread pools."""
    return preprocess_image(load_image(source, exif_transpose=exif_transpose, max_pixels=max_pixels), cfg)
