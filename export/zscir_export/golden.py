"""Golden files: inputs and PyTorch outputs the runtime's tests (and any port) check themselves against.

`golden/golden.json` lists, relative to itself:
- `images` (PNG, varied sizes and modes; image 3 is portrait) and `texts` (one modification text per
  image; query i is (images[i], texts[i]));
- `image_features` / `text_features`: unnormalized PyTorch features of the images and raw texts;
- `methods`: `TorchReference.encode_queries` for each method the bundle serves (phi with the bundle's
  default template, slerp with its alpha, and the image / text / average baselines), normalized;
- `graphs`: per graph, the validation inputs and the PyTorch outputs (`.npy`), so a runtime can check
  each ONNX graph without torch;
- `sha256`: every file above.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from zscir_infer.atomic import atomic_path, atomic_write_json
from zscir_infer.contract import sha256_file
from zscir_train.reference import TorchReference

GOLDEN_DIR = "golden"
GOLDEN_FILE = "golden.json"
GOLDEN_SEED = 1234
GOLDEN_TEXTS = (
    "is red",
    "as an origami sketch",
    "with two of them, much larger, on a striped background",
    "🎉 café &amp; <b>neon</b>  lights at night",
    "",
)
# (width, height, mode): varied sizes, a portrait one at index 3, grey and transparent ones.
GOLDEN_IMAGE_SHAPES = ((64, 48, "RGB"), (200, 120, "RGB"), (33, 57, "L"), (96, 160, "RGB"), (80, 80, "RGBA"))


def sample_images() -> list[Image.Image]:
    """Deterministic synthetic pictures: gradients, shapes and texture (real-looking enough to be non-trivial)."""
    rng = np.random.default_rng(GOLDEN_SEED)
    images = []
    for width, height, mode in GOLDEN_IMAGE_SHAPES:
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 255  # [H, W, 3]
        base = base * rng.uniform(0.4, 1.0, 3) + rng.normal(0, 12, (height, width, 3))
        image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.integers(0, width - 4), rng.integers(0, height - 4)
            box = (x0, y0, x0 + rng.integers(4, max(5, width // 2)), y0 + rng.integers(4, max(5, height // 2)))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        if mode == "RGBA":
            alpha = Image.fromarray((255 * (x / width)).astype(np.uint8), "L")
            image = image.convert("RGBA")
            image.putalpha(alpha)
        images.append(image.convert(mode))
    return images


def _save_npy(directory: Path, name: str, array: np.ndarray, hashes: dict) -> str:
    with atomic_path(directory / name) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))
    hashes[name] = sha256_file(directory / name)
    return name


def write_golden(bundle_dir: Path, reference: TorchReference, methods: tuple[str, ...],
                 graph_feeds: dict[str, dict[str, np.ndarray]],
                 graph_outputs: dict[str, dict[str, np.ndarray]]) -> dict:
    """Write `golden/` into the bundle; return the manifest's `golden` entry."""
    directory = bundle_dir / GOLDEN_DIR
    directory.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    images = sample_images()
    names = []
    for i, image in enumerate(images):
        name = f"image_{i}.png"
        with atomic_path(directory / name) as tmp:
            image.save(tmp, format="PNG")
        hashes[name] = sha256_file(directory / name)
        names.append(name)
    texts = list(GOLDEN_TEXTS[:len(images)])
    queries = list(zip(images, texts, strict=True))
    golden = {
        "format": "zscir-golden",
        "images": names,
        "texts": texts,
        "template": reference.template,
        "slerp_alpha": reference.alpha,
        "image_features": _save_npy(directory, "image_features.npy", reference.image_features(images).numpy(), hashes),
        "text_features": _save_npy(directory, "text_features.npy", reference.text_features(texts).numpy(), hashes),
        "methods": {m: _save_npy(directory, f"query_{m}.npy", reference.encode_queries(queries, method=m), hashes)
                    for m in methods},
        "graphs": {
            graph: {
                "inputs": {n: _save_npy(directory, f"{graph}.{n}.npy", a, hashes) for n, a in feeds.items()},
                "outputs": {n: _save_npy(directory, f"{graph}.{n}.npy", a, hashes)
                            for n, a in graph_outputs[graph].items()},
            }
            for graph, feeds in graph_feeds.items()
        },
    }
    golden["sha256"] = hashes
    atomic_write_json(directory / GOLDEN_FILE, golden)
    return {"file": f"{GOLDEN_DIR}/{GOLDEN_FILE}", "sha256": sha256_file(directory / GOLDEN_FILE),
            "methods": list(methods)}
