"""The GPU executor: fair per-user queues, batching, progress, cancel, pause; drawing on a backend.

Who draws next is decided here, in the bot's process, by one ``FairQueue``. Where it draws is the
backend's business: ``LocalBackend`` (the default) runs batches on one worker thread of this
process, ``pipeline.ray_backend.RayBackend`` on Ray workers, one per GPU. Only the worker touches
the engine. Everything else is called from the event loop and never blocks it; results travel
back with ``loop.call_soon_threadsafe`` and run on the loop as tasks created in the submitter's
``contextvars`` context.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, Literal, Protocol

from pipeline import messages
from pipeline.engine import release_memory
from pipeline.errors import EaselError, GpuOutOfMemory
from pipeline.fairqueue import Callback, FairQueue, Job, QueueEntry
from pipeline.messages import N_
from pipeline.request import DrawRequest, DrawResult

__all__ = [
    "Backend",
    "Executor",
    "JobOutcome",
    "LocalBackend",
    "QueueEntry",
    "draw_batch",
]

log = logging.getLogger(__name__)

Status = Literal["done", "failed", "cancelled"]
# on_step of ``draw_batch``: which requests of the batch are drawing, the step, the total.
BatchStepHook = Callable[[list[int], int, int], None]


class WorkerLost(EaselError):
    """The worker drawing a job went away (its process died, its machine left, it hung) once
    too often; the job is not tried again."""


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended; exactly one is delivered to each submitted job's ``on_done``."""

    ticket: int
    user_id: int
    status: Status
    request: DrawRequest
    result: DrawResult | None = None
    error: BaseException | None = None
    # How many times the job was started (more than 1 when a worker was lost while drawing it).
    attempts: int = 1

    @property
    def message(self) -> str:
        """What to tell the user when the job did not produce images."""
        if self.status == "cancelled":
            return "This drawing was cancelled."
        if isinstance(self.error, EaselError):
            return str(self.error)
        return "Something went wrong while drawing this; the error has been logged."


class _Stop(BaseException):
    """Raised from the step hook to interrupt a batch (cancel or close)."""


class Backend(Protocol):
    """Where batches are drawn. ``wake`` and ``stop`` are called under the executor's lock."""

    def start(self, executor: Executor) -> None:
        """Start drawing what ``executor``'s queue hands out (idempotent)."""

    def wake(self) -> None:
        """Jobs may have become runnable (submitted, resumed, given back)."""

    def stop(self, job: Job) -> None:
        """``job``, which is running, was cancelled."""

    def close(self, timeout: float | None) -> None:
        """Stop drawing and release the workers; the running batches stop at their next step."""


class Executor:
    """Runs draw requests on a backend, serving users round-robin, batching compatible jobs."""

    def __init__(
        self,
        engine: Any,
        *,
        max_per_user: int = 3,
        max_queue: int = 50,
        max_batch: int = 4,
        progress_interval: float = 0.5,
        on_start: Callable[[list[int]], None] | None = None,
        backend: Backend | None = None,
        max_attempts: int = 2,
    ) -> None:
        """``on_start(tickets)`` runs off the event loop before a batch starts and may block
        briefly: the bot uses it to record each job's attempt before drawing, so a job that kills
        the process is known to have been tried. ``backend`` defaults to a ``LocalBackend``.
        A job whose worker is lost while drawing it goes back to the front of the queue, until
        it has been started ``max_attempts`` times."""
        self.engine = engine
        self.on_start = on_start
        self.progress_interval = progress_interval
        self.max_attempts = max(1, max_attempts)
        self.queue = FairQueue(max_per_user=max_per_user, max_queue=max_queue, max_batch=max_batch)
        self.backend: Backend = backend if backend is not None else LocalBackend()
        self._lock = threading.Condition()
        self._tickets = itertools.count(1)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Loop-side bookkeeping for wait_idle: jobs whose on_done has not finished yet, and
        # callback tasks still running.
        self._outstanding = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        self._idle: asyncio.Event | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the backend's workers (idempotent)."""
        self.backend.start(self)

    def close(self, timeout: float | None = 30) -> None:
        """Stop the workers and wait for them; the running batches stop at their next step.

        Queued jobs are dropped without callbacks: they are still recorded as queued in the
        store, which re-queues them on the next start.
        """
        with self._lock:
            self._closing = True
            for job in self.queue.running:
                job.cancelled = True
            self._lock.notify_all()
        self.backend.close(timeout)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def paused(self) -> bool:
        """Whether everything is paused (the operator's pause)."""
        return self.queue.paused

    def is_paused(self, group: int | None) -> bool:
        """Whether jobs of ``group`` wait: paused everywhere, or that group alone."""
        return self.queue.paused or group in self.queue.paused_groups

    def pause(self) -> None:
        """Start nothing new for anyone (the operator's pause); the running batches finish and
        the queue is kept."""
        with self._lock:
            self.queue.paused = True

    def resume(self) -> None:
        with self._lock:
            self.queue.paused = False
            self._wake_locked()

    def pause_group(self, group: int | None) -> None:
        """Start none of ``group``'s jobs (one server's pause); other groups' jobs keep running."""
        with self._lock:
            self.queue.paused_groups.add(group)

    def resume_group(self, group: int | None) -> None:
        with self._lock:
            self.queue.paused_groups.discard(group)
            self._wake_locked()

    def _wake_locked(self) -> None:
        self._lock.notify_all()
        self.backend.wake()

    # -- submitting ----------------------------------------------------------------------

    def submit(
        self,
        request: DrawRequest,
        *,
        user_id: int,
        on_progress: Callback | None = None,
        on_done: Callback | None = None,
        on_loading: Callback | None = None,
        ticket: int | None = None,
        enforce_caps: bool = True,
        group: int | None = None,
        unit: int | None = None,
        attempts: int = 0,
    ) -> int:
        """Queue ``request`` for ``user_id``; returns its ticket. Call from the event loop.

        ``on_progress(step, total)`` (step 0 when the job starts) and ``on_done(outcome)`` run on
        the loop, in the caller's context; coroutine functions become tasks; so does
        ``on_loading(model)``, when the job's turn came and its model is being loaded first.
        Raises ``QueueFull`` over the per-user or global cap, unless ``enforce_caps`` is off
        (jobs recovered after a restart were accepted once already). Jobs submitted with the
        same ``unit`` (the cells of one comparison) count once against the caps: only the first
        of them can be refused. ``attempts``: how many times the job was started already (a job
        recovered after a restart), counted towards ``max_attempts``.
        """
        idle = self._bind_loop(asyncio.get_running_loop())
        request = self.engine.resolve(request)
        with self._lock:
            if enforce_caps and not (unit is not None and self.queue.has_unit(user_id, unit)):
                self.queue.check_capacity(user_id)
            ticket = next(self._tickets) if ticket is None else ticket
            job = Job(
                ticket,
                user_id,
                request,
                on_progress,
                on_done,
                contextvars.copy_context(),
                group=group,
                unit=ticket if unit is None else unit,
                attempts=max(0, attempts),
                on_loading=on_loading,
            )
            self.queue.add(job)
            self._outstanding += 1
            idle.clear()
            self._wake_locked()
        self.start()
        return ticket

    def _bind_loop(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """The loop that callbacks go back to: the first one the executor is used from."""
        if self._loop is None or self._idle is None:
            self._loop = loop
            self._idle = asyncio.Event()
        return self._idle

    def check_capacity(self, user_id: int) -> None:
        """Raise ``QueueFull`` if ``user_id`` could not submit now (checked before replying)."""
        with self._lock:
            self.queue.check_capacity(user_id)

    # -- inspecting ----------------------------------------------------------------------

    def position(self, ticket: int) -> int | None:
        """0 while running, 1 for the next to start, ...; None once finished or unknown."""
        with self._lock:
            return self.queue.position(ticket)

    def snapshot(self) -> list[QueueEntry]:
        """Every job, running ones first, then queued ones in the order they will start."""
        with self._lock:
            return self.queue.snapshot()

    def pending(self, user_id: int | None = None, *, group: int | EllipsisType | None = ...) -> int:
        """How many requests are queued or running (for one user, or for everyone; in one group
        if ``group`` is given). A comparison counts once, however many cells it has left."""
        with self._lock:
            return self.queue.pending(user_id, group=group)

    # -- cancelling ----------------------------------------------------------------------

    def cancel(self, ticket: int) -> bool:
        """Cancel one job: dropped if queued, stopped at its next step if running."""
        with self._lock:
            job = self.queue.jobs.get(ticket)
            return job is not None and self._cancel_locked(job)

    def cancel_user(self, user_id: int) -> list[QueueEntry]:
        """Cancel every queued and running job of ``user_id``; returns those it cancelled."""
        with self._lock:
            jobs = [j for j in self.queue.jobs.values() if j.user_id == user_id]
            entries = [self.queue.entry(j) for j in jobs]
            return [e for j, e in zip(jobs, entries, strict=True) if self._cancel_locked(j)]

    def _cancel_locked(self, job: Job) -> bool:
        if job.cancelled or job.ended:
            return False
        job.cancelled = True
        if self.queue.is_running(job):
            self.backend.stop(job)  # the worker reports the outcome
            return True
        self.queue.finish(job)
        self._finish(job, JobOutcome(job.ticket, job.user_id, "cancelled", job.request))
        return True

    # -- waiting -------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Return once nothing is queued or running and every callback has run."""
        while self._idle is not None and not self._is_idle():
            await self._idle.wait()
            await asyncio.sleep(0)  # let done-callbacks of just-finished tasks run

    def _is_idle(self) -> bool:
        return self._outstanding == 0 and not self._tasks

    # -- for backends: a batch's life ----------------------------------------------------

    def _take_batch(self, ready: Callable[[DrawRequest], bool] | None = None) -> list[Job]:
        """The next fair batch (under the lock); empty when nothing may start. ``ready``: which
        requests the worker can draw without loading a model (preferred, within a bounded
        skip); by default the engine's own answer, where it holds several models."""
        if ready is None:
            ready = getattr(self.engine, "ready_for", None)
        return self.queue.take_batch(ready)

    def _loading(self, batch: Sequence[Job], model: str) -> None:
        """Tell each job of ``batch`` that its model is being loaded before it draws."""
        for job in batch:
            if job.on_loading is not None and not job.cancelled:
                self._dispatch(job, job.on_loading, (model,), done=False)

    def _begin(self, batch: list[Job], *, report: bool = True) -> None:
        """Before a batch draws, off the loop: count the attempt, record it, report step 0
        (unless ``report`` is off: its model loads first, and says so)."""
        with self._lock:
            for job in batch:
                job.attempts += 1
        if self.on_start is not None:
            try:
                self.on_start([job.ticket for job in batch])
            except Exception:
                log.exception("recording the start of jobs %s failed", [j.ticket for j in batch])
        if report:
            self._report_start(batch)

    def _report_start(self, batch: Sequence[Job]) -> None:
        for job in batch:
            self._progress(job, 0, job.request.steps, force=True)

    def _complete(self, job: Job, result: DrawResult | None) -> None:
        with self._lock:
            self.queue.finish(job)
            if job.cancelled or result is None:
                outcome = self._outcome(job, "cancelled")
            else:
                outcome = self._outcome(job, "done", result=result)
            if not self._closing:
                self._finish(job, outcome)

    def _fail(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, EaselError):
            log.info("job %s failed: %s", job.ticket, exc)
        else:
            log.error("job %s failed", job.ticket, exc_info=exc)
        with self._lock:
            self.queue.finish(job)
            outcome = self._outcome(job, "failed", error=exc)
            if job.cancelled:
                outcome = self._outcome(job, "cancelled")
            if not self._closing:
                self._finish(job, outcome)

    def _end_unfinished(self, batch: Sequence[Job], source: str) -> None:
        """End each job of ``batch`` that got no outcome: a ``source`` (engine, worker) that
        returned fewer results than requests must not leave a job running forever, holding a
        place under the caps while wait_idle waits on it."""
        for job in batch:
            if job.ended:
                continue
            if job.cancelled or self._closing:
                self._complete(job, None)
            else:
                self._fail(job, RuntimeError(f"the {source} finished without a result for it"))

    def _lost(self, jobs: Sequence[Job], why: str, *, started: bool = True) -> None:
        """The worker drawing ``jobs`` went away: each that has no outcome yet goes back to the
        front of its user's queue, or fails once it was started ``max_attempts`` times.
        ``started`` False: the worker was gone before the batch reached it, so no attempt was
        counted and the jobs simply go back."""
        again: list[Job] = []
        with self._lock:
            for job in jobs:
                if job.ended or job.ticket not in self.queue.jobs:
                    continue
                if self._closing:
                    self.queue.finish(job)
                elif job.cancelled:
                    self.queue.finish(job)
                    self._finish(job, self._outcome(job, "cancelled"))
                elif started and job.attempts >= self.max_attempts:
                    self.queue.finish(job)
                    error = WorkerLost(
                        messages.ngettext(
                            "The drawing stopped {n} time because the machine drawing it went "
                            "away ({why}), so it won't be tried again.",
                            "The drawing stopped {n} times because the machine drawing it went "
                            "away ({why}), so it won't be tried again.",
                            job.attempts,
                            why=why,
                        )
                    )
                    log.warning("job %s failed: %s", job.ticket, error)
                    self._finish(job, self._outcome(job, "failed", error=error))
                else:
                    again.append(job)
            if again:
                log.warning(
                    "jobs %s go back to the front of the queue: %s", [j.ticket for j in again], why
                )
                self.queue.requeue(again)
                self._wake_locked()

    def _outcome(self, job: Job, status: Status, **kw: Any) -> JobOutcome:
        attempts = max(1, job.attempts)
        return JobOutcome(job.ticket, job.user_id, status, job.request, attempts=attempts, **kw)

    def _progress(self, job: Job, step: int, total: int, *, force: bool = False) -> None:
        now = time.perf_counter()  # time.monotonic may be frozen by test clocks
        if job.on_progress is None or (
            not force and now - job.last_progress < self.progress_interval
        ):
            return
        job.last_progress = now
        self._dispatch(job, job.on_progress, (step, total), done=False)

    def _finish(self, job: Job, outcome: JobOutcome) -> None:
        if job.ended:
            return  # exactly one outcome per job, whatever path reports it
        job.ended = True
        self._dispatch(job, job.on_done, (outcome,), done=True)

    # -- back to the event loop ----------------------------------------------------------

    def _dispatch(self, job: Job, callback: Callback | None, args: tuple[Any, ...], *, done: bool):
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Bind everything now: a closure would see the worker's variables after they moved on.
        call = functools.partial(self._on_loop, callback, args, done)
        try:
            # The scheduling callback itself runs in the submitter's context too: test harnesses
            # (SimCord) track work and time through context variables, not only inside tasks.
            loop.call_soon_threadsafe(call, context=job.context)
        except RuntimeError:
            log.warning("event loop closed; dropped a callback for job %s", job.ticket)

    def _on_loop(self, callback: Callback | None, args: tuple[Any, ...], done: bool) -> None:
        # Runs in the submitter's context; each callback gets its own copy of it.
        ctx = contextvars.copy_context()
        try:
            value = ctx.run(callback, *args) if callback is not None else None
        except Exception:
            log.exception("callback for a job failed")
            value = None
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                task = asyncio.get_running_loop().create_task(value, context=ctx)
            else:
                task = asyncio.ensure_future(value)
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._task_done, done))
        elif done:
            self._outstanding -= 1
            self._check_idle()

    def _task_done(self, done: bool, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("callback task failed", exc_info=task.exception())
        if done:
            self._outstanding -= 1
        self._check_idle()

    def _check_idle(self) -> None:
        if self._idle is not None and self._is_idle():
            self._idle.set()


# -- drawing a batch, wherever it runs ---------------------------------------------------


def draw_batch(
    engine: Any,
    requests: Sequence[DrawRequest],
    on_step: BatchStepHook,
    skip: Callable[[int], bool] = lambda i: False,
) -> Iterator[tuple[int, DrawResult | Exception | None]]:
    """Draw ``requests`` as one batch; yields ``(index, outcome)`` for each: its result, the
    exception it failed with, or None when stopped (``on_step`` raised ``_Stop``).

    If the batch fails, each request is drawn alone (those ``skip`` names are not: None), so
    one bad job (or a batch too big for memory) does not sink the others.
    """
    everyone = list(range(len(requests)))
    try:
        results = _attempt(engine, requests, functools.partial(on_step, everyone))
    except Exception as exc:
        if len(requests) == 1:
            yield 0, exc
            return
        log.warning("batch of %d failed (%r); retrying its jobs one at a time", len(requests), exc)
        release_memory()
        for i, request in enumerate(requests):
            if skip(i):
                yield i, None
                continue
            try:
                (result,) = _attempt(engine, [request], functools.partial(on_step, [i]))
            except Exception as solo_exc:
                yield i, solo_exc
            else:
                yield i, result
        return
    yield from enumerate(results)


def _attempt(
    engine: Any, requests: Sequence[DrawRequest], on_step: Callable[[int, int], None]
) -> list[DrawResult | None]:
    """Run a batch; None for each job if it was stopped midway."""
    import torch

    oom = False
    try:
        return list(engine.run_batch(list(requests), on_step=on_step))
    except _Stop:
        return [None] * len(requests)
    except torch.cuda.OutOfMemoryError:
        oom = True
    # Outside the except block: the traceback there still holds the tensors that
    # filled the GPU, and emptying the cache now frees them.
    if oom:
        release_memory()
        raise GpuOutOfMemory(
            N_("That drawing did not fit in the GPU's memory. Try a smaller size or fewer images.")
        )
    raise AssertionError("unreachable")


def needs_loading(engine: Any, request: DrawRequest) -> str | None:
    """The model ``engine`` must load before drawing ``request`` (an engine of one model, or a
    ``pipeline.models.ModelSet`` with it ready: None)."""
    check = getattr(engine, "needs_loading", None)
    return check(request) if check is not None else None


# -- the local backend: one worker thread in this process -------------------------------


class LocalBackend:
    """Draws on one thread of this process (the default): the engine lives here."""

    def __init__(self) -> None:
        self._executor: Executor | None = None
        self._thread: threading.Thread | None = None

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread, once started."""
        return self._thread

    def start(self, executor: Executor) -> None:
        self._executor = executor
        with executor._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            executor._closing = False
            self._spawn_locked()

    def _spawn_locked(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="easel-gpu", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        pass  # the thread waits on the executor's condition, which was notified

    def stop(self, job: Job) -> None:
        pass  # the step hook sees the flag

    def close(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _serve(self) -> None:
        ex = self._executor
        assert ex is not None
        batch: list[Job] = []
        try:
            while True:
                with ex._lock:
                    while not ex._closing and not ex.queue.ready():
                        ex._lock.wait()
                    if ex._closing:
                        return
                    batch = ex._take_batch()
                self._run(ex, batch)  # every job of it ends there, leaving the queue
                batch = []
        except BaseException as exc:
            log.exception("the GPU worker thread died; restarting it")
            with ex._lock:
                # The batch it died in: every job of it that has no outcome yet fails now, so it
                # stops counting against the caps and its user hears about it.
                for job in batch:
                    ex.queue.finish(job)
                    if not ex._closing:
                        ex._finish(job, ex._outcome(job, "failed", error=exc))
                if not ex._closing:
                    # Under the lock: a start() from the loop must see the replacement already
                    # alive, or it starts a second worker and two batches share the pipeline.
                    self._spawn_locked()

    def _run(self, ex: Executor, batch: list[Job]) -> None:
        model = needs_loading(ex.engine, batch[0].request)
        ex._begin(batch, report=model is None)
        if model is not None:
            ex._loading(batch, model)
            try:
                ex.engine.ensure(model)
            except Exception as exc:  # ModelUnavailable: its jobs fail, saying so
                for job in batch:
                    ex._fail(job, exc)
                return
            ex._report_start(batch)

        def on_step(indices: list[int], step: int, total: int) -> None:
            if ex._closing or all(batch[i].cancelled for i in indices):
                raise _Stop
            for i in indices:
                if not batch[i].cancelled:
                    ex._progress(batch[i], step, total, force=step == total)

        requests = [j.request for j in batch]
        for i, outcome in draw_batch(ex.engine, requests, on_step, lambda i: batch[i].cancelled):
            if isinstance(outcome, Exception):
                ex._fail(batch[i], outcome)
            else:
                ex._complete(batch[i], outcome)
        ex._end_unfinished(batch, "engine")
