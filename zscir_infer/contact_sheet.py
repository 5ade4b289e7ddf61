"""Contact sheets: each composed query's reference image and text, then its top-k results, as PNG or HTML.

One row per query (a `zscir_infer.query.QueryResult`, drawn directly). A result's frame is green when it is a known target, red when the query has
targets and this is not one of them, grey when correctness is unknown. The HTML file embeds its
thumbnails (PNG data URIs), so it can be moved or mailed alone.
"""

from __future__ import annotations

import base64
import html
import io
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont, ImageOps

from zscir_infer.atomic import atomic_write_bytes, atomic_write_text
from zscir_infer.errors import InputError
from zscir_infer.preprocess import load_image

if TYPE_CHECKING:
    from zscir_infer.query import QueryResult

THUMB = 128  # thumbnail side in pixels
PAD = 8
CAPTION_LINES = 3  # text lines under each thumbnail
LINE_HEIGHT = 14
FONT_SIZE = 12
BORDER = 4
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FRAME = {True: (30, 160, 60), False: (200, 40, 40), None: (170, 170, 170)}
QUERY_FRAME = (40, 90, 200)
CHARS_PER_LINE = THUMB // 7
FORMATS = (".png", ".html")


def _thumbnail(source) -> Image.Image:
    """A THUMB x THUMB RGB tile: the image fitted inside, centered; a grey tile when it cannot be read."""
    tile = Image.new("RGB", (THUMB, THUMB), (235, 235, 235))
    try:
        image = load_image(source)
    except (ValueError, OSError):
        return tile
    image = ImageOps.contain(image, (THUMB, THUMB), Image.Resampling.BICUBIC)  # small images scale up too
    tile.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return tile


def _lines(text: str) -> list[str]:
    lines = textwrap.wrap(text, CHARS_PER_LINE) or [""]
    if len(lines) > CAPTION_LINES:
        lines = lines[:CAPTION_LINES]
        lines[-1] = lines[-1][: CHARS_PER_LINE - 1] + "…"
    return lines


def _cell(draw: ImageDraw.ImageDraw, sheet: Image.Image, x: int, y: int, tile: Image.Image, frame, text: str,
          font) -> None:
    draw.rectangle((x - BORDER, y - BORDER, x + THUMB + BORDER - 1, y + THUMB + BORDER - 1), fill=frame)
    sheet.paste(tile, (x, y))
    for i, line in enumerate(_lines(text)):
        draw.text((x, y + THUMB + BORDER + 2 + i * LINE_HEIGHT), line, fill=INK, font=font)


def render_png(rows: Sequence[QueryResult]) -> Image.Image:
    columns = 1 + max((len(r.hits) for r in rows), default=0)
    cell_w = THUMB + 2 * BORDER + PAD
    cell_h = THUMB + 2 * BORDER + CAPTION_LINES * LINE_HEIGHT + PAD
    sheet = Image.new("RGB", (PAD + columns * cell_w, PAD + max(len(rows), 1) * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=FONT_SIZE)
    for r, row in enumerate(rows):
        y = PAD + BORDER + r * cell_h
        _cell(draw, sheet, PAD + BORDER, y, _thumbnail(row.reference_path), QUERY_FRAME, f"+ {row.request.text}", font)
        for c, hit in enumerate(row.hits, start=1):
            label = f"#{c} {hit.score:.3f} {hit.name or Path(hit.path).stem}"
            _cell(draw, sheet, PAD + BORDER + c * cell_w, y, _thumbnail(hit.path), FRAME[hit.correct], label, font)
    return sheet


def _data_uri(source) -> str:
    buffer = io.BytesIO()
    _thumbnail(source).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _rgb(color) -> str:
    return "#" + "".join(f"{c:02x}" for c in color)


def render_html(rows: Sequence[QueryResult], title: str = "zscir composed queries") -> str:
    out = [
        "<!doctype html>", "<meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px;width:"
        f"{THUMB + 2 * BORDER}px;font-size:12px}}img{{display:block;border:{BORDER}px solid}}</style>",
        f"<h1>{html.escape(title)}</h1>", "<table>",
    ]
    for row in rows:
        method = f" <i>({html.escape(row.method)})</i>" if row.method else ""
        cells = [f"<td><img src='{_data_uri(row.reference_path)}' style='border-color:{_rgb(QUERY_FRAME)}' "
                 f"title='{html.escape(str(row.reference_path), quote=True)}'>+ {html.escape(row.request.text)}{method}</td>"]
        for rank, hit in enumerate(row.hits, start=1):
            mark = {True: " ✓", False: "", None: ""}[hit.correct]
            cells.append(
                f"<td><img src='{_data_uri(hit.path)}' style='border-color:{_rgb(FRAME[hit.correct])}' "
                f"title='{html.escape(hit.path, quote=True)}'>#{rank} {hit.score:.3f}{mark}<br>"
                f"{html.escape(hit.name or Path(hit.path).stem)}</td>"
            )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out) + "\n"


def write_contact_sheet(out: str | os.PathLike, rows: Sequence[QueryResult]) -> Path:
    """Write the sheet as PNG or HTML, chosen by the file suffix; atomically."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"Contact sheet {out}: use a .png or .html file name.")
    if suffix == ".png":
        buffer = io.BytesIO()
        render_png(rows).save(buffer, format="PNG")
        atomic_write_bytes(out, buffer.getvalue())
    else:
        atomic_write_text(out, render_html(rows))
    return out
