"""Inputs for speed measurements: photo-sized JPEGs, captions and modification texts, deterministic.

Speed does not depend on what an image shows, but decoding depends on its pixel count and compressed
size, so the images are photo-sized (a typical COCO/CC3M photo) JPEGs with gradients, shapes and
sensor-like noise rather than tiny flat PNGs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from zscir_infer.atomic import atomic_write_bytes

PHOTO_SIZE = (640, 480)  # COCO's most common size
JPEG_QUALITY = 90
SHAPES_PER_IMAGE = 6
MIN_SHAPE, MAX_SHAPE = 20, 160  # pixels
NOISE_STD = 12.0

DETS = ("a", "the", "two", "an", "this")
ADJS = ("brown", "small", "red", "wooden", "happy", "large", "blue", "young", "striped", "empty")
NOUNS = ("dog", "woman", "car", "table", "bird", "house", "man", "boat", "cake", "street")
VERBS = ("sits", "runs", "stands", "waits", "rests", "is parked", "is shown", "plays")
PREPS = ("on", "next to", "near", "under", "behind", "in front of")
MODIFICATIONS = (
    "make it red", "as a pencil sketch", "show two of them on a beach", "change the background to a forest",
    "the same but at night", "make the car smaller and blue", "as origami", "without the people in the back",
)


def photo(rng: np.random.Generator, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    w, h = size
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * np.linspace(1, 0, h, dtype=np.float32)[:, None, None]
    base = ramp * rng.uniform(0, 255, 3) + rng.normal(0, NOISE_STD, (h, w, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(SHAPES_PER_IMAGE):
        x0, y0 = int(rng.integers(0, w - MIN_SHAPE)), int(rng.integers(0, h - MIN_SHAPE))
        extent = rng.integers(MIN_SHAPE, MAX_SHAPE, 2)
        draw.ellipse((x0, y0, x0 + int(extent[0]), y0 + int(extent[1])),
                     fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


def jpeg_bytes(n: int, seed: int = 0, size: tuple[int, int] = PHOTO_SIZE) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        photo(rng, size).save(buf, format="JPEG", quality=JPEG_QUALITY)
        out.append(buf.getvalue())
    return out


def write_jpegs(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = PHOTO_SIZE) -> list[Path]:
    """n JPEG files in folder (kept if already there: the names carry the seed, size and index)."""
    paths = [folder / f"photo-{seed}-{size[0]}x{size[1]}-{i:05d}.jpg" for i in range(n)]
    if not all(p.is_file() for p in paths):
        for path, data in zip(paths, jpeg_bytes(n, seed, size), strict=True):
            atomic_write_bytes(path, data)
    return paths


def captions(n: int, seed: int = 0) -> list[str]:
    """Caption-like sentences (CC3M length) from a small grammar."""
    rng = np.random.default_rng(seed)
    parts = (DETS, ADJS, NOUNS, VERBS, PREPS, DETS, ADJS, NOUNS)
    return [" ".join(str(rng.choice(words)) for words in parts) for _ in range(n)]


def modification_texts(n: int) -> list[str]:
    return [MODIFICATIONS[i % len(MODIFICATIONS)] for i in range(n)]
