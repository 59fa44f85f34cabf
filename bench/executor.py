"""Executor throughput and event-loop responsiveness on the tiny SD model (CPU unless a GPU).

12 jobs from 4 users, 64x64, 20 steps, guidance 7: wall time through the executor against 12
plain diffusers calls in the same process, each beside the same 10 ms loop watcher (the tiny
UNet is bound by Python overhead, so the watcher's GIL use must weigh on both sides alike).
Prints ratio=plain/executor for batching on and off, and the loop's worst stall.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.cpu import configure_cpu_threads
from pipeline.engine import Engine, quiet_library_logs
from pipeline.executor import Executor
from pipeline.request import DrawRequest

JOBS, USERS, STEPS, GUIDANCE = 12, 4, 20, 7.0


def requests() -> list[tuple[int, DrawRequest]]:
    return [
        (i % USERS, DrawRequest(f"a picture number {i}", steps=STEPS, guidance=GUIDANCE, seed=i))
        for i in range(JOBS)
    ]


class Watcher:
    """A coroutine sleeping 10 ms in a loop; records how late it wakes up."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = False

    async def run(self) -> None:
        while not self._stop:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - t - 0.01)

    def stop(self) -> None:
        self._stop = True


async def plain(engine: Engine) -> tuple[float, float]:
    import torch

    pipe = engine.pipe

    def work() -> float:
        t = time.perf_counter()
        pipe("warm up", num_inference_steps=2)
        warm = time.perf_counter() - t
        for _, r in requests():
            g = torch.Generator("cpu").manual_seed(r.seed or 0)
            pipe(r.prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=g)
        return warm

    watcher = Watcher()
    watch = asyncio.create_task(watcher.run())
    t = time.perf_counter()
    warm = await asyncio.to_thread(work)
    elapsed = time.perf_counter() - t - warm
    watcher.stop()
    await watch
    return elapsed, watcher.worst


async def through_executor(engine: Engine, max_batch: int) -> tuple[float, float]:
    ex = Executor(engine, max_per_user=JOBS, max_batch=max_batch)
    ex.start()
    ex.submit(DrawRequest("warm up", steps=2, seed=0), user_id=-1)
    await ex.wait_idle()
    watcher = Watcher()
    watch = asyncio.create_task(watcher.run())
    t = time.perf_counter()
    for user, r in requests():
        ex.submit(r, user_id=user, on_progress=lambda s, n: None)
    await ex.wait_idle()
    elapsed = time.perf_counter() - t
    watcher.stop()
    await watch
    ex.close()
    return elapsed, watcher.worst


def threads_in_turn(engine: Engine) -> None:
    """The plain calls on a first thread, then on the main thread, then on a second thread.

    Each thread that computes gets its own OpenMP team, and an idle team's threads spin for a
    while: this measures whether the second thread's calls run slower than the first's.
    """
    import torch

    def calls() -> float:
        t = time.perf_counter()
        for _, r in requests():
            g = torch.Generator("cpu").manual_seed(r.seed or 0)
            engine.pipe(r.prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=g)
        return time.perf_counter() - t

    def on_new_thread(work: Callable[[], object]) -> float:
        box: list[float] = []

        def run() -> None:
            work()
            box.append(calls())

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return box[0]

    first = on_new_thread(lambda: engine.pipe("warm up", num_inference_steps=2))
    main_thread = calls()
    second = on_new_thread(lambda: None)
    print(f"first_thread={first:.4f} main_thread={main_thread:.4f} second_thread={second:.4f}")


async def run_part(part: str, model: str, device: str) -> None:
    """One measurement, alone in this process; prints ``elapsed=... stall=...``."""
    engine = Engine.load(model, device=device)
    if part == "memory":
        await memory_over_many_jobs(engine)
        return
    if part == "threads":
        threads_in_turn(engine)
        return
    if part == "plain":
        elapsed, stall = await plain(engine)
    else:
        elapsed, stall = await through_executor(engine, int(part))
    print(f"elapsed={elapsed:.4f} stall={stall:.4f} device={engine.device}")


def measure(part: str, args: argparse.Namespace) -> tuple[float, float, str]:
    # Each measurement gets a fresh process, so that no side runs after another one's threads
    # (a second computing thread once measured 2-3x slower here; the "threads" part re-measures
    # it). The bot computes on one thread only, like each part here.
    cmd = [sys.executable, __file__, "--part", part, "--model", args.model, "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("elapsed="))
    values = dict(kv.split("=") for kv in line.split())
    return float(values["elapsed"]), float(values["stall"]), values["device"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:sd")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # As the bot does, before torch loads (EASEL_CPU_CONFIG=0: torch's defaults).
    configure_cpu_threads(model=args.model)
    quiet_library_logs()
    if args.part:
        asyncio.run(run_part(args.part, args.model, args.device))
        return
    runs: dict[str, list[tuple[float, float, str]]] = {"plain": [], "4": [], "1": []}
    for _ in range(3):  # interleaved, best of three: a busy moment hits every side alike
        for part in runs:
            runs[part].append(measure(part, args))
    device = runs["plain"][0][2]
    print(f"model={args.model} device={device} jobs={JOBS} users={USERS} steps={STEPS}")
    base = min(t for t, _, _ in runs["plain"])
    print(f"plain: {base:.2f}s ({base / JOBS * 1000:.0f} ms/image)")
    stalls = []
    for part in ("4", "1"):
        t = min(r for r, _, _ in runs[part])
        stall = max(s for _, s, _ in runs[part])
        stalls.append(stall)
        print(
            f"executor max_batch={part}: {t:.2f}s ratio={base / t:.2f} "
            f"loop_stall_ms={stall * 1000:.1f}"
        )
    print(f"loop_stall_ms={max(stalls) * 1000:.1f}")
    cmd = [
        sys.executable,
        __file__,
        "--part",
        "memory",
        "--model",
        args.model,
        "--device",
        args.device,
    ]
    print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())
    threads_line(args)


def threads_line(args: argparse.Namespace) -> None:
    """Does a second computing thread still run slower than the first? With and without
    Easel's CPU configuration (pipeline/cpu.py), best of three fresh processes each."""
    cmd = [sys.executable, __file__, "--part", "threads", "--model", args.model]
    for label, switch in (("torch defaults", "0"), ("Easel's CPU configuration", "1")):
        env = {**os.environ, "EASEL_CPU_CONFIG": switch}
        best: dict[str, float] = {}
        for _ in range(3):
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            line = next(x for x in out.splitlines() if x.startswith("first_thread="))
            for key, value in (kv.split("=") for kv in line.split()):
                best[key] = min(best.get(key, float("inf")), float(value))
        first, second = best["first_thread"], best["second_thread"]
        print(
            f"same {JOBS} plain calls on a 1st thread, the main thread, a 2nd thread "
            f"({label}): {first:.2f}s, {best['main_thread']:.2f}s, {second:.2f}s "
            f"(2nd/1st {second / first:.2f})"
        )


def rss_mib() -> float:
    """Resident memory of this process (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def memory_over_many_jobs(engine: Engine, rounds: int = 4, per_round: int = 60) -> None:
    """Memory must not grow with the number of jobs served: RSS after each round of jobs."""
    ex = Executor(engine, max_per_user=per_round, max_queue=per_round, max_batch=4)
    ex.start()
    readings = []
    for r in range(rounds):
        for i in range(per_round):
            ex.submit(DrawRequest(f"job {r}-{i}", steps=4, seed=i), user_id=i % 5)
        await ex.wait_idle()
        readings.append(rss_mib())
    ex.close()
    print(
        f"rss_mib after each {per_round} jobs: {', '.join(f'{m:.0f}' for m in readings)} "
        f"(growth over the last {rounds - 1} rounds: {readings[-1] - readings[0]:+.0f} MiB)"
    )


if __name__ == "__main__":
    main()
