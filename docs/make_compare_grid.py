"""Regenerate docs/compare_grid.png: a /compare grid from the built-in tiny:shapes model.

    .venv/bin/python docs/make_compare_grid.py

Steps 2, 5, 20 across (X) by guidance 1, 3, 6 down (Y), one seed for all nine cells, made by
the same code as ``python -m pipeline compare`` (it runs that command in this process).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.__main__ import main  # noqa: E402

OUTPUT = ROOT / "docs" / "compare_grid.png"
PROMPT = "a large red star in the centre on a blue background"
COMMAND = [
    "compare", PROMPT, "--model", "tiny:shapes",
    "--steps", "2,5,20", "--guidance", "1,3,6", "--seed", "1",
    "-o", str(OUTPUT),
]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(COMMAND))
