"""The executor on Ray: a real local cluster (a head and 3 nodes with one declared GPU each, CPU
only), real tiny pipelines in the workers, a real SQLite store, and the bot through SimCord.

One cluster and one set of 3 workers serve the module (starting them is most of its time); the
tests that share the workers run on one event loop, since the workers' dispatchers live on it.
A fourth worker of its own, without a GPU, holds two models (one ready at a time): the tests of
several models and of a lost worker share it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytest_asyncio

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")

from ray.cluster_utils import Cluster  # noqa: E402

from bot.store import InvalidTransition, Store  # noqa: E402
from pipeline.engine import DEFAULT_MODEL, Engine  # noqa: E402
from pipeline.errors import ModelLoadError, UnsupportedOption  # noqa: E402
from pipeline.executor import Executor, JobOutcome  # noqa: E402
from pipeline.fairqueue import Job  # noqa: E402
from pipeline.models import ModelSet, ModelSpec, ModelUnavailable, UnknownModel  # noqa: E402
from pipeline.ray_backend import (  # noqa: E402
    DrawWorker,
    RayBackend,
    RemoteModels,
    WorkerSpec,
    WorkersUnavailable,
    _Worker,
)
from pipeline.request import DrawRequest  # noqa: E402
from tests.imagecheck import assert_close_images  # noqa: E402

shared_loop = pytest.mark.asyncio(loop_scope="module")
TWO_MODELS = (ModelSpec("shapes", "tiny:shapes"), ModelSpec("sd", "tiny:sd"))


def req(seed: int, prompt: str = "a lighthouse", **kw) -> DrawRequest:
    return DrawRequest(prompt, **{"steps": 3, "seed": seed, "sampler": "pndm", **kw})


@pytest.fixture(scope="module")
def cluster():
    started = time.perf_counter()
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
    )
    for _ in range(3):
        c.add_node(num_cpus=1, num_gpus=1)  # a declared GPU: Ray schedules by it, nothing uses it
    ray.init(address=c.address, log_to_driver=False, logging_level=logging.WARNING)
    c.wait_for_nodes()
    logging.getLogger(__name__).info("cluster up in %.1f s", time.perf_counter() - started)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def backend(cluster, model_cache: Path, sd_engine):
    # sd_engine first: the tiny model is built once, here, before the workers load it.
    spec = WorkerSpec.single("tiny:sd", device="cpu", cache_dir=model_cache, torch_threads=1)
    b = RayBackend(spec, workers=3, gpus_per_worker=1, worker_timeout_s=60)
    b.connect()
    yield b
    b.close(30)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def executor(backend):
    ex = Executor(backend.engine, backend=backend, max_batch=4, progress_interval=0)
    ex.start()
    yield ex
    ex.close()


@pytest.fixture
def fresh(executor):
    """The shared executor with this test's settings, put back afterwards."""
    saved = executor.queue.max_batch, executor.on_start
    yield executor
    executor.queue.max_batch, executor.on_start = saved
    executor.resume()


async def all_workers_back(backend: RayBackend, seconds: float = 90) -> None:
    for _ in range(int(seconds / 0.1)):
        if all(backend.workers):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"workers not back: {backend.workers}")


class Outcomes:
    def __init__(self) -> None:
        self.done: list[JobOutcome] = []

    async def __call__(self, outcome: JobOutcome) -> None:
        self.done.append(outcome)

    def by_ticket(self) -> dict[int, JobOutcome]:
        return {o.ticket: o for o in self.done}


# -- 1. placement ---------------------------------------------------------------------------


def test_three_workers_on_three_nodes_report_the_local_engines_capabilities(
    backend, cluster, sd_engine
):
    infos = backend.workers
    assert len(infos) == 3 and all(infos)
    nodes = {i.node_id for i in infos}
    assert len(nodes) == 3 and cluster.head_node.node_id not in nodes
    assert len({i.pid for i in infos}) == 3 and os.getpid() not in {i.pid for i in infos}
    assert all(i.capabilities == {"tiny:sd": sd_engine.capabilities} for i in infos)
    assert all(i.resident == ("tiny:sd",) for i in infos)
    # The bot validates with what the workers reported, without a model of its own.
    remote = backend.engine
    assert isinstance(remote, RemoteModels) and remote.names == ("tiny:sd",)
    assert remote.engine().pipe is None and remote.resident() == ("tiny:sd",)
    long = DrawRequest(" ".join(["banana"] * 90), seed=1)
    assert remote.validate(long) == sd_engine.validate(long) != []
    for bad in (req(1, width=100), req(1, sampler="euler", eta=0.5), req(1, steps=500)):
        with pytest.raises(UnsupportedOption) as there:
            sd_engine.validate(bad)
        with pytest.raises(UnsupportedOption, match=re.escape(str(there.value))):
            remote.validate(bad)


def test_too_few_gpus_is_said_before_any_worker_starts(cluster):
    too_many = RayBackend(WorkerSpec.single("tiny:sd"), workers=4, gpus_per_worker=1)
    with pytest.raises(WorkersUnavailable, match="needs 4 GPUs, but the Ray cluster has 3"):
        too_many.connect()
    assert ray.is_initialized()  # the cluster it joined is not its own to shut down


def test_a_model_that_fails_to_load_in_the_workers_stops_the_start_with_its_message(cluster):
    spec = WorkerSpec.single("models/dreamy.safetensors", device="cpu")
    broken = RayBackend(spec, workers=1, gpus_per_worker=0, worker_timeout_s=60)
    # The model's own error, not "did not start within WORKER_TIMEOUT_S": the start gave up at
    # the failed load instead of restarting the worker until the timeout.
    with pytest.raises(ModelLoadError, match=r"The checkpoint file models/dreamy\.safetensors"):
        broken.connect()


# -- 3. fairness across workers -------------------------------------------------------------


@shared_loop
async def test_three_workers_start_one_job_of_each_user_first(fresh):
    ex = fresh
    ex.queue.max_batch = 1
    started: list[list[int]] = []
    lock = threading.Lock()

    def on_start(tickets: list[int]) -> None:
        with lock:
            started.append(tickets)

    ex.on_start = on_start
    ex.pause()
    a = [ex.submit(req(i), user_id=1) for i in range(3)]
    b = [ex.submit(req(10 + i), user_id=2) for i in range(3)]
    (c,) = [ex.submit(req(20), user_id=3)]
    ex.resume()
    await ex.wait_idle()
    assert all(len(t) == 1 for t in started)  # no batching
    order = [t for (t,) in started]
    # The first three batches went to the three workers at once; the 4th waited for a free one.
    assert set(order[:3]) == {a[0], b[0], c}
    assert sorted(order) == sorted([*a, *b, c])
    assert order.index(a[1]) < order.index(a[2]) and order.index(b[1]) < order.index(b[2])


class _NoBackend:
    """Draws nothing: the test takes the batches itself."""

    def start(self, executor: Executor) -> None: ...

    def wake(self) -> None: ...

    def stop(self, job: Job) -> None: ...

    def close(self, timeout: float | None) -> None: ...


class _AsSubmitted:
    """Resolves nothing: the requests name their models already."""

    def resolve(self, request: DrawRequest) -> DrawRequest:
        return request


async def test_each_dispatcher_prefers_jobs_its_own_worker_has_the_model_for_within_the_skip():
    ex = Executor(_AsSubmitted(), backend=_NoBackend(), max_batch=1)
    backend = RayBackend(WorkerSpec(TWO_MODELS, default_model="sd"))
    backend._work = asyncio.Event()
    on_shapes = _Worker(0, actor=None, resident=("shapes",))
    on_sd = _Worker(1, actor=None, resident=("sd",))
    first = ex.submit(req(1, model="shapes"), user_id=1)
    sd = [ex.submit(req(10 + u, model="sd"), user_id=u) for u in (2, 3, 4)]
    last = ex.submit(req(5, model="shapes"), user_id=5)

    async def take(w: _Worker) -> int:
        (job,) = await asyncio.wait_for(backend._next_batch(ex, w), 5)
        return job.ticket

    # Its own worker's ready models decide what a dispatcher takes first: the sd worker takes
    # sd jobs ahead of user 1's shapes job, until that one has given up 2 turns.
    assert [await take(on_sd), await take(on_sd)] == sd[:2]
    assert await take(on_sd) == first
    # The shapes worker passes over the sd job before user 5's, whose model it has ready.
    assert await take(on_shapes) == last
    assert await take(on_sd) == sd[2]


class _Weights:
    """An engine's weights and nothing else: ``bring_back`` fails when ``broken``."""

    def __init__(self, name: str, *, ready: bool, broken: bool = False) -> None:
        self.model = self.source = name
        self.device = "cpu"
        self.placement = "device" if ready else "unloaded"
        self.broken = broken
        # Set: bring_back waits until the test opens it (a load as long as the test needs).
        self.gate: threading.Event | None = None

    @property
    def ready(self) -> bool:
        return self.placement == "device"

    def weight_bytes(self) -> int:
        return 0

    def evict(self, *, keep_in_cpu_memory: bool) -> None:
        self.placement = "unloaded"

    def bring_back(self) -> None:
        if self.broken:
            raise OSError("the disk is gone")
        if self.gate is not None:
            assert self.gate.wait(30), "the test never let the load finish"
        self.placement = "device"


def test_a_model_the_worker_can_not_bring_in_ends_each_job_of_the_batch_saying_so(monkeypatch):
    worker = DrawWorker.__new__(DrawWorker)  # its drawing alone, in this process
    worker.problem = None
    worker.spec = WorkerSpec.single("sd")
    engines = [_Weights("sd", ready=True), _Weights("shapes", ready=False, broken=True)]
    worker.models = ModelSet(engines, default="sd", max_resident=1)
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: SimpleNamespace(is_canceled=lambda: False)
    )
    events = list(worker.draw([req(1, model="shapes"), req(2, model="shapes")], {}))
    assert events[:2] == [("accepted", "shapes"), ("loading", "shapes")]
    ends = events[2:4]
    assert [(kind, i) for kind, i, _ in ends] == [("end", 0), ("end", 1)]
    assert all(isinstance(e, ModelUnavailable) and "shapes" in str(e) for _, _, e in ends)
    # sd gave way before shapes failed to come in: nothing is ready, and the bot hears so.
    assert events[4:] == [("resident", ())]


def test_a_long_load_says_it_is_alive_so_the_watchdog_lets_it_finish(monkeypatch):
    """A model that takes longer to load than the watchdog's limit is not taken for a hung
    worker: the stream says "alive" every heartbeat while it loads (a real worker's heartbeat
    is a quarter of WORKER_TIMEOUT_S)."""
    worker = DrawWorker.__new__(DrawWorker)  # its loading alone, in this process
    worker.problem = None
    worker.spec = dataclasses.replace(WorkerSpec.single("sd"), heartbeat_s=0.05)
    shapes = _Weights("shapes", ready=False)
    shapes.gate = threading.Event()  # the load lasts until 3 heartbeats came
    worker.models = ModelSet([_Weights("sd", ready=True), shapes], default="sd", max_resident=1)
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: SimpleNamespace(is_canceled=lambda: False)
    )
    monkeypatch.setattr(
        "pipeline.ray_backend.draw_batch", lambda models, requests, on_step: iter([])
    )
    events = []
    for event in worker.draw([req(1, model="shapes")], {}):
        events.append(event)
        if [e[0] for e in events].count("alive") == 3:
            shapes.gate.set()
    kinds = [e[0] for e in events]
    assert kinds[:2] == ["accepted", "loading"] and events[0] == ("accepted", "shapes")
    # Between loading and loaded, only heartbeats: the watchdog saw the worker alive throughout.
    assert kinds[2:5] == ["alive"] * 3
    loaded = kinds.index("loaded")
    assert set(kinds[2:loaded]) == {"alive"} and events[loaded] == ("loaded", ("shapes",))
    # The cheap "alive?" the dispatchers ask says the same, without any tokenizer.
    assert worker.ping() == ("shapes",)
    worker.problem = ModelLoadError("The model folder /m/sd15 does not exist.")
    assert worker.ping() is worker.problem


def test_workers_are_told_to_beat_often_enough_and_to_keep_one_model_on_a_card_share():
    spec = WorkerSpec.single("tiny:sd")
    shared = RayBackend(spec, workers=2, gpus_per_worker=0.5, worker_timeout_s=40)
    sent = shared._worker_spec()
    assert sent.heartbeat_s == 10 and sent.load_limit_s >= 400 and sent.max_resident == 1
    whole = RayBackend(spec, workers=1, gpus_per_worker=1, worker_timeout_s=40)
    assert whole._worker_spec().max_resident == 0  # automatic: sized by the whole card


async def test_a_worker_back_without_its_models_is_restarted_now_and_then(monkeypatch):
    """A worker Ray restarted on a machine where a model failed to load stays alive and says
    so; Ray never runs its constructor again, so the backend restarts it, waiting longer each
    time (a stand-in actor: what it answers is the point, not Ray)."""
    import pipeline.ray_backend as rb

    monkeypatch.setattr(rb, "REVIVE_DELAY_S", 0.0)
    monkeypatch.setattr(rb, "MODEL_RETRY_S", 0.0)  # every try is due at once

    class Actor:
        class describe:  # named as the actor method it stands for
            @staticmethod
            def remote():
                async def answer():
                    return ModelLoadError("The model folder /m/sd15 does not exist.")

                return answer()

    backend = RayBackend(WorkerSpec.single("tiny:sd"), workers=1)
    restarts: list[int] = []
    monkeypatch.setattr(backend, "_restart", lambda w: restarts.append(w.index))
    worker = _Worker(0, actor=Actor(), lost=True)
    for _ in range(4):
        await backend._revive(worker)
    assert worker.lost and restarts == [0, 0, 0]  # the first try only schedules the next
    monkeypatch.setattr(rb, "MODEL_RETRY_S", 3600.0)
    worker.retry_at = worker.retry_wait = 0.0
    for _ in range(3):
        await backend._revive(worker)
    assert restarts == [0, 0, 0]  # an hour between restarts now: none more yet


# -- 4. batching ----------------------------------------------------------------------------


@shared_loop
async def test_four_compatible_jobs_run_as_one_batch_on_one_worker(fresh, backend, sd_engine):
    ex = fresh
    batches: list[tuple[list[int], set[int | None]]] = []
    outcomes = Outcomes()

    def on_start(tickets: list[int]) -> None:
        batches.append((tickets, {backend.worker_of(t) for t in tickets}))

    ex.on_start = on_start
    ex.pause()
    requests = {u: req(100 + u, prompt=f"picture {u}") for u in range(4)}
    tickets = {u: ex.submit(r, user_id=u, on_done=outcomes) for u, r in requests.items()}
    ex.resume()
    await ex.wait_idle()
    ((batch, workers),) = batches
    assert batch == list(tickets.values()) and len(workers) == 1 and None not in workers
    out = outcomes.by_ticket()
    local = sd_engine.run_batch([ex.engine.resolve(r) for r in requests.values()])
    for u, mine in zip(requests, local, strict=True):
        result = out[tickets[u]].result
        assert out[tickets[u]].status == "done" and result is not None
        assert result.seeds == mine.seeds
        assert_close_images(result.images[0], mine.images[0])  # another process: the bound


@shared_loop
async def test_a_picture_to_start_from_is_sent_with_the_job(fresh, sd_engine, tmp_path):
    from PIL import Image

    source = tmp_path / "bot-only" / "start.png"  # where the bot keeps it; no worker reads it
    source.parent.mkdir()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(source)  # this run's own
    data = source.read_bytes()
    copies_during: list[Path] = []

    def copies() -> list[Path]:  # the workers run on this machine: their copies are visible
        found = Path(tempfile.gettempdir()).glob("easel-ray-pictures*/*")
        return [p for p in found if p.is_file() and p.read_bytes() == data]

    def on_progress(step: int, total: int) -> None:
        if step == 1:
            copies_during.extend(copies())

    request = req(5, steps=20, task="img2img", init_image=str(source), strength=0.6)
    outcomes = Outcomes()
    ticket = fresh.submit(request, user_id=1, on_done=outcomes, on_progress=on_progress)
    await fresh.wait_idle()
    outcome = outcomes.by_ticket()[ticket]
    assert outcome.status == "done" and outcome.result is not None, outcome.message
    assert outcome.result.request.init_image == str(source)  # stored as the bot's own path
    alone = sd_engine.run(fresh.engine.resolve(request))
    assert_close_images(outcome.result.images[0], alone.images[0])
    # The worker's copy was there while it drew, and is gone with the call: nothing of a
    # user's pictures stays on a worker's machine (nor survives /forget there).
    assert len(copies_during) == 1 and copies_during[0] != source
    assert not copies() and not copies_during[0].parent.exists()


# -- one worker of its own, on CPUs, with two models: several models; lost before a batch ---


@pytest.fixture(scope="module")
def solo(cluster, model_cache: Path, sd_engine):
    # One model ready at a time: every switch between them loads one.
    spec = WorkerSpec(
        TWO_MODELS,
        default_model="sd",
        max_resident=1,
        device="auto",
        cache_dir=model_cache,
        torch_threads=1,
    )
    b = RayBackend(spec, workers=1, gpus_per_worker=0, worker_timeout_s=60)
    b.connect()
    yield b
    b.close(30)


@pytest.fixture(scope="module")
def local_models(sd_engine) -> ModelSet:
    """The solo worker's two models, loaded here (sd's the session's pipeline, named "sd")."""
    shapes = Engine.load("tiny:shapes", device="cpu", name="shapes")
    sd = Engine(sd_engine.pipe, "tiny:sd", device="cpu", name="sd")
    return ModelSet([shapes, sd], default="sd", max_resident=2, specs=TWO_MODELS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def solo_executor(solo):
    # One start per job: a job charged for a worker that never drew it fails at once.
    ex = Executor(solo.engine, backend=solo, max_attempts=1, progress_interval=0)
    ex.start()
    yield ex
    ex.close()


async def pid_of_the_only_worker(backend: RayBackend, other_than: int = 0) -> int:
    for _ in range(900):
        (info,) = backend.workers
        if info is not None and info.pid != other_than:
            return info.pid
        await asyncio.sleep(0.1)
    raise AssertionError("the worker did not come back")


@shared_loop
async def test_a_worker_that_takes_no_gpu_sees_none_and_draws_on_the_cpu(solo):
    (worker,) = solo._workers
    seen = await worker.actor.__ray_call__.remote(
        lambda self: os.environ.get("CUDA_VISIBLE_DEVICES")
    )
    assert seen == ""  # Ray 2.60 leaves it unset for num_gpus=0: DEVICE=auto would pick CUDA
    assert solo.workers[0].device == "cpu"  # DEVICE=auto, on a worker without a GPU


def test_a_worker_of_two_models_reports_both_and_the_bot_validates_each(solo, local_models):
    (info,) = solo.workers
    assert info.capabilities == {n: local_models.capabilities(n) for n in ("shapes", "sd")}
    assert info.default_model == "sd" and info.resident == ("sd",)  # one ready: the default
    models = solo.engine
    assert models.names == ("shapes", "sd") and models.default == "sd"
    assert models.resident() == ("sd",) and models.engine("sd").ready
    assert models.engine("shapes").placement == "unloaded" and models.engine("shapes").pipe is None
    assert models.engine("shapes").source == "tiny:shapes"
    # Each request is resolved and checked by its own model, here, without a model loaded.
    for name in ("shapes", "sd"):
        request = DrawRequest(" ".join(["circle"] * 90), seed=1, model=name)
        resolved = models.resolve(request)
        assert resolved == local_models.resolve(request)
        assert resolved.model == name
        assert resolved.sampler == local_models.capabilities(name).default_sampler
        # The prompt is too long for each: noted, as the model itself would.
        assert models.validate(request) == local_models.validate(request) != []
    assert models.resolve(DrawRequest("a cat", seed=1)).model == "sd"  # none named: the default
    with pytest.raises(UnknownModel):
        models.validate(req(1, model="ldm"))
    with pytest.raises(RuntimeError, match="Ray workers"):
        models.ensure("shapes")


@shared_loop
async def test_jobs_for_two_models_on_one_worker_are_each_drawn_by_their_own_model(
    solo, solo_executor, local_models
):
    ex = solo_executor
    started: list[list[int]] = []
    loading: list[tuple[int, str]] = []
    ex.on_start = started.append
    outcomes = Outcomes()

    def on_loading(user: int):
        return lambda model: loading.append((user, model))

    requests = {
        1: req(41, prompt="a red circle", model="shapes"),
        2: req(42, prompt="a harbour", model="sd"),
        3: req(43, prompt="a blue square", model="shapes"),
    }
    ex.pause()
    tickets = {
        user: ex.submit(r, user_id=user, on_done=outcomes, on_loading=on_loading(user))
        for user, r in requests.items()
    }
    try:
        ex.resume()
        await asyncio.wait_for(ex.wait_idle(), 60)
    finally:
        ex.on_start = None
    out = outcomes.by_ticket()
    # The sd job, whose model was ready, went ahead of user 1's (one turn given up); then both
    # shapes jobs, as one batch, after their model was brought in (and sd gave way).
    assert started == [[tickets[2]], [tickets[1], tickets[3]]]
    assert sorted(loading) == [(1, "shapes"), (3, "shapes")]
    for user, request in requests.items():
        outcome = out[tickets[user]]
        assert outcome.status == "done" and outcome.result is not None, outcome.message
        assert outcome.result.request.model == request.model
        alone = local_models.run_batch([ex.engine.resolve(request)])[0]
        assert_close_images(outcome.result.images[0], alone.images[0])
    # The worker's last event (what it has loaded now) may still be on its way to the loop.
    for _ in range(200):
        if solo._workers[0].resident == ("shapes",):
            break
        await asyncio.sleep(0.05)
    assert solo.workers[0] is not None and solo._workers[0].resident == ("shapes",)
    assert solo.engine.resident() == ("shapes",) and not solo.engine.engine("sd").ready


@shared_loop
async def test_a_job_is_not_charged_for_a_worker_that_died_while_idle(solo, solo_executor):
    ex = solo_executor
    pid = await pid_of_the_only_worker(solo)
    os.kill(pid, signal.SIGKILL)  # idle: no call of ours is running there
    outcomes = Outcomes()
    ticket = ex.submit(req(31), user_id=1, on_done=outcomes)
    await asyncio.wait_for(ex.wait_idle(), 90)
    outcome = outcomes.by_ticket()[ticket]
    assert outcome.status == "done", outcome.message
    assert outcome.attempts == 1  # MAX_ATTEMPTS=1: it would have failed if charged
    assert await pid_of_the_only_worker(solo) != pid  # Ray restarted it


@shared_loop
async def test_the_job_after_one_cancelled_on_a_hung_worker_is_not_charged_for_the_hang(
    solo, solo_executor
):
    ex = solo_executor
    outcomes = Outcomes()
    drawing = asyncio.Event()
    stopped: list[int] = []

    def on_progress(step: int, total: int) -> None:
        if step >= 1 and not stopped:
            solo.worker_timeout_s = 2
            stopped.append(solo.workers[0].pid)
            os.kill(stopped[0], signal.SIGSTOP)  # stuck in a step: alive, silent
            drawing.set()

    try:
        stuck = ex.submit(req(32, steps=150), user_id=1, on_done=outcomes, on_progress=on_progress)
        await asyncio.wait_for(drawing.wait(), 60)
        assert ex.cancel(stuck)
        await asyncio.sleep(0.3)  # Ray reports the call cancelled at once; the worker is stuck
        after = ex.submit(req(33), user_id=2, on_done=outcomes)
        await asyncio.wait_for(ex.wait_idle(), 90)
    finally:
        solo.worker_timeout_s = 60
    out = outcomes.by_ticket()
    assert out[stuck].status == "cancelled"
    assert out[after].status == "done", out[after].message
    assert out[after].attempts == 1
    assert solo.workers[0] is not None and solo.workers[0].pid != stopped[0]  # restarted


# -- 2. exactly once when a worker is lost ---------------------------------------------------


@shared_loop
@pytest.mark.parametrize("fault", ["kill the process", "remove the node", "hang"])
async def test_every_job_is_delivered_once_when_the_worker_drawing_one_is_lost(
    fresh, backend, cluster, sd_engine, tmp_path, fault
):
    ex = fresh
    loop = asyncio.get_running_loop()
    store = Store(tmp_path / "easel.sqlite3", tmp_path / "data")
    await store.open()
    delivered: list[int] = []
    refused: list[int] = []
    lost: dict[str, object] = {}

    def on_start(tickets: list[int]) -> None:
        # As the bot does: the attempt is committed before the batch draws.
        for t in tickets:
            asyncio.run_coroutine_threadsafe(store.mark_running(t), loop).result(30)

    async def on_done(outcome: JobOutcome) -> None:
        delivered.append(outcome.ticket)
        assert outcome.status == "done", outcome.message
        await store.mark_done(outcome.ticket, images=[], request=outcome.request)
        try:  # only the first completion counts
            await store.mark_done(outcome.ticket, images=[])
        except InvalidTransition:
            refused.append(outcome.ticket)
        if outcome.ticket == x:
            lost["outcome"] = outcome

    def on_progress(step: int, total: int) -> None:
        if step >= 1 and "worker" not in lost:
            index = backend.worker_of(x)
            info = backend.workers[index]
            lost["worker"] = info
            if fault == "kill the process":
                os.kill(info.pid, signal.SIGKILL)
            elif fault == "hang":  # a stuck driver, say: alive, silent
                backend.worker_timeout_s = 2
                os.kill(info.pid, signal.SIGSTOP)
            else:
                node = next(n for n in cluster.list_all_nodes() if n.node_id == info.node_id)
                cluster.remove_node(node)

    ex.on_start = on_start
    ex.pause()
    x_request = req(7, steps=40)  # longer, and alone in its batch (other steps)
    x = None
    for user in range(4):
        for i in range(3):
            r = x_request if (user, i) == (0, 0) else req(1000 + 10 * user + i)
            job_id = await store.add_job(
                r, guild_id=1, channel_id=2, user_id=user, user_name=f"user {user}"
            )
            ex.submit(
                r,
                user_id=user,
                ticket=job_id,
                on_done=on_done,
                on_progress=on_progress if (user, i) == (0, 0) else None,
            )
            x = job_id if (user, i) == (0, 0) else x
    ex.resume()
    await ex.wait_idle()
    try:
        assert "worker" in lost, "the fault was never injected"
        assert Counter(delivered) == Counter(range(1, 13))  # each exactly once
        assert sorted(refused) == list(range(1, 13))
        outcome = lost["outcome"]
        assert isinstance(outcome, JobOutcome) and outcome.attempts == 2
        record = await store.get_job(x)
        assert record.status == "done" and record.attempts == 2
        others = [(await store.get_job(t)).attempts for t in range(1, 13) if t != x]
        assert others == [1] * 11
        assert outcome.result is not None
        alone = sd_engine.run(ex.engine.resolve(x_request))
        assert_close_images(outcome.result.images[0], alone.images[0])
    finally:
        await store.close()
        backend.worker_timeout_s = 60
        if fault == "remove the node":
            cluster.add_node(num_cpus=1, num_gpus=1)  # the lost worker restarts there
    # Ray restarts the lost worker meanwhile; the last test below waits for it.


# -- 5. cancel, then close -------------------------------------------------------------------


@shared_loop
async def test_a_running_remote_job_is_cancelled_and_close_leaves_no_worker(fresh, backend):
    ex = fresh
    await all_workers_back(backend)  # the workers lost above were restarted, on 3 nodes
    assert len({i.node_id for i in backend.workers}) == 3
    outcomes = Outcomes()
    drawing = asyncio.Event()
    steps: list[int] = []

    def on_progress(step: int, total: int) -> None:
        steps.append(step)
        if step >= 1:
            drawing.set()

    long = ex.submit(req(1, steps=150), user_id=1, on_done=outcomes, on_progress=on_progress)
    await asyncio.wait_for(drawing.wait(), 60)
    assert ex.position(long) == 0 and ex.cancel(long)
    after = ex.submit(req(2), user_id=1, on_done=outcomes)
    await ex.wait_idle()
    out = outcomes.by_ticket()
    assert out[long].status == "cancelled" and out[long].result is None
    assert out[after].status == "done"
    # Stopped where it was, not drawn to the end first (whatever this machine's speed).
    assert max(steps) < 150

    pids = [i.pid for i in backend.workers]
    ex.close()
    for _ in range(200):
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not alive:
            break
        await asyncio.sleep(0.05)
    assert not alive, f"Ray workers still running after close(): {alive}"
    assert backend._watchdog is not None and not backend._watchdog.is_alive()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


# -- 6. the bot, end to end ------------------------------------------------------------------


@pytest.fixture
def bot_settings(bot_settings, cluster):
    # One worker without a GPU: it runs wherever Ray has room, whatever the tests above left.
    # Two models (sd the default), one loaded at a time in the worker.
    return dataclasses.replace(
        bot_settings,
        executor="ray",
        workers=1,
        gpus_per_worker=0,
        model=DEFAULT_MODEL,
        models="sd=tiny:sd,shapes=tiny:shapes",
        max_resident_models=1,
    )


async def test_the_bot_draws_on_ray_and_resumes_queued_jobs_after_a_restart(world, make_bot):
    from bot.store import JobRecord

    env, bot = world.env, world.bot
    assert isinstance(bot.executor.backend, RayBackend) and bot.models.engine().pipe is None
    r = await world.alice.slash(world.channel, "draw", prompt="a cat", seed=3, steps=6)
    await world.idle()
    edits = [
        e.json.get("content")
        for e in env.http_requests
        if e.method == "PATCH" and e.path.endswith("@original") and e.json
    ]
    assert any(e and e.startswith("Drawing… ") and e.endswith("/6") for e in edits)
    assert r.response.embeds[0].footer.text == "Job #1" and len(r.response.attachments) == 1
    record: JobRecord = await bot.store.get_job(1)
    assert record.status == "done" and record.attempts == 1

    bot.executor.pause()  # queued when the bot goes down
    await world.bob.slash(world.channel, "draw", prompt="a harbour", seed=2, count=2)
    await world.alice.slash(world.channel, "draw", prompt="a lighthouse", seed=4)
    from tests.conftest import shut_down

    await shut_down(bot)
    new = make_bot()
    await env.restart_bot(new)
    await world.idle()
    posted = [m for m in world.channel.history() if m.embeds]
    assert sorted(m.embeds[0].footer.text for m in posted) == ["Job #1", "Job #2", "Job #3"]
    assert [(await new.store.get_job(i)).status for i in (2, 3)] == ["done", "done"]

    # The other model: the worker loads it (the member is told), the embed names it.
    other = await world.alice.slash(world.channel, "draw", prompt="a red circle", model="shapes")
    await world.idle()
    assert {f.name: f.value for f in other.response.embeds[0].fields}["Model"] == "shapes"
    assert "Loading shapes…" in [
        e.json.get("content") for e in env.http_requests if e.method == "PATCH" and e.json
    ]
    assert new.models.resident() == ("shapes",)
