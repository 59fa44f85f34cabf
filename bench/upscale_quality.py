"""How much better than bicubic does the trained 4x upscaler draw? PSNR and SSIM, held out.

The truths are shapes pictures drawn at 256 px from the attribute combinations that training
never saw (``pipeline.shapes.data.HELD_OUT``); the inputs are the same pictures box-downsampled
to 64 px. ``tiny:shapes-x4`` upscales each input (DDIM, eta 0, one seed per picture) and PIL's
bicubic resampling is the baseline. Exits with status 1 when the model's mean PSNR is not at
least 2 dB over bicubic's, the margin the issue asks for.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.cpu import configure_cpu_threads

REQUIRED_MARGIN_DB = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:shapes-x4", help="tiny:NAME or a folder")
    parser.add_argument("--pictures", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_cpu_threads(model=args.model)

    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    from pipeline.engine import quiet_library_logs
    from pipeline.shapes_x4 import data
    from pipeline.tiny import tiny_model_path

    quiet_library_logs()
    path = tiny_model_path(args.model[5:]) if args.model.startswith("tiny:") else args.model
    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    pairs = data.held_out_pairs(args.pictures)
    rows = {"model": ([], []), "bicubic": ([], [])}
    started = time.perf_counter()
    for k, (low, high) in enumerate(pairs):
        generator = torch.Generator().manual_seed(args.seed + k)
        out = pipe(low, num_inference_steps=args.steps, eta=0.0, generator=generator).images[0]
        for name, picture in (("model", out), ("bicubic", data.bicubic(low))):
            rows[name][0].append(data.psnr(picture, high))
            rows[name][1].append(data.ssim(picture, high))
    per_picture = (time.perf_counter() - started) / len(pairs)

    print(f"{args.model}: {len(pairs)} held-out pictures, 64 -> 256 px, {args.steps} DDIM steps, "
          f"{per_picture:.2f} s/picture")  # fmt: skip
    print(f"{'':<10} {'PSNR dB':>8} {'(worst)':>8} {'SSIM':>7} {'(worst)':>8}")
    for name, (psnrs, ssims) in rows.items():
        print(f"{name:<10} {np.mean(psnrs):>8.2f} {np.min(psnrs):>8.2f} "
              f"{np.mean(ssims):>7.4f} {np.min(ssims):>8.4f}")  # fmt: skip
    margins = np.array(rows["model"][0]) - np.array(rows["bicubic"][0])
    margin = float(np.mean(margins))
    print(f"margin over bicubic: {margin:+.2f} dB mean, {margins.min():+.2f} dB worst picture, "
          f"better on {(margins > 0).sum()}/{len(margins)} pictures (required: mean >= "
          f"{REQUIRED_MARGIN_DB:+.1f} dB)")  # fmt: skip
    return 0 if margin >= REQUIRED_MARGIN_DB else 1


if __name__ == "__main__":
    sys.exit(main())
