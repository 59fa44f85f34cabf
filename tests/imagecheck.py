"""Comparing pictures: byte equality where it holds, the README's bound where it doesn't.

Drawn twice in the same batch composition on the same machine (alone and alone, say), a picture is
byte-identical: compare with ``assert_same_images``. Drawn beside other jobs, it may differ from
the same picture drawn alone by float rounding (CPU kernels block their arithmetic by batch size,
and how depends on the CPU; DESIGN.md section 6): compare with ``assert_close_images``, which
asserts the bound the README states under "Reproducibility", measured by
``bench/batch_invariance.py``. No test asserts bits across batch sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The README's bound for a picture drawn beside other jobs against the same picture drawn alone:
# no channel off by more than this many uint8 levels ...
BATCH_MAX_LEVEL = 2
# ... and at most this share of the picture's pixels off at all (any channel).
BATCH_MAX_SHARE = 0.10


def difference(a: Any, b: Any) -> tuple[int, float]:
    """The largest uint8 difference between two pictures, and the share of pixels that differ.

    A pixel differs when any of its channels does (as ``bench/batch_invariance.py`` counts).
    """
    x = np.asarray(a).astype(np.int16)
    y = np.asarray(b).astype(np.int16)
    assert x.shape == y.shape, f"pictures of different shapes: {x.shape} and {y.shape}"
    diff = np.abs(x - y)
    per_pixel = diff.max(axis=-1) if diff.ndim == 3 else diff
    return int(diff.max()), float((per_pixel > 0).mean())


def assert_same_images(a: Any, b: Any) -> None:
    """Byte-identical pixels: only for the same batch composition on the same machine."""
    level, share = difference(a, b)
    assert level == 0, f"pictures differ: up to {level} levels on {share:.2%} of pixels"


def assert_close_images(
    a: Any, b: Any, *, max_level: int = BATCH_MAX_LEVEL, max_share: float = BATCH_MAX_SHARE
) -> None:
    """The same picture drawn in different batches: within the README's bound."""
    level, share = difference(a, b)
    assert level <= max_level and share <= max_share, (
        f"pictures differ by up to {level} levels on {share:.2%} of pixels; the stated bound is "
        f"{max_level} levels on {max_share:.0%}"
    )
