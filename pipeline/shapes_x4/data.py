"""Pairs of pictures for the 4x upscaler, and how its output is scored.

A pair is a shapes picture (``pipeline.shapes.data``) drawn at 256 px, the truth, and the same
picture box-downsampled to 64 px, the input. Training draws them from the shapes stream, which
leaves out the held-out attribute combinations; the benchmark and the tests score on those.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from pipeline.shapes import data as shapes

SCALE = 4
HIGH = shapes.SIZE * SCALE
# Held-out pictures are drawn with their own seeds, far from any training stream's.
EVAL_SEED = 777_000


def downscale(high: Image.Image) -> Image.Image:
    """The low-resolution input for ``high``: each 4x4 block averaged, as a camera bins pixels."""
    return high.resize((high.width // SCALE, high.height // SCALE), Image.Resampling.BOX)


def training_pair(seed: int, index: int) -> tuple[Image.Image, Image.Image]:
    """Sample ``index`` of stream ``seed`` as (64 px input, 256 px truth); never a held-out one."""
    high = shapes.sample(seed, index, size=HIGH).image
    return downscale(high), high


def held_out_pairs(count: int = 64) -> list[tuple[Image.Image, Image.Image]]:
    """``count`` (input, truth) pairs of held-out combinations, spread over all 64 of them."""
    combos = [attrs for _, attrs in shapes.held_out_captions()]
    pairs = []
    for k in range(count):
        # Every (64 / count)-th combination first, so a few pictures still cover every shape.
        attrs = combos[(k * len(combos) // count + k // len(combos)) % len(combos)]
        high = shapes.render(attrs, random.Random(EVAL_SEED + k), size=HIGH)
        pairs.append((downscale(high), high))
    return pairs


def bicubic(low: Image.Image) -> Image.Image:
    """The baseline: PIL's bicubic resampling to 4x."""
    return low.resize((low.width * SCALE, low.height * SCALE), Image.Resampling.BICUBIC)


def psnr(picture: Image.Image, truth: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels (8-bit, peak 255)."""
    a = np.asarray(picture.convert("RGB"), dtype=np.float64)
    b = np.asarray(truth.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(picture: Image.Image, truth: Image.Image) -> float:
    """SSIM (Wang et al. 2004): 11-tap Gaussian window, sigma 1.5, averaged over RGB channels.

    The constants are the paper's (K1 0.01, K2 0.03, peak 255); like scikit-image, the mean
    leaves out the 5-pixel border where the window would reach past the picture.
    """
    from scipy.ndimage import gaussian_filter

    a = np.asarray(picture.convert("RGB"), dtype=np.float64)
    b = np.asarray(truth.convert("RGB"), dtype=np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for ch in range(3):
        x, y = a[..., ch], b[..., ch]

        def blur(img: np.ndarray) -> np.ndarray:
            return gaussian_filter(img, sigma=1.5, truncate=3.5, mode="reflect")

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        scores.append(float(s[5:-5, 5:-5].mean()))
    return float(np.mean(scores))
