"""Procedural training pictures: one coloured shape on a plain background, with its caption.

Every sample is drawn from its attributes with PIL, so the caption always matches the pixels, and
sample ``i`` of seed ``s`` is the same picture on every machine with the same Pillow. Some
attribute combinations are held out of training (``HELD_OUT``), so the quality benchmark asks for
pictures the model never saw. The trainer captions each picture afresh from its attributes in the
four phrasings, always saying "in the centre"; the "middle" / "center" variants appear only in
``sample``'s captions.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SHAPES = ("circle", "square", "triangle", "star", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 40),
    "green": (40, 160, 60),
    "blue": (35, 80, 215),
    "purple": (135, 50, 175),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
POSITIONS = ("centre", "left", "right", "top", "bottom")

# Radii in pixels; wide enough apart that "small" and "large" never overlap after jitter.
_RADIUS = {"small": (9.0, 11.0), "large": (18.0, 21.0)}
_PLACE = {
    "centre": ("in the centre", "in the middle", "in the center"),
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
}
_SUPERSAMPLE = 4


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class Attributes:
    shape: str
    colour: str
    background: str
    size: str
    position: str

    def caption(self, phrasing: int = 0) -> str:
        """The caption in one of a few phrasings; phrasing 0 is the canonical one."""
        where = _PLACE[self.position][0]
        thing = f"{self.size} {self.colour} {self.shape}"
        bg = self.background
        on_bg = f"{_article(bg)} {bg} background"
        forms = (
            f"a {thing} {where}, {bg} background",
            f"a {thing} {where} on {on_bg}",
            f"{thing}, {where}, {bg} background",
            f"{on_bg} with a {thing} {where}",
        )
        return forms[phrasing % len(forms)]


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    caption: str
    attributes: Attributes


def all_attributes() -> list[Attributes]:
    """Every combination, in a fixed order (a shape never has its background's colour)."""
    return [
        Attributes(shape, colour, bg, size, pos)
        for shape, colour, bg, size, pos in itertools.product(
            SHAPES, COLOUR_NAMES, COLOUR_NAMES, SIZES, POSITIONS
        )
        if colour != bg
    ]


def _held_out() -> frozenset[Attributes]:
    return frozenset(random.Random(1234).sample(all_attributes(), 64))


HELD_OUT: frozenset[Attributes] = _held_out()


def held_out_captions() -> list[tuple[str, Attributes]]:
    """The 64 held-out combinations with their canonical captions, in a fixed order."""
    chosen = sorted(HELD_OUT, key=lambda a: all_attributes().index(a))
    return [(a.caption(), a) for a in chosen]


def random_attributes(rng: random.Random, *, exclude_held_out: bool = True) -> Attributes:
    while True:
        colour, background = rng.sample(COLOUR_NAMES, 2)
        attrs = Attributes(
            rng.choice(SHAPES), colour, background, rng.choice(SIZES), rng.choice(POSITIONS)
        )
        if not (exclude_held_out and attrs in HELD_OUT):
            return attrs


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 12) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _polygon(cx: float, cy: float, radii: list[float], turn: float) -> list[tuple[float, float]]:
    angles = [turn + 2 * math.pi * k / len(radii) for k in range(len(radii))]
    return [
        (cx + r * math.sin(a), cy - r * math.cos(a)) for a, r in zip(angles, radii, strict=True)
    ]


def render(attrs: Attributes, rng: random.Random | None = None, size: int = SIZE) -> Image.Image:
    """Draw ``attrs`` as a square RGB picture; ``rng`` adds small jitter to size, place and tint.

    The layout is worked out on the 64-pixel grid and scaled, so the same ``rng`` draws the same
    scene at every ``size`` (the 4x upscaler trains on 256-pixel ones).
    """
    rng = rng or random.Random(0)
    s = _SUPERSAMPLE * size / SIZE
    lo, hi = _RADIUS[attrs.size]
    r = rng.uniform(lo, hi)
    margin = 3.0
    offset = SIZE / 2 - r - margin
    dx, dy = {
        "centre": (0.0, 0.0),
        "left": (-offset, 0.0),
        "right": (offset, 0.0),
        "top": (0.0, -offset),
        "bottom": (0.0, offset),
    }[attrs.position]
    cx = SIZE / 2 + dx + rng.uniform(-1.5, 1.5)
    cy = SIZE / 2 + dy + rng.uniform(-1.5, 1.5)
    turn = math.radians(rng.uniform(-8, 8))
    fill = _jitter(COLOURS[attrs.colour], rng)
    side = round(SIZE * s)
    canvas = Image.new("RGB", (side, side), _jitter(COLOURS[attrs.background], rng))
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = cx * s, cy * s, r * s
    box = (cx - r, cy - r, cx + r, cy + r)
    if attrs.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif attrs.shape == "ring":
        draw.ellipse(box, fill=fill)
        inner = r * 0.55
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=canvas.getpixel((0, 0)))
    elif attrs.shape == "square":
        draw.polygon(_polygon(cx, cy, [r * 1.15] * 4, turn + math.pi / 4), fill=fill)
    elif attrs.shape == "triangle":
        # Centred on its centroid, which sits low; nudge it so the bounding box is centred.
        draw.polygon(_polygon(cx, cy + r * 0.22, [r * 1.2] * 3, turn), fill=fill)
    elif attrs.shape == "star":
        draw.polygon(_polygon(cx, cy + r * 0.08, [r * 1.1, r * 0.45] * 5, turn), fill=fill)
    else:
        raise ValueError(f"unknown shape {attrs.shape!r}")
    return canvas.resize((size, size), Image.Resampling.BOX)


def sample(seed: int, index: int, *, exclude_held_out: bool = True, size: int = SIZE) -> Sample:
    """Sample ``index`` of the stream ``seed``: the same picture and caption on every machine."""
    rng = random.Random(seed * 1_000_003 + index)
    attrs = random_attributes(rng, exclude_held_out=exclude_held_out)
    caption = attrs.caption(rng.randrange(4))
    if attrs.position == "centre":
        caption = caption.replace("in the centre", rng.choice(_PLACE["centre"]))
    return Sample(render(attrs, rng, size), caption, attrs)


def samples(seed: int, count: int, *, exclude_held_out: bool = True) -> Iterator[Sample]:
    for index in range(count):
        yield sample(seed, index, exclude_held_out=exclude_held_out)


def to_array(images: list[Image.Image]) -> np.ndarray:
    """Pictures as a float32 NCHW array in [-1, 1], the range diffusers' VAEs use."""
    stack = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return stack.transpose(0, 3, 1, 2) / 127.5 - 1.0


def vocabulary() -> list[str]:
    """Every word the captions use (plus a few synonyms users type), for the tokenizer."""
    words = {
        word
        for attrs in all_attributes()
        for phrasing in range(4)
        for word in attrs.caption(phrasing).replace(",", " ").split()
    }
    words.update(w for places in _PLACE.values() for place in places for w in place.split())
    words.update(("and", "of", "picture", "image", "painting"))
    return sorted(words)
