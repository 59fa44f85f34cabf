"""What the trainers of the built-in models (``pipeline.shapes.train``,
``pipeline.shapes_x4.train``) share: the learning-rate schedule, atomic checkpoints, progress,
the step budget of a run, saving the pipeline, and the command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then a cosine down to a tenth of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a half-written checkpoint."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Bar:
    """A tqdm bar, or nothing when progress is off (tests)."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not enabled, unit="step")

    def update(self, loss: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class Budget:
    """Counts the steps of this run, across phases, for ``stop_after``."""

    def __init__(self, steps: int | None) -> None:
        self.left = steps

    @property
    def spent(self) -> bool:
        return self.left is not None and self.left <= 0

    def take(self) -> None:
        if self.left is not None:
            self.left -= 1


def save_pipeline(pipe: Any, out: Path, summary: dict[str, Any]) -> None:
    """Save ``pipe`` and its ``training.json`` to ``out``, replacing it only once complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_cli(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    out: Path,
    work: Path,
    config_type: type,
    train: Callable[..., Any],
) -> int:
    """The trainers' command line: ``--out``, ``--work``, one flag per config field and
    ``--stop-after``; runs ``train(config, out, work, stop_after=...)``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, default=out, help="where to save the model")
    parser.add_argument(
        "--work", type=Path, default=work, help=f"checkpoints, for resuming (default: {work})"
    )
    defaults = config_type()
    for f in fields(config_type):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            help=f"(default: {getattr(defaults, f.name)})",
        )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="stop (checkpointed) after this many steps; run again to resume",
    )
    args = parser.parse_args(argv)
    config = config_type(**{f.name: getattr(args, f.name) for f in fields(config_type)})
    try:
        train(config, args.out, args.work, stop_after=args.stop_after)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
