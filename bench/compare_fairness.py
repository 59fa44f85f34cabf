"""Fairness by the picture: a 16-cell /compare and three members' single draws, queued together.

The comparison is queued first (the worst case for the others): 4 wordings (Prompt S/R) by 4
guidance scales on tiny:shapes, 20 steps. Bob, Carol and Dan each ask for one drawing with a
guidance of their own, so nothing of theirs can share a diffusers call with a cell or with each
other. Each comparison cell is its own job under the comparison's unit, so the round-robin
serves one cell, then each waiting member, then the next cell.

Prints, with batching on and off, for draws queued with the grid and for draws queued while it
draws (when its 5th cell starts): each draw's wait (seconds, and how many of the comparison's
cells started after it was queued and before it started; target: at most 2), the comparison's
total time, and what the draws would have waited behind the whole grid run as one job.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.cpu import configure_cpu_threads

configure_cpu_threads(model="tiny:shapes")  # before torch loads, as the bot does

from pipeline.compare import build_comparison  # noqa: E402
from pipeline.engine import Engine, quiet_library_logs  # noqa: E402
from pipeline.executor import Executor, JobOutcome  # noqa: E402
from pipeline.request import DrawRequest  # noqa: E402

PROMPT = "a large red star in the centre on a blue background"
WORDINGS = ["red star", "green circle", "yellow square", "white triangle"]
GUIDANCES = [1.0, 3.0, 6.0, 9.0]
STEPS = 20
ALICE = 1
DRAWS = {2: ("Bob", 4.0), 3: ("Carol", 5.0), 4: ("Dan", 7.0)}
CELL_UNIT = 1000


@dataclass
class Result:
    rows: list[tuple[str, float, int]]  # member, seconds waited, comparison cells before it
    grid_s: float
    per_picture_s: float
    order: list[str]


async def scenario(engine: Engine, max_batch: int, *, late: bool = False) -> Result:
    """``late``: the three draws arrive while the grid is drawing (when its 5th cell starts);
    "cells before it" then counts the cells that started after they arrived."""
    comparison = build_comparison(
        DrawRequest(PROMPT, steps=STEPS, seed=7),
        replace=WORDINGS,
        guidance=GUIDANCES,
    )
    cells = comparison.cells()
    executor = Executor(engine, max_batch=max_batch, progress_interval=0, on_start=None)
    executor.on_start = lambda tickets: on_start(tickets)
    started: dict[int, float] = {}
    ended: dict[int, float] = {}
    order: list[int] = []
    done = asyncio.Event()
    total = len(cells) + len(DRAWS)

    arrived: list[float] = []  # when the draws were queued

    def submit_draws() -> None:
        arrived.append(time.perf_counter())
        for user, (_, guidance) in DRAWS.items():
            executor.submit(
                DrawRequest(PROMPT, steps=STEPS, guidance=guidance, seed=user),
                user_id=user,
                ticket=user,
                on_progress=lambda s, n, t=user: on_progress(t, s, n),
                on_done=lambda o, t=user: on_done(t, o),
            )

    def on_start(tickets: list[int]) -> None:
        # On the worker thread, as each batch starts: the true start order and times.
        now = time.perf_counter()
        for ticket in tickets:
            started[ticket] = now
            order.append(ticket)

    def on_progress(ticket: int, step: int, steps: int) -> None:
        if late and step == 0 and not arrived and ticket == CELL_UNIT + 4:
            submit_draws()

    def on_done(ticket: int, outcome: JobOutcome) -> None:
        assert outcome.status == "done", outcome
        ended[ticket] = time.perf_counter()
        if len(ended) == total:
            done.set()

    executor.pause()  # everything is queued "together", then the worker starts
    for cell in cells:
        ticket = CELL_UNIT + cell.index
        executor.submit(
            cell.request,
            user_id=ALICE,
            ticket=ticket,
            unit=CELL_UNIT,
            on_progress=lambda s, n, t=ticket: on_progress(t, s, n),
            on_done=lambda o, t=ticket: on_done(t, o),
        )
    if not late:
        submit_draws()
    assert executor.pending(ALICE) == 1  # the comparison counts once against the caps
    t0 = time.perf_counter()
    executor.resume()
    await done.wait()
    await executor.wait_idle()
    executor.close()
    wall = max(ended.values()) - t0
    rows = []
    since = arrived[0] if late else t0
    for user, (name, _) in DRAWS.items():
        # Cells that started after the draw was queued and before it started.
        ahead = sum(
            1
            for t in order[: order.index(user)]
            if t >= CELL_UNIT and (not late or started[t] > since)
        )
        rows.append((name, started[user] - since, ahead))
    return Result(
        rows=rows,
        grid_s=max(ended[CELL_UNIT + c.index] for c in cells) - t0,
        per_picture_s=wall / total,
        order=["A" if t >= CELL_UNIT else DRAWS[t][0][0] for t in order],
    )


async def main() -> int:
    quiet_library_logs()
    engine = Engine.load("tiny:shapes", device="cpu")
    engine.run(DrawRequest("warm up", steps=2, seed=0))
    ok = True
    print(f"tiny:shapes, {STEPS} steps, 16 cells (4 wordings x 4 guidance) + 3 single draws")
    for late, max_batch in ((False, 4), (False, 1), (True, 4), (True, 1)):
        result = await scenario(engine, max_batch, late=late)
        per = result.per_picture_s
        when = "queued while the grid draws (at its 5th cell)" if late else "queued together"
        print(f"\ndraws {when}, batching {'on (max 4)' if max_batch > 1 else 'off'}:")
        print(f"  start order: {' '.join(result.order)}")
        print(f"  {'member':<8}{'waited':>9}{'cells before it':>17}{'behind 16 pictures':>20}")
        for name, wait, ahead in result.rows:
            print(f"  {name:<8}{wait:>8.2f}s{ahead:>17}{16 * per:>19.2f}s")
            ok &= ahead <= 2
        print(f"  grid done after {result.grid_s:.2f}s; {per:.2f}s per picture on average")
    print(f"\n{'PASS' if ok else 'FAIL'}: no single draw waited for more than 2 cells")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
