"""The composition root: ``create_bot(settings)`` builds the store and the bot; ``setup_hook`` opens
the store, loads the model, starts the executor, re-queues unfinished jobs and registers buttons."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import i18n
from bot.i18n import N_, _
from bot.jobs import JobRunner
from bot.replies import answer_privately
from bot.settings import Settings
from bot.store import EVERYWHERE, Store, StoreBusy
from bot.views import (
    CellMenu,
    DeleteButton,
    RemixButton,
    RerollButton,
    UpscaleButton,
    VaryButton,
    VaryStrengthButton,
)
from pipeline.errors import EaselError

if TYPE_CHECKING:
    from pipeline.models import ModelSet
    from pipeline.ray_backend import RayBackend

log = logging.getLogger(__name__)

COGS = (
    "bot.cogs.draw",
    "bot.cogs.compare",
    "bot.cogs.history",
    "bot.cogs.moderation",
    "bot.cogs.privacy",
    "bot.cogs.settings",
    "bot.cogs.models",
)
COMMAND_HASH_KEY = "command_hash"
GENERIC_ERROR = N_("Sorry, something went wrong on our side. It has been logged; please try again.")


class EaselTree(app_commands.CommandTree):
    """Maps every error from a slash command to one polite ephemeral answer, in the member's
    language: every command (and its autocomplete) runs in the member's locale."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        # Runs in the task that then runs the command: the locale holds for all of it.
        i18n.enter(interaction)
        return True

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await self.client.report_error(interaction, error)  # type: ignore[attr-defined]


class EaselBot(commands.Bot):
    """The drawing bot. ``models``, ``executor`` and ``jobs`` exist once ``setup_hook`` ran."""

    executor: Any
    models: ModelSet
    jobs: JobRunner

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        sync_only: bool = False,
        proxy: str | None = None,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            proxy=proxy,  # discord.py ignores HTTPS_PROXY unless it is passed in
            intents=discord.Intents.default(),
            # Prompts are user text: "@everyone" in one must ping nobody. Deliveries allow the
            # requester explicitly.
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=EaselTree,
            help_command=None,
        )
        self.settings = settings
        self.store = store
        self.sync_only = sync_only
        # The operator: OWNER_IDS, else the application's owner (discord.py asks Discord).
        if settings.owner_ids:
            self.owner_ids = set(settings.owner_ids)

    # -- start and stop ------------------------------------------------------------------

    async def setup_hook(self) -> None:
        from pipeline.executor import Executor
        from pipeline.models import ModelSet

        s = self.settings
        await self.store.open()
        # Before any sync: the synced commands carry their zh-CN names and descriptions.
        await self.tree.set_translator(i18n.Translator())
        if self.sync_only:  # `python -m bot sync`: no model, no queue
            for cog in COGS:
                await self.load_extension(cog)
            await self.sync_commands(force=True)
            return
        backend = None
        specs = s.model_specs()
        names = ", ".join(spec.name for spec in specs)
        if s.executor == "ray":
            backend = _ray_backend(s)
            log.info("starting %d Ray worker(s) with model(s) %s", s.workers, names)
            self.models = await asyncio.to_thread(backend.connect)
        else:
            log.info("loading model(s) %s", names)
            self.models = await asyncio.to_thread(
                ModelSet.load,
                specs,
                default=s.default_model_name,
                device=s.device,
                cache_dir=s.model_cache_dir,
                max_resident=s.max_resident_models,
            )
        self.models.attach_upscaler(s.upscaler, steps=s.upscale_steps, cache_dir=s.model_cache_dir)
        self.executor = Executor(
            self.models,
            max_per_user=s.max_queued_per_user,
            max_queue=s.max_queue,
            max_batch=s.max_batch,
            progress_interval=s.progress_interval,
            backend=backend,
            max_attempts=s.max_attempts,
        )
        # Pauses survive restarts: apply them before anything is queued again.
        for guild_id in await self.store.paused_guilds():
            if guild_id == EVERYWHERE:
                self.executor.pause()
            else:
                self.executor.pause_group(guild_id)
        self.executor.start()
        self.jobs = JobRunner(
            self, self.store, self.models, self.executor, max_attempts=s.max_attempts
        )
        for cog in COGS:
            await self.load_extension(cog)
        self.add_dynamic_items(
            RerollButton,
            DeleteButton,
            CellMenu,
            VaryButton,
            VaryStrengthButton,
            UpscaleButton,
            RemixButton,
        )
        await self.jobs.recover()
        await self.sync_commands(force=False)

    async def close(self) -> None:
        executor = getattr(self, "executor", None)
        if executor is not None:
            await asyncio.to_thread(executor.close)
        await super().close()
        await self.store.close()

    # -- commands ------------------------------------------------------------------------

    async def command_hash(self) -> str:
        """A fingerprint of the slash commands as Discord would receive them, translations
        included (a changed catalogue is synced again)."""
        translator = self.tree.translator
        commands = self.tree.get_commands()
        if translator is None:
            payload = [c.to_dict(self.tree) for c in commands]
        else:
            payload = [await c.get_translated_payload(self.tree, translator) for c in commands]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    async def sync_commands(self, *, force: bool) -> bool:
        """Sync the commands with Discord when they changed (or when forced).

        Discord limits command creation per day, so an unchanged set is never re-sent.
        """
        digest = await self.command_hash()
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        key = f"{COMMAND_HASH_KEY}:{self.settings.dev_guild_id or 'global'}"
        if not force and await self.store.get_meta(key) == digest:
            return False
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        await self.store.set_meta(key, digest)
        log.info("synced %d slash command(s) %s", len(synced), "to a guild" if guild else "")
        return True

    # -- helpers for cogs ----------------------------------------------------------------

    def user_locale(self, user_id: int) -> str | None:
        """The reply language a member chose with /settings (None: their client's)."""
        return self.store.user_settings(user_id).language

    async def resolve_channel(self, channel_id: int | None) -> Any:
        """A channel by id, from the cache or the API; None if it is gone or unknown."""
        if channel_id is None:
            return None
        await self.wait_until_ready()
        channel = self.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.fetch_channel(channel_id)
            except discord.HTTPException:
                return None
        return channel

    async def guarded(self, interaction: discord.Interaction, work: Awaitable[Any]) -> None:
        """Run a button's work, answering errors the same way slash commands do."""
        try:
            await work
        except Exception as exc:
            await self.report_error(interaction, exc)

    async def report_error(self, interaction: discord.Interaction, error: BaseException) -> None:
        """Tell the user what went wrong, politely and privately, in their language; log what
        we didn't expect."""
        original = getattr(error, "original", error)
        # An error raised before any interaction_check ran (a transformer) still answers in
        # the member's language.
        i18n.enter(interaction)
        if isinstance(original, EaselError):
            message = original.localized()
        elif isinstance(original, StoreBusy):
            message = _("The bot is very busy right now; please try again in a moment.")
        elif isinstance(error, app_commands.MissingPermissions):
            if "manage_guild" in error.missing_permissions:
                message = _("Only members with the Manage Server permission can use this.")
            else:
                message = _("Only moderators (members with Manage Messages) can use this.")
        elif isinstance(error, app_commands.NoPrivateMessage):
            message = _("This command only works in a server.")
        elif isinstance(error, app_commands.CheckFailure):
            message = _("You can't use this command here.")
        else:
            command = interaction.command.qualified_name if interaction.command else "a button"
            log.error(
                "unexpected error in %s (user %s, job %s)",
                command,
                interaction.user.id,
                interaction.extras.get("job_id"),
                exc_info=original,
            )
            message = _(GENERIC_ERROR)
        await answer_privately(interaction, message)


def _ray_backend(s: Settings) -> RayBackend:
    """The Ray workers EXECUTOR=ray draws on; each loads every model itself."""
    from pipeline.ray_backend import RayBackend, WorkerSpec

    spec = WorkerSpec(
        s.model_specs(),
        default_model=s.default_model_name,
        max_resident=s.max_resident_models,
        device=s.device,
        cache_dir=s.model_cache_dir,
        torch_threads=s.torch_threads,
        upscaler=s.upscaler,
        upscale_steps=s.upscale_steps,
    )
    return RayBackend(
        spec,
        workers=s.workers,
        gpus_per_worker=s.gpus_per_worker,
        address=s.ray_address,
        worker_timeout_s=s.worker_timeout_s,
    )


def create_bot(
    settings: Settings,
    *,
    sync_only: bool = False,
    proxy: str | None = None,
    clock: Callable[[], float] | None = None,
) -> EaselBot:
    """Build the bot and everything it owns. Does no I/O: ``setup_hook`` opens things.

    ``proxy``: an HTTP proxy URL for every connection to Discord (the entry point passes
    HTTPS_PROXY's). ``clock``: what the store stamps rows with instead of ``time.time`` (the
    preview passes its simulated Discord's clock, which its page shows times against).
    """
    store = Store(settings.db_path, settings.data_dir, clock=clock or time.time)
    return EaselBot(settings, store, sync_only=sync_only, proxy=proxy)


class RedactingFormatter(logging.Formatter):
    """Replaces secrets (the bot token) anywhere in a formatted line, tracebacks included."""

    def __init__(self, fmt: str, *secrets: str | None) -> None:
        super().__init__(fmt)
        self.secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text


def configure_logging(settings: Settings) -> None:
    """Log to stderr at the configured level, with the token redacted everywhere."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        RedactingFormatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", settings.discord_token
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
