"""Regenerate docs/shapes_grid.png: what the built-in tiny:shapes model draws for a few prompts.

    .venv/bin/python docs/make_shapes_grid.py

One row per prompt, one column per seed, drawn through the engine at the model's defaults.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.engine import Engine, quiet_library_logs  # noqa: E402
from pipeline.request import DrawRequest  # noqa: E402

OUTPUT = ROOT / "docs" / "shapes_grid.png"
PROMPTS = (
    "a large red circle in the centre, white background",
    "a small yellow star on the left, blue background",
    "a large green triangle at the bottom, black background",
    "a small white ring at the top, purple background",
    "a large orange square on the right, green background",
    "a black background with a small blue star at the bottom",
)
SEEDS = 4
CELL = 128  # each 64x64 picture shown at 2x
LABEL = 18


def main() -> None:
    quiet_library_logs()
    engine = Engine.load("tiny:shapes", device="cpu")
    grid = Image.new("RGB", (CELL * SEEDS, (CELL + LABEL) * len(PROMPTS)), "white")
    draw = ImageDraw.Draw(grid)
    for row, prompt in enumerate(PROMPTS):
        result = engine.run(DrawRequest(prompt, steps=20, guidance=6, seed=1, count=SEEDS))
        top = row * (CELL + LABEL)
        draw.text(
            (4, top + 3),
            f"{prompt}  (seeds 1-{SEEDS}, 20 steps, DPM++ 2M, guidance 6)",
            fill="black",
        )
        for col, image in enumerate(result.images):
            big = image.resize((CELL, CELL), Image.Resampling.NEAREST)
            grid.paste(big, (col * CELL, top + LABEL))
    grid.save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
