"""What the buttons, the job runner and the cogs use of the bot, as protocols.

discord.py hands them the bot (``interaction.client``, the ``bot`` of a cog's ``setup``). Typed
as ``bot.app.EaselBot`` they would import the module that builds them all, and the views, which
need the job runner, would import ``bot.jobs``, which posts the views. Typed by these protocols
nothing in ``bot/`` imports ``bot.app`` but the entry points; ``EaselBot`` satisfies them (mypy
checks it where the bot hands itself to ``JobRunner``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import discord
    from discord.ext import commands

    from bot.policy import Policy
    from bot.settings import Settings
    from bot.store import PurgeRecord, Store
    from pipeline.compare import Comparison
    from pipeline.executor import Executor
    from pipeline.models import ModelSet
    from pipeline.request import DrawRequest


class Host(Protocol):
    """What the job runner uses of the bot: its settings, and where to post."""

    @property
    def settings(self) -> Settings: ...

    async def resolve_channel(self, channel_id: int | None) -> Any:
        """A channel by id, from the cache or the API; None if it is gone or unknown."""
        ...

    def get_channel(
        self, id: int, /
    ) -> discord.abc.GuildChannel | discord.Thread | discord.abc.PrivateChannel | None: ...

    def get_user(self, id: int, /) -> discord.User | None: ...

    async def fetch_user(self, user_id: int, /) -> discord.User: ...


class Jobs(Protocol):
    """The job runner (``bot.jobs.JobRunner``) as the buttons and the cogs call it."""

    async def policy(self, guild_id: int | None, model: str | None = None) -> Policy: ...

    async def start(
        self,
        interaction: discord.Interaction,
        request: DrawRequest,
        *,
        parent_job_id: int | None = None,
        kind: str = "draw",
        notes: tuple[str, ...] = (),
    ) -> int | None: ...

    async def reroll(
        self, interaction: discord.Interaction, job_id: int, *, seed: int | None = None
    ) -> int | None: ...

    async def delete(self, interaction: discord.Interaction, job_id: int) -> None: ...

    async def vary(
        self, interaction: discord.Interaction, job_id: int, index: int, strength: float
    ) -> int | None: ...

    async def upscale(
        self, interaction: discord.Interaction, job_id: int, index: int
    ) -> int | None: ...

    async def remix_form(
        self, interaction: discord.Interaction, job_id: int, images: int
    ) -> None: ...

    async def remix(
        self,
        interaction: discord.Interaction,
        job_id: int,
        index: int,
        prompt: str,
        strength: float,
    ) -> int | None: ...

    async def compare(
        self,
        interaction: discord.Interaction,
        comparison: Comparison,
        *,
        notes: tuple[str, ...] = (),
    ) -> int | None: ...

    async def open_cell(
        self, interaction: discord.Interaction, compare_id: int, cell_id: int
    ) -> None: ...

    async def purge(self, guild_id: int, user_id: int, moderator_id: int) -> PurgeRecord: ...

    async def forget(self, user_id: int) -> int: ...


class Easel(Host, Protocol):
    """The bot as the buttons and the cogs use it (``bot.app.EaselBot``, once set up)."""

    @property
    def store(self) -> Store: ...

    @property
    def models(self) -> ModelSet: ...

    @property
    def executor(self) -> Executor: ...

    @property
    def jobs(self) -> Jobs: ...

    async def guarded(self, interaction: discord.Interaction, work: Awaitable[Any]) -> None:
        """Run a button's work, answering errors the same way slash commands do."""
        ...

    async def is_owner(self, user: discord.abc.User, /) -> bool: ...

    async def add_cog(self, cog: commands.Cog, /) -> None: ...
