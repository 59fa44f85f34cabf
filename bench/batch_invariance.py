"""Same seed, same pixels? How far a picture drawn beside other jobs is from the same one alone.

The executor draws compatible jobs of different users in one pipeline call, and CPU kernels
block their arithmetic differently for different batch sizes, so a picture's bits may depend on
what was drawn beside it. For each model (tiny:shapes and tiny:sd unless ``--models`` says
otherwise; tiny:ldm works too) and every sampler it supports, this draws
four jobs (each its own prompt and seed, guidance 6; eta 0.3 with DDIM) alone, then the first 2,
3 and 4 of them as one batch (as ``Executor._take_batch`` batches different users' compatible
jobs), and compares each batched picture with the same job drawn alone: per sampler, the largest
difference in uint8 levels and the largest share of pixels (any channel) that differ in one
picture. ``--groups N`` repeats that with N groups of four other prompts and seeds.

Then it checks the alternative: a per-sample path (text encoder, UNet and autoencoder called once
per picture inside the batch): whether it draws exactly what drawing alone draws (first model and
step count), and what it costs in throughput (every model). About 7 minutes on 2 cores.

    .venv/bin/python bench/batch_invariance.py [--models tiny:shapes,tiny:sd] [--steps 20,50]
        [--groups N] [--no-per-sample | --cost-only]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Waiting OpenMP threads sleep instead of spinning on cores another process needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from pipeline.engine import Engine, quiet_library_logs
from pipeline.request import DrawRequest
from pipeline.samplers import sampler_label

MODELS = ("tiny:shapes", "tiny:sd")  # tiny:ldm too with --models
STEPS = (20, 50)
SEED = 1000
BATCHES = (2, 3, 4)
PROMPTS = (
    "a large red circle in the centre, white background",
    "a small blue star on the left, yellow background",
    "a large green ring at the top, black background",
    "a purple square, orange background",
    "a small white triangle on the right, blue background",
    "a large orange star at the bottom, green background",
    "a small black circle, purple background",
    "a large yellow square on the left, red background",
)


def difference(a: Any, b: Any) -> tuple[int, float]:
    """The largest uint8 difference between two pictures, and the share of pixels that differ."""
    x = np.asarray(a).astype(np.int16)
    y = np.asarray(b).astype(np.int16)
    if x.shape != y.shape:
        raise ValueError(f"pictures of different shapes: {x.shape} and {y.shape}")
    diff = np.abs(x - y)
    per_pixel = diff.max(axis=-1) if diff.ndim == 3 else diff
    return int(diff.max()), float((per_pixel > 0).mean())


@dataclass
class Tally:
    """The worst difference seen over several comparisons."""

    level: int = 0
    share: float = 0.0
    compared: int = 0
    differing: int = 0  # pictures with at least one pixel off

    def add(self, level: int, share: float) -> None:
        self.level = max(self.level, level)
        self.share = max(self.share, share)
        self.compared += 1
        self.differing += level > 0

    def merge(self, other: Tally) -> None:
        self.level = max(self.level, other.level)
        self.share = max(self.share, other.share)
        self.compared += other.compared
        self.differing += other.differing

    def cell(self) -> str:
        return "identical" if self.level == 0 else f"{self.level} / {self.share:.2%}"


def jobs(engine: Engine, sampler: str, steps: int, group: int = 0) -> list[DrawRequest]:
    """Four jobs: job j of group g has seed SEED + 4g + j and its own prompt."""
    eta = 0.3 if sampler == "ddim" and engine.capabilities.eta else 0.0
    first = 4 * group
    return [
        DrawRequest(
            PROMPTS[(first + j) % len(PROMPTS)],
            steps=steps,
            guidance=6,
            eta=eta,
            sampler=sampler,
            seed=SEED + first + j,
        )
        for j in range(4)
    ]


def draw_alone(engine: Engine, requests: Sequence[DrawRequest]) -> list[Any]:
    return [engine.run(r).images[0] for r in requests]


def compare_batches(
    engine: Engine, requests: Sequence[DrawRequest], alone: Sequence[Any], run: Callable[..., Any]
) -> Tally:
    """Draw the first n jobs as one batch for each n in BATCHES; compare with ``alone``."""
    tally = Tally()
    for n in BATCHES:
        results = run(requests[:n])
        for result, solo in zip(results, alone, strict=False):
            tally.add(*difference(result.images[0], solo))
    return tally


@contextlib.contextmanager
def per_sample(engine: Engine, images: int) -> Iterator[None]:
    """Encode, denoise (UNet) and decode one picture at a time inside a batch of ``images``.

    With guidance the pipeline stacks [unconditional..., conditional...]: picture i is rows i and
    images + i, the same two rows in the same order as when it is drawn alone.
    """
    import torch

    pipe = engine.pipe
    unet = pipe.unet
    forward = unet.forward

    def one_at_a_time(sample: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        rows = sample.shape[0]
        if rows == 2 * images:
            groups = [[i, images + i] for i in range(images)]
        else:
            groups = [[i] for i in range(rows)]
        hidden = kwargs.pop("encoder_hidden_states", None)
        if hidden is None:
            hidden, args = args[0], args[1:]
        want_dict = kwargs.pop("return_dict", True)
        out: Any = None
        for group in groups:
            index = torch.tensor(group)
            t = timestep
            if torch.is_tensor(t) and t.ndim and t.shape[0] == rows:
                t = t[index]
            part = forward(sample[index], t, hidden[index], *args, return_dict=False, **kwargs)[0]
            if out is None:
                out = part.new_empty((rows, *part.shape[1:]))
            out[index] = part
        if not want_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    encoder = getattr(pipe, "text_encoder", None) or pipe.bert
    encode = encoder.forward

    def one_prompt_at_a_time(input_ids: Any, *args: Any, **kwargs: Any) -> Any:
        rows = input_ids.shape[0]

        def row(value: Any, i: int) -> Any:
            batched = torch.is_tensor(value) and value.ndim and value.shape[0] == rows
            return value[i : i + 1] if batched else value

        kwargs["return_dict"] = True
        parts = [
            encode(
                input_ids[i : i + 1],
                *(row(a, i) for a in args),
                **{k: row(v, i) for k, v in kwargs.items()},
            )
            for i in range(rows)
        ]
        joined: dict[str, Any] = {}
        for key, value in parts[0].items():
            if torch.is_tensor(value):
                joined[key] = torch.cat([p[key] for p in parts])
            else:  # a tuple of tensors (hidden states, attentions)
                layers = zip(*(p[key] for p in parts), strict=True)
                joined[key] = tuple(torch.cat(t) for t in layers)
        return type(parts[0])(**joined)

    vae = getattr(pipe, "vae", None) or pipe.vqvae
    slicing = getattr(vae, "use_slicing", False)
    unet.forward = one_at_a_time
    encoder.forward = one_prompt_at_a_time
    vae.use_slicing = True
    try:
        yield
    finally:
        del unet.forward
        del encoder.forward
        vae.use_slicing = slicing


def run_per_sample(engine: Engine) -> Callable[[Sequence[DrawRequest]], Any]:
    def run(requests: Sequence[DrawRequest]) -> Any:
        with per_sample(engine, sum(r.count for r in requests)):
            return engine.run_batch(requests)

    return run


def best_time(fn: Callable[[], Any], results: dict[str, float], name: str) -> None:
    t = time.perf_counter()
    fn()
    results[name] = min(results.get(name, float("inf")), time.perf_counter() - t)


def cost(engine: Engine, rounds: int = 3) -> dict[str, float]:
    """Seconds for 4 jobs at 20 steps: one batch, one per-sample batch, 4 calls; and one job."""
    requests = jobs(engine, engine.capabilities.default_sampler, 20)
    runs: dict[str, Callable[[], Any]] = {
        "batch": lambda: engine.run_batch(requests),
        "per-sample batch": lambda: run_per_sample(engine)(requests),
        "4 calls": lambda: draw_alone(engine, requests),
        "1 call": lambda: engine.run(requests[0]),
    }
    for fn in runs.values():
        fn()  # warm-up
    best: dict[str, float] = {}
    for _ in range(rounds):  # interleaved, best of: the machine may be shared
        for name, fn in runs.items():
            best_time(fn, best, name)
    return best


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", default=",".join(map(str, STEPS)))
    parser.add_argument("--groups", type=int, default=1, help="groups of 4 jobs (default 1)")
    parser.add_argument("--no-per-sample", action="store_true", help="skip the per-sample part")
    parser.add_argument("--cost-only", action="store_true", help="only time the per-sample path")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    step_counts = [int(s) for s in args.steps.split(",") if s]

    import torch

    quiet_library_logs()
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    started = time.perf_counter()
    table: dict[str, dict[str, Tally]] = {}
    exact: dict[str, Tally] = {}
    overall = Tally()
    engines = {model: Engine.load(model, device="cpu") for model in models}
    if args.cost_only:
        step_counts = []
    for model, engine in engines.items():
        for steps in step_counts:
            column = f"{model} {steps}"
            for sampler in engine.capabilities.samplers:
                tally = table.setdefault(sampler, {}).setdefault(column, Tally())
                for group in range(args.groups):
                    requests = jobs(engine, sampler, steps, group)
                    alone = draw_alone(engine, requests)
                    tally.merge(compare_batches(engine, requests, alone, engine.run_batch))
                    # The per-sample check on the first model and step count only, for time.
                    if not args.no_per_sample and column == f"{models[0]} {step_counts[0]}":
                        check = compare_batches(engine, requests, alone, run_per_sample(engine))
                        exact.setdefault(model, Tally()).merge(check)
                overall.merge(tally)
                print(f"  {column:<16} {sampler_label(sampler):<16} {tally.cell()}", flush=True)
    columns = [f"{m} {s}" for m in models for s in step_counts]
    if not columns:
        print_cost(engines)
        return
    print(f"\njobs drawn alone vs in batches of {BATCHES}: max level / share of pixels")
    heads = [f"`{c.split()[0]}`, {c.split()[1]} steps" for c in columns]
    print("| sampler | " + " | ".join(heads) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for sampler, row in table.items():
        cells = [row[c].cell() if c in row else "n/a" for c in columns]
        print(f"| {sampler_label(sampler)} | " + " | ".join(cells) + " |")
    print(
        f"\nworst over {overall.compared} batched pictures: {overall.level} level(s) on "
        f"{overall.share:.2%} of one picture's pixels; {overall.differing} pictures differ at all"
    )
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.no_per_sample:
        return
    print("\nper-sample path (encoder, UNet and decoder per picture) against drawing alone:")
    for model, tally in exact.items():
        print(f"  {model}: {tally.compared} pictures, {tally.cell()}")
    print_cost(engines)


def print_cost(engines: dict[str, Engine]) -> None:
    print("\nthroughput, 4 jobs at 20 steps (best of 3, seconds):")
    for model, engine in engines.items():
        t = cost(engine)
        print(
            f"  {model}: batch {t['batch']:.3f}, per-sample batch {t['per-sample batch']:.3f}, "
            f"4 calls {t['4 calls']:.3f}, 1 call {t['1 call']:.3f}; batching gain "
            f"{t['4 calls'] / t['batch']:.2f}x, per-sample gain "
            f"{t['4 calls'] / t['per-sample batch']:.2f}x; a lone job padded to 4 would take "
            f"{t['batch'] / t['1 call']:.2f}x as long"
        )


if __name__ == "__main__":
    main()
