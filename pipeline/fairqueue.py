"""Who draws next: per-user queues served round-robin, caps, pauses and batch selection.

Pure bookkeeping, no threads and no I/O: the executor owns one ``FairQueue`` and calls it under
its lock, whichever backend (a local thread, Ray workers) does the drawing. Every worker asks the
same queue for its next batch, so all of them share one fair order.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, Literal

from pipeline import messages
from pipeline.engine import batch_key
from pipeline.errors import QueueFull
from pipeline.request import DrawRequest

Callback = Callable[..., Awaitable[Any] | Any]
# At most this many turns may a job lose to jobs for a model that is loaded already, so the GPU
# does not thrash between models but nobody waits long for theirs.
MAX_PASSES = 2


@dataclass(frozen=True)
class QueueEntry:
    """One job as ``snapshot`` shows it."""

    ticket: int
    user_id: int
    group: int | None
    state: Literal["running", "queued"]
    # The request this job is part of: its own ticket, or a comparison's id for each cell.
    unit: int = 0


@dataclass(eq=False)
class Job:
    """One submitted request and everything needed to report back on it."""

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
    # How many times a batch holding this job was started (a lost worker's jobs run again).
    attempts: int = 0
    # How many turns it gave up to jobs whose model was loaded (at most MAX_PASSES).
    passed: int = 0
    # Called with the model's name when the job waits for its model to be loaded.
    on_loading: Callback | None = None


class FairQueue:
    """Per-user FIFO queues served round-robin, with per-user and global caps.

    Not thread-safe: the owner serialises every call (the executor's lock).
    """

    def __init__(self, *, max_per_user: int = 3, max_queue: int = 50, max_batch: int = 4) -> None:
        self.max_per_user = max_per_user
        self.max_queue = max_queue
        self.max_batch = max(1, max_batch)
        self.jobs: dict[int, Job] = {}  # queued and running, by ticket
        self.running: list[Job] = []  # on every worker
        self.paused = False
        self.paused_groups: set[int | None] = set()
        self._queues: dict[int, deque[Job]] = {}
        self._rotation: deque[int] = deque()  # users with queued jobs, in serving order
        # Users whose batch started and who have more queued: they rejoin the rotation at the
        # next take, so whoever arrives meanwhile is served before their next job.
        self._held: list[int] = []

    # -- adding and capacity -------------------------------------------------------------

    def add(self, job: Job) -> None:
        """Queue ``job`` at the back of its user's queue (caps are checked by the caller)."""
        if job.ticket in self.jobs:
            raise ValueError(f"ticket {job.ticket} is already queued")
        self.jobs[job.ticket] = job
        if job.user_id not in self._queues:
            self._queues[job.user_id] = deque()
            self._rotation.append(job.user_id)  # ahead of the held ones
        self._queues[job.user_id].append(job)

    def has_unit(self, user_id: int, unit: int) -> bool:
        return any(j.unit == unit and j.user_id == user_id for j in self.jobs.values())

    @staticmethod
    def units(jobs: Iterable[Job]) -> int:
        """How many requests ``jobs`` are: a comparison's cells count once."""
        return len({(j.user_id, j.unit) for j in jobs})

    def check_capacity(self, user_id: int) -> None:
        """Raise ``QueueFull`` if ``user_id`` could not submit now."""
        mine = self.units(j for j in self.jobs.values() if j.user_id == user_id)
        if mine >= self.max_per_user:
            raise QueueFull(
                messages.ngettext(
                    "You already have {n} drawing waiting or in progress (the limit is "
                    "{limit}). Wait for one to finish, or use /cancel.",
                    "You already have {n} drawings waiting or in progress (the limit is "
                    "{limit}). Wait for one to finish, or use /cancel.",
                    mine,
                    limit=self.max_per_user,
                )
            )
        if (everyone := self.units(self.jobs.values())) >= self.max_queue:
            raise QueueFull(
                messages.ngettext(
                    "The queue is full: {n} drawing is waiting or in progress. Please try "
                    "again in a few minutes.",
                    "The queue is full: {n} drawings are waiting or in progress. Please try "
                    "again in a few minutes.",
                    everyone,
                )
            )

    # -- inspecting ----------------------------------------------------------------------

    def fair_order(self, *, runnable: bool = False) -> list[Job]:
        """Queued jobs in the order they will start: round-robin over users, FIFO per user.

        ``runnable`` leaves out the jobs of paused groups (a user's jobs elsewhere still run).
        """
        queues = [
            [j for j in self._queues[u] if not (runnable and j.group in self.paused_groups)]
            for u in self._serving_order()
        ]
        order: list[Job] = []
        for depth in range(max((len(q) for q in queues), default=0)):
            order.extend(q[depth] for q in queues if depth < len(q))
        return order

    def position(self, ticket: int) -> int | None:
        """0 while running, 1 for the next to start, ...; None once finished or unknown."""
        if any(j.ticket == ticket for j in self.running):
            return 0
        for i, job in enumerate(self.fair_order(), start=1):
            if job.ticket == ticket:
                return i
        return None

    def snapshot(self) -> list[QueueEntry]:
        """Every job, running ones first, then queued ones in the order they will start."""
        running = [
            QueueEntry(j.ticket, j.user_id, j.group, "running", j.unit) for j in self.running
        ]
        return running + [
            QueueEntry(j.ticket, j.user_id, j.group, "queued", j.unit) for j in self.fair_order()
        ]

    def pending(self, user_id: int | None = None, *, group: int | EllipsisType | None = ...) -> int:
        """How many requests are queued or running (see ``Executor.pending``)."""
        return self.units(
            j
            for j in self.jobs.values()
            if (user_id is None or j.user_id == user_id) and (group is ... or j.group == group)
        )

    def entry(self, job: Job) -> QueueEntry:
        state: Literal["running", "queued"] = "running" if self.is_running(job) else "queued"
        return QueueEntry(job.ticket, job.user_id, job.group, state, job.unit)

    def is_running(self, job: Job) -> bool:
        return any(j is job for j in self.running)

    def has_runnable(self) -> bool:
        """Whether a job outside the paused groups is queued (the global pause aside)."""
        if not self.paused_groups:
            return bool(self._queues)
        return any(
            j.group not in self.paused_groups
            for u in self._serving_order()
            for j in self._queues[u]
        )

    def ready(self) -> bool:
        """Whether ``take_batch`` would return something now."""
        return not self.paused and self.has_runnable()

    # -- taking and giving back ----------------------------------------------------------

    def take_batch(self, ready: Callable[[DrawRequest], bool] | None = None) -> list[Job]:
        """Take the longest run of compatible jobs from the head of the fair order; they count
        as running until ``finish``. Empty when nothing may start.

        ``ready(request)``: whether a job could start without loading its model. The first
        such job among the users' next jobs goes ahead of those before it in the fair order,
        unless one of them already gave up ``MAX_PASSES`` turns that way: then the head goes
        first, and its model is loaded."""
        if not self.ready():
            return []
        self._rotation.extend(self._held)  # the last batch's users: to the back of the round
        self._held.clear()
        order = self.fair_order(runnable=True)
        start = self._preferred(order, ready) if ready is not None else 0
        for passed in order[:start]:
            passed.passed += 1
        head = order[start]
        key = batch_key(head.request)
        batch, images = [head], head.request.count
        for job in order[start + 1 :]:
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
        self.running.extend(batch)
        return batch

    @staticmethod
    def _preferred(order: list[Job], ready: Callable[[DrawRequest], bool]) -> int:
        """Where the batch starts in ``order``: the first job ready to draw, if the jobs before
        it may still give up a turn; else 0."""
        seen: set[int] = set()
        for i, job in enumerate(order):
            if job.user_id in seen:
                # Past every user's first job: a member's later job never goes ahead of their
                # earlier one, so their pictures still come in the order they asked.
                break
            seen.add(job.user_id)
            if ready(job.request):
                return i
            if job.passed >= MAX_PASSES:
                return 0  # it has waited enough: the head goes first, model loading or not
        return 0

    def finish(self, job: Job) -> None:
        """Forget a job that ended (queued or running)."""
        self.jobs.pop(job.ticket, None)
        self.running = [j for j in self.running if j is not job]
        queue = self._queues.get(job.user_id)
        if queue is not None and job in queue:
            queue.remove(job)
            if not queue:
                del self._queues[job.user_id]
                self._leave_rotation(job.user_id)

    def requeue(self, jobs: Iterable[Job]) -> None:
        """Put running jobs back at the front of their users' queues, their users first in the
        rotation: a job whose worker was lost is next, not last."""
        jobs = [j for j in jobs if j.ticket in self.jobs]
        for job in reversed(jobs):
            self.running = [j for j in self.running if j is not job]
            self._queues.setdefault(job.user_id, deque()).appendleft(job)
        for user_id in reversed(list(dict.fromkeys(j.user_id for j in jobs))):
            self._leave_rotation(user_id)
            self._rotation.appendleft(user_id)

    def _serving_order(self) -> list[int]:
        return [*self._rotation, *self._held]

    def _leave_rotation(self, user_id: int) -> None:
        if user_id in self._rotation:
            self._rotation.remove(user_id)
        if user_id in self._held:
            self._held.remove(user_id)
