"""The GPU executor: one worker thread, fair per-user queues, batching, progress, cancel, pause.

Only the worker thread touches the engine. Everything else is called from the event loop and
never blocks it; results travel back with ``loop.call_soon_threadsafe`` and run on the loop as
tasks created in the submitter's ``contextvars`` context.
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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, Literal

from pipeline.engine import batch_key
from pipeline.errors import EaselError, GpuOutOfMemory, QueueFull
from pipeline.request import DrawRequest, DrawResult

log = logging.getLogger(__name__)

Callback = Callable[..., Awaitable[Any] | Any]
Status = Literal["done", "failed", "cancelled"]


@dataclass(frozen=True)
class QueueEntry:
    """One job as ``snapshot`` shows it."""

    ticket: int
    user_id: int
    group: int | None
    state: Literal["running", "queued"]
    # The request this job is part of: its own ticket, or a comparison's id for each cell.
    unit: int = 0


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended; exactly one is delivered to each submitted job's ``on_done``."""

    ticket: int
    user_id: int
    status: Status
    request: DrawRequest
    result: DrawResult | None = None
    error: BaseException | None = None

    @property
    def message(self) -> str:
        """What to tell the user when the job did not produce images."""
        if self.status == "cancelled":
            return "This drawing was cancelled."
        if isinstance(self.error, EaselError):
            return str(self.error)
        return "Something went wrong while drawing this; the error has been logged."


@dataclass(eq=False)
class _Job:
    ticket: int
    user_id: int
    request: DrawRequest
    on_progress: Callback | None
    on_done: Callback | None
    context: contextvars.Context
    # Who the job belongs to besides its user (the bot: its server; None: DMs). Pausing a group
    # holds its jobs back while others run.
    group: int | None = None
    # Jobs sharing a unit (the cells of one comparison) count as one request against the caps,
    # but each is served on its own turn of the round-robin: fairness is by the picture.
    unit: int = 0
    cancelled: bool = False
    # Set when on_done has been dispatched: every job gets exactly one outcome.
    ended: bool = False
    last_progress: float = field(default=-1e9)


class _Stop(BaseException):
    """Raised from the step hook to interrupt a batch (cancel or close)."""


class Executor:
    """Runs draw requests on one thread, serving users round-robin, batching compatible jobs."""

    def __init__(
        self,
        engine: Any,
        *,
        max_per_user: int = 3,
        max_queue: int = 50,
        max_batch: int = 4,
        progress_interval: float = 0.5,
        on_start: Callable[[list[int]], None] | None = None,
    ) -> None:
        """``on_start(tickets)`` runs on the worker thread before a batch starts and may block
        briefly: the bot uses it to record each job's attempt before drawing, so a job that kills
        the process is known to have been tried."""
        self.engine = engine
        self.on_start = on_start
        self.max_per_user = max_per_user
        self.max_queue = max_queue
        self.max_batch = max(1, max_batch)
        self.progress_interval = progress_interval
        self._lock = threading.Condition()
        self._queues: dict[int, deque[_Job]] = {}
        self._rotation: deque[int] = deque()  # users with queued jobs, in serving order
        # Users whose batch is running and who have more queued: they rejoin the rotation at the
        # next take, so whoever arrives meanwhile is served before their next job.
        self._held: list[int] = []
        self._jobs: dict[int, _Job] = {}  # queued and running, by ticket
        self._running: list[_Job] = []
        self._tickets = itertools.count(1)
        self._paused = False
        self._paused_groups: set[int | None] = set()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Loop-side bookkeeping for wait_idle: jobs whose on_done has not finished yet, and
        # callback tasks still running.
        self._outstanding = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        self._idle: asyncio.Event | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closing = False
            self._spawn_locked()

    def _spawn_locked(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="easel-gpu", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = 30) -> None:
        """Stop the worker and join it; the running batch stops at its next step.

        Queued jobs are dropped without callbacks: they are still recorded as queued in the
        store, which re-queues them on the next start.
        """
        with self._lock:
            self._closing = True
            for job in self._running:
                job.cancelled = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def paused(self) -> bool:
        """Whether everything is paused (the operator's pause)."""
        return self._paused

    def is_paused(self, group: int | None) -> bool:
        """Whether jobs of ``group`` wait: paused everywhere, or that group alone."""
        return self._paused or group in self._paused_groups

    def pause(self) -> None:
        """Start nothing new for anyone (the operator's pause); the running batch finishes and
        the queue is kept."""
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._lock.notify_all()

    def pause_group(self, group: int | None) -> None:
        """Start none of ``group``'s jobs (one server's pause); other groups' jobs keep running."""
        with self._lock:
            self._paused_groups.add(group)

    def resume_group(self, group: int | None) -> None:
        with self._lock:
            self._paused_groups.discard(group)
            self._lock.notify_all()

    # -- submitting ----------------------------------------------------------------------

    def submit(
        self,
        request: DrawRequest,
        *,
        user_id: int,
        on_progress: Callback | None = None,
        on_done: Callback | None = None,
        ticket: int | None = None,
        enforce_caps: bool = True,
        group: int | None = None,
        unit: int | None = None,
    ) -> int:
        """Queue ``request`` for ``user_id``; returns its ticket. Call from the event loop.

        ``on_progress(step, total)`` (step 0 when the job starts) and ``on_done(outcome)`` run on
        the loop, in the caller's context; coroutine functions become tasks.
        Raises ``QueueFull`` over the per-user or global cap, unless ``enforce_caps`` is off
        (jobs recovered after a restart were accepted once already). Jobs submitted with the
        same ``unit`` (the cells of one comparison) count once against the caps: only the first
        of them can be refused.
        """
        loop = asyncio.get_running_loop()
        if self._loop is None or self._idle is None:
            self._loop = loop
            self._idle = asyncio.Event()
        idle = self._idle
        request = self.engine.resolve(request)
        with self._lock:
            if enforce_caps and not (unit is not None and self._has_unit(user_id, unit)):
                self._check_capacity_locked(user_id)
            ticket = next(self._tickets) if ticket is None else ticket
            if ticket in self._jobs:
                raise ValueError(f"ticket {ticket} is already queued")
            job = _Job(
                ticket,
                user_id,
                request,
                on_progress,
                on_done,
                contextvars.copy_context(),
                group=group,
                unit=ticket if unit is None else unit,
            )
            self._jobs[ticket] = job
            if user_id not in self._queues:
                self._queues[user_id] = deque()
                self._rotation.append(user_id)  # ahead of the held ones
            self._queues[user_id].append(job)
            self._outstanding += 1
            idle.clear()
            self._lock.notify_all()
        self.start()
        return ticket

    def check_capacity(self, user_id: int) -> None:
        """Raise ``QueueFull`` if ``user_id`` could not submit now (checked before replying)."""
        with self._lock:
            self._check_capacity_locked(user_id)

    def _has_unit(self, user_id: int, unit: int) -> bool:
        return any(j.unit == unit and j.user_id == user_id for j in self._jobs.values())

    def _units(self, jobs: Any) -> int:
        """How many requests ``jobs`` are: a comparison's cells count once."""
        return len({(j.user_id, j.unit) for j in jobs})

    def _check_capacity_locked(self, user_id: int) -> None:
        mine = self._units(j for j in self._jobs.values() if j.user_id == user_id)
        if mine >= self.max_per_user:
            raise QueueFull(
                f"You already have {mine} drawing{'s' if mine != 1 else ''} waiting or in "
                f"progress (the limit is {self.max_per_user}). Wait for one to finish, "
                "or use /cancel."
            )
        if (everyone := self._units(self._jobs.values())) >= self.max_queue:
            raise QueueFull(
                f"The queue is full: {everyone} drawings are waiting or in progress. "
                "Please try again in a few minutes."
            )

    # -- inspecting ----------------------------------------------------------------------

    def _fair_order(self, *, runnable: bool = False) -> list[_Job]:
        """Queued jobs in the order they will start: round-robin over users, FIFO per user.

        ``runnable`` leaves out the jobs of paused groups (a user's jobs elsewhere still run).
        """
        queues = [
            [j for j in self._queues[u] if not (runnable and j.group in self._paused_groups)]
            for u in self._serving_order()
        ]
        order: list[_Job] = []
        for depth in range(max((len(q) for q in queues), default=0)):
            order.extend(q[depth] for q in queues if depth < len(q))
        return order

    def position(self, ticket: int) -> int | None:
        """0 while running, 1 for the next to start, ...; None once finished or unknown."""
        with self._lock:
            if any(j.ticket == ticket for j in self._running):
                return 0
            for i, job in enumerate(self._fair_order(), start=1):
                if job.ticket == ticket:
                    return i
        return None

    def snapshot(self) -> list[QueueEntry]:
        """Every job, running ones first, then queued ones in the order they will start."""
        with self._lock:
            running = [
                QueueEntry(j.ticket, j.user_id, j.group, "running", j.unit) for j in self._running
            ]
            return running + [
                QueueEntry(j.ticket, j.user_id, j.group, "queued", j.unit)
                for j in self._fair_order()
            ]

    def pending(self, user_id: int | None = None, *, group: int | EllipsisType | None = ...) -> int:
        """How many requests are queued or running (for one user, or for everyone; in one group
        if ``group`` is given). A comparison counts once, however many cells it has left."""
        with self._lock:
            return self._units(
                j
                for j in self._jobs.values()
                if (user_id is None or j.user_id == user_id) and (group is ... or j.group == group)
            )

    # -- cancelling ----------------------------------------------------------------------

    def cancel(self, ticket: int) -> bool:
        """Cancel one job: dropped if queued, stopped at its next step if running."""
        with self._lock:
            job = self._jobs.get(ticket)
            return job is not None and self._cancel_locked(job)

    def cancel_user(self, user_id: int) -> list[QueueEntry]:
        """Cancel every queued and running job of ``user_id``; returns those it cancelled."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.user_id == user_id]
            running = set(map(id, self._running))
            return [
                QueueEntry(
                    j.ticket,
                    j.user_id,
                    j.group,
                    "running" if id(j) in running else "queued",
                    j.unit,
                )
                for j in jobs
                if self._cancel_locked(j)
            ]

    def _cancel_locked(self, job: _Job) -> bool:
        if job.cancelled or job.ended:
            return False
        job.cancelled = True
        if job in self._running:
            return True  # the step hook stops it; the worker reports the outcome
        queue = self._queues.get(job.user_id)
        if queue is not None and job in queue:
            queue.remove(job)
            if not queue:
                del self._queues[job.user_id]
                self._leave_rotation(job.user_id)
        self._jobs.pop(job.ticket, None)
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

    # -- the worker thread ---------------------------------------------------------------

    def _serve(self) -> None:
        batch: list[_Job] = []
        try:
            while True:
                with self._lock:
                    while not self._closing and (self._paused or not self._has_runnable()):
                        self._lock.wait()
                    if self._closing:
                        return
                    batch = self._take_batch()
                    self._running = batch
                try:
                    self._run(batch)
                finally:
                    with self._lock:
                        self._running = []
                batch = []
        except BaseException as exc:
            log.exception("the GPU worker thread died; restarting it")
            with self._lock:
                # The batch it died in: every job of it that has no outcome yet fails now, so it
                # stops counting against the caps and its user hears about it.
                for job in batch:
                    self._jobs.pop(job.ticket, None)
                    if not self._closing:
                        self._finish(
                            job,
                            JobOutcome(job.ticket, job.user_id, "failed", job.request, error=exc),
                        )
                self._running = []
                if not self._closing:
                    # Under the lock: a start() from the loop must see the replacement already
                    # alive, or it starts a second worker and two batches share the pipeline.
                    self._spawn_locked()

    def _has_runnable(self) -> bool:
        if not self._paused_groups:
            return bool(self._queues)
        return any(
            j.group not in self._paused_groups
            for u in self._serving_order()
            for j in self._queues[u]
        )

    def _serving_order(self) -> list[int]:
        return [*self._rotation, *self._held]

    def _leave_rotation(self, user_id: int) -> None:
        if user_id in self._rotation:
            self._rotation.remove(user_id)
        if user_id in self._held:
            self._held.remove(user_id)

    def _take_batch(self) -> list[_Job]:
        """Take the longest run of compatible jobs from the head of the fair order."""
        self._rotation.extend(self._held)  # the last batch's users: to the back of the round
        self._held.clear()
        order = self._fair_order(runnable=True)
        head = order[0]
        key = batch_key(head.request)
        batch, images = [head], head.request.count
        for job in order[1:]:
            if batch_key(job.request) != key or images + job.request.count > self.max_batch:
                break  # stop at the first misfit: batching never reorders the queue
            batch.append(job)
            images += job.request.count
        for job in batch:
            queue = self._queues[job.user_id]
            queue.remove(job)  # not always the head: a paused group's jobs may stand before it
            self._leave_rotation(job.user_id)
            if queue:
                self._held.append(job.user_id)
            else:
                del self._queues[job.user_id]
        return batch

    def _run(self, batch: list[_Job]) -> None:
        if self.on_start is not None:
            try:
                self.on_start([job.ticket for job in batch])
            except Exception:
                log.exception("recording the start of jobs %s failed", [j.ticket for j in batch])
        for job in batch:
            self._progress(job, 0, job.request.steps, force=True)
        try:
            results = self._attempt(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            # One bad job (or a batch too big for memory) must not sink the others.
            log.warning("batch of %d failed (%r); retrying its jobs one at a time", len(batch), exc)
            self._release_memory()
            for job in batch:
                if job.cancelled:
                    self._complete(job, None)
                    continue
                try:
                    (result,) = self._attempt([job])
                except Exception as solo_exc:
                    self._fail(job, solo_exc)
                else:
                    self._complete(job, result)
            return
        for job, result in zip(batch, results, strict=True):
            self._complete(job, result)

    def _attempt(self, batch: list[_Job]) -> list[DrawResult | None]:
        """Run a batch; None for each job if every job in it was cancelled midway."""
        import torch

        def on_step(step: int, total: int) -> None:
            if self._closing or all(j.cancelled for j in batch):
                raise _Stop
            for job in batch:
                if not job.cancelled:
                    self._progress(job, step, total, force=step == total)

        oom = False
        try:
            return list(self.engine.run_batch([j.request for j in batch], on_step=on_step))
        except _Stop:
            return [None] * len(batch)
        except torch.cuda.OutOfMemoryError:
            oom = True
        # Outside the except block: the traceback there still holds the tensors that
        # filled the GPU, and emptying the cache now frees them.
        if oom:
            self._release_memory()
            raise GpuOutOfMemory(
                "That drawing did not fit in the GPU's memory. Try a smaller size or fewer images."
            )
        raise AssertionError("unreachable")

    @staticmethod
    def _release_memory() -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _complete(self, job: _Job, result: DrawResult | None) -> None:
        with self._lock:
            self._jobs.pop(job.ticket, None)
            if job.cancelled or result is None:
                outcome = JobOutcome(job.ticket, job.user_id, "cancelled", job.request)
            else:
                outcome = JobOutcome(job.ticket, job.user_id, "done", job.request, result=result)
            if not self._closing:
                self._finish(job, outcome)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if isinstance(exc, EaselError):
            log.info("job %s failed: %s", job.ticket, exc)
        else:
            log.error("job %s failed", job.ticket, exc_info=exc)
        with self._lock:
            self._jobs.pop(job.ticket, None)
            outcome = JobOutcome(job.ticket, job.user_id, "failed", job.request, error=exc)
            if job.cancelled:
                outcome = JobOutcome(job.ticket, job.user_id, "cancelled", job.request)
            if not self._closing:
                self._finish(job, outcome)

    def _progress(self, job: _Job, step: int, total: int, *, force: bool = False) -> None:
        now = time.perf_counter()  # time.monotonic may be frozen by test clocks
        if job.on_progress is None or (
            not force and now - job.last_progress < self.progress_interval
        ):
            return
        job.last_progress = now
        self._dispatch(job, job.on_progress, (step, total), done=False)

    def _finish(self, job: _Job, outcome: JobOutcome) -> None:
        if job.ended:
            return  # exactly one outcome per job, whatever path reports it
        job.ended = True
        self._dispatch(job, job.on_done, (outcome,), done=True)

    # -- back to the event loop ----------------------------------------------------------

    def _dispatch(self, job: _Job, callback: Callback | None, args: tuple[Any, ...], *, done: bool):
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
