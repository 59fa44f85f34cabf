"""Drawing speed on an idle and on a busy CPU, before and after Easel configures torch's threads.

Two workloads, each measured in fresh processes:

- ``draw``: ``python -m pipeline draw "a large red circle in the centre, white background"
  --model tiny:shapes --steps 50 --seed 1``, reading the time it prints for the drawing alone
  (not the imports or the model load). Tiny models are bound by Python overhead.
- ``unet``: one denoising step of a compute-bound UNet (random weights, SD-like blocks of
  160-640 channels, a 32x32 latent, batch 2 as with guidance), median of 3 after a warm-up:
  what a real model does, without downloading one.

"Busy" means one other process keeps one core busy (a pure-Python loop, stopped after the
measurement). "Before" is torch's defaults (``EASEL_CPU_CONFIG=0``), alone and with the issue's
two workarounds; "after" is Easel's configuration (``pipeline/cpu.py``) and its alternative
(one thread per core for the tiny model, one thread for the big one). Rounds are interleaved and
each cell is the median. A measurement during which other processes used more than ``--quiet``
cores (read from /proc/stat) is taken again, up to ``--retries`` times: on a shared machine,
"idle" is otherwise not idle. Target: busy within 1.5x of idle, idle no slower than before.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cpu import plan_cpu_threads, usable_cpus

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a large red circle in the centre, white background"
BURN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_THREADS")
CORES = usable_cpus()[1]
BEFORE = {
    "before: torch defaults": {"EASEL_CPU_CONFIG": "0"},
    "before: OMP_WAIT_POLICY=PASSIVE": {"EASEL_CPU_CONFIG": "0", "OMP_WAIT_POLICY": "PASSIVE"},
    "before: one torch thread": {"EASEL_CPU_CONFIG": "0", "OMP_NUM_THREADS": "1"},
}
# name -> extra environment, per workload; a torch-thread variable left out stays unset.
CONFIGS: dict[str, dict[str, dict[str, str]]] = {
    "draw": {
        **BEFORE,
        "after: Easel's configuration": {},
        f"after, but {CORES} threads": {"TORCH_THREADS": str(CORES)},
    },
    "unet": {
        "before: torch defaults": BEFORE["before: torch defaults"],
        "after: Easel's configuration": {},
        "after, but one thread": {"TORCH_THREADS": "1"},
    },
}
MODELS = {"draw": "tiny:shapes", "unet": "a full-size model"}

UNET = """
import statistics, sys, time
sys.path.insert(0, {root!r})
from pipeline.cpu import configure_cpu_threads
configure_cpu_threads(model={model!r})
import torch
from diffusers import UNet2DConditionModel
torch.manual_seed(0)
unet = UNet2DConditionModel(
    sample_size=32, block_out_channels=(160, 320, 640, 640), layers_per_block=2,
    cross_attention_dim=768, attention_head_dim=8,
).eval()
x, text = torch.randn(2, 4, 32, 32), torch.randn(2, 77, 768)
times = []
with torch.no_grad():
    for _ in range(4):
        t = time.perf_counter()
        unet(x, 10, encoder_hidden_states=text)
        times.append(time.perf_counter() - t)
print(f"{{statistics.median(times[1:]):.4f}} s per step")
"""


@contextlib.contextmanager
def busy_core(seconds: float = 600.0) -> Iterator[None]:
    """One other process spinning on one core (bounded in time, killed on exit)."""
    proc = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)])
    try:
        time.sleep(0.2)
        yield
    finally:
        proc.kill()
        proc.wait()


def cpu_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all processes), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: list[str], extra: dict[str, str], pattern: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS and k != "EASEL_CPU_CONFIG"}
    env.update(extra, HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    match = re.search(pattern, done.stdout + done.stderr)
    if match is None:
        raise RuntimeError(f"no timing in the output:\n{done.stderr[-2000:]}")
    return float(match.group(1))


def draw_seconds(extra: dict[str, str], steps: int, out: Path) -> float:
    cmd = [
        sys.executable, "-m", "pipeline", "draw", PROMPT, "--model", "tiny:shapes",
        "--steps", str(steps), "--seed", "1", "-o", str(out),
    ]  # fmt: skip
    return run_timed(cmd, extra, r"([0-9.]+) s per image")


def unet_seconds(extra: dict[str, str]) -> float:
    code = UNET.format(root=str(ROOT), model=MODELS["unet"])
    return run_timed([sys.executable, "-c", code], extra, r"([0-9.]+) s per step")


def measure(work: Callable[[], float], busy: bool) -> tuple[float, float]:
    """Seconds ``work`` reports, and the cores other processes (not ours) used meanwhile."""
    wall, machine, ours = time.perf_counter(), cpu_busy_s(), children_cpu_s()
    with busy_core() if busy else contextlib.nullcontext():
        seconds = work()
    wall = time.perf_counter() - wall
    foreign = (cpu_busy_s() - machine) - (children_cpu_s() - ours)
    return seconds, max(0.0, foreign / wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="measurements per cell (median)")
    parser.add_argument("--steps", type=int, default=50, help="the drawing's steps")
    parser.add_argument("--workloads", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument(
        "--quiet", type=float, default=0.15, help="most cores others may use in a measurement"
    )
    parser.add_argument("--retries", type=int, default=3, help="re-measurements when not quiet")
    args = parser.parse_args()
    # Stopped (kill, timeout): stop the busy loop and the drawing too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    print(f"{cpu}, {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable, {CORES} cores")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    for workload in args.workloads:
        plan = plan_cpu_threads(environ=env, model=MODELS[workload])
        print(f"Easel's configuration for {MODELS[workload]}: {plan.describe()}")
    times: dict[tuple[str, str, str], list[float]] = {}
    foreign: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.png"
        for _ in range(args.rounds):
            for workload in args.workloads:
                for name, extra in CONFIGS[workload].items():
                    work = (
                        functools.partial(draw_seconds, extra, args.steps, out)
                        if workload == "draw"
                        else functools.partial(unet_seconds, extra)
                    )
                    for kind in ("idle", "busy"):
                        # Others' work on this machine spoils a measurement: take it again (a
                        # few times at most) while other processes used more than --quiet cores.
                        for attempt in range(args.retries + 1):
                            time.sleep(10 * attempt)  # let a busy spell pass
                            seconds, others = measure(work, kind == "busy")
                            if others <= args.quiet:
                                break
                        times.setdefault((workload, name, kind), []).append(seconds)
                        foreign.append(others)
                        note = f"  {workload}, {name}, {kind}: {seconds:.2f} s"
                        print(f"{note} (others: {others:.2f} cores)", file=sys.stderr, flush=True)
    titles = {
        "draw": f"draw: tiny:shapes, 64x64, {args.steps} steps, s per image",
        "unet": "unet: one step of a compute-bound UNet, s",
    }
    for workload in args.workloads:
        print(f"\n{titles[workload]} (median of {args.rounds})")
        rows = CONFIGS[workload]
        width = max(len(n) for n in rows)
        print(
            f"{'configuration':<{width}}  {'idle':>6}  {'busy':>6}  busy/idle  runs (idle / busy)"
        )
        for name in rows:
            idle = statistics.median(times[workload, name, "idle"])
            busy = statistics.median(times[workload, name, "busy"])
            runs = " / ".join(
                ", ".join(f"{t:.2f}" for t in times[workload, name, kind])
                for kind in ("idle", "busy")
            )
            print(f"{name:<{width}}  {idle:6.2f}  {busy:6.2f}  {busy / idle:9.2f}  {runs}")
    print(f"\nother processes used at most {max(foreign):.2f} cores during a kept measurement")


if __name__ == "__main__":
    main()
