"""Rendering one image of the shapes world from its `ShapeSpec` and a seeded numpy RNG.

Deterministic: the same spec, RNG state and size give the same pixels (numpy + Pillow drawing only).
Geometry is drawn on a supersampled canvas and box-downsampled, so edges are antialiased and shapes
stay recognizable at 64 px. Sizes below are fractions of the image side so any size works.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from zscir_train.world.attributes import BACKGROUND_RGB, COLOR_RGB, ShapeSpec

SUPERSAMPLE = 4
RADIUS_FRACTION = {"small": 0.19, "large": 0.32}  # shape radius / image side
RADIUS_JITTER = 0.08  # relative
ROTATION_JITTER_DEG = 15.0
MARGIN_FRACTION = 0.03  # keep the shape this far inside the border
COLOR_NOISE_STD = 12.0  # per-image shift of the shape color, per channel
BACKGROUND_NOISE_STD = 6.0  # per-image shift of the background color
PIXEL_NOISE_STD = 3.0  # per-pixel sensor-like noise
REFERENCE_SIDE = 64.0  # line widths below are in pixels at this image side

STROKE_PX = 1.6  # sketch and neon outline width at 64 px
HATCH_SPACING_PX = 4.0
GLOW_PX = 4.5
GLOW_BLUR_PX = 2.2
MOSAIC_TILE_PX = 4.0
MOSAIC_TILE_NOISE_STD = 28.0
SHADOW_OFFSET_FRACTION = 0.14  # of the radius
CIRCLE_POINTS = 48


def _circle(n: int = CIRCLE_POINTS) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    t = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart(n: int = CIRCLE_POINTS) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    xy = np.stack([x, y + 2.5], axis=1)  # + 2.5 centers the heart vertically
    return xy / 16.5


def _crescent(n: int = CIRCLE_POINTS, offset: float = 0.5, inner_radius: float = 0.85) -> np.ndarray:
    # Outer unit circle minus a circle of `inner_radius` centered at (offset, 0): opens to the right.
    x_cut = (1 - inner_radius**2 + offset**2) / (2 * offset)
    outer_from = math.atan2(math.sqrt(1 - x_cut**2), x_cut)
    outer = np.linspace(outer_from, 2 * math.pi - outer_from, n)
    inner_from = math.acos((x_cut - offset) / inner_radius)
    inner = np.linspace(2 * math.pi - inner_from, inner_from, n // 2)
    xy = np.concatenate(
        [
            np.stack([np.cos(outer), np.sin(outer)], axis=1),
            np.stack([offset + inner_radius * np.cos(inner), inner_radius * np.sin(inner)], axis=1),
        ]
    )
    return xy + np.array([0.25, 0.0])


def _arrow() -> np.ndarray:
    return np.array(
        [(-1.0, -0.25), (0.15, -0.25), (0.15, -0.68), (1.0, 0.0), (0.15, 0.68), (0.15, 0.25), (-1.0, 0.25)]
    )


# Unit outlines (radius ~1, y down), closed polygons.
OUTLINES: dict[str, np.ndarray] = {
    "circle": _circle(),
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": _star(points=3, inner=0.5)[::2] + np.array([0.0, 0.18]),
    "star": _star(),
    "cross": np.array(
        [
            (-0.3, -1.0), (0.3, -1.0), (0.3, -0.3), (1.0, -0.3), (1.0, 0.3), (0.3, 0.3),
            (0.3, 1.0), (-0.3, 1.0), (-0.3, 0.3), (-1.0, 0.3), (-1.0, -0.3), (-0.3, -0.3),
        ]
    ),
    "heart": _heart(),
    "crescent": _crescent(),
    "arrow": _arrow(),
}


def _place(outline: np.ndarray, rng: np.random.Generator, side: int, size: str) -> np.ndarray:
    """Scale, rotate and translate a unit outline to pixel coordinates (float, [P, 2])."""
    radius = side * RADIUS_FRACTION[size] * (1 + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER))
    angle = math.radians(rng.uniform(-ROTATION_JITTER_DEG, ROTATION_JITTER_DEG))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    xy = outline @ rotation.T * radius  # [P, 2]
    margin = side * MARGIN_FRACTION
    low = margin - xy.min(axis=0)
    high = side - margin - xy.max(axis=0)
    center = rng.uniform(low, np.maximum(low, high))
    return xy + center


def _mask(xy: np.ndarray, side: int, stroke: float | None = None) -> np.ndarray:
    """Antialiased coverage in [0, 1] ([H, W]): the filled polygon, or its outline of width `stroke`."""
    canvas = Image.new("L", (side * SUPERSAMPLE, side * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    points = [tuple(p) for p in (xy * SUPERSAMPLE).tolist()]
    if stroke is None:
        draw.polygon(points, fill=255)
    else:
        draw.line(points + points[:1], fill=255, width=max(1, round(stroke * SUPERSAMPLE)), joint="curve")
    small = canvas.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _blur(coverage: np.ndarray, radius: float) -> np.ndarray:
    image = Image.fromarray(np.round(coverage * 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(float(radius))), dtype=np.float32) / 255.0


def _over(canvas: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-composite `color` ([3] or [H, W, 3]) over `canvas` ([H, W, 3]) with coverage [H, W]."""
    return canvas * (1 - alpha[..., None]) + color * alpha[..., None]


def _paint_render(canvas, xy, color, side, rng):
    # Photo-like: soft drop shadow, then a filled body lit from the top left.
    radius = np.ptp(xy, axis=0).max() / 2
    shadow = _blur(_mask(xy + radius * SHADOW_OFFSET_FRACTION, side), radius * 0.15)
    canvas = canvas * (1 - 0.45 * shadow[..., None])
    fill = _mask(xy, side)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    center = xy.mean(axis=0)
    light = ((center[0] - xx) + (center[1] - yy)) / (2 * radius)  # + towards the top left
    body = color * (1 + 0.35 * np.clip(light, -1, 1))[..., None]
    return _over(canvas, np.clip(body, 0, 255), fill)


def _paint_sketch(canvas, xy, color, side, rng):
    # Pencil-like: two jittered outlines and sparse diagonal hatching inside.
    scale = side / REFERENCE_SIDE
    fill = _mask(xy, side)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    spacing = HATCH_SPACING_PX * scale
    phase = rng.uniform(0, spacing)
    hatch = (np.mod(xx + yy + phase, spacing) < 1.0 * scale).astype(np.float32)
    canvas = _over(canvas, color, 0.55 * hatch * fill)
    for _ in range(2):
        jitter = rng.normal(0.0, 0.5 * scale, size=xy.shape)
        canvas = _over(canvas, color * 0.85, 0.9 * _mask(xy + jitter, side, stroke=STROKE_PX * scale))
    return canvas


def _paint_mosaic(canvas, xy, color, side, rng):
    # Square tiles with their own brightness, separated by grout lines in a dimmed background tone.
    scale = side / REFERENCE_SIDE
    tile = MOSAIC_TILE_PX * scale
    fill = _mask(xy, side)
    offset = rng.uniform(0, tile, size=2)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    col = np.floor((xx + offset[0]) / tile).astype(np.int64)
    row = np.floor((yy + offset[1]) / tile).astype(np.int64)
    n_tiles = int(math.ceil(side / tile)) + 1
    shade = rng.normal(0.0, MOSAIC_TILE_NOISE_STD, size=(n_tiles, n_tiles, 1)).astype(np.float32)
    tiles = np.clip(color + shade[row, col], 0, 255)  # [H, W, 3]
    grout = (np.mod(xx + offset[0], tile) < 0.9 * scale) | (np.mod(yy + offset[1], tile) < 0.9 * scale)
    tiles = np.where(grout[..., None], 0.55 * canvas + 0.45 * tiles, tiles)
    return _over(canvas, tiles, fill)


def _paint_neon(canvas, xy, color, side, rng):
    # A blurred colored glow around a bright thin tube.
    scale = side / REFERENCE_SIDE
    glow = _blur(_mask(xy, side, stroke=GLOW_PX * scale), GLOW_BLUR_PX * scale)
    canvas = _over(canvas, color, np.clip(1.6 * glow, 0, 1))
    core = 0.55 * color + 0.45 * 255.0
    return _over(canvas, core, _mask(xy, side, stroke=STROKE_PX * scale))


PAINTERS = {"render": _paint_render, "sketch": _paint_sketch, "mosaic": _paint_mosaic, "neon": _paint_neon}


def render(spec: ShapeSpec, rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """One RGB image of `spec` with random position, rotation, size jitter and color noise."""
    side = image_size
    background = np.array(BACKGROUND_RGB[spec.background], np.float32)
    background = background + rng.normal(0.0, BACKGROUND_NOISE_STD, size=3)
    gradient = np.linspace(-1.0, 1.0, side, dtype=np.float32)[:, None, None] * rng.uniform(-8, 8)
    canvas = np.broadcast_to(background, (side, side, 3)) + gradient  # [H, W, 3]
    color = np.array(COLOR_RGB[spec.color], np.float32) + rng.normal(0.0, COLOR_NOISE_STD, size=3)
    color = np.clip(color, 0, 255).astype(np.float32)
    xy = _place(OUTLINES[spec.shape], rng, side, spec.size)
    canvas = PAINTERS[spec.style](canvas, xy, color, side, rng)
    canvas = canvas + rng.normal(0.0, PIXEL_NOISE_STD, size=canvas.shape)
    return Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8), "RGB")
