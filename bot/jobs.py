"""From a validated request to a posted picture: record, queue, report progress, deliver.

Shared by /draw, /reroll, the Reroll button and restart recovery, so every path records the job
before queueing it and delivers the result the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import discord

from bot.render import DEFAULT_UPLOAD_LIMIT, fit_upload, result_embed, shorten
from bot.store import JobRecord, Store
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


class JobRunner:
    """Starts, tracks and delivers drawing jobs."""

    def __init__(self, bot: EaselBot, store: Store, engine: Any, executor: Executor) -> None:
        self.bot = bot
        self.store = store
        self.engine = engine
        self.executor = executor
        # The loop keeps only weak references to tasks: hold them until they finish.
        self._background: set[asyncio.Task[None]] = set()

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
        self.engine.validate(request)  # its notes come back with the result
        request = self.engine.resolve(request)
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
            self._submit(_Job(job_id, delivery, parent_job_id), request, user.id)
        except QueueFull as exc:  # filled up while we recorded it
            await self.store.mark_cancelled(job_id)
            await delivery.final(content=str(exc))
            return job_id
        position = self.executor.position(job_id)
        if position:
            ahead = position - 1
            waiting = f"{ahead} ahead of you" if ahead else "you're next"
            text = f"Queued as job #{job_id}: {waiting}."
            if self.executor.paused:
                text += " The queue is paused by the moderators; it starts when they resume it."
            await delivery.status(text)
        return job_id

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
                job = _Job(record.id, delivery, record.parent_job_id)
                self._submit(job, request, record.user_id, enforce_caps=False)
            except Exception as exc:
                log.exception("could not re-queue job %s", record.id)
                await self.store.mark_failed(record.id, f"could not re-queue after restart: {exc}")
        if records:
            log.info("re-queued %d unfinished job(s) after a restart", len(records))
        for record in await self.store.undelivered_jobs():
            # Drawn and stored, but the process died before posting: post from disk.
            delivery = Delivery(self.bot, channel_id=record.channel_id, user_id=record.user_id)
            job = _Job(record.id, delivery, record.parent_job_id)
            task = asyncio.get_running_loop().create_task(self._repost(job, record))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return len(records)

    async def _repost(self, job: _Job, record: JobRecord) -> None:
        try:
            pngs = [await asyncio.to_thread(path.read_bytes) for path, _ in record.images]
            await self.post(job, pngs, record.request, ())
        except Exception:
            log.exception("re-posting job %s after a restart failed", job.id)

    # -- callbacks from the executor -----------------------------------------------------

    async def _on_progress(self, job: _Job, step: int, total: int) -> None:
        if step == 0:
            await self.store.mark_running(job.id)
            await job.delivery.status(f"Drawing job #{job.id}…")
        else:
            await job.delivery.status(f"Drawing… {step}/{total}")

    async def _on_done(self, job: _Job, outcome: JobOutcome) -> None:
        try:
            if outcome.status == "done" and outcome.result is not None:
                await self._deliver(job, outcome.result)
            elif outcome.status == "cancelled":
                await self.store.mark_cancelled(job.id)
                await job.delivery.final(content=f"Job #{job.id} was cancelled.")
            else:
                error = outcome.error
                await self.store.mark_failed(job.id, repr(error) if error else outcome.message)
                await job.delivery.final(content=f"⚠️ Job #{job.id} failed: {outcome.message}")
        except Exception:
            log.exception("delivering job %s failed", job.id)

    async def _deliver(self, job: _Job, result: DrawResult) -> None:
        """Keep the images (disk, then database) before posting, so a failed post loses none."""
        request = result.request
        eta = self.engine.capabilities.eta
        pngs = await asyncio.to_thread(
            lambda: [
                png_bytes(image, format_parameters(request, seed, eta=eta))
                for image, seed in zip(result.images, result.seeds, strict=True)
            ]
        )
        paths = [await self.store.save_image(data) for data in pngs]
        await self.store.mark_done(
            job.id,
            images=list(zip(paths, result.seeds, strict=True)),
            request=request,
            duration_s=result.duration_s,
        )
        await self.post(job, pngs, request, result.notes)

    async def post(
        self, job: _Job, pngs: list[bytes], request: DrawRequest, notes: tuple[str, ...]
    ) -> discord.Message | None:
        """Post a finished job's images with its settings and buttons; remember the message."""
        from bot.views import result_view

        delivery = job.delivery
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


def describe_record(record: JobRecord) -> str:
    """A one-line history entry for a job."""
    sampler = sampler_label(record.sampler)
    when = f"<t:{int(record.created_at)}:R>"
    link = f" · [message]({record.jump_url})" if record.jump_url and not record.deleted else ""
    status = "" if record.status == "done" else f" · {record.status}"
    deleted = f" · 🗑️ deleted by <@{record.deleted_by}>" if record.deleted else ""
    return (
        f"**#{record.id}** {shorten(record.prompt, 60)}\n"
        f"seed {record.seed} · {sampler} · {record.steps} steps · {when}{status}{link}{deleted}"
    )
