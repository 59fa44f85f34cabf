"""EXECUTOR=ray measured on the CPU with the tiny SD model: scaling over workers, and overhead.

1. Scaling: 9 jobs (9 users, batching off), 5 steps each, every step sleeping 0.2 s in the
   worker (a stand-in for a GPU's step that leaves this 2-core machine's CPUs free), on 3 Ray
   workers against 1. Target: 3 workers at least 2.5x faster.
2. Overhead: 12 jobs from 4 users, 20 steps, batching on (as bench/executor.py), on one Ray
   worker against the local thread. Best of 3 interleaved rounds after a warm-up each. Target:
   the Ray path under 10% slower.

The bench starts Ray on this machine itself (RAY_ADDRESS empty: what the bot does), with
GPUS_PER_WORKER=0, and checks that ``close()`` leaves no process of that Ray behind.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.cpu import configure_cpu_threads

configure_cpu_threads(model="tiny:sd")

from pipeline.engine import Engine, quiet_library_logs  # noqa: E402
from pipeline.executor import Executor  # noqa: E402
from pipeline.ray_backend import RayBackend, WorkerSpec  # noqa: E402
from pipeline.request import DrawRequest  # noqa: E402

STEP_SLEEP_S = 0.2
SCALING_JOBS, SCALING_STEPS = 9, 5
JOBS, USERS, STEPS, GUIDANCE = 12, 4, 20, 7.0
ROUNDS = 3


class SlowSteps:
    """The real engine, with every denoising step sleeping first (as a busy GPU would)."""

    def __init__(self, engine: Engine, delay: float) -> None:
        self.engine = engine
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def run_batch(self, requests: Any, on_step: Any = None) -> Any:
        def step(i: int, total: int) -> None:
            time.sleep(self.delay)
            if on_step is not None:
                on_step(i, total)

        return self.engine.run_batch(requests, on_step=step)


def slow_loader(
    model: str, *, device: str, cache_dir: Path | None, name: str | None = None
) -> SlowSteps:
    """Runs in the worker: shipped there by value, as this file is the driver's __main__."""
    engine = Engine.load(model, device=device, cache_dir=cache_dir, name=name)
    return SlowSteps(engine, STEP_SLEEP_S)


async def run_jobs(ex: Executor, jobs: list[tuple[int, DrawRequest]]) -> float:
    """Seconds from the first submit until every job's outcome was delivered."""
    failed: list[str] = []

    def on_done(outcome: Any) -> None:
        if outcome.status != "done":
            failed.append(outcome.message)

    began = time.perf_counter()
    for user, request in jobs:
        ex.submit(request, user_id=user, on_done=on_done)
    await ex.wait_idle()
    elapsed = time.perf_counter() - began
    if failed:
        raise RuntimeError(f"jobs failed: {failed}")
    return elapsed


def scaling_jobs() -> list[tuple[int, DrawRequest]]:
    return [
        (i, DrawRequest(f"job {i}", steps=SCALING_STEPS, seed=i, sampler="pndm"))
        for i in range(SCALING_JOBS)
    ]


def overhead_jobs(offset: int) -> list[tuple[int, DrawRequest]]:
    return [
        (i % USERS, DrawRequest(f"a picture number {i}", steps=STEPS, guidance=GUIDANCE, seed=i))
        for i in range(offset, offset + JOBS)
    ]


def ray_executor(spec: WorkerSpec, workers: int, max_batch: int) -> Executor:
    """An executor on ``workers`` Ray workers without GPUs; starts Ray here if needed."""
    backend = RayBackend(spec, workers=workers, gpus_per_worker=0, worker_timeout_s=300)
    engine = backend.connect()
    return Executor(engine, backend=backend, max_batch=max_batch, progress_interval=0)


def our_ray_processes(session: str) -> list[str]:
    """Processes whose command line names this Ray session (raylet, GCS, workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if session in cmdline:
            found.append(f"{proc.name}: {cmdline[:80]}")
    return found


async def main() -> int:
    import ray

    quiet_library_logs()
    cache = Path(os.environ.get("EASEL_CACHE_DIR") or tempfile.mkdtemp(prefix="easel-bench-"))
    engine = Engine.load("tiny:sd", device="cpu", cache_dir=cache)  # builds the model once
    spec = WorkerSpec.single("tiny:sd", device="cpu", cache_dir=cache, torch_threads=1)
    slow = dataclasses.replace(spec, loader=slow_loader)
    ok = True

    # 1. Scaling.
    times = {}
    for workers in (1, 3):
        started = time.perf_counter()
        ex = ray_executor(slow, workers, max_batch=1)
        ready = time.perf_counter() - started
        ex.start()
        await run_jobs(ex, scaling_jobs()[:workers])  # warm-up: every worker draws once
        times[workers] = await run_jobs(ex, scaling_jobs())
        session = Path(ray._private.worker._global_node.get_session_dir_path()).name
        ex.close()
        left = our_ray_processes(session)
        print(
            f"scaling: {SCALING_JOBS} jobs x {SCALING_STEPS} steps of {STEP_SLEEP_S} s on "
            f"{workers} worker(s): {times[workers]:.2f} s (Ray and workers ready in {ready:.1f} s;"
            f" after close: Ray running={ray.is_initialized()}, processes left={len(left)})"
        )
        if ray.is_initialized() or left:
            print("  left behind:", *left, sep="\n    ")
            ok = False
    speedup = times[1] / times[3]
    ok &= speedup >= 2.5
    print(f"scaling: 3 workers {speedup:.2f}x faster than 1 (target: at least 2.5x)")

    # 2. Overhead against the local thread.
    ex_ray = ray_executor(spec, 1, max_batch=4)
    ex_ray.start()
    ex_local = Executor(engine, max_batch=4, progress_interval=0)
    results: dict[str, list[float]] = {"local": [], "ray": []}
    for ex in (ex_local, ex_ray):
        await run_jobs(ex, overhead_jobs(1000))  # warm-up
    for r in range(ROUNDS):
        for name, ex in (("local", ex_local), ("ray", ex_ray)):
            results[name].append(await run_jobs(ex, overhead_jobs(100 * r)))
    ex_local.close()
    ex_ray.close()
    best = {name: min(values) for name, values in results.items()}
    overhead = best["ray"] / best["local"] - 1
    ok &= overhead < 0.10
    for name, values in results.items():
        print(
            f"overhead: {JOBS} jobs x {STEPS} steps, batching on, {name}: best {best[name]:.2f} s,"
            f" median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})"
        )
    print(f"overhead: the Ray path is {overhead:+.1%} against the local thread (target: under 10%)")
    # This script draws on CPUs only (GPUS_PER_WORKER=0), whatever the machine has.
    print(
        "GPU rows (two workers sharing one GPU, GPUS_PER_WORKER=0.5): not measured by this "
        "script, which draws on CPUs"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
