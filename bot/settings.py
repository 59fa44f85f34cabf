"""The bot's settings: keywords with defaults, or read from the environment and .env."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.engine import DEFAULT_MODEL
from pipeline.models import ModelSpec, parse_models
from pipeline.upscale import DEFAULT_UPSCALE_STEPS, DEFAULT_UPSCALER

# The settings of EXECUTOR=ray only.
_RAY_ONLY = ("ray_address", "workers", "gpus_per_worker", "worker_timeout_s")


class SettingsError(ValueError):
    """A setting in the environment or .env has a value that can't be used."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the bot. Environment variable = field name in upper case."""

    discord_token: str | None = field(default=None, repr=False)
    # The one model to draw with (its source is also its name); or use MODELS for several.
    model: str = DEFAULT_MODEL
    # Several models, each with a name members pick in /draw model:, as name=source pairs:
    # "ldm=CompVis/ldm-text2im-large-256,sd15=/models/sd15,shapes=tiny:shapes".
    models: str = ""
    # Which of MODELS draws when neither the member nor the server picks one; "": the first.
    default_model: str = ""
    # How many models stay loaded at once (others give way, least recently used first);
    # 0: one on a GPU under 16 GB, else two.
    max_resident_models: int = 0
    # The model behind the U buttons (hub id, folder, tiny:shapes-x4, tiny:upscaler), loaded on
    # the first upscale; "none" turns upscaling off.
    upscaler: str = DEFAULT_UPSCALER
    upscale_steps: int = DEFAULT_UPSCALE_STEPS
    db_path: Path = Path("data/easel.sqlite3")
    data_dir: Path = Path("data")
    device: str = "auto"
    max_queued_per_user: int = 3
    # A job that was started this many times without finishing (the process died while drawing
    # it each time) is not started again after a restart.
    max_attempts: int = 2
    # Discord user ids of the bot's operators (comma-separated in the environment): they may
    # pause drawing in every server. Empty: the application's owner in the Developer Portal.
    owner_ids: tuple[int, ...] = ()
    max_queue: int = 50
    max_batch: int = 4
    default_steps: int = 50
    default_guidance: float = 6.0
    # Seconds between "Drawing… 12/50" edits of one job's message (Discord rate-limits edits).
    progress_interval: float = 1.5
    # A guild to sync commands to instantly while developing; global sync otherwise.
    dev_guild_id: int | None = None
    # Where the built-in tiny models are built; None means $EASEL_CACHE_DIR or ~/.cache/easel.
    model_cache_dir: Path | None = None
    # Torch's CPU threads; None: one per physical core this process may use (pipeline/cpu.py).
    torch_threads: int | None = None
    log_level: str = "INFO"
    # Where drawing happens: "local" (a thread of this process) or "ray" (Ray workers, one per
    # GPU, on this machine or a cluster; README: Several GPUs or machines).
    executor: str = "local"
    # The next four apply with EXECUTOR=ray only (refused with "local" unless left at their
    # defaults). "" starts a private Ray on this machine (even if `ray start` runs one here);
    # "auto" or "host:6379" joins a cluster.
    ray_address: str = ""
    workers: int = 1
    # GPUs each Ray worker takes: 1 for a card of its own, 0.5 for two workers per card (a share
    # from 0.0001 to 1, or a whole number), 0 to draw on CPUs (the workers see no GPU).
    gpus_per_worker: float = 1.0
    # A Ray worker that reports no step for this long is restarted and its jobs run again.
    worker_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        executor = self.executor.strip().lower()
        if executor not in ("local", "ray"):
            raise SettingsError(f"EXECUTOR must be local or ray; got {self.executor!r}.")
        object.__setattr__(self, "executor", executor)
        if self.workers < 1:
            raise SettingsError(f"WORKERS must be at least 1; got {self.workers}.")
        gpus = self.gpus_per_worker
        # What Ray can place: none, a share of one GPU (to 1/10000), or whole GPUs.
        if not (
            gpus == 0
            or 0.0001 <= gpus <= 1
            or (gpus > 1 and math.isfinite(gpus) and gpus == int(gpus))
        ):
            raise SettingsError(
                "GPUS_PER_WORKER must be 0 (draw on CPUs), a share of one GPU from 0.0001 to 1 "
                f"(like 0.5), or a whole number of GPUs; got {gpus:g}."
            )
        if not (self.worker_timeout_s > 0 and math.isfinite(self.worker_timeout_s)):
            raise SettingsError(
                "WORKER_TIMEOUT_S must be a finite number of seconds, more than 0; "
                f"got {self.worker_timeout_s:g}."
            )
        if self.max_resident_models < 0:
            raise SettingsError(
                "MAX_RESIDENT_MODELS must be 0 (automatic) or more; "
                f"got {self.max_resident_models}."
            )
        specs = self._parse_models()  # refuses a malformed MODELS
        # Parsed once: several parts of the bot ask for them.
        object.__setattr__(self, "_model_specs", specs)
        names = [spec.name for spec in specs]
        if self.default_model and self.default_model not in names:
            where = "MODELS" if self.models.strip() else "MODEL"
            raise SettingsError(
                f"DEFAULT_MODEL={self.default_model} is not among the models in {where} "
                f"({', '.join(names)}); pick one of them or leave it empty."
            )
        if executor == "local":
            # Settings only Ray reads would be ignored without a word: refuse them.
            ignored = [
                f.name.upper()
                for f in fields(self)
                if f.name in _RAY_ONLY and getattr(self, f.name) != f.default
            ]
            if ignored:
                raise SettingsError(
                    f"{', '.join(ignored)} only apply with EXECUTOR=ray; set EXECUTOR=ray, or "
                    "remove them (EXECUTOR=local draws on one thread of this process)."
                )

    def model_specs(self) -> tuple[ModelSpec, ...]:
        """The models to load: MODELS, else MODEL alone (named as it is written)."""
        specs: tuple[ModelSpec, ...] = getattr(self, "_model_specs")  # noqa: B009
        return specs

    def _parse_models(self) -> tuple[ModelSpec, ...]:
        if not self.models.strip():
            return (ModelSpec(self.model, self.model),)
        if self.model != DEFAULT_MODEL:
            raise SettingsError(
                "Set MODELS or MODEL, not both: MODEL is the one-model form. Add "
                f"{self.model} to MODELS with a name (like mine={self.model}) and remove MODEL."
            )
        try:
            return parse_models(self.models)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    @property
    def default_model_name(self) -> str:
        """The model a drawing uses unless a member or server picks another."""
        return self.default_model or self.model_specs()[0].name

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")
    ) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``), after loading ``.env``.

        Variables already set in the environment win over the .env file.
        """
        if environ is None:
            if dotenv is not None and dotenv.is_file():
                from dotenv import load_dotenv

                load_dotenv(dotenv, override=False)
            environ = os.environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _convert(f.name, str(f.type), raw.strip())
        return cls(**values)


def _convert(name: str, type_name: str, raw: str) -> Any:
    env = name.upper()
    try:
        if "Path" in type_name:
            return Path(raw).expanduser()
        if type_name.startswith("tuple[int"):
            return tuple(int(part) for part in raw.replace(" ", "").split(",") if part)
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError:
        if type_name.startswith("tuple[int"):
            kind = "a comma-separated list of whole numbers"
        elif type_name.startswith("int"):
            kind = "a whole number"
        else:
            kind = "a number"
        raise SettingsError(f"{env} must be {kind}; got {raw!r}.") from None
    return raw
