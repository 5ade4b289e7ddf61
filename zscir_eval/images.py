"""Images the benchmarks name: where they live, how they are cropped, and which are missing.

An `ImageRef` is one image as a benchmark uses it: a stable key (the dataset's own image name or id,
plus the crop for GeneCIS attribute images), the file it is read from, and an optional box. Files are
decoded by the runtime's loader (`zscir_infer.preprocess.load_image`: 16-bit scaling, decompression-bomb
guard, EXIF orientation), so a benchmark sees an image exactly as `zscir-infer` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from zscir_infer.preprocess import load_image

# GeneCIS attribute images (facebookresearch/genecis datasets/vaw_dataset.py): the instance box is
# grown by DILATION times its size towards the bottom-right from a top-left moved up-left by as much,
# clipped to the image, then padded to a square with black, the crop centered.
GENECIS_DILATION = 0.7
PAD_COLOR_RGB = (0, 0, 0)
PAD_COLOR_GRAY = (0,)
FIRST_MISSING_SHOWN = 5


@dataclass(frozen=True)
class ImageRef:
    key: str  # unique within a benchmark split: the dataset's image name, or name + box
    path: Path
    box: tuple[float, float, float, float] | None = None  # [x, y, w, h] in pixels (GeneCIS attributes)

    def load(self) -> Image.Image:
        """The RGB image the benchmark feeds the encoder (cropped and padded where the protocol says so)."""
        image = load_image(self.path)
        if self.box is None:
            return image
        return expand_to_square(image.crop(dilated_box(self.box, *image.size)))


def dilated_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...]:
    """GeneCIS's crop box (left, top, right, bottom) for an instance box [x, y, w, h]."""
    x, y, w, h = box
    left, top = max(0, x - GENECIS_DILATION * w), max(0, y - GENECIS_DILATION * h)
    right = min(width, left + (1 + GENECIS_DILATION) * w)
    bottom = min(height, top + (1 + GENECIS_DILATION) * h)
    return left, top, right, bottom


def expand_to_square(image: Image.Image) -> Image.Image:
    """Pad the short side with black, the image centered (GeneCIS `expand2square`)."""
    width, height = image.size
    if width == height:
        return image
    color = PAD_COLOR_GRAY if image.mode == "L" else PAD_COLOR_RGB
    side = max(width, height)
    square = Image.new(image.mode, (side, side), color)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def find_missing(refs: list[ImageRef]) -> list[ImageRef]:
    """The refs whose file does not exist, each path checked once."""
    seen: dict[Path, bool] = {}
    missing = []
    for ref in refs:
        if ref.path not in seen:
            seen[ref.path] = ref.path.is_file()
        if not seen[ref.path]:
            missing.append(ref)
    return missing


def describe_missing(missing: list[ImageRef], total: int, root: Path) -> str:
    """A report a user can act on: how many files are missing and the first few paths."""
    paths = sorted({str(ref.path) for ref in missing})
    shown = "\n  ".join(paths[:FIRST_MISSING_SHOWN])
    more = f"\n  ... and {len(paths) - FIRST_MISSING_SHOWN} more" if len(paths) > FIRST_MISSING_SHOWN else ""
    return (
        f"{len(paths)} of the image files this split needs ({total} references) are missing under {root}:\n"
        f"  {shown}{more}"
    )
