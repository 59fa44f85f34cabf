"""The GPU executor on the real tiny SD engine (CPU); stand-ins only for faults CI can't cause."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
import torch

from pipeline.errors import GpuOutOfMemory, QueueFull
from pipeline.executor import Executor, JobOutcome
from pipeline.request import DrawRequest
from tests.imagecheck import assert_close_images

PROMPT = "a squirrel eating a banana"


def req(prompt: str = PROMPT, **kw) -> DrawRequest:
    return DrawRequest(prompt, **{"steps": 3, "seed": 1, "sampler": "euler_a", "guidance": 7, **kw})


class Recorder:
    """Collects outcomes and progress as the bot would, noting which thread ran them."""

    def __init__(self) -> None:
        self.done: list[JobOutcome] = []
        self.progress: dict[int, list[tuple[int, int]]] = {}
        self.threads: set[int] = set()

    def submit(self, ex: Executor, request: DrawRequest, user: int) -> int:
        holder: dict[str, int] = {}

        async def on_done(outcome: JobOutcome) -> None:
            self.threads.add(threading.get_ident())
            self.done.append(outcome)

        def on_progress(step: int, total: int) -> None:
            self.threads.add(threading.get_ident())
            self.progress.setdefault(holder["t"], []).append((step, total))

        holder["t"] = ex.submit(request, user_id=user, on_progress=on_progress, on_done=on_done)
        return holder["t"]

    def by_ticket(self) -> dict[int, JobOutcome]:
        return {o.ticket: o for o in self.done}


@pytest.fixture
async def executor(sd_engine):
    ex = Executor(sd_engine, max_per_user=3, max_queue=50, max_batch=4)
    ex.start()
    yield ex
    ex.close()


async def test_round_robin_between_users(sd_engine):
    ex = Executor(sd_engine, max_batch=1)
    rec = Recorder()
    ex.pause()
    alice = [rec.submit(ex, req(seed=i), user=1) for i in range(3)]
    bob = rec.submit(ex, req(seed=9), user=2)
    expected = [alice[0], bob, alice[1], alice[2]]
    assert [e.ticket for e in ex.snapshot()] == expected
    assert ex.position(bob) == 2 and ex.position(alice[2]) == 4
    ex.resume()
    await ex.wait_idle()
    assert [o.ticket for o in rec.done] == expected
    assert all(o.status == "done" for o in rec.done)
    assert ex.position(bob) is None
    ex.close()


async def test_per_user_and_global_caps(sd_engine):
    ex = Executor(sd_engine, max_per_user=3, max_queue=5)
    ex.pause()
    for i in range(3):
        ex.submit(req(seed=i), user_id=1)
    with pytest.raises(QueueFull, match="You already have 3 drawings waiting"):
        ex.submit(req(), user_id=1)
    ex.submit(req(), user_id=2)
    ex.submit(req(), user_id=3)
    with pytest.raises(QueueFull, match="The queue is full: 5 drawings are waiting"):
        ex.submit(req(), user_id=4)
    assert ex.pending() == 5 and ex.pending(1) == 3
    assert len(ex.cancel_user(1)) == 3
    ex.submit(req(), user_id=4)  # room again
    ex.resume()
    await ex.wait_idle()
    ex.close()


async def test_callbacks_run_on_the_loop_in_the_submitters_context(executor):
    var: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    seen: list[tuple[str, int]] = []

    async def submit_as(name: str) -> None:
        var.set(name)

        async def on_done(outcome: JobOutcome) -> None:
            seen.append((var.get(), threading.get_ident()))

        executor.submit(req(prompt=name), user_id=hash(name), on_done=on_done)

    await asyncio.gather(submit_as("alice"), submit_as("bob"))
    await executor.wait_idle()
    assert sorted(n for n, _ in seen) == ["alice", "bob"]
    assert {t for _, t in seen} == {threading.get_ident()}


async def test_progress_is_reported_throttled_with_the_last_step(sd_engine):
    ex = Executor(sd_engine, progress_interval=3600)
    rec = Recorder()
    ticket = rec.submit(ex, req(steps=12), user=1)
    await ex.wait_idle()
    assert rec.progress[ticket] == [(0, 12), (12, 12)]
    assert rec.threads == {threading.get_ident()}
    ex.close()

    ex = Executor(sd_engine, progress_interval=0)
    rec = Recorder()
    ticket = rec.submit(ex, req(steps=5), user=1)
    await ex.wait_idle()
    assert rec.progress[ticket] == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    ex.close()


async def test_cancel_queued_and_running(sd_engine):
    ex = Executor(sd_engine, max_batch=1)
    rec = Recorder()
    started = asyncio.Event()

    def on_progress(step: int, total: int) -> None:
        if step >= 1:
            started.set()

    async def on_done(outcome: JobOutcome) -> None:
        rec.done.append(outcome)

    running = ex.submit(req(steps=150), user_id=1, on_progress=on_progress, on_done=on_done)
    queued = ex.submit(req(steps=2), user_id=1, on_done=on_done)
    other = ex.submit(req(steps=2), user_id=2, on_done=on_done)
    await asyncio.wait_for(started.wait(), 30)
    assert ex.position(running) == 0
    assert ex.cancel(queued) is True
    assert len(ex.cancel_user(1)) == 1  # the running one; the queued one is already gone
    await ex.wait_idle()
    outcomes = rec.by_ticket()
    assert outcomes[queued].status == "cancelled"
    assert outcomes[running].status == "cancelled" and outcomes[running].result is None
    assert outcomes[other].status == "done"
    assert outcomes[running].message == "This drawing was cancelled."
    ex.close()


async def test_pause_keeps_the_queue_and_resume_serves_it(executor):
    rec = Recorder()
    executor.pause()
    tickets = [rec.submit(executor, req(seed=i), user=i) for i in range(3)]
    await asyncio.sleep(0.5)
    assert rec.done == [] and executor.pending() == 3 and executor.paused
    executor.resume()
    await executor.wait_idle()
    assert sorted(o.ticket for o in rec.done) == sorted(tickets)


async def test_wait_idle_returns_after_every_callback(executor):
    finished: list[int] = []

    async def slow_done(outcome: JobOutcome) -> None:
        await asyncio.sleep(0.2)
        finished.append(outcome.ticket)

    t = executor.submit(req(), user_id=1, on_done=slow_done)
    await executor.wait_idle()
    assert finished == [t]
    await asyncio.wait_for(executor.wait_idle(), 1)  # idle already: returns at once


async def test_batched_images_equal_solo_images(sd_engine):
    ex = Executor(sd_engine, max_batch=4)
    rec = Recorder()
    ex.pause()
    requests = {u: req(prompt=f"picture {u}", seed=100 + u, count=1 + u % 2) for u in range(3)}
    tickets = {u: rec.submit(ex, r, user=u) for u, r in requests.items()}
    ex.resume()
    await ex.wait_idle()
    outcomes = rec.by_ticket()
    for u, r in requests.items():
        batched = outcomes[tickets[u]].result
        solo = sd_engine.run(r)
        assert batched is not None and len(batched.images) == r.count
        for a, b in zip(batched.images, solo.images, strict=True):
            assert_close_images(a, b)  # batched vs alone: the README's bound, not bits
    ex.close()


class FlakyEngine:
    """Stand-in around the real engine: fails prompts containing "boom" and, like a small
    GPU, runs out of memory above ``fits`` images per call (CI has no GPU to fill)."""

    def __init__(self, engine, fits: int = 99) -> None:
        self.engine = engine
        self.fits = fits
        self.calls: list[int] = []

    def resolve(self, request):
        return self.engine.resolve(request)

    def run_batch(self, requests, on_step=None):
        self.calls.append(len(requests))
        if any("boom" in r.prompt for r in requests):
            raise RuntimeError("kaboom")
        if sum(r.count for r in requests) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.engine.run_batch(requests, on_step)


async def test_a_failing_job_does_not_stop_the_others(sd_engine, caplog):
    engine = FlakyEngine(sd_engine)
    ex = Executor(engine, max_batch=4)
    rec = Recorder()
    ex.pause()
    good1 = rec.submit(ex, req(seed=1), user=1)
    bad = rec.submit(ex, req(prompt="boom", seed=2), user=2)
    good2 = rec.submit(ex, req(seed=3), user=3)
    ex.resume()
    await ex.wait_idle()
    later = rec.submit(ex, req(seed=4), user=2)
    await ex.wait_idle()
    out = rec.by_ticket()
    assert out[bad].status == "failed" and "kaboom" not in out[bad].message
    assert "logged" in out[bad].message
    assert [out[t].status for t in (good1, good2, later)] == ["done"] * 3
    assert engine.calls[:4] == [3, 1, 1, 1]  # the batch, then each job alone
    assert "kaboom" in caplog.text
    ex.close()


async def test_out_of_memory_retries_one_job_at_a_time(sd_engine):
    engine = FlakyEngine(sd_engine, fits=1)
    ex = Executor(engine, max_batch=4)
    rec = Recorder()
    ex.pause()
    small = [rec.submit(ex, req(seed=i), user=i) for i in range(2)]
    big = rec.submit(ex, req(seed=5, count=3), user=9)
    ex.resume()
    await ex.wait_idle()
    out = rec.by_ticket()
    assert [out[t].status for t in small] == ["done", "done"]
    assert out[big].status == "failed" and isinstance(out[big].error, GpuOutOfMemory)
    assert "did not fit in the GPU's memory" in out[big].message
    # The pair ran out of memory together and fitted alone; the big job failed alone.
    assert engine.calls == [2, 1, 1, 1]
    ex.close()


async def test_worker_thread_is_restarted_after_it_dies(sd_engine, monkeypatch, caplog):
    ex = Executor(sd_engine)
    rec = Recorder()
    original = Executor._take_batch
    state = {"broken": True}

    def broken_once(self):
        if state.pop("broken", False):
            raise RuntimeError("executor bug")
        return original(self)

    monkeypatch.setattr(Executor, "_take_batch", broken_once)
    ex.pause()
    first = rec.submit(ex, req(seed=1), user=1)
    ex.resume()
    await asyncio.sleep(0.2)
    second = rec.submit(ex, req(seed=2), user=2)
    await ex.wait_idle()
    out = rec.by_ticket()
    assert out[second].status == "done" and out[first].status == "done"
    assert "worker thread died" in caplog.text
    ex.close()


async def test_close_joins_the_thread(sd_engine):
    ex = Executor(sd_engine)
    ex.submit(req(steps=150), user_id=1)
    await asyncio.sleep(0.2)
    thread = ex.backend.thread
    assert thread is not None and thread.is_alive()
    ex.close()
    assert not thread.is_alive()


async def test_someone_arriving_while_a_user_draws_goes_before_that_users_next_job(sd_engine):
    """Alice's second cell does not start before Bob, who asked while her first was drawing."""
    ex = Executor(sd_engine, max_batch=1)
    rec = Recorder()
    started: list[int] = []
    arrived = threading.Event()
    loop = asyncio.get_running_loop()
    bob: list[int] = []

    def on_start(tickets: list[int]) -> None:
        started.extend(tickets)
        if len(started) == 1:  # Alice's first job is about to draw: Bob asks now
            loop.call_soon_threadsafe(lambda: bob.append(rec.submit(ex, req(seed=9), user=2)))
            loop.call_soon_threadsafe(arrived.set)
            arrived.wait(10)

    ex.on_start = on_start
    ex.pause()  # all three of Alice's jobs wait before the first one starts
    alice = [rec.submit(ex, req(seed=i), user=1) for i in range(3)]
    ex.resume()
    while not bob:
        await asyncio.sleep(0.01)
    await ex.wait_idle()
    assert started == [alice[0], bob[0], alice[1], alice[2]]
    assert len(ex.cancel_user(1)) == 0  # nothing left behind
    ex.close()


class LosesItsWorker:
    """A backend whose worker goes away in every batch (what a killed Ray worker does), on a
    thread of its own; the real engine is never reached."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.batches: list[list[int]] = []

    def start(self, executor: Executor) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self.serve, args=(executor,), daemon=True)
            self.thread.start()

    def serve(self, ex: Executor) -> None:
        while True:
            with ex._lock:
                while not ex.closing and not ex.queue.ready():
                    ex._lock.wait()
                if ex.closing:
                    return
                batch = ex._take_batch()
            ex._begin(batch)
            self.batches.append([j.ticket for j in batch])
            ex._lost(batch, "worker 0 stopped")

    def wake(self) -> None:
        pass

    def stop(self, job) -> None:
        pass

    def close(self, timeout: float | None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)


async def test_a_job_whose_worker_is_lost_runs_again_first_then_fails_after_max_attempts(
    sd_engine,
):
    backend = LosesItsWorker()
    ex = Executor(sd_engine, max_batch=1, max_attempts=3, backend=backend)
    rec = Recorder()
    ex.pause()
    first = rec.submit(ex, req(seed=1), user=1)
    second = rec.submit(ex, req(seed=2), user=2)
    ex.resume()
    await ex.wait_idle()
    # Each lost job went back to the front: it ran again before the other user's.
    assert backend.batches == [[first], [first], [first], [second], [second], [second]]
    out = rec.by_ticket()
    assert out[first].status == "failed" and out[first].attempts == 3
    assert out[first].message.startswith("The drawing stopped 3 times because the machine")
    assert "(worker 0 stopped)" in out[first].message
    assert ex.pending() == 0
    ex.close()


class LosesOneResult:
    """Stand-in for a buggy engine: draws the batch but returns one result fewer than asked."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def resolve(self, request):
        return self.engine.resolve(request)

    def run_batch(self, requests, on_step=None):
        return self.engine.run_batch(requests, on_step)[:-1]


async def test_a_job_the_engine_returned_no_result_for_fails_instead_of_running_forever(
    sd_engine, caplog
):
    ex = Executor(LosesOneResult(sd_engine), max_batch=4, max_per_user=2)
    rec = Recorder()
    ex.pause()
    first = rec.submit(ex, req(seed=1), user=1)
    second = rec.submit(ex, req(seed=2), user=1)
    ex.resume()
    await asyncio.wait_for(ex.wait_idle(), 60)
    out = rec.by_ticket()
    assert out[first].status == "done"
    assert out[second].status == "failed" and "logged" in out[second].message
    assert "without a result" in caplog.text
    assert ex.pending() == 0 and ex.position(second) is None
    rec.submit(ex, req(seed=3), user=1)  # its place under the cap is free again
    rec.submit(ex, req(seed=4), user=1)
    await asyncio.wait_for(ex.wait_idle(), 60)
    ex.close()


async def test_a_recovered_jobs_earlier_starts_count_towards_max_attempts(sd_engine):
    """A job recovered after a restart that was started once already (the database says so) may
    be started only once more when its worker is lost, not max_attempts times again."""
    backend = LosesItsWorker()
    ex = Executor(sd_engine, max_batch=1, max_attempts=2, backend=backend)
    rec = Recorder()
    ex.pause()
    holder: dict[str, JobOutcome] = {}

    async def on_done(outcome: JobOutcome) -> None:
        holder["outcome"] = outcome

    ticket = ex.submit(req(seed=1), user_id=1, on_done=on_done, attempts=1, enforce_caps=False)
    fresh = rec.submit(ex, req(seed=2), user=2)
    ex.resume()
    await ex.wait_idle()
    assert backend.batches == [[ticket], [fresh], [fresh]]
    assert holder["outcome"].status == "failed" and holder["outcome"].attempts == 2
    assert holder["outcome"].message.startswith("The drawing stopped 2 times")
    assert rec.by_ticket()[fresh].attempts == 2
    ex.close()
