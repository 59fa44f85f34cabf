"""From a validated request to a posted picture: record, queue, report progress, deliver.

Shared by /draw, /reroll, the Reroll button and restart recovery, so every path records the job
before queueing it and delivers the result the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import CoolingDown
from bot.policy import Policy
from bot.render import DEFAULT_UPLOAD_LIMIT, fit_upload, plural, result_embed, shorten
from bot.store import GuildSettings, JobNotFound, JobRecord, PurgeRecord, Store
from bot.wordfilter import find_banned
from pipeline.errors import NotAllowed, PromptRefused, QueueFull, UnknownJob
from pipeline.executor import Executor, JobOutcome
from pipeline.pngmeta import format_parameters, png_bytes
from pipeline.request import DrawRequest, DrawResult, random_seed
from pipeline.samplers import sampler_label

if TYPE_CHECKING:
    from bot.app import EaselBot

log = logging.getLogger(__name__)

# Discord answers an edit of an expired interaction with 401/50027 (SimCord: 404/10015).
_EXPIRED_CODES = {50027, 10015}


class Delivery:
    """Where a job's messages go: the interaction while its token lives, else the channel."""

    def __init__(
        self,
        bot: EaselBot,
        *,
        channel_id: int | None,
        user_id: int,
        interaction: discord.Interaction | None = None,
    ) -> None:
        self.bot = bot
        self.channel_id = channel_id
        self.user_id = user_id
        self.interaction = interaction
        self.lock = asyncio.Lock()
        self.finished = False

    def _live(self) -> bool:
        return self.interaction is not None and not self.interaction.is_expired()

    async def status(self, text: str) -> None:
        """Show queue position or progress; never fails the job, dropped if an edit is busy."""
        if self.finished or not self._live() or self.lock.locked():
            return
        async with self.lock:
            if self.finished:
                return
            try:
                assert self.interaction is not None
                await self.interaction.edit_original_response(content=text)
            except discord.HTTPException as exc:
                log.debug("progress edit failed: %s", exc)

    async def final(self, **message: Any) -> discord.Message | None:
        """Post the final message: edit the interaction's response, or send to the channel."""
        async with self.lock:
            self.finished = True
            if self._live():
                assert self.interaction is not None
                try:
                    return await self.interaction.edit_original_response(
                        content=message.get("content"),
                        embed=message.get("embed"),
                        attachments=[u.file() for u in message.get("uploads", [])],
                        view=message.get("view"),
                    )
                except discord.HTTPException as exc:
                    if exc.code not in _EXPIRED_CODES:
                        raise
                    log.info("interaction token expired; posting in the channel instead")
            return await self._send_to_channel(**message)

    async def _send_to_channel(self, **message: Any) -> discord.Message | None:
        channel = await self.bot.resolve_channel(self.channel_id)
        if channel is None:
            log.warning("channel %s is gone; result not posted", self.channel_id)
            return None
        mention = f"<@{self.user_id}>"
        content = message.get("content")
        return await channel.send(
            content=f"{mention} {content}" if content else mention,
            embed=message.get("embed"),
            files=[u.file() for u in message.get("uploads", [])],
            view=message.get("view"),
            # Only the requester is pinged, whatever the prompt says.
            allowed_mentions=discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(self.user_id)]
            ),
        )

    def upload_limit(self) -> int:
        if self.interaction is not None:
            return getattr(self.interaction, "filesize_limit", None) or DEFAULT_UPLOAD_LIMIT
        channel = self.bot.get_channel(self.channel_id or 0)
        guild = getattr(channel, "guild", None)
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT


@dataclass(frozen=True)
class _Job:
    """What the callbacks of one queued job need to finish it."""

    id: int
    delivery: Delivery
    parent_job_id: int | None
    guild_id: int | None


class JobRunner:
    """Starts, tracks and delivers drawing jobs."""

    def __init__(
        self,
        bot: EaselBot,
        store: Store,
        engine: Any,
        executor: Executor,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.bot = bot
        self.store = store
        self.engine = engine
        self.executor = executor
        # time.monotonic looked up at each call, so a patched clock (SimCord's) applies.
        self._clock = clock or (lambda: time.monotonic())
        # When each (server, member) last had a drawing queued, for the servers' cooldowns. In
        # memory: after a restart nobody has to wait, which is the kind way to be wrong.
        self._last_start: dict[tuple[int | None, int], float] = {}
        # Jobs a /mod purge cancelled, so their end says why.
        self._purged: set[int] = set()
        # The loop keeps only weak references to tasks: hold them until they finish.
        self._background: set[asyncio.Task[None]] = set()

    async def policy(self, guild_id: int | None) -> Policy:
        """The limits and defaults that apply in a server (DMs: the bot-wide ones)."""
        stored = GuildSettings() if guild_id is None else await self.store.guild_settings(guild_id)
        return Policy.build(stored, self.engine.capabilities, self.bot.settings)

    # -- starting ------------------------------------------------------------------------

    async def start(
        self,
        interaction: discord.Interaction,
        request: DrawRequest,
        *,
        parent_job_id: int | None = None,
    ) -> int:
        """Check, acknowledge, record and queue one request from an interaction.

        Everything that can refuse the request runs before the first reply, so a refusal is an
        ephemeral message and nothing is stored or queued.
        """
        user = interaction.user
        await self._check_banned_words(interaction, request)
        policy = await self.policy(interaction.guild_id)
        self._check_cooldown(interaction.guild_id, user.id, policy)
        self.engine.validate(request)  # its notes come back with the result
        request = self.engine.resolve(request)
        policy.check(request)
        if policy.stored.max_queued_per_user is not None:  # else the executor's own cap says it
            policy.check_queue(await self.store.count_unfinished(interaction.guild_id, user.id))
        self.executor.check_capacity(user.id)
        await interaction.response.defer(thinking=True)
        job_id = await self.store.add_job(
            request,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=user.id,
            user_name=user.display_name,
            parent_job_id=parent_job_id,
        )
        interaction.extras["job_id"] = job_id
        delivery = Delivery(
            self.bot, channel_id=interaction.channel_id, user_id=user.id, interaction=interaction
        )
        try:
            job = _Job(job_id, delivery, parent_job_id, interaction.guild_id)
            self._submit(job, request, user.id)
        except QueueFull as exc:  # filled up while we recorded it
            await self.store.mark_cancelled(job_id)
            await delivery.final(content=str(exc))
            return job_id
        self._last_start[(interaction.guild_id, user.id)] = self._clock()
        position = self.executor.position(job_id)
        if position:
            ahead = position - 1
            waiting = f"{ahead} ahead of you" if ahead else "you're next"
            text = f"Queued as job #{job_id}: {waiting}."
            if self.executor.paused:
                text += " The queue is paused by the moderators; it starts when they resume it."
            await delivery.status(text)
        return job_id

    def _check_cooldown(self, guild_id: int | None, user_id: int, policy: Policy) -> None:
        last = self._last_start.get((guild_id, user_id))
        if not policy.cooldown_s or last is None:
            return
        left = last + policy.cooldown_s - self._clock()
        if left > 0:
            wait = math.ceil(left)
            raise CoolingDown(
                f"This server asks members to wait {policy.cooldown_s} seconds between "
                f"drawings; you can draw again in {wait} second{'s' if wait != 1 else ''}."
            )

    async def _check_banned_words(
        self, interaction: discord.Interaction, request: DrawRequest
    ) -> None:
        """Refuse a prompt with a banned word, keeping a record moderators can see."""
        if interaction.guild_id is None:
            return
        banned = await self.store.banned_words(interaction.guild_id)
        text = f"{request.prompt}\n{request.negative_prompt}"
        if not banned or (word := find_banned(text, banned)) is None:
            return
        await self.store.add_job(
            request,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            user_name=interaction.user.display_name,
            status="refused",
        )
        raise PromptRefused(
            f"This server doesn't allow “{word}” in prompts, so nothing was drawn. "
            "Please rephrase and try again."
        )

    def _submit(
        self, job: _Job, request: DrawRequest, user_id: int, *, enforce_caps: bool = True
    ) -> None:
        self.executor.submit(
            request,
            user_id=user_id,
            ticket=job.id,
            enforce_caps=enforce_caps,
            on_progress=functools.partial(self._on_progress, job),
            on_done=functools.partial(self._on_done, job),
        )

    async def reroll(
        self, interaction: discord.Interaction, job_id: int, *, seed: int | None = None
    ) -> int:
        """Draw a past job of this server again with a new (or the given) seed."""
        record = await self.store.get_job(job_id)
        if record is None or record.guild_id != interaction.guild_id:
            raise UnknownJob(f"There is no job #{job_id} in this server.")
        request = replace(record.request, seed=random_seed() if seed is None else seed, model=None)
        return await self.start(interaction, request, parent_job_id=job_id)

    async def recover(self) -> int:
        """Queue again the jobs a crash left queued or running; results go to their channel."""
        records = await self.store.unfinished_jobs()
        for record in records:
            delivery = Delivery(self.bot, channel_id=record.channel_id, user_id=record.user_id)
            request = replace(record.request, model=None)
            try:
                job = _Job(record.id, delivery, record.parent_job_id, record.guild_id)
                self._submit(job, request, record.user_id, enforce_caps=False)
            except Exception as exc:
                log.exception("could not re-queue job %s", record.id)
                await self.store.mark_failed(record.id, f"could not re-queue after restart: {exc}")
        if records:
            log.info("re-queued %d unfinished job(s) after a restart", len(records))
        for record in await self.store.undelivered_jobs():
            # Drawn and stored, but the process died before posting: post from disk.
            delivery = Delivery(self.bot, channel_id=record.channel_id, user_id=record.user_id)
            job = _Job(record.id, delivery, record.parent_job_id, record.guild_id)
            task = asyncio.get_running_loop().create_task(self._repost(job, record))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return len(records)

    async def _repost(self, job: _Job, record: JobRecord) -> None:
        try:
            pngs = [await asyncio.to_thread(path.read_bytes) for path, _ in record.images]
            await self.post(job, pngs, record.request, (), withheld=record.withheld)
        except Exception:
            log.exception("re-posting job %s after a restart failed", job.id)

    # -- callbacks from the executor -----------------------------------------------------

    async def _on_progress(self, job: _Job, step: int, total: int) -> None:
        if step == 0:
            with contextlib.suppress(JobNotFound):  # purged while it waited: it stops soon
                await self.store.mark_running(job.id)
            await job.delivery.status(f"Drawing job #{job.id}…")
        else:
            await job.delivery.status(f"Drawing… {step}/{total}")

    async def _on_done(self, job: _Job, outcome: JobOutcome) -> None:
        try:
            if outcome.status == "done" and outcome.result is not None:
                await self._deliver(job, outcome.result)
            elif outcome.status == "cancelled":
                with contextlib.suppress(JobNotFound):  # a purge may have deleted it already
                    await self.store.mark_cancelled(job.id)
                purged = job.id in self._purged
                self._purged.discard(job.id)
                why = "removed by a moderator" if purged else "cancelled"
                await job.delivery.final(content=f"Job #{job.id} was {why}.")
            else:
                error = outcome.error
                await self.store.mark_failed(job.id, repr(error) if error else outcome.message)
                await job.delivery.final(content=f"⚠️ Job #{job.id} failed: {outcome.message}")
        except JobNotFound:
            self._purged.discard(job.id)
            log.info("job %s was purged by a moderator while it ran; nothing posted", job.id)
            with contextlib.suppress(discord.HTTPException):
                await job.delivery.final(content=f"Job #{job.id} was removed by a moderator.")
        except Exception:
            log.exception("delivering job %s failed", job.id)

    async def _deliver(self, job: _Job, result: DrawResult) -> None:
        """Keep the images (disk, then database) before posting, so a failed post loses none.

        Images the model's safety checker flagged are dropped before they are saved, unless the
        server allows them here (see ``_shows_flagged``).
        """
        request = result.request
        eta = self.engine.capabilities.eta
        flags = result.nsfw or (False,) * len(result.images)
        pairs = list(zip(result.images, result.seeds, strict=True))
        flagged = sum(map(bool, flags))
        shown_flagged = 0
        if flagged:
            if await self._shows_flagged(job):
                shown_flagged = flagged
            else:
                pairs = [pair for pair, bad in zip(pairs, flags, strict=True) if not bad]
        withheld = flagged - shown_flagged
        pngs = await asyncio.to_thread(
            lambda: [
                png_bytes(image, format_parameters(request, seed, eta=eta)) for image, seed in pairs
            ]
        )
        seeds = [seed for _, seed in pairs]
        paths = [await self.store.save_image(data) for data in pngs]
        try:
            await self.store.mark_done(
                job.id,
                images=list(zip(paths, seeds, strict=True)),
                request=request,
                duration_s=result.duration_s,
                withheld=withheld,
            )
        except JobNotFound:
            await self.store.discard_images(paths)  # purged while it ran: keep nothing
            raise
        notes = result.notes
        if shown_flagged:
            notes = (
                *notes,
                f"The safety checker flagged {plural(shown_flagged, 'picture')}; shown because "
                "this server allows that in age-restricted channels.",
            )
        await self.post(job, pngs, request, notes, withheld=withheld)

    async def _shows_flagged(self, job: _Job) -> bool:
        """Whether flagged images may be posted: the server allows it and the channel (or a
        thread's parent) is age-restricted. Never in DMs. Decided at delivery, so a setting
        changed while the job waited applies."""
        if job.guild_id is None:
            return False
        if (await self.policy(job.guild_id)).nsfw != "age_restricted":
            return False
        return await self._age_restricted(job.delivery.channel_id)

    async def _age_restricted(self, channel_id: int | None) -> bool:
        channel = await self.bot.resolve_channel(channel_id)
        if channel is None or getattr(channel, "guild", None) is None:
            return False  # unknown, or a DM: never age-restricted
        if isinstance(channel, discord.Thread):
            # A thread is as age-restricted as the channel it lives in.
            parent = channel.parent or await self.bot.resolve_channel(channel.parent_id)
            return parent is not None and bool(parent.is_nsfw())
        is_nsfw = getattr(channel, "is_nsfw", None)
        return bool(is_nsfw is not None and is_nsfw())

    async def post(
        self,
        job: _Job,
        pngs: list[bytes],
        request: DrawRequest,
        notes: tuple[str, ...],
        *,
        withheld: int = 0,
    ) -> discord.Message | None:
        """Post a finished job's images with its settings and buttons; remember the message.

        ``withheld`` images (flagged by the safety checker) are not among ``pngs``: the post
        says how many.
        """
        from bot.views import result_view

        delivery = job.delivery
        if withheld:
            total = len(pngs) + withheld
            if pngs:
                what = f"{withheld} of {plural(total, 'picture')}"
            else:
                what = "the picture" if total == 1 else f"all {total} pictures"
            notes = (
                f"🔞 The model's safety checker flagged {what}; "
                f"{'they are' if withheld != 1 else 'it is'} not posted. "
                "Try another seed or a different prompt.",
                *notes,
            )
        limit = delivery.upload_limit()
        uploads = []
        for i, data in enumerate(pngs):
            upload = await asyncio.to_thread(fit_upload, data, limit, f"easel-{job.id}-{i}.png")
            if upload is None:
                await delivery.final(
                    content=f"Job #{job.id} is done, but its images are too large to upload here."
                )
                return None
            uploads.append(upload)
        if any(u.scaled for u in uploads):
            notes = (*notes, "Scaled down to fit Discord's upload limit; the settings still apply.")
        embed = result_embed(
            request,
            job.id,
            requester=f"<@{delivery.user_id}>",
            eta_applies=self.engine.capabilities.eta,
            notes=notes,
            parent_job_id=job.parent_job_id,
        )
        if len(uploads) == 1:
            embed.set_image(url=f"attachment://{uploads[0].filename}")
        message = await delivery.final(embed=embed, uploads=uploads, view=result_view(job.id))
        if message is not None:
            with contextlib.suppress(Exception):
                await self.store.set_message(job.id, message.id, message.jump_url)
        return message

    # -- deleting ------------------------------------------------------------------------

    async def delete(self, interaction: discord.Interaction, job_id: int) -> None:
        """Delete a posted result: its requester or a member with Manage Messages."""
        record = await self.store.get_job(job_id)
        if record is None or record.guild_id != interaction.guild_id:
            raise UnknownJob(f"There is no job #{job_id} in this server.")
        perms = getattr(interaction, "permissions", None)
        if interaction.user.id != record.user_id and not (perms and perms.manage_messages):
            raise NotAllowed(
                "Only the person who asked for this drawing or a moderator can delete it."
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.message is not None:
            with contextlib.suppress(discord.NotFound):
                await interaction.message.delete()
        await self.store.mark_deleted(job_id, interaction.user.id)
        await interaction.followup.send(f"Deleted job #{job_id}.", ephemeral=True)

    # -- purging -------------------------------------------------------------------------

    async def purge(self, guild_id: int, user_id: int, moderator_id: int) -> PurgeRecord:
        """Remove a member's drawings from one server: stop their jobs there, delete the posted
        messages, then their rows and image files, with an audit row."""
        for job_id in await self.store.unfinished_job_ids(guild_id, user_id):
            self._purged.add(job_id)
            self.executor.cancel(job_id)  # ticket = job id
        deleted = missing = failed = 0
        for job_id, channel_id, message_id in await self.store.posted_messages(guild_id, user_id):
            channel = await self.bot.resolve_channel(channel_id)
            if channel is None or not hasattr(channel, "get_partial_message"):
                missing += 1  # the channel is gone, and its messages with it
                continue
            try:
                await channel.get_partial_message(message_id).delete()
                deleted += 1
            except discord.NotFound:
                missing += 1  # someone deleted it already
            except discord.HTTPException:
                failed += 1
                log.warning(
                    "purge: could not delete message %s of job %s in channel %s",
                    message_id,
                    job_id,
                    channel_id,
                    exc_info=True,
                )
        return await self.store.purge_user(
            guild_id,
            user_id,
            moderator_id=moderator_id,
            messages_deleted=deleted,
            messages_missing=missing,
            messages_failed=failed,
        )


def describe_record(record: JobRecord) -> str:
    """A one-line history entry for a job."""
    sampler = sampler_label(record.sampler)
    when = f"<t:{int(record.created_at)}:R>"
    link = f" · [message]({record.jump_url})" if record.jump_url and not record.deleted else ""
    status = "" if record.status == "done" else f" · {record.status}"
    deleted = f" · 🗑️ deleted by <@{record.deleted_by}>" if record.deleted else ""
    withheld = f" · 🔞 {record.withheld} withheld" if record.withheld else ""
    return (
        f"**#{record.id}** {shorten(record.prompt, 60)}\n"
        f"seed {record.seed} · {sampler} · {record.steps} steps · {when}{status}{link}"
        f"{withheld}{deleted}"
    )
