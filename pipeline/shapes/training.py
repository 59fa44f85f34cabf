"""What the trainers of the built-in models (``pipeline.shapes.train``,
``pipeline.shapes_x4.train``) share: a run (its threads, work folder and step budget), the loop
of a phase (resuming, learning rate, progress, running loss, checkpoints), the moving average
of weights, saving the pipeline, and the command line. Each trainer keeps its data, models,
losses and export."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
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


class Stopped(Exception):
    """The step budget ran out before a phase's last step: checkpointed, nothing exported."""


@contextmanager
def training_run(
    config: Any, work: Path, stop_after: int | None, log: Callable[[str], None]
) -> Iterator[Budget]:
    """A trainer's run, around its phases and export: ``config.threads`` torch threads, ``work``
    for checkpoints (it must hold no run with other settings; a dataclass ``config``), and the
    budget of ``stop_after`` steps. ``Stopped`` ends the block, quietly::

        with training_run(config, work, stop_after, log) as budget:
            ...  # the phases (``Phase(..., budget=budget)``) and the export
            return summary
        return None  # stopped early
    """
    import torch

    # Training wants every core it is given; the caller's setting comes back afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        work.mkdir(parents=True, exist_ok=True)
        config_file = work / "config.json"
        if config_file.exists() and json.loads(config_file.read_text()) != asdict(config):
            raise ValueError(
                f"{work} holds a run with other settings; delete it or pass another --work folder."
            )
        config_file.write_text(json.dumps(asdict(config), indent=1))
        yield Budget(stop_after)
    except Stopped:
        log(f"stopped after {stop_after} steps; run again to resume")
    finally:
        torch.set_num_threads(threads)


class Phase:
    """The loop of one training phase, all but its batches and loss::

        phase = Phase(ckpt, {"model": vae}, optimizer, ...)
        for step in phase:  # resumed from ckpt; the learning rate is set for this step
            ...  # the batch, the loss, backward, optimizer.step()
            phase.done(loss.item())  # running loss, progress, budget, checkpoint

    ``models`` are what the checkpoint holds besides the optimizer, by their names in it. The
    loop ends when the phase has had its ``steps``, or raises ``Stopped`` when the budget is
    spent first. ``loss`` is the running loss.
    """

    def __init__(
        self,
        ckpt: Path,
        models: Mapping[str, Any],
        optimizer: Any,
        *,
        steps: int,
        lr: float,
        warmup: int,
        checkpoint_every: int,
        desc: str,
        progress: bool,
        budget: Budget,
        checkpoint_at: Sequence[int] = (),
    ) -> None:
        import torch

        self.ckpt, self.models, self.optimizer = ckpt, models, optimizer
        self.steps, self.lr, self.warmup = steps, lr, warmup
        self.checkpoint_every, self.checkpoint_at = checkpoint_every, checkpoint_at
        self.budget = budget
        self.step, self.loss = 0, float("nan")
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=False)
            for name, model in models.items():
                model.load_state_dict(state[name])
            optimizer.load_state_dict(state["optimizer"])
            self.step, self.loss = state["step"], state["loss"]
        self.bar = Bar(steps, self.step, desc, progress)

    def __iter__(self) -> Iterator[int]:
        while self.step < self.steps and not self.budget.spent:
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, self.steps, self.lr, self.warmup)
            yield self.step
        self.bar.close()
        if self.step < self.steps:
            raise Stopped

    def done(self, loss: float) -> None:
        """Count the step just taken, whose loss was ``loss``, and checkpoint when it is time."""
        self.step += 1
        self.loss = loss if math.isnan(self.loss) else 0.98 * self.loss + 0.02 * loss
        self.bar.update(self.loss)
        self.budget.take()
        step = self.step
        if (
            step % self.checkpoint_every == 0
            or step == self.steps
            or step in self.checkpoint_at
            or self.budget.spent
        ):
            state = {name: model.state_dict() for name, model in self.models.items()}
            state |= {"optimizer": self.optimizer.state_dict(), "step": step, "loss": self.loss}
            save_atomic(state, self.ckpt)


class Ema:
    """Moving averages of ``models``' weights (``averages``, in the same order), which the
    trainers export: smoother and better than the last step's weights."""

    def __init__(self, models: Sequence[Any], rate: float) -> None:
        import copy

        self.models = list(models)
        self.averages = [copy.deepcopy(model) for model in self.models]
        self.rate = rate

    def update(self, step: int) -> None:
        """Move the averages towards the weights after ``step`` (warming up over early steps)."""
        import torch

        decay = min(self.rate, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, model in zip(self.averages, self.models, strict=True):
                for a, p in zip(average.parameters(), model.parameters(), strict=True):
                    a.lerp_(p, 1 - decay)

    def load_into_models(self) -> None:
        """Give the models their averaged weights."""
        for model, average in zip(self.models, self.averages, strict=True):
            model.load_state_dict(average.state_dict())


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
