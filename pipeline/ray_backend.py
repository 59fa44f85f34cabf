"""Drawing on Ray: one worker actor per GPU (on this machine or others), fed by one fair queue.

The bot keeps the ``FairQueue`` and decides who draws next; Ray places the workers on GPUs and
machines, restarts the ones that die and streams their results back. Each worker loads the
model once, in its constructor, and reports its ``Capabilities``, so the bot validates requests
(``RemoteEngine``) without a model of its own.

One dispatcher task per worker runs on the bot's event loop: it asks the queue for the next fair
batch only when its worker is idle, so nothing is grabbed ahead, and reads the worker's stream
of step events and results on the loop. A worker that dies (process killed, machine gone, no
step for ``worker_timeout_s``) gives its unfinished jobs back to the front of their users' queues
(``Executor._lost``); Ray restarts it and its dispatcher carries on. An attempt counts only once
the worker has taken the batch (its stream's first event, "accepted"): a worker found dead
before that, or still stuck in a cancelled call, hands the batch back uncharged. An idle worker
is asked whether it is alive before it gets a batch; after a cancel the worker stays busy (and
watched) until it answers again.

Ray is an optional dependency (``pip install -e '.[ray]'``): this module imports it only when a
``RayBackend`` connects, and ``DrawWorker`` runs inside the worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.engine import Capabilities, Engine
from pipeline.errors import EaselError
from pipeline.executor import _Stop, draw_batch
from pipeline.request import DrawRequest, DrawResult

if TYPE_CHECKING:
    from pipeline.executor import Executor
    from pipeline.fairqueue import Job
    from pipeline.upscale import Upscaler

log = logging.getLogger(__name__)

RAY_PIN = "ray==2.60.0"
# Seconds between a lost worker's tries to come back (Ray restarts it meanwhile).
REVIVE_DELAY_S = 1.0


class WorkersUnavailable(EaselError):
    """The Ray workers could not be started (Ray missing, too few GPUs, model load failed)."""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads. ``loader(model, device=..., cache_dir=...)`` builds the engine
    (default ``Engine.load``); it is shipped to the workers, so it must be picklable."""

    model: str
    device: str = "auto"
    cache_dir: Path | None = None
    torch_threads: int | None = None
    upscaler: str = "none"
    upscale_steps: int = 20
    loader: Callable[..., Any] | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker reports once its model is loaded."""

    capabilities: Capabilities
    tokenizer: Any = field(repr=False)  # counts prompt tokens in the bot, as the engine would
    device: str
    pid: int
    node_id: str
    host: str


# -- inside the worker process ------------------------------------------------------------


class DrawWorker:
    """One GPU's worker, run as a Ray actor: loads the model once and draws what it is sent."""

    def __init__(self, spec: WorkerSpec) -> None:
        # Before torch loads: the thread count changes the pictures' bits (pipeline/cpu.py).
        from pipeline.cpu import configure_cpu_threads

        configure_cpu_threads(spec.torch_threads, model=spec.model)
        from pipeline.engine import quiet_library_logs

        quiet_library_logs(download_progress=False)  # the bot's log gets the workers' lines

        loader = spec.loader or Engine.load
        # A model that can't load is reported by describe(), not raised: Ray keeps no more of
        # an exception raised here than its text.
        self.problem: EaselError | None = None
        try:
            self.engine = loader(spec.model, device=spec.device, cache_dir=spec.cache_dir)
        except EaselError as exc:
            self.problem = exc
            return
        self.engine.attach_upscaler(
            spec.upscaler, steps=spec.upscale_steps, cache_dir=spec.cache_dir
        )

    def describe(self) -> WorkerInfo | EaselError:
        """What this worker can draw, or why it can't draw at all."""
        import ray

        if self.problem is not None:
            return self.problem
        engine = self.engine
        return WorkerInfo(
            capabilities=engine.capabilities,
            tokenizer=getattr(engine, "_counting_tokenizer", None),
            device=str(engine.device),
            pid=os.getpid(),
            node_id=ray.get_runtime_context().get_node_id(),
            host=socket.gethostname(),
        )

    def draw(
        self, requests: list[DrawRequest], pictures: dict[str, bytes]
    ) -> Iterator[tuple[Any, ...]]:
        """Draw a batch, yielding ``("accepted",)`` as soon as this worker runs the call (the
        bot counts the jobs' attempt only then: a worker that died, or still runs an earlier
        call, never charges a batch it did not take), ``("step", indices, step, total)`` as it
        goes, then ``("end", index, result | exception | None)`` for each request
        (``("crash", exc)`` if the drawing thread itself died). A cancelled call stops at the
        next step."""
        import ray

        yield ("accepted",)
        context = ray.get_runtime_context()
        if not any(r.init_image in pictures for r in requests):
            yield from self._draw_local(context, requests, requests)
            return
        # The starting pictures are written for this call only and deleted when it ends:
        # nothing of a user's pictures stays on the worker's machine.
        with tempfile.TemporaryDirectory(prefix="easel-ray-pictures-") as folder:
            local = [self._localize(r, pictures, Path(folder)) for r in requests]
            yield from self._draw_local(context, requests, local)

    def _draw_local(
        self, context: Any, requests: list[DrawRequest], local: list[DrawRequest]
    ) -> Iterator[tuple[Any, ...]]:
        events: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        stop = threading.Event()

        def on_step(indices: list[int], step: int, total: int) -> None:
            if stop.is_set():
                raise _Stop
            events.put(("step", indices, step, total))

        def work() -> None:
            try:
                for i, outcome in draw_batch(self.engine, local, on_step):
                    if isinstance(outcome, DrawResult):
                        # The bot stores the picture's own path, not this worker's copy.
                        request = dataclasses.replace(
                            outcome.request, init_image=requests[i].init_image
                        )
                        outcome = dataclasses.replace(outcome, request=request)
                    events.put(("end", i, _portable(outcome)))
            except BaseException as exc:
                log.exception("the drawing thread died")
                events.put(("crash", _portable(exc)))
            finally:
                events.put(None)

        # The engine calls on_step from inside its loop; a thread lets this generator yield
        # each step as it happens.
        thread = threading.Thread(target=work, name="easel-ray-draw", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    event = events.get(timeout=0.05)
                except queue.Empty:
                    if context.is_canceled():
                        stop.set()
                    continue
                if event is None:
                    return
                yield event
        finally:
            stop.set()
            thread.join()

    @staticmethod
    def _localize(request: DrawRequest, pictures: dict[str, bytes], folder: Path) -> DrawRequest:
        """The request with its starting picture written in ``folder`` (the bot's path may not
        exist on this machine)."""
        data = pictures.get(request.init_image or "")
        if data is None:
            return request
        suffix = Path(request.init_image or "").suffix or ".png"
        path = folder / (hashlib.sha256(data).hexdigest()[:32] + suffix)
        if not path.is_file():
            path.write_bytes(data)
        return dataclasses.replace(request, init_image=str(path))


def _portable(value: Any) -> Any:
    """``value`` as it may cross to the bot: an exception the bot may lack the class of (or
    that does not pickle) becomes a RuntimeError naming it; EaselErrors keep their message."""
    if not isinstance(value, BaseException) or isinstance(value, EaselError):
        return value
    return RuntimeError(f"{type(value).__name__}: {value}")


# -- in the bot's process -----------------------------------------------------------------


class RemoteEngine(Engine):
    """Validates and resolves requests here for a model that is loaded in the Ray workers."""

    def __init__(self, info: WorkerInfo, upscaler: Upscaler | None = None) -> None:
        # No pipeline in this process: Engine's validation reads only what is set here.
        self.pipe = None
        self.model = info.capabilities.model
        self.device = info.device
        self.capabilities = info.capabilities
        self._counting_tokenizer = info.tokenizer
        self._base_scheduler = None
        self._img2img = None
        self.upscaler = upscaler

    def run_batch(self, requests: Sequence[DrawRequest], on_step: Any = None) -> list[DrawResult]:
        raise RuntimeError("this model is loaded in the Ray workers: draw through the executor")


@dataclass(eq=False)
class _Worker:
    index: int
    actor: Any
    info: WorkerInfo | None = None
    batch: list[Job] = field(default_factory=list)
    stream: Any = None  # the running draw() call
    last_event: float = 0.0  # perf_counter of the stream's last event
    hung: bool = False
    lost: bool = False
    # What the log was told since it was lost (that it can't load the model, that it is down).
    warned: set[str] = field(default_factory=set)


class RayBackend:
    """Draws on Ray worker actors, one per GPU (``gpus_per_worker`` may be a fraction; 0 on CPUs).

    ``address``: "" starts a private Ray instance on this machine (shut down again by
    ``close``; a cluster that ``ray start`` runs here is not joined), "auto" or "host:6379"
    joins a running cluster (left running by ``close``). With ``gpus_per_worker`` 0 the
    workers see no GPU and a ``device`` of "auto" means the CPU. Call ``connect`` (blocking:
    off the event loop) before handing the backend to an ``Executor``; it returns the
    ``RemoteEngine``.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        workers: int = 1,
        gpus_per_worker: float = 1.0,
        address: str = "",
        worker_timeout_s: float = 300.0,
    ) -> None:
        self.spec = spec
        self.workers_wanted = workers
        self.gpus_per_worker = gpus_per_worker
        self.address = address.strip()
        self.worker_timeout_s = worker_timeout_s
        self.engine: RemoteEngine | None = None
        self._workers: list[_Worker] = []
        self._owns_ray = False
        self._executor: Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None

    # -- connecting ----------------------------------------------------------------------

    def connect(self) -> RemoteEngine:
        """Join or start Ray, start the workers and wait until each has loaded the model."""
        try:
            import ray
        except ImportError:
            raise WorkersUnavailable(
                f"EXECUTOR=ray needs Ray, which is not installed: pip install '{RAY_PIN}' "
                "(or pip install -e '.[ray]')."
            ) from None
        if not ray.is_initialized():
            try:
                ray.init(
                    # "local": a private Ray of the bot's own, even when one started with
                    # `ray start` runs on this machine (None would join that one).
                    address=self.address or "local",
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            except ConnectionError as exc:
                raise WorkersUnavailable(
                    f"No Ray cluster answers at RAY_ADDRESS={self.address}: {exc}. Start one "
                    "with `ray start --head`, or leave RAY_ADDRESS empty to start Ray here."
                ) from None
            self._owns_ray = True
        try:
            return self._start_workers(ray)
        except BaseException:
            # Whatever went wrong (even Ctrl-C): no worker and no Ray of ours is left behind.
            self.close(None)
            raise

    def _worker_spec(self) -> WorkerSpec:
        """What the workers load: on CPUs when they take no GPU, whatever CUDA they could see."""
        if self.gpus_per_worker == 0 and self.spec.device.strip().lower() == "auto":
            return dataclasses.replace(self.spec, device="cpu")
        return self.spec

    def _start_workers(self, ray: Any) -> RemoteEngine:
        from ray.exceptions import GetTimeoutError, RayActorError

        gpus = ray.cluster_resources().get("GPU", 0.0)
        needed = self.workers_wanted * self.gpus_per_worker
        if needed > gpus + 1e-9:
            raise WorkersUnavailable(
                f"WORKERS={self.workers_wanted} x GPUS_PER_WORKER={self.gpus_per_worker:g} needs "
                f"{needed:g} GPUs, but the Ray cluster has {gpus:g}. Start Ray on more GPU "
                "machines, lower WORKERS, or set GPUS_PER_WORKER=0 to draw on CPUs."
            )
        options: dict[str, Any] = {}
        if self.gpus_per_worker == 0:
            # Ray no longer hides the GPUs from an actor that asked for none: hide them here,
            # or every worker would draw on (and fill) the machine's first GPU.
            options["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}
        actor_class = ray.remote(DrawWorker).options(
            num_gpus=self.gpus_per_worker,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=0,
            scheduling_strategy="SPREAD",
            **options,
        )
        spec = self._worker_spec()
        for i in range(self.workers_wanted):
            self._workers.append(_Worker(i, actor_class.remote(spec)))
        try:
            infos = ray.get(
                [w.actor.describe.remote() for w in self._workers], timeout=self.worker_timeout_s
            )
        except (RayActorError, GetTimeoutError) as exc:
            raise WorkersUnavailable(
                f"The Ray workers did not start within WORKER_TIMEOUT_S={self.worker_timeout_s:g} "
                f"s: {_first_line(exc)}"
            ) from None
        for problem in infos:
            if isinstance(problem, EaselError):  # the model did not load: say why, as locally
                raise problem
        for worker, info in zip(self._workers, infos, strict=True):
            worker.info = info
        first = infos[0].capabilities
        if any(i.capabilities != first for i in infos[1:]):
            raise WorkersUnavailable(
                "The Ray workers loaded different models (their capabilities differ); install "
                "the same Easel and model on every machine."
            )
        log.info(
            "%d Ray worker(s) ready: %s",
            len(infos),
            ", ".join(f"{i.host} pid {i.pid} on {i.device}" for i in infos),
        )
        self.engine = RemoteEngine(infos[0])
        return self.engine

    @property
    def workers(self) -> list[WorkerInfo | None]:
        """What each worker last reported (None while it is being restarted)."""
        return [None if w.lost else w.info for w in self._workers]

    def worker_of(self, ticket: int) -> int | None:
        """The index of the worker drawing job ``ticket`` now, if any."""
        for w in self._workers:
            if any(j.ticket == ticket for j in w.batch):
                return w.index
        return None

    # -- the Backend interface -----------------------------------------------------------

    def start(self, executor: Executor) -> None:
        if self._tasks:
            return
        if self._closed.is_set():
            raise RuntimeError("this Ray backend was closed")
        if not self._workers:
            raise RuntimeError("RayBackend.connect() must run before the executor starts")
        loop = asyncio.get_running_loop()
        self._executor, self._loop = executor, loop
        executor._bind_loop(loop)
        self._work = asyncio.Event()
        for worker in self._workers:
            # Created in an empty context, not the caller's: these belong to no request and run
            # until close(), so whatever tracks the caller's work (SimCord does, by context
            # variables) must not wait for them.
            task = contextvars.Context().run(loop.create_task, self._drive(worker))
            self._tasks.append(task)
        self._watchdog = threading.Thread(
            target=self._watch, name="easel-ray-watchdog", daemon=True
        )
        self._watchdog.start()

    def wake(self) -> None:
        loop, work = self._loop, self._work
        if loop is None or work is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(work.set)

    def stop(self, job: Job) -> None:
        for w in self._workers:
            mine = any(j is job for j in w.batch) and all(j.cancelled for j in w.batch)
            if mine and self._loop is not None and w.stream is not None:
                self._loop.call_soon_threadsafe(_cancel, w.stream)

    def close(self, timeout: float | None) -> None:
        """Stop the dispatchers, kill the workers (waiting until Ray reports them dead) and,
        if this backend started Ray, shut Ray down."""
        self._closed.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for task in self._tasks:
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:
                    break
        try:
            import ray
        except ImportError:
            return
        if ray.is_initialized():
            from ray.exceptions import RayActorError

            for w in self._workers:
                try:
                    ray.kill(w.actor, no_restart=True)
                except Exception:
                    log.debug("killing Ray worker %d failed", w.index, exc_info=True)
            for w in self._workers:
                try:
                    ray.get(w.actor.describe.remote(), timeout=min(timeout or 30, 30))
                except RayActorError:
                    pass  # dead, as asked
                except Exception:
                    log.warning("Ray worker %d did not confirm it stopped", w.index)
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout)
        self._shutdown_ray()

    def _shutdown_ray(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    # -- dispatching ---------------------------------------------------------------------

    async def _drive(self, w: _Worker) -> None:
        """One worker's dispatcher: the next fair batch whenever the worker is idle."""
        ex = self._executor
        assert ex is not None
        while not ex.closing:
            if w.lost:
                await self._revive(w)
                continue
            batch = await self._next_batch(ex, w)
            if not batch:
                continue
            w.batch = batch
            try:
                pictures = await asyncio.to_thread(self._pictures_of, batch)
                await self._draw(ex, w, batch, pictures)
            except Exception as exc:  # a fault here must not strand the batch's jobs
                log.exception("dispatching to Ray worker %d failed", w.index)
                for job in batch:
                    if not job.ended:
                        ex._fail(job, exc)
            finally:
                w.batch, w.stream = [], None

    async def _next_batch(self, ex: Executor, w: _Worker) -> list[Job]:
        """The next fair batch for ``w``; empty when closing, or when ``w`` was found lost."""
        work = self._work
        assert work is not None
        idled = False
        while not ex.closing:
            with ex._lock:
                ready = ex.queue.ready()
            if idled and ready:
                # It sat idle: it may have died meanwhile, and nobody noticed. Ask before
                # handing it a batch.
                idled = False
                if not await self._answers(w):
                    return []
            with ex._lock:
                batch = ex._take_batch()
            if batch:
                return batch
            work.clear()
            await work.wait()
            idled = True
        return []

    async def _answers(self, w: _Worker) -> bool:
        """Whether ``w`` answers a cheap call (within ``worker_timeout_s``); marks it lost, and
        restarts a silent one, if not."""
        from ray.exceptions import RayError

        try:
            info = await asyncio.wait_for(w.actor.describe.remote(), self.worker_timeout_s)
        except (RayError, OSError, TimeoutError) as exc:
            info = exc
        if isinstance(info, WorkerInfo):
            w.info = info
            return True
        log.warning("Ray worker %d does not answer: %s", w.index, _first_line(info))
        if isinstance(info, TimeoutError):
            self._restart(w)
        w.lost = True
        return False

    @staticmethod
    def _pictures_of(batch: list[Job]) -> dict[str, bytes]:
        """Off the loop: the starting pictures, which the workers may not have."""
        pictures: dict[str, bytes] = {}
        for job in batch:
            path = job.request.init_image
            if path and path not in pictures:
                with contextlib.suppress(OSError):  # gone: the worker's engine says so
                    pictures[path] = Path(path).read_bytes()
        return pictures

    async def _draw(
        self, ex: Executor, w: _Worker, batch: list[Job], pictures: dict[str, bytes]
    ) -> None:
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        stream = w.actor.draw.remote([j.request for j in batch], pictures)
        # The clock before the stream: the watchdog must never see a new stream with the last
        # batch's time.
        w.last_event, w.hung = time.perf_counter(), False
        w.stream = stream
        if all(j.cancelled for j in batch):
            _cancel(stream)
        accepted = cancelled = False
        try:
            async for ref in stream:
                event = await ref
                w.last_event = time.perf_counter()
                if event[0] == "accepted":
                    # The worker runs it: the attempt counts from here (the bot's hook records
                    # it, off the loop, as the database may take a moment).
                    accepted = True
                    await asyncio.to_thread(ex._begin, batch)
                    w.last_event = time.perf_counter()
                else:
                    self._handle(ex, batch, event)
        except TaskCancelledError:
            cancelled = True  # every job of it was cancelled; they end below
        except RayTaskError as exc:  # a fault in the worker's own code, not a lost worker
            if not accepted:
                await asyncio.to_thread(ex._begin, batch)
            for job in batch:
                if not job.ended:
                    ex._fail(job, exc)
        except RayError as exc:
            # The process died, its machine left the cluster, or the watchdog killed it.
            w.lost = True
            why = (
                f"no step for {self.worker_timeout_s:g} s"
                if w.hung
                else f"worker {w.index} stopped: {type(exc).__name__}"
            )
            log.warning("Ray worker %d was lost (%s): %s", w.index, why, _first_line(exc))
            # Not accepted: it was gone (or stuck in an earlier call) before the batch
            # reached it, and the batch goes back without costing an attempt.
            ex._lost(batch, why, started=accepted)
            return
        ex._end_unfinished(batch, "worker")
        if cancelled:
            await self._settle(w)

    async def _settle(self, w: _Worker) -> None:
        """After a cancel: Ray says the call ended at once, but the worker may still be inside
        it (stuck in a step, say). Keep it busy, watched by the watchdog, until it answers a
        cheap call (it runs one call at a time, so this one waits for the old to end); a
        worker that never does is restarted by the watchdog and marked lost here."""
        from ray.exceptions import RayError

        try:
            info = await w.actor.describe.remote()
        except (RayError, OSError) as exc:
            info = exc
        if isinstance(info, WorkerInfo):
            w.info = info
            return
        w.lost = True
        log.warning(
            "Ray worker %d did not come back from a cancelled call: %s", w.index, _first_line(info)
        )

    @staticmethod
    def _handle(ex: Executor, batch: list[Job], event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "step":
            _, indices, step, total = event
            for i in indices:
                if not batch[i].cancelled and not ex.closing:
                    ex._progress(batch[i], step, total, force=step == total)
        elif kind == "end":
            _, i, outcome = event
            if isinstance(outcome, Exception):
                ex._fail(batch[i], outcome)
            else:
                ex._complete(batch[i], outcome)
        elif kind == "crash":
            for job in batch:
                if not job.ended:
                    ex._fail(job, event[1])

    async def _revive(self, w: _Worker) -> None:
        """Wait until Ray restarted a lost worker (it reloads the model first)."""
        from ray.exceptions import RayActorError

        try:
            info = await w.actor.describe.remote()
        except (RayActorError, OSError) as exc:
            info = exc
        if not isinstance(info, WorkerInfo):
            # Once per loss at WARNING for each kind of trouble (its machine lacks the model?
            # Ray can't restart it?); the retries after that at DEBUG.
            kind = "model" if isinstance(info, EaselError) else type(info).__name__
            level = logging.DEBUG
            if kind not in w.warned:
                level = logging.WARNING
                w.warned.add(kind)
            log.log(level, "Ray worker %d is not back yet: %s", w.index, _first_line(info))
            await asyncio.to_thread(time.sleep, REVIVE_DELAY_S)  # real time, whatever the loop's
            return
        w.info, w.lost = info, False
        w.warned.clear()
        log.info("Ray worker %d is back: %s pid %d", w.index, w.info.host, w.info.pid)

    def _restart(self, w: _Worker) -> None:
        """Kill a stuck worker; Ray starts it again."""
        import ray

        try:
            ray.kill(w.actor, no_restart=False)
        except Exception:
            log.exception("could not restart Ray worker %d", w.index)

    def _watch(self) -> None:
        """Kill a worker that sent nothing for ``worker_timeout_s`` while drawing; Ray restarts
        it and its dispatcher gives the jobs back. A thread with a real clock: the loop's clock
        may be a test's virtual one."""
        while not self._closed.wait(min(0.5, self.worker_timeout_s / 4)):
            now = time.perf_counter()
            for w in self._workers:
                if w.stream is None or w.hung or now - w.last_event < self.worker_timeout_s:
                    continue
                w.hung = True
                log.warning(
                    "Ray worker %d sent nothing for %g s; restarting it",
                    w.index,
                    self.worker_timeout_s,
                )
                self._restart(w)


def _cancel(stream: Any) -> None:
    import ray

    try:
        ray.cancel(stream)
    except Exception:
        log.debug("cancelling a Ray call failed", exc_info=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
