"""The attribute space of the shapes world: what an image is, and the words that name it.

An image is fully described by a `ShapeSpec` (shape, color, background, size, style); rendering adds
only nuisance variation (position, rotation, jitter, color noise). Every attribute value has a list of
synonyms; the first one is the canonical name used in zero-shot prompts and file names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from itertools import product

SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "heart": ("heart",),
    "crescent": ("crescent", "crescent moon"),
    "arrow": ("arrow",),
}

# RGB of each color name; rendering adds per-image noise around it.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 30),
    "purple": (135, 50, 185),
    "orange": (245, 130, 20),
}
COLORS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "purple": ("purple", "violet"),
    "orange": ("orange",),
}

BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 236),
    "black": (22, 22, 26),
    "gray": (128, 128, 128),
}
BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "white": ("white",),
    "black": ("black", "dark"),
    "gray": ("gray", "grey"),
}

SIZES: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"),
    "large": ("large", "big"),
}

# The style plays the role of a domain ("as origami" in ImageNet-R terms). "render" is the
# photo-like source domain; the word "photo" itself is kept style-neutral in captions, because the
# standard prompt "a photo of $ that ..." must not pull queries towards one style.
STYLES: dict[str, tuple[str, ...]] = {
    "render": ("3d render", "rendering"),
    "sketch": ("sketch", "pencil sketch", "drawing"),
    "mosaic": ("mosaic", "tile mosaic"),
    "neon": ("neon sign", "neon light"),
}

VOCABULARY: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": SHAPES,
    "color": COLORS,
    "background": BACKGROUNDS,
    "size": SIZES,
    "style": STYLES,
}
ATTRIBUTES: tuple[str, ...] = tuple(VOCABULARY)


@dataclass(frozen=True, order=True)
class ShapeSpec:
    """The attribute combination of one image (canonical value names)."""

    shape: str
    color: str
    background: str
    size: str
    style: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTES:
            value = getattr(self, name)
            if value not in VOCABULARY[name]:
                raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(VOCABULARY[name])}")

    def with_values(self, **changes: str) -> ShapeSpec:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @staticmethod
    def from_dict(values: dict[str, str]) -> ShapeSpec:
        return ShapeSpec(**{f.name: values[f.name] for f in fields(ShapeSpec)})


def values_of(attribute: str) -> list[str]:
    """Canonical values of one attribute, in a fixed order."""
    return list(VOCABULARY[attribute])


def name_of(attribute: str, value: str) -> str:
    """The canonical word(s) for a value (used in zero-shot prompts)."""
    return VOCABULARY[attribute][value][0]


def all_specs() -> list[ShapeSpec]:
    """Every attribute combination, in a fixed order."""
    return [ShapeSpec(*values) for values in product(*(VOCABULARY[a] for a in ATTRIBUTES))]
