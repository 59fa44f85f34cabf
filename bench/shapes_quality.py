"""How well does a model draw what it is asked? Scored by a classifier, not by eye.

A small CNN is trained in seconds on procedural pictures (pipeline.shapes.classifier). Each model
then draws the 64 held-out captions (combinations the shapes model never saw in training) with 2
seeds at 20 steps, at guidance 1 and 6, and the classifier reads back shape, shape colour,
background colour, size and position. The random-weight tiny:sd is the floor: what chance
looks like.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.engine import Engine, quiet_library_logs
from pipeline.request import DrawRequest
from pipeline.shapes import data
from pipeline.shapes.classifier import HEADS, Classifier

REPORTED = ("shape", "colour", "background", "size", "position")


def score(
    engine: Engine, classifier: Classifier, guidance: float, seeds: int, steps: int
) -> dict[str, float]:
    """Accuracy per attribute over every held-out caption, ``seeds`` pictures each."""
    images: list = []
    truth: list = []
    for k, (caption, attrs) in enumerate(data.held_out_captions()):
        request = DrawRequest(caption, steps=steps, guidance=guidance, seed=1000 + k * seeds,
                              count=seeds, sampler="dpmpp_2m")  # fmt: skip
        images += engine.run(request).images
        truth += [attrs] * seeds
    return classifier.accuracy(images, truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny:shapes", "tiny:sd"])
    parser.add_argument("--guidance", nargs="+", type=float, default=[1.0, 6.0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    quiet_library_logs()

    t = time.perf_counter()
    classifier = Classifier.train()
    real = list(data.samples(4242, 500, exclude_held_out=False))
    on_real = classifier.accuracy([s.image for s in real], [s.attributes for s in real])
    print(f"classifier trained in {time.perf_counter() - t:.0f} s; on 500 real pictures: "
          + ", ".join(f"{h} {on_real[h]:.1%}" for h in HEADS))  # fmt: skip
    chance = {h: 1 / len(v) for h, v in HEADS.items()}
    print("chance: " + ", ".join(f"{h} {chance[h]:.1%}" for h in REPORTED))
    print()
    header = f"{'model':<12} {'guidance':>8} " + " ".join(f"{h:>10}" for h in REPORTED)
    print(header + f" {'s/image':>8}")
    for model in args.models:
        engine = Engine.load(model, device="auto")
        for guidance in args.guidance:
            t = time.perf_counter()
            acc = score(engine, classifier, guidance, args.seeds, args.steps)
            per_image = (time.perf_counter() - t) / (64 * args.seeds)
            cells = " ".join(f"{acc[h]:>10.1%}" for h in REPORTED)
            print(f"{model:<12} {guidance:>8g} {cells} {per_image:>8.2f}", flush=True)
    print(f"\n64 held-out captions x {args.seeds} seeds, {args.steps} steps, DPM++ 2M; "
          "targets for tiny:shapes at guidance 6: shape >= 80%, colours >= 90%.")  # fmt: skip


if __name__ == "__main__":
    main()
