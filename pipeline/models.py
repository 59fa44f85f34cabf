"""Several named models in one bot: which are configured, which are loaded, and bringing one in.

``MODELS=ldm=CompVis/ldm-text2im-large-256,sd15=/models/sd15,shapes=tiny:shapes`` names each
model once; requests, the store and the pictures' settings carry the name. Every model is
loaded once at start, so a broken entry is found then (not by the first member who picks it)
and each one's capabilities are known for validation from then on. Only ``max_resident`` stay
on the device; the least recently used gives way to the next one needed: into CPU memory on
a GPU when the machine has room (bringing it back is a copy, not a read from disk:
``bench/model_switch.py`` measures both), otherwise out of memory altogether.

Loading happens on the thread that draws (``ensure``), never on the event loop; the executor
prefers jobs for a model that is ready, within a bounded skip (``pipeline.fairqueue``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.engine import Capabilities, Engine
from pipeline.errors import EaselError
from pipeline.messages import N_
from pipeline.request import DrawRequest, DrawResult

log = logging.getLogger(__name__)

# What a MODELS name may be: short, lower case, typed in /draw model: and shown in embeds.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
# A GPU with less memory than this keeps one model loaded by default, a larger one two.
SMALL_GPU_BYTES = 16 * 1024**3
# Evicted weights stay in CPU memory only while this much of it would still be free after.
CPU_MEMORY_HEADROOM = 2 * 1024**3


class UnknownModel(EaselError):
    """A request names a model this bot does not have (or no longer has)."""


class ModelUnavailable(EaselError):
    """A configured model could not be brought in to draw a job."""


@dataclass(frozen=True)
class ModelSpec:
    """One configured model: its name and where it is loaded from (a MODEL value)."""

    name: str
    source: str


def parse_models(text: str) -> tuple[ModelSpec, ...]:
    """``name=source,name=source`` (the MODELS setting) as specs; ``ValueError`` says what to
    fix. A source is anything MODEL takes: a hub id, a folder, a checkpoint file, ``tiny:...``."""
    specs: list[ModelSpec] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, source = part.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not source:
            raise ValueError(
                f"MODELS entries are name=source, like sd15=/models/sd15; got {part!r}."
            )
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"The model name {name!r} in MODELS must be 1-32 lower-case letters, digits, "
                "dots, dashes or underscores, starting with a letter or digit."
            )
        if any(s.name == name for s in specs):
            raise ValueError(f"MODELS names {name!r} twice; give each model its own name.")
        specs.append(ModelSpec(name, source))
    if not specs:
        raise ValueError("MODELS is empty; give at least one name=source, or use MODEL.")
    return tuple(specs)


def default_max_resident(device: str) -> int:
    """How many models stay loaded when MAX_RESIDENT_MODELS is not set: 1 on a GPU under
    16 GB, else 2."""
    if not device.startswith("cuda"):
        return 2
    import torch

    index = torch.device(device).index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    return 1 if total < SMALL_GPU_BYTES else 2


def available_cpu_memory() -> int | None:
    """Bytes of memory the machine could still give (Linux's MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


Loader = Callable[..., Engine]


class ModelSet:
    """The configured models, one ``Engine`` each, of which at most ``max_resident`` are ready
    on the device; the executor draws through it like through one engine.

    ``engine``, ``capabilities``, ``resolve`` and ``validate`` work for every configured model
    at any time (on the event loop). ``ensure`` and ``run_batch`` load and evict, and run only
    on the thread that draws.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        *,
        default: str | None = None,
        max_resident: int = 1,
        specs: Sequence[ModelSpec] = (),
    ) -> None:
        if not engines:
            raise ValueError("a ModelSet needs at least one model")
        self._engines = {e.model: e for e in engines}
        self.default = default or engines[0].model
        if self.default not in self._engines:
            raise ValueError(f"the default model {self.default!r} is not among the models")
        self.max_resident = max(1, max_resident)
        self.specs = tuple(specs) or tuple(ModelSpec(e.model, e.source) for e in engines)
        # Names of the models ready on the device, least recently used first.
        self._lru = [e.model for e in engines if e.ready]
        # Names of the evicted models waiting in CPU memory, the longest waiting first.
        self._waiting = [e.model for e in engines if e.placement == "cpu"]
        self._lock = threading.Lock()
        self.upscaler: Any = None

    @classmethod
    def load(
        cls,
        specs: Sequence[ModelSpec],
        *,
        default: str | None = None,
        device: str = "auto",
        cache_dir: Path | None = None,
        max_resident: int = 0,
        loader: Loader | None = None,
    ) -> ModelSet:
        """Load every model once (their capabilities, and a broken entry found now), keeping
        ``max_resident`` of them ready (0: ``default_max_resident``), the default among them."""
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        load = loader or Engine.load
        default = default or specs[0].name
        keep = max_resident or default_max_resident(device)
        # The default last: it is the one left ready when the others give way.
        ordered = sorted(specs, key=lambda s: s.name == default)
        engines: list[Engine] = []
        models: ModelSet | None = None
        for spec in ordered:
            if models is not None:
                # Room first, then the next model: a device sized for max_resident models may
                # not hold one more, even while it loads (a GPU under 16 GB keeps 1).
                models._fit(keep=None, room_for=1)
            started = time.perf_counter()
            engine = load(spec.source, device=device, cache_dir=cache_dir, name=spec.name)
            log.info(
                "model %s (%s) loaded in %.1f s%s",
                spec.name,
                spec.source,
                time.perf_counter() - started,
                f", hash {engine.model_hash}" if engine.model_hash else "",
            )
            engines.append(engine)
            if models is None:
                models = cls([engine], default=spec.name, max_resident=keep)
            else:
                models._add(engine)
        assert models is not None
        by_name = {e.model: e for e in engines}
        models._engines = {s.name: by_name[s.name] for s in specs}  # the configured order
        models.default = default
        models.specs = tuple(specs)
        return models

    def _add(self, engine: Engine) -> None:
        """A freshly loaded engine joins, as the most recently used (others give way)."""
        with self._lock:
            self._engines[engine.model] = engine
            self._lru.append(engine.model)
        self._fit(keep=engine.model)

    # -- what is configured --------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Every configured model's name, in the order MODELS lists them."""
        return tuple(self._engines)

    def engine(self, name: str | None = None) -> Engine:
        """The engine of model ``name`` (None: the default); ``UnknownModel`` if there is none."""
        found = self._engines.get(name or self.default)
        if found is None:
            raise UnknownModel(
                N_("This bot has no model called {model}; pick one of: {names}."),
                model=name,
                names=", ".join(self.names),
            )
        return found

    def find(self, model: str | None) -> str | None:
        """The name a stored job's model goes by now: the name itself, or the name of the
        model loaded from that source (jobs stored before MODELS named them); None if the bot
        no longer has it."""
        if model is None:
            return self.default
        if model in self._engines:
            return model
        for engine in self._engines.values():
            if engine.source == model:
                return engine.model
        return None

    def capabilities(self, name: str | None = None) -> Capabilities:
        return self.engine(name).capabilities

    @property
    def model(self) -> str:
        """The default model's name (what a request without a model draws with)."""
        return self.default

    # -- what is loaded ------------------------------------------------------------------

    def resident(self) -> tuple[str, ...]:
        """The models ready on the device now, most recently used first."""
        with self._lock:
            return tuple(reversed(self._lru))

    def placement(self, name: str) -> str:
        """Where model ``name``'s weights are: "device", "cpu" or "unloaded"."""
        return self.engine(name).placement

    def needs_loading(self, request: DrawRequest) -> str | None:
        """The model ``request`` waits for, if it is not ready (an upscale needs none)."""
        if request.task == "upscale":
            return None
        name = request.model or self.default
        with self._lock:
            return None if name in self._lru else name

    def ready_for(self, request: DrawRequest) -> bool:
        """Whether ``request`` could start drawing without loading a model."""
        return self.needs_loading(request) is None

    def ensure(self, name: str) -> Engine:
        """Make model ``name`` ready on the device, evicting the least recently used ones over
        ``max_resident`` first (so two never need the memory at once). On the drawing thread."""
        engine = self.engine(name)
        with self._lock:
            if name in self._lru:
                self._lru.remove(name)
                self._lru.append(name)
                return engine
        self._fit(keep=None, room_for=1, coming=name)
        started = time.perf_counter()
        if name in self._waiting:
            self._waiting.remove(name)
        try:
            engine.bring_back()
        except Exception as exc:
            log.exception("could not load model %s (%s)", name, engine.source)
            raise ModelUnavailable(
                N_(
                    "The model {model} could not be loaded just now (the bot's log says why). "
                    "Try again later, or pick another model."
                ),
                model=name,
            ) from exc
        log.info(
            "model %s ready on %s in %.2f s", name, engine.device, time.perf_counter() - started
        )
        with self._lock:
            self._lru.append(name)
        return engine

    def _fit(self, *, keep: str | None, room_for: int = 0, coming: str | None = None) -> None:
        """Evict the least recently used models until ``room_for`` more fit (``coming``: the
        model about to be brought in, whose copy in CPU memory must stay for that)."""
        while True:
            with self._lock:
                over = len(self._lru) + room_for - self.max_resident
                candidates = [n for n in self._lru if n != keep]
                if over <= 0 or not candidates:
                    return
                victim = candidates[0]
                self._lru.remove(victim)
            engine = self._engines[victim]
            keep_in_cpu = engine.device != "cpu" and self._make_cpu_room(
                engine.weight_bytes(), spare=coming
            )
            engine.evict(keep_in_cpu_memory=keep_in_cpu)
            if engine.placement == "cpu":
                self._waiting.append(victim)
            log.info("model %s gave way (now %s)", victim, engine.placement)

    def _make_cpu_room(self, size: int, *, spare: str | None = None) -> bool:
        """Whether ``size`` bytes of evicted weights can wait in CPU memory, dropping the
        copies waiting there longest (but ``spare``'s) if that makes the room: they would
        only be read from the disk again."""
        while not self._cpu_has_room(size):
            older = [n for n in self._waiting if n != spare]
            if not older:
                return False
            self._waiting.remove(older[0])
            self._engines[older[0]].unload()
            log.info("model %s left CPU memory to make room", older[0])
        return True

    @staticmethod
    def _cpu_has_room(size: int) -> bool:
        free = available_cpu_memory()
        return free is not None and free - size > CPU_MEMORY_HEADROOM

    # -- what the executor calls ---------------------------------------------------------

    def engine_for(self, request: DrawRequest) -> Engine:
        """The engine that checks and draws ``request``. An upscale is drawn by the shared
        upscaler, so a picture of a model the bot no longer has can still be upscaled."""
        if request.task == "upscale":
            return self._engines.get(request.model or "") or self._engines[self.default]
        return self.engine(request.model)

    def resolve(self, request: DrawRequest) -> DrawRequest:
        return self.engine_for(request).resolve(request)

    def validate(self, request: DrawRequest) -> list[str]:
        return self.engine_for(request).validate(request)

    def attach_upscaler(self, name: str, *, steps: int, cache_dir: Path | None = None) -> None:
        """One upscaler, shared by every model (it upscales pictures, whoever drew them)."""
        first = self._engines[self.default]
        first.attach_upscaler(name, steps=steps, cache_dir=cache_dir)
        self.upscaler = first.upscaler
        for engine in self._engines.values():
            engine.upscaler = self.upscaler

    def run_batch(
        self, requests: Sequence[DrawRequest], on_step: Callable[[int, int], None] | None = None
    ) -> list[DrawResult]:
        """Draw a batch (one model's requests) with its model, bringing that in first."""
        if not requests:
            return []
        first = requests[0]
        if first.task == "upscale":
            # The upscaler draws it: the picture's model need not be ready (or still be here).
            return self.engine_for(first).run_batch(requests, on_step)
        return self.ensure(first.model or self.default).run_batch(requests, on_step)


def thread_model(specs: Sequence[ModelSpec]) -> str:
    """What ``configure_cpu_threads`` is told the model is: a built-in tiny one only when all
    are (their operations are too small for more threads), else a real one."""
    for spec in specs:
        if not spec.source.startswith("tiny:"):
            return spec.source
    return specs[0].source


__all__ = [
    "ModelSet",
    "ModelSpec",
    "ModelUnavailable",
    "UnknownModel",
    "available_cpu_memory",
    "default_max_resident",
    "parse_models",
    "thread_model",
]
