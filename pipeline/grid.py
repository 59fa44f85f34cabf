"""Draw a comparison grid: the cells, scaled up pixel-exact, with labels people can read.

The labels use a bundled font (a subset of Noto Sans CJK SC, OFL: ``fonts/OFL.txt``: Latin,
Greek, Cyrillic, the hanzi of GB 2312 and Big5, the kanji and kana of JIS X 0208, the hangul of
KS X 1001), so labels render the same on every machine, whatever fonts the system has.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from pipeline.compare import Cell, Comparison
from pipeline.messages import N_, Message, localized

FONT_PATH = Path(__file__).resolve().parent / "fonts" / "NotoSansCJKsc-Subset.otf"

# Discord's preview shows a grid a few hundred pixels wide: a cell's smaller side is brought to at
# least this many pixels, so a 64x64 picture becomes 256x256 ...
TARGET_CELL_SIDE = 256
# ... unless the cells together would pass this on the grid's longer side.
MAX_GRID_SIDE = 4096
MIN_FONT_SIZE = 16
MAX_FONT_SIZE = 48
MAX_LABEL_LINES = 3
MAX_TITLE_LINES = 2

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MISSING_FILL = (205, 205, 205)
MISSING_TEXT = (70, 70, 70)

_SPACES = re.compile(r"\s+")
# FreeType faces must not be used from two threads at once, and the cached fonts are shared:
# the bot may draw a grid on one thread while another lays one out.
_FONT_LOCK = threading.RLock()


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
    """The bundled label font at ``size`` pixels."""
    # BASIC layout: no shaping library needed, and the same glyph positions everywhere.
    return ImageFont.truetype(str(FONT_PATH), size, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=4096)
def _has_glyph(char: str) -> bool:
    # The subset's missing glyphs draw nothing at all: a label would lose letters silently.
    with _FONT_LOCK:
        return char.isspace() or font(32).getmask(char).getbbox() is not None


def visible(text: str) -> str:
    """``text`` with every character the bundled font lacks (rare hanzi, emoji) shown as □."""
    return "".join(c if _has_glyph(c) else "□" for c in text)


def wrap(text: str, face: ImageFont.FreeTypeFont, width: int, max_lines: int) -> tuple[str, ...]:
    """``text`` in lines no wider than ``width``: at spaces where it can, anywhere in a word (or
    in Chinese, which has no spaces) where it must; past ``max_lines`` the last line ends in ….
    Characters the font lacks show as □ rather than vanish."""
    text = visible(text)
    words = _SPACES.split(text.strip()) if text.strip() else [""]
    lines: list[str] = []
    line = ""
    for word in words:
        candidate = f"{line} {word}" if line else word
        if face.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
            line = ""
        for char in word:  # a word wider than the line breaks where it has to
            if line and face.getlength(line + char) > width:
                lines.append(line)
                line = ""
            line += char
    lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and face.getlength(last.rstrip() + "…") > width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last.rstrip() + "…"]
    return tuple(lines)


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes on a grid: scaled cell size, margins, and the wrapped labels."""

    scale: int
    cell_w: int
    cell_h: int
    width: int
    height: int
    nx: int = 1
    ny: int = 1
    nz: int = 1
    font_size: int = MIN_FONT_SIZE
    line_height: int = MIN_FONT_SIZE
    pad: int = 0
    gap: int = 0  # between neighbouring cells
    sub_gap: int = 0  # between sub-grids
    left: int = 0  # where the first sub-grid starts (after the Y labels)
    top: int = 0  # where the first row of cells starts (after the Z titles and X labels)
    x_labels: tuple[tuple[str, ...], ...] = ()  # wrapped lines, per column
    y_labels: tuple[tuple[str, ...], ...] = ()  # per row; empty with fewer than two axes
    z_labels: tuple[tuple[str, ...], ...] = ()  # per sub-grid; empty with fewer than three

    @property
    def sub_width(self) -> int:
        """The width of one sub-grid's cells."""
        return self.nx * self.cell_w + (self.nx - 1) * self.gap

    def sub_left(self, z: int) -> int:
        """The left edge of sub-grid ``z``."""
        return self.left + z * (self.sub_width + self.sub_gap)

    def box_at(self, x: int, y: int, z: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the cell at column ``x``, row ``y``, sub-grid ``z``."""
        left = self.sub_left(z) + x * (self.cell_w + self.gap)
        top = self.top + y * (self.cell_h + self.gap)
        return left, top, left + self.cell_w, top + self.cell_h

    def box(self, cell: Cell) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the scaled ``cell`` in the grid."""
        return self.box_at(cell.x, cell.y, cell.z)


def cell_scale(cell_size: tuple[int, int], shape: tuple[int, int, int]) -> int:
    """The whole-number factor each cell is enlarged by (nearest neighbour, so pixels stay)."""
    w, h = cell_size
    nx, ny, nz = shape
    scale = max(1, math.ceil(TARGET_CELL_SIDE / max(1, min(w, h))))
    while scale > 1 and max(nx * nz * w, ny * h) * scale > MAX_GRID_SIDE:
        scale -= 1
    return scale


def grid_layout(comparison: Comparison, cell_size: tuple[int, int]) -> GridLayout:
    """Lay out ``comparison``'s grid for cells of ``cell_size`` (width, height) pixels."""
    with _FONT_LOCK:
        return _grid_layout(comparison, cell_size)


def _grid_layout(comparison: Comparison, cell_size: tuple[int, int]) -> GridLayout:
    nx, ny, nz = comparison.shape
    axes = comparison.axes
    scale = cell_scale(cell_size, (nx, ny, nz))
    cw, ch = cell_size[0] * scale, cell_size[1] * scale
    size = max(MIN_FONT_SIZE, min(MAX_FONT_SIZE, min(cw, ch) // 12))
    face = font(size)
    ascent, descent = face.getmetrics()
    line = ascent + descent
    pad = size // 2
    gap = max(2, size // 6)
    sub_gap = 2 * size

    x_labels = tuple(
        wrap(localized(axes[0].label(i)), face, max(cw - 2 * pad, size), MAX_LABEL_LINES)
        for i in range(nx)
    )
    x_band = max(len(lines) for lines in x_labels) * line + pad

    y_labels: tuple[tuple[str, ...], ...] = ()
    left = pad
    if len(axes) >= 2:
        y_width = max(cw, 10 * size)
        y_lines = max(1, min(MAX_LABEL_LINES, ch // line))
        y_labels = tuple(
            wrap(localized(axes[1].label(i)), face, y_width, y_lines) for i in range(ny)
        )
        widest = max(face.getlength(text) for lines in y_labels for text in lines)
        left = math.ceil(widest) + 2 * pad

    sub_width = nx * cw + (nx - 1) * gap
    z_labels: tuple[tuple[str, ...], ...] = ()
    z_band = 0
    if len(axes) >= 3:
        z_labels = tuple(
            wrap(localized(axes[2].label(i)), face, sub_width, MAX_TITLE_LINES) for i in range(nz)
        )
        z_band = max(len(lines) for lines in z_labels) * line + pad

    top = pad + z_band + x_band
    width = left + nz * sub_width + (nz - 1) * sub_gap + pad
    height = top + ny * ch + (ny - 1) * gap + pad
    return GridLayout(
        scale=scale,
        cell_w=cw,
        cell_h=ch,
        width=width,
        height=height,
        nx=nx,
        ny=ny,
        nz=nz,
        font_size=size,
        line_height=line,
        pad=pad,
        gap=gap,
        sub_gap=sub_gap,
        left=left,
        top=top,
        x_labels=x_labels,
        y_labels=y_labels,
        z_labels=z_labels,
    )


def _draw_lines(
    draw: ImageDraw.ImageDraw,
    lines: tuple[str, ...],
    x: int,
    top: int,
    layout: GridLayout,
    *,
    anchor: str,
    fill: tuple[int, int, int] = TEXT,
) -> None:
    face = font(layout.font_size)
    for i, text in enumerate(lines):
        draw.text((x, top + i * layout.line_height), text, font=face, fill=fill, anchor=anchor)


def render_grid(
    comparison: Comparison,
    images: Mapping[int, Any],
    *,
    missing: Mapping[int, str] | None = None,
) -> Image.Image:
    """The grid as one RGB image; ``images`` by cell index, a missing one drawn as a grey box
    saying why (``missing[index]``, else "not drawn"). Same inputs, same pixels."""
    with _FONT_LOCK:
        return _render_grid(comparison, images, missing or {})


def _render_grid(
    comparison: Comparison, images: Mapping[int, Any], reasons: Mapping[int, str]
) -> Image.Image:
    cells = comparison.cells()
    present = [images[c.index] for c in cells if images.get(c.index) is not None]
    if present:
        cell_size = present[0].size
    else:
        base = comparison.base
        cell_size = (base.width or TARGET_CELL_SIDE, base.height or TARGET_CELL_SIDE)
    layout = grid_layout(comparison, cell_size)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    line = layout.line_height

    y = layout.pad
    for z, lines in enumerate(layout.z_labels):
        centre = layout.sub_left(z) + layout.sub_width // 2
        _draw_lines(draw, lines, centre, y, layout, anchor="ma")
    for z in range(layout.nz):
        for x, lines in enumerate(layout.x_labels):
            left, top, right, _ = layout.box_at(x, 0, z)
            # Bottom-aligned, so each label sits on its column.
            first = top - layout.pad // 2 - len(lines) * line
            _draw_lines(draw, lines, (left + right) // 2, first, layout, anchor="ma")
    for y, lines in enumerate(layout.y_labels):
        _, top, _, bottom = layout.box_at(0, y, 0)
        first = (top + bottom) // 2 - len(lines) * line // 2
        _draw_lines(draw, lines, layout.left - layout.pad, first, layout, anchor="ra")

    for cell in cells:
        box = layout.box(cell)
        image = images.get(cell.index)
        if image is None:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=MISSING_FILL)
            face = font(layout.font_size)
            lines = wrap(
                localized(reasons.get(cell.index) or Message(N_("not drawn"))),
                face,
                layout.cell_w - 2 * layout.pad,
                MAX_LABEL_LINES,
            )
            first = (box[1] + box[3]) // 2 - len(lines) * line // 2
            centre = (box[0] + box[2]) // 2
            _draw_lines(draw, lines, centre, first, layout, anchor="ma", fill=MISSING_TEXT)
            continue
        image = image.convert("RGB")
        if image.size != cell_size:
            image = image.resize(cell_size, Image.Resampling.NEAREST)
        scaled = image.resize((layout.cell_w, layout.cell_h), Image.Resampling.NEAREST)
        canvas.paste(scaled, box[:2])
    return canvas
