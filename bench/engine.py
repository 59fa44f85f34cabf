"""Time per image of the built-in tiny models through the engine (50 steps, as the tutorial)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.engine import Engine, quiet_library_logs
from pipeline.request import DrawRequest


def main() -> None:
    quiet_library_logs()
    for model, extra in (
        ("tiny:shapes", {}),
        ("tiny:sd", {}),
        ("tiny:ldm", {"eta": 0.3, "sampler": "ddim"}),
    ):
        engine = Engine.load(model, device="auto")
        request = DrawRequest("A painting of a squirrel eating a banana", steps=50, guidance=6,
                              seed=7, **extra)  # fmt: skip
        engine.run(request)  # warm-up
        runs = 5
        t = time.perf_counter()
        for _ in range(runs):
            engine.run(request)
        per_image = (time.perf_counter() - t) / runs
        print(f"{model}: {per_image * 1000:.0f} ms per 64x64 image at 50 steps on {engine.device}")


if __name__ == "__main__":
    main()
