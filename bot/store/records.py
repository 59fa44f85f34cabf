"""The rows the store hands out (jobs, server settings, purges) and their columns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final

from pipeline.request import DrawRequest

JOB_KINDS: Final = ("draw", "compare", "vary", "upscale", "remix")
STATUSES: Final = ("queued", "running", "done", "failed", "cancelled", "refused")
UNFINISHED: Final = ("queued", "running")

# The DrawRequest fields, spelled out rather than derived, so that a field added to DrawRequest
# without a migration fails a test instead of an INSERT in production.
REQUEST_COLUMNS: Final = (
    "prompt",
    "negative_prompt",
    "steps",
    "guidance",
    "eta",
    "sampler",
    "seed",
    "width",
    "height",
    "count",
    "model",
    "variation_seed",
    "variation_strength",
    "task",
    "init_image",
    "strength",
)


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs`` with its images; ``request`` rebuilds the DrawRequest."""

    id: int
    guild_id: int | None
    channel_id: int | None
    user_id: int
    user_name: str
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    eta: float
    sampler: str | None
    seed: int | None
    width: int | None
    height: int | None
    count: int
    model: str | None
    status: str
    error: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    message_id: int | None
    jump_url: str | None
    parent_job_id: int | None
    deleted_at: float | None
    deleted_by: int | None
    withheld: int = 0  # images the safety checker flagged, neither kept nor posted
    delivery_failed: str | None = None  # why the bot gave up posting the result
    kind: str = "draw"  # "draw", or "compare": a /compare grid whose cells are jobs of their own
    compare_id: int | None = None  # for a comparison's cell: the comparison's job number
    spec: str | None = None  # for a comparison: its axes (JSON, Comparison.to_dict)
    variation_seed: int | None = None
    variation_strength: float = 0.0
    task: str = "draw"
    init_image: str | None = None  # absolute, as read back by the store
    strength: float | None = None  # img2img: A1111's denoising strength
    locale: str | None = None  # the language of its posts, chosen when it was queued
    images: list[tuple[Path, int]] = field(default_factory=list, hash=False)

    @property
    def request(self) -> DrawRequest:
        return DrawRequest(**{name: getattr(self, name) for name in REQUEST_COLUMNS})

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED


_JOB_COLUMNS: Final = tuple(f.name for f in fields(JobRecord) if f.name != "images")

NSFW_MODES: Final = ("filter", "age_restricted")


@dataclass(frozen=True)
class GuildSettings:
    """A server's own limits and defaults; ``None`` means "the bot-wide default"."""

    max_steps: int | None = None
    max_side: int | None = None  # the largest width or height, in pixels
    max_count: int | None = None
    max_queued_per_user: int | None = None
    cooldown_s: int | None = None  # seconds between one member's drawing starts
    default_sampler: str | None = None
    default_steps: int | None = None
    nsfw: str | None = None  # one of NSFW_MODES
    max_compare_cells: int | None = None  # the most cells one /compare may draw
    default_model: str | None = None  # a MODELS name
    allowed_models: str | None = None  # MODELS names, comma-separated; None: all of them


_SETTINGS_COLUMNS: Final = tuple(f.name for f in fields(GuildSettings))


@dataclass(frozen=True)
class UserSettings:
    """A member's own /draw defaults and reply language; ``None`` means "not set"."""

    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    count: int | None = None
    negative_prompt: str | None = None
    spoiler: bool | None = None
    language: str | None = None  # a Discord locale ("zh-CN"); None: the client's own


USER_SETTINGS_COLUMNS: Final = tuple(f.name for f in fields(UserSettings))


@dataclass(frozen=True)
class PurgeRecord:
    """One /mod purge: who removed whose drawings in which server, and how much went."""

    id: int
    guild_id: int
    moderator_id: int
    target_user_id: int
    purged_at: float
    jobs: int
    images: int
    messages_deleted: int
    messages_missing: int
    messages_failed: int


_PURGE_COLUMNS: Final = tuple(f.name for f in fields(PurgeRecord))
