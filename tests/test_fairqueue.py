"""The fair queue alone: no threads, no engine, no loop; the rules every backend draws by."""

from __future__ import annotations

import contextvars

import pytest

from pipeline.errors import QueueFull
from pipeline.fairqueue import FairQueue, Job, QueueEntry
from pipeline.request import DrawRequest


class Tickets:
    def __init__(self, queue: FairQueue) -> None:
        self.queue = queue
        self.next = 1

    def add(self, user: int, *, steps: int = 3, count: int = 1, **kw) -> Job:
        request = DrawRequest("a cat", steps=steps, count=count, seed=self.next, sampler="pndm")
        job = Job(self.next, user, request, None, None, contextvars.copy_context(), **kw)
        if "unit" not in kw:
            job.unit = job.ticket
        self.next += 1
        self.queue.add(job)
        return job


def tickets(jobs) -> list[int]:
    return [j.ticket for j in jobs]


def test_users_are_served_round_robin_and_each_in_order():
    q = FairQueue(max_batch=1)
    t = Tickets(q)
    a = [t.add(1) for _ in range(3)]
    b = t.add(2)
    c = [t.add(3) for _ in range(2)]
    expected = [a[0], b, c[0], a[1], c[1], a[2]]
    assert tickets(q.fair_order()) == tickets(expected)
    assert q.position(b.ticket) == 2 and q.position(a[2].ticket) == 6
    taken = []
    while q.ready():
        (job,) = q.take_batch()
        assert q.position(job.ticket) == 0
        q.finish(job)
        taken.append(job)
    assert tickets(taken) == tickets(expected)
    assert q.position(a[0].ticket) is None and q.pending() == 0


def test_caps_count_requests_and_a_comparisons_cells_once():
    q = FairQueue(max_per_user=2, max_queue=3)
    t = Tickets(q)
    for _ in range(4):
        t.add(1, unit=100)  # one comparison of 4 cells
    assert q.pending(1) == 1
    t.add(1)
    with pytest.raises(QueueFull, match="You already have 2 drawings waiting"):
        q.check_capacity(1)
    assert q.has_unit(1, 100) and not q.has_unit(2, 100)
    t.add(2)
    with pytest.raises(QueueFull, match="The queue is full: 3 drawings"):
        q.check_capacity(3)
    with pytest.raises(ValueError, match="already queued"):
        q.add(q.jobs[1])


def test_a_batch_is_the_longest_compatible_run_from_the_head_within_max_batch():
    q = FairQueue(max_batch=4)
    t = Tickets(q)
    first = t.add(1, count=2)
    second = t.add(2)
    misfit = t.add(3, steps=9)  # other settings: the batch stops here, nothing is reordered
    after = t.add(4)
    assert tickets(q.take_batch()) == [first.ticket, second.ticket]
    assert [e.state for e in q.snapshot()] == ["running", "running", "queued", "queued"]
    for job in (first, second):
        q.finish(job)
    assert tickets(q.take_batch()) == [misfit.ticket]
    q.finish(misfit)
    big = t.add(5, count=4)
    assert tickets(q.take_batch()) == [after.ticket]  # 1 + 4 images is over the limit
    q.finish(after)
    assert tickets(q.take_batch()) == [big.ticket]


def test_paused_everywhere_or_per_group():
    q = FairQueue(max_batch=1)
    t = Tickets(q)
    held = t.add(1, group=100)
    elsewhere = t.add(1, group=200)  # the same user, in another server
    other = t.add(2, group=None)
    q.paused = True
    assert not q.ready() and q.take_batch() == []
    assert tickets(q.fair_order()) == [held.ticket, other.ticket, elsewhere.ticket]  # unchanged
    q.paused = False
    q.paused_groups.add(100)
    served = []
    while q.ready():
        (job,) = q.take_batch()
        served.append(job)
        q.finish(job)
    assert tickets(served) == [elsewhere.ticket, other.ticket]
    assert q.position(held.ticket) == 1 and q.pending(group=100) == 1
    q.paused_groups.discard(100)
    assert tickets(q.take_batch()) == [held.ticket]


def test_someone_arriving_while_a_user_draws_goes_before_that_users_next_job():
    q = FairQueue(max_batch=1)
    t = Tickets(q)
    alice = [t.add(1) for _ in range(3)]
    (running,) = q.take_batch()
    assert running is alice[0]
    bob = t.add(2)  # arrives while Alice's first job draws
    assert tickets(q.fair_order()) == [bob.ticket, alice[1].ticket, alice[2].ticket]
    # A second worker takes the next batch before the first one finished: still Bob first.
    assert tickets(q.take_batch()) == [bob.ticket]
    assert tickets(q.take_batch()) == [alice[1].ticket]


def test_jobs_given_back_go_first_in_their_users_queue_and_the_rotation():
    q = FairQueue(max_batch=4)
    t = Tickets(q)
    a1, b1, a2, c1 = t.add(1), t.add(2), t.add(1), t.add(3)
    batch = q.take_batch()
    assert tickets(batch) == [a1.ticket, b1.ticket, c1.ticket, a2.ticket]
    q.finish(c1)  # drawn before the worker was lost
    q.requeue([a1, b1, c1, a2])  # c1 ended: not given back
    assert q.running == [] and c1.ticket not in q.jobs
    assert tickets(q.fair_order()) == [a1.ticket, b1.ticket, a2.ticket]
    assert q.position(a1.ticket) == 1
    late = t.add(4)  # a newcomer is behind them in the round, before their second jobs
    assert tickets(q.fair_order()) == [a1.ticket, b1.ticket, late.ticket, a2.ticket]


def test_a_cancelled_queued_job_leaves_no_trace():
    q = FairQueue()
    t = Tickets(q)
    only = t.add(1)
    q.finish(only)
    assert q.fair_order() == [] and not q.ready() and q.snapshot() == []
    job = t.add(2)
    assert q.snapshot() == [QueueEntry(job.ticket, 2, None, "queued", job.ticket)]


# -- several models: the loaded one is preferred, within a bounded skip --------------------


def add_for(t: Tickets, user: int, model: str) -> Job:
    job = t.add(user)
    job.request = DrawRequest("a cat", steps=3, seed=job.ticket, sampler="pndm", model=model)
    return job


def test_jobs_for_the_loaded_model_go_first_but_no_job_gives_up_more_than_two_turns():
    q = FairQueue(max_per_user=10, max_batch=1)
    t = Tickets(q)
    loaded = {"shapes"}

    def ready(request: DrawRequest) -> bool:
        return request.model in loaded

    waiting = add_for(t, 1, "sd")  # first in line, for the model that is not loaded
    others = [add_for(t, user, "shapes") for user in (2, 3, 4, 5)]
    taken = []
    for _ in range(3):
        (job,) = q.take_batch(ready)
        taken.append(job)
        q.finish(job)
    # Two jobs of the loaded model went ahead of it, then its turn came (and its model loads).
    assert tickets(taken) == tickets([others[0], others[1], waiting])
    assert waiting.passed == 2 and others[2].passed == 0
    loaded = {"sd"}
    (job,) = q.take_batch(ready)  # nobody ready: the fair order decides
    assert job is others[2]


def test_a_batch_holds_one_models_jobs_only():
    q = FairQueue(max_per_user=10, max_batch=4)
    t = Tickets(q)
    first = add_for(t, 1, "sd")
    add_for(t, 1, "shapes")
    add_for(t, 1, "sd")
    batch = q.take_batch(lambda r: True)
    assert batch == [first]  # the next job's model differs: it stops there, never reorders


def test_without_a_readiness_check_the_order_is_plain_round_robin():
    q = FairQueue(max_per_user=10, max_batch=1)
    t = Tickets(q)
    a = add_for(t, 1, "sd")
    b = add_for(t, 2, "shapes")
    assert tickets(q.take_batch()) == [a.ticket] and b.passed == 0


def test_a_members_later_job_for_the_loaded_model_never_overtakes_their_earlier_one():
    q = FairQueue(max_per_user=10, max_batch=1)
    t = Tickets(q)
    earlier = add_for(t, 1, "sd")
    add_for(t, 1, "shapes")
    (job,) = q.take_batch(lambda r: r.model == "shapes")
    assert job is earlier  # the member's own order holds, model loaded or not
