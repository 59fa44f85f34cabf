"""Drawing on Ray: one worker actor per GPU (on this machine or others), fed by one fair queue.

The bot keeps the ``FairQueue`` and decides who draws next; Ray places the workers on GPUs and
machines, restarts the ones that die and streams their results back. Each worker loads every
configured model once, in its constructor (a ``ModelSet``: at most ``max_resident`` of them
ready on its device, the others brought in when a batch needs them), and reports each model's
``Capabilities``, so the bot validates requests (``RemoteModels``, one ``RemoteEngine`` per
model) without a model of its own. Each dispatcher prefers, within the fair queue's bounded
skip, jobs whose model is ready on its own worker, so the workers do not thrash between models.

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
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.engine import Capabilities, Engine
from pipeline.errors import EaselError
from pipeline.executor import _Stop, draw_batch, needs_loading
from pipeline.models import ModelSet, ModelSpec, thread_model
from pipeline.request import DrawRequest, DrawResult

if TYPE_CHECKING:
    from pipeline.executor import Executor
    from pipeline.fairqueue import Job
    from pipeline.upscale import Upscaler

log = logging.getLogger(__name__)

RAY_PIN = "ray==2.60.0"
# Seconds between a lost worker's tries to come back (Ray restarts it meanwhile).
REVIVE_DELAY_S = 1.0
# A worker that came back without its models is restarted after this long, then twice as long
# each time, up to the maximum.
MODEL_RETRY_S = 30.0
MODEL_RETRY_MAX_S = 600.0


class WorkersUnavailable(EaselError):
    """The Ray workers could not be started (Ray missing, too few GPUs, model load failed)."""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads: ``models`` (MODELS, or MODEL alone: ``WorkerSpec.single``),
    ``default_model`` drawing requests that name none ("": the first), at most ``max_resident``
    of them ready on a worker's device at once (0: as ``ModelSet.load`` picks for the device).
    ``loader(source, device=..., cache_dir=..., name=...)`` builds each model's engine (default
    ``Engine.load``); it is shipped to the workers, so it must be picklable."""

    models: tuple[ModelSpec, ...]
    default_model: str = ""
    max_resident: int = 0
    device: str = "auto"
    cache_dir: Path | None = None
    torch_threads: int | None = None
    upscaler: str = "none"
    upscale_steps: int = 20
    loader: Callable[..., Any] | None = None
    # Seconds between "still loading" events while a worker brings a model in, so the bot's
    # watchdog (worker_timeout_s) does not take a long load for a hang; RayBackend sets it.
    heartbeat_s: float = 10.0
    # A load still going after this long stops sending them: a hung load is then restarted.
    load_limit_s: float = 3600.0

    def __post_init__(self) -> None:
        if isinstance(self.models, str):  # the one-model form of before: say what it is now
            raise TypeError(
                f"WorkerSpec takes ModelSpecs; for one model: WorkerSpec.single({self.models!r})"
            )
        models = tuple(self.models)
        if not models:
            raise ValueError("a WorkerSpec needs at least one model")
        names = [m.name for m in models]
        default = self.default_model or names[0]
        if default not in names:
            raise ValueError(f"the default model {default!r} is not among {', '.join(names)}")
        # Frozen: the normalized values are set once, here (the default named, never "").
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "default_model", default)

    @classmethod
    def single(cls, model: str, **options: Any) -> WorkerSpec:
        """Workers of one model (MODEL), named as it is written."""
        return cls(models=(ModelSpec(model, model),), **options)


@dataclass(frozen=True)
class ModelInfo:
    """What a worker reports of one of its models."""

    name: str
    source: str
    capabilities: Capabilities
    # Counts prompt tokens in the bot, as the engine would.
    tokenizer: Any = field(repr=False, compare=False)
    model_hash: str | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker reports once its models are loaded, and after each batch it drew."""

    models: tuple[ModelInfo, ...]  # in the configured order
    default_model: str
    resident: tuple[str, ...]  # the models ready on its device, most recently used first
    device: str
    pid: int
    node_id: str
    host: str

    @property
    def capabilities(self) -> dict[str, Capabilities]:
        """Each model's capabilities, by name."""
        return {m.name: m.capabilities for m in self.models}


# -- inside the worker process ------------------------------------------------------------


class DrawWorker:
    """One GPU's worker, run as a Ray actor: loads every model once and draws what it is sent,
    bringing a batch's model in first when it is not the one ready."""

    def __init__(self, spec: WorkerSpec) -> None:
        # Before torch loads: the thread count changes the pictures' bits (pipeline/cpu.py).
        from pipeline.cpu import configure_cpu_threads

        configure_cpu_threads(spec.torch_threads, model=thread_model(spec.models))
        from pipeline.engine import quiet_library_logs

        quiet_library_logs(download_progress=False)  # the bot's log gets the workers' lines

        # A model that can't load is reported by describe(), not raised: Ray keeps no more of
        # an exception raised here than its text.
        self.spec = spec
        self.problem: EaselError | None = None
        try:
            self.models = ModelSet.load(
                spec.models,
                default=spec.default_model,
                device=spec.device,
                cache_dir=spec.cache_dir,
                max_resident=spec.max_resident,
                loader=spec.loader or Engine.load,
            )
        except EaselError as exc:
            self.problem = exc
            return
        self.models.attach_upscaler(
            spec.upscaler, steps=spec.upscale_steps, cache_dir=spec.cache_dir
        )

    def ping(self) -> tuple[str, ...] | EaselError:
        """The models ready here (a cheap "are you alive?": ``describe`` carries every
        model's tokenizer), or why this worker can't draw at all."""
        if self.problem is not None:
            return self.problem
        return self.models.resident()

    def describe(self) -> WorkerInfo | EaselError:
        """What this worker can draw and has ready, or why it can't draw at all."""
        import ray

        if self.problem is not None:
            return self.problem
        models = self.models
        engines = [models.engine(name) for name in models.names]
        return WorkerInfo(
            models=tuple(
                ModelInfo(
                    name=e.model,
                    source=e.source,
                    capabilities=e.capabilities,
                    tokenizer=getattr(e, "_counting_tokenizer", None),
                    model_hash=e.model_hash,
                )
                for e in engines
            ),
            default_model=models.default,
            resident=models.resident(),
            device=str(engines[0].device),
            pid=os.getpid(),
            node_id=ray.get_runtime_context().get_node_id(),
            host=socket.gethostname(),
        )

    def draw(
        self, requests: list[DrawRequest], pictures: dict[str, bytes]
    ) -> Iterator[tuple[Any, ...]]:
        """Draw a batch (one model's requests), yielding ``("accepted", model | None)`` as soon
        as this worker runs the call (the bot counts the jobs' attempt only then: a worker that
        died, or still runs an earlier call, never charges a batch it did not take; ``model``:
        the one it must bring in first), then for that model ``("loading", model)``,
        ``("alive",)`` every ``heartbeat_s`` while it loads and ``("loaded", names)`` once it
        is ready (the models ready here), ``("step", indices, step, total)`` as it goes,
        ``("end", index, result | exception | None)`` for each request (``("crash", exc)`` if
        the drawing thread itself died; a model that fails to load ends each with
        ``ModelUnavailable``), and last ``("resident", names)``: the models ready here now. A
        cancelled call stops at the next step."""
        import ray

        model = needs_loading(self.models, requests[0])
        # With the model it must load first, if any: the bot reports the start after that.
        yield ("accepted", model)
        context = ray.get_runtime_context()
        if model is not None:
            yield ("loading", model)
        if not any(r.init_image in pictures for r in requests):
            yield from self._draw_local(context, requests, requests, model)
            return
        # The starting pictures are written for this call only and deleted when it ends:
        # nothing of a user's pictures stays on the worker's machine.
        with tempfile.TemporaryDirectory(prefix="easel-ray-pictures-") as folder:
            local = [self._localize(r, pictures, Path(folder)) for r in requests]
            yield from self._draw_local(context, requests, local, model)

    def _draw_local(
        self,
        context: Any,
        requests: list[DrawRequest],
        local: list[DrawRequest],
        model: str | None,
    ) -> Iterator[tuple[Any, ...]]:
        """Draw ``local`` (``requests`` with this machine's copies of their pictures) on a
        thread, loading ``model`` there first, and yield its events as they come."""
        events: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        stop = threading.Event()
        loading = threading.Event()
        spec = self.spec

        def on_step(indices: list[int], step: int, total: int) -> None:
            if stop.is_set():
                raise _Stop
            events.put(("step", indices, step, total))

        def work() -> None:
            try:
                if model is not None:
                    loading.set()
                    try:
                        self.models.ensure(model)
                    except Exception as exc:  # ModelUnavailable: every job of it says so
                        for i in range(len(requests)):
                            events.put(("end", i, _portable(exc)))
                        return
                    finally:
                        loading.clear()
                    # Ready: the bot reports the drawing's start, and where the models are.
                    events.put(("loaded", self.models.resident()))
                for i, outcome in draw_batch(self.models, local, on_step):
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

        # The engine calls on_step from inside its loop, and loading a model takes a while; a
        # thread lets this generator yield each step as it happens and see a cancel meanwhile.
        thread = threading.Thread(target=work, name="easel-ray-draw", daemon=True)
        thread.start()
        started = last = time.monotonic()
        try:
            while True:
                try:
                    event = events.get(timeout=0.05)
                except queue.Empty:
                    if context.is_canceled():
                        stop.set()
                    now = time.monotonic()
                    if (
                        loading.is_set()
                        and now - last >= spec.heartbeat_s
                        and now - started < spec.load_limit_s
                    ):
                        last = now
                        yield ("alive",)  # still loading: not hung
                    continue
                if event is None:
                    break
                yield event
        finally:
            stop.set()
            thread.join()
        # Which models are ready now: the bot prefers this worker for their jobs.
        yield ("resident", self.models.resident())

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
    """Validates and resolves requests here for a model that is loaded in the Ray workers.

    ``placement`` is "device" while some live worker has the model ready, else "unloaded"
    (whether a worker keeps it in CPU memory meanwhile is the worker's business)."""

    def __init__(
        self,
        info: ModelInfo,
        *,
        device: str,
        resident: Callable[[], Collection[str]] = tuple,
        upscaler: Upscaler | None = None,
    ) -> None:
        # No pipeline in this process: Engine's validation reads only what is set here.
        self.pipe = None
        self.model = info.name
        self.source = info.source
        self.model_hash = info.model_hash
        self.device = device
        self.cache_dir = None
        self.capabilities = info.capabilities
        self._counting_tokenizer = info.tokenizer
        self._base_scheduler = None
        self._img2img = None
        self.upscaler = upscaler
        self._resident = resident

    @property
    def placement(self) -> str:  # what the workers last said, not an attribute of its own
        return "device" if self.model in self._resident() else "unloaded"

    @placement.setter
    def placement(self, value: str) -> None:
        raise AttributeError("a remote model's placement is what its workers report")

    def evict(self, *, keep_in_cpu_memory: bool) -> None:
        raise RuntimeError("this model is loaded in the Ray workers: they evict it")

    def bring_back(self) -> None:
        raise RuntimeError("this model is loaded in the Ray workers: they bring it back")

    def run_batch(self, requests: Sequence[DrawRequest], on_step: Any = None) -> list[DrawResult]:
        raise RuntimeError("this model is loaded in the Ray workers: draw through the executor")


class RemoteModels(ModelSet):
    """The workers' models, as the bot sees them: every configured one validates and resolves
    here (``engine``, ``capabilities``, ``resolve``, ``validate``, ``attach_upscaler``, as a
    ``ModelSet``); ``resident`` is what the live workers have ready between them. Loading and
    drawing happen in the workers: ``ensure`` and ``run_batch`` refuse."""

    def __init__(
        self,
        engines: Sequence[RemoteEngine],
        *,
        default: str,
        max_resident: int,
        specs: Sequence[ModelSpec],
        resident: Callable[[], Collection[str]],
    ) -> None:
        self._resident_of = resident
        super().__init__(engines, default=default, max_resident=max_resident, specs=specs)

    def resident(self) -> tuple[str, ...]:
        """The models some live worker has ready, in the configured order."""
        ready = set(self._resident_of())
        return tuple(name for name in self.names if name in ready)

    def needs_loading(self, request: DrawRequest) -> str | None:
        """The model ``request`` waits for if no live worker has it ready (the dispatchers ask
        about their own worker instead: ``RayBackend`` passes each one's resident models)."""
        if request.task == "upscale":
            return None
        name = request.model or self.default
        return None if name in self.resident() else name

    def ensure(self, name: str) -> Engine:
        raise RuntimeError("the models are loaded in the Ray workers: they bring them in")

    def run_batch(
        self, requests: Sequence[DrawRequest], on_step: Callable[[int, int], None] | None = None
    ) -> list[DrawResult]:
        raise RuntimeError("the models are loaded in the Ray workers: draw through the executor")


@dataclass(eq=False)
class _Worker:
    index: int
    actor: Any
    info: WorkerInfo | None = None
    # The models ready on it, as it last said (after each batch, and in each describe()).
    resident: tuple[str, ...] = ()
    batch: list[Job] = field(default_factory=list)
    stream: Any = None  # the running draw() call
    last_event: float = 0.0  # perf_counter of the stream's last event
    hung: bool = False
    lost: bool = False
    # What the log was told since it was lost (that it can't load a model, that it is down).
    warned: set[str] = field(default_factory=set)
    # When a worker that could not load its models is restarted next (perf_counter), and the
    # wait after that: a passing failure (the hub, memory) heals, a missing file costs little.
    retry_at: float = 0.0
    retry_wait: float = 0.0


class RayBackend:
    """Draws on Ray worker actors, one per GPU (``gpus_per_worker`` may be a fraction; 0 on CPUs).

    ``address``: "" starts a private Ray instance on this machine (shut down again by
    ``close``; a cluster that ``ray start`` runs here is not joined), "auto" or "host:6379"
    joins a running cluster (left running by ``close``). With ``gpus_per_worker`` 0 the
    workers see no GPU and a ``device`` of "auto" means the CPU. Call ``connect`` (blocking:
    off the event loop) before handing the backend to an ``Executor``; it returns the
    ``RemoteModels``.
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
        self.engine: RemoteModels | None = None
        self._workers: list[_Worker] = []
        self._owns_ray = False
        self._executor: Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None

    # -- connecting ----------------------------------------------------------------------

    def connect(self) -> RemoteModels:
        """Join or start Ray, start the workers and wait until each has loaded every model."""
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
        """What the workers load: on CPUs when they take no GPU, whatever CUDA they could see;
        one model ready at a time on a share of a card (the automatic count sizes by the whole
        card); "still loading" often enough for the watchdog."""
        spec = dataclasses.replace(
            self.spec,
            heartbeat_s=self.worker_timeout_s / 4,
            load_limit_s=max(self.spec.load_limit_s, 10 * self.worker_timeout_s),
        )
        if self.gpus_per_worker == 0 and spec.device.strip().lower() == "auto":
            spec = dataclasses.replace(spec, device="cpu")
        if 0 < self.gpus_per_worker < 1 and spec.max_resident == 0:
            spec = dataclasses.replace(spec, max_resident=1)
        return spec

    def _start_workers(self, ray: Any) -> RemoteModels:
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
        # Each worker loads every model once at start: WORKER_TIMEOUT_S for each.
        limit = self.worker_timeout_s * len(spec.models)
        try:
            infos = ray.get([w.actor.describe.remote() for w in self._workers], timeout=limit)
        except (RayActorError, GetTimeoutError) as exc:
            raise WorkersUnavailable(
                f"The Ray workers did not start within {limit:g} s (WORKER_TIMEOUT_S="
                f"{self.worker_timeout_s:g} s for each of {len(spec.models)} model(s)): "
                f"{_first_line(exc)}"
            ) from None
        for problem in infos:
            if isinstance(problem, EaselError):  # a model did not load: say why, as locally
                raise problem
        for worker, info in zip(self._workers, infos, strict=True):
            self._note(worker, info)
        first = _identity(infos[0])
        for info in infos[1:]:
            other = _identity(info)
            differ = sorted(
                name for name in first.keys() | other.keys() if first.get(name) != other.get(name)
            )
            if differ:
                raise WorkersUnavailable(
                    f"The Ray workers loaded different models (the sources, checkpoint hashes "
                    f"or capabilities of {', '.join(differ)} differ); install the same Easel "
                    "and models on every machine."
                )
        log.info(
            "%d Ray worker(s) ready: %s",
            len(infos),
            "; ".join(
                f"{i.host} pid {i.pid} on {i.device}, ready: {', '.join(i.resident)}" for i in infos
            ),
        )
        self.engine = self._remote_models(infos[0])
        return self.engine

    def _remote_models(self, info: WorkerInfo) -> RemoteModels:
        """The bot's view of the models ``info`` (any worker's: they agree) reports."""
        engines = [
            RemoteEngine(m, device=info.device, resident=self._resident_anywhere)
            for m in info.models
        ]
        specs = [ModelSpec(m.name, m.source) for m in info.models]
        return RemoteModels(
            engines,
            default=info.default_model,
            max_resident=self.spec.max_resident or 1,
            specs=specs,
            resident=self._resident_anywhere,
        )

    def _resident_anywhere(self) -> set[str]:
        """The models some live worker has ready."""
        return {name for w in self._workers if not w.lost for name in w.resident}

    @staticmethod
    def _note(w: _Worker, info: WorkerInfo) -> None:
        """What ``w`` reported: its info, and the models it has ready."""
        w.info, w.resident = info, info.resident

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
                # Its own ready models, not the bot-wide view: a job whose model another
                # worker has ready should wait for that one, within the bounded skip.
                batch = ex._take_batch(ready=self._ready_on(w))
            if batch:
                return batch
            work.clear()
            await work.wait()
            idled = True
        return []

    def _ready_on(self, w: _Worker) -> Callable[[DrawRequest], bool]:
        """Whether ``w`` could draw a request without loading its model first."""
        resident = frozenset(w.resident)
        default = self.spec.default_model

        def ready(request: DrawRequest) -> bool:
            # An upscale needs no drawing model: the shared upscaler draws it.
            return request.task == "upscale" or (request.model or default) in resident

        return ready

    async def _answers(self, w: _Worker) -> bool:
        """Whether ``w`` answers a cheap call (within ``worker_timeout_s``); marks it lost, and
        restarts a silent one, if not."""
        from ray.exceptions import RayError

        try:
            info = await asyncio.wait_for(w.actor.ping.remote(), self.worker_timeout_s)
        except (RayError, OSError, TimeoutError) as exc:
            info = exc
        if isinstance(info, tuple):
            w.resident = info
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
                    # it, off the loop, as the database may take a moment). A model to load
                    # first: its start is reported once it is loaded ("loaded").
                    accepted = True
                    loads = event[1] if len(event) > 1 else None
                    await asyncio.to_thread(ex._begin, batch, report=loads is None)
                    w.last_event = time.perf_counter()
                else:
                    self._handle(ex, w, batch, event)
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
            info = await w.actor.ping.remote()
        except (RayError, OSError) as exc:
            info = exc
        if isinstance(info, tuple):
            w.resident = info
            return
        w.lost = True
        log.warning(
            "Ray worker %d did not come back from a cancelled call: %s", w.index, _first_line(info)
        )

    @staticmethod
    def _handle(ex: Executor, w: _Worker, batch: list[Job], event: tuple[Any, ...]) -> None:
        """One event of ``w``'s stream (after "accepted") for ``batch``."""
        kind = event[0]
        if kind == "loading":
            ex._loading(batch, event[1])
        elif kind == "loaded":
            w.resident = tuple(event[1])
            ex._report_start(batch)
        elif kind == "resident":
            w.resident = tuple(event[1])
        elif kind == "alive":
            pass  # a long load goes on: the stream's clock was reset
        elif kind == "step":
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
        """Wait until Ray restarted a lost worker (it loads its models again first)."""
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
            if isinstance(info, EaselError):
                # Alive, but its models did not load: Ray would never run its constructor
                # again. Restart it now and then, waiting longer each time.
                now = time.perf_counter()
                if now >= w.retry_at:
                    if w.retry_at:
                        log.info("restarting Ray worker %d to load its models again", w.index)
                        self._restart(w)
                    w.retry_wait = min(max(2 * w.retry_wait, MODEL_RETRY_S), MODEL_RETRY_MAX_S)
                    w.retry_at = now + w.retry_wait
            await asyncio.to_thread(time.sleep, REVIVE_DELAY_S)  # real time, whatever the loop's
            return
        self._note(w, info)  # restarted: it has the default model ready again
        w.lost = False
        w.warned.clear()
        w.retry_at = w.retry_wait = 0.0
        log.info("Ray worker %d is back: %s pid %d", w.index, info.host, info.pid)

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


def _identity(info: WorkerInfo) -> dict[str, tuple[Any, ...]]:
    """What must agree between workers, per model: where it comes from, its checkpoint's hash
    (two machines with different files at one path differ here) and what it can do."""
    return {m.name: (m.source, m.model_hash, m.capabilities) for m in info.models}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
