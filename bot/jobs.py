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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot.comparisons import CompareMixin
from bot.delivery import Delivery, Job, outcome_message
from bot.errors import CoolingDown
from bot.i18n import N_, Message, _, in_locale, public_locale
from bot.policy import Policy, allowed_models, server_model
from bot.render import fit_upload, result_embed
from bot.replies import answer_privately
from bot.store import GuildSettings, JobNotFound, JobRecord, PurgeRecord, Store
from bot.text import plain
from bot.views import result_view
from bot.wordfilter import find_banned
from pipeline import messages
from pipeline.errors import EaselError, PromptRefused, QueueFull
from pipeline.executor import Executor, JobOutcome
from pipeline.pngmeta import format_parameters, png_bytes
from pipeline.request import DrawRequest, DrawResult, random_seed
from pipeline.samplers import sampler_label

if TYPE_CHECKING:
    from bot.protocols import Host
    from pipeline.engine import Capabilities
    from pipeline.models import ModelSet

log = logging.getLogger(__name__)

# What a member is told when a past job's picture can't be used, by what they asked to do.
_NO_JOB = {
    "vary": N_("There is no job #{job} here that you can vary."),
    "remix": N_("There is no job #{job} here that you can remix."),
    "upscale": N_("There is no job #{job} here that you can upscale."),
}
_NO_PICTURE = {
    "vary": N_("Job #{job} has no picture {picture} to vary."),
    "remix": N_("Job #{job} has no picture {picture} to remix."),
    "upscale": N_("Job #{job} has no picture {picture} to upscale."),
}


class JobRunner(CompareMixin):
    """Starts, tracks and delivers drawing jobs."""

    def __init__(
        self,
        bot: Host,
        store: Store,
        models: ModelSet,
        executor: Executor,
        *,
        clock: Callable[[], float] | None = None,
        max_attempts: int = 2,
    ) -> None:
        self.bot = bot
        self.store = store
        self.models = models
        self.executor = executor
        self.max_attempts = max(1, max_attempts)
        # time.monotonic looked up at each call, so a patched clock (SimCord's) applies.
        self._clock = clock or (lambda: time.monotonic())
        # When each (server, member) last had a drawing queued, for the servers' cooldowns. In
        # memory: after a restart nobody has to wait, which is the kind way to be wrong.
        self._last_start: dict[tuple[int | None, int], float] = {}
        # Jobs a /mod purge cancelled, so their end says why.
        self._purged: set[int] = set()
        # Jobs submitted whose outcome has not been fully delivered yet, by id.
        self._inflight: dict[int, Job] = {}
        self._inflight_changed = asyncio.Condition()
        # Whose results must not be posted now: members being purged from a server
        # (server, member) and users being forgotten everywhere (None, user).
        self._withdrawn: set[tuple[int | None, int]] = set()
        # The loop keeps only weak references to tasks: hold them until they finish.
        self._background: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        # Every batch's attempt is on disk before it draws (see _record_start).
        executor.on_start = self._record_start

    async def policy(self, guild_id: int | None, model: str | None = None) -> Policy:
        """The limits and defaults that apply in a server (DMs: the bot-wide ones) to drawing
        with ``model`` (None: the model the server draws with by default)."""
        stored = GuildSettings() if guild_id is None else await self.store.guild_settings(guild_id)
        names = self.models.names
        if model not in names:
            default = self.models.default
            model = server_model(stored, allowed_models(stored, names, default), default)
        return Policy.build(
            stored,
            self.models.capabilities(model),
            self.bot.settings,
            models=names,
            bot_default=self.models.default,
        )

    def capabilities(self, request: DrawRequest) -> Capabilities:
        """What the model of ``request`` can do; the default model's for one the bot no
        longer has (an old picture, shown or upscaled)."""
        return self.models.capabilities(self.models.find(request.model))

    async def same_model(self, interaction: discord.Interaction, record: JobRecord) -> str | None:
        """The model to draw a past job again with: its own, under the name it has now. A model
        the bot no longer has is answered privately (None): another would draw another picture."""
        name = self.models.find(record.request.model)
        if name is None:
            await answer_privately(
                interaction,
                _(
                    "Job #{job} was drawn with {model}, which this bot no longer has, so it "
                    "can't be drawn the same way again. Draw it anew with /draw and pick a "
                    "model; /models lists them.",
                    job=record.id,
                    model=record.request.model,
                ),
            )
        return name

    # -- starting ------------------------------------------------------------------------

    async def start(
        self,
        interaction: discord.Interaction,
        request: DrawRequest,
        *,
        parent_job_id: int | None = None,
        kind: str = "draw",
        notes: tuple[str, ...] = (),
    ) -> int | None:
        """Check, acknowledge, record and queue one request from an interaction.

        Everything that can refuse the request runs before the first reply and reads only
        memory, so the answer comes within Discord's 3 seconds whatever the database is doing.
        A refusal is answered privately here (nothing is stored or queued, except the record
        of a banned word for the moderators) and returns None.
        """
        try:
            request = await self._admit(interaction, request)
        except PromptRefused as refusal:
            await answer_privately(interaction, refusal)
            await self._record_refused(interaction, request)
            return None
        except EaselError as refusal:
            await answer_privately(interaction, refusal)
            return None
        user = interaction.user
        await interaction.response.defer(thinking=True)
        job_id = await self.store.add_job(
            request,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=user.id,
            user_name=user.display_name,
            parent_job_id=parent_job_id,
            kind=kind,
            locale=public_locale(interaction),
        )
        interaction.extras["job_id"] = job_id
        delivery = Delivery(
            self.bot, channel_id=interaction.channel_id, user_id=user.id, interaction=interaction
        )
        job = Job(
            job_id,
            delivery,
            parent_job_id,
            interaction.guild_id,
            user.id,
            request,
            kind=kind,
            notes=notes,
        )
        try:
            self._submit(job, request)
        except QueueFull as exc:  # filled up while we recorded it
            await self.store.mark_cancelled(job_id)
            await delivery.final(content=exc.text)
            return job_id
        self._last_start[(interaction.guild_id, user.id)] = self._clock()
        what = Message(N_("job #{job}"), job=job_id)
        await self._say_queued(
            delivery, job_id, what, interaction.guild_id, loads=self.models.needs_loading(request)
        )
        return job_id

    async def _say_queued(
        self,
        delivery: Delivery,
        ticket: int,
        what: str,
        guild_id: int | None,
        *,
        loads: str | None = None,
    ) -> None:
        """ "Queued as <what>: 2 ahead of you.", and why it waits if drawing is paused; nothing
        when it started already. In the server's language (``what`` is a ``Message``)."""
        position = self.executor.position(ticket)
        if not position:
            return
        ahead = position - 1
        text: str
        if ahead:
            text = messages.ngettext(
                "Queued as {what}: {n} ahead of you.",
                "Queued as {what}: {n} ahead of you.",
                ahead,
                what=what,
            )
        else:
            text = Message(N_("Queued as {what}: you're next."), what=what)
        if loads is not None:  # the model it needs is not loaded now: its start takes longer
            later = Message(N_("{model} will be loaded for it first."), model=loads)
            text = Message(N_("{queued} {paused}"), queued=text, paused=later)
        if self.executor.paused:
            why = Message(N_("The bot's operator has paused drawing; it starts when they resume."))
            text = Message(N_("{queued} {paused}"), queued=text, paused=why)
        elif self.executor.is_paused(guild_id):
            why = Message(
                N_("The queue is paused by the moderators; it starts when they resume it.")
            )
            text = Message(N_("{queued} {paused}"), queued=text, paused=why)
        await delivery.status(text)

    async def _admit(self, interaction: discord.Interaction, request: DrawRequest) -> DrawRequest:
        """Every check a request must pass before it is queued; returns it resolved."""
        user = interaction.user
        await self._check_banned_words(interaction.guild_id, request)
        policy = await self.policy(interaction.guild_id, request.model)
        self._check_cooldown(interaction.guild_id, user.id, policy)
        if request.task != "upscale":  # an upscale keeps its picture's model
            request = replace(request, model=request.model or policy.model)
            policy.check_model(request.model)
        self.models.validate(request)  # its notes come back with the result
        request = self.models.resolve(request)
        policy.check(request)
        if policy.stored.max_queued_per_user is not None:  # else the executor's own cap says it
            policy.check_queue(self.executor.pending(user.id, group=interaction.guild_id))
        self.executor.check_capacity(user.id)
        return request

    def _check_cooldown(self, guild_id: int | None, user_id: int, policy: Policy) -> None:
        last = self._last_start.get((guild_id, user_id))
        if not policy.cooldown_s or last is None:
            return
        left = last + policy.cooldown_s - self._clock()
        if left > 0:
            wait = math.ceil(left)
            raise CoolingDown(
                messages.ngettext(
                    "This server asks members to wait {cooldown} seconds between drawings; "
                    "you can draw again in {n} second.",
                    "This server asks members to wait {cooldown} seconds between drawings; "
                    "you can draw again in {n} seconds.",
                    wait,
                    cooldown=policy.cooldown_s,
                )
            )

    async def _check_banned_words(self, guild_id: int | None, request: DrawRequest) -> None:
        if guild_id is None:
            return
        banned = await self.store.banned_words(guild_id)
        text = f"{request.prompt}\n{request.negative_prompt}"
        if not banned or (word := find_banned(text, banned)) is None:
            return
        raise PromptRefused(
            N_(
                "This server doesn't allow “{word}” in prompts, so nothing was drawn. Please "
                "rephrase and try again."
            ),
            word=plain(word),
        )

    async def _record_refused(self, interaction: discord.Interaction, request: DrawRequest) -> None:
        """Keep a refused prompt where moderators can see it (after the answer went out)."""
        try:
            await self.store.add_job(
                # What was asked, not the picture: a refused upload is not kept.
                replace(request, init_image=None),
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                user_name=interaction.user.display_name,
                status="refused",
            )
        except Exception:
            log.exception("could not record a refused prompt of user %s", interaction.user.id)

    def _submit(
        self, job: Job, request: DrawRequest, *, enforce_caps: bool = True, attempts: int = 0
    ) -> None:
        self.executor.submit(
            request,
            user_id=job.user_id,
            ticket=job.id,
            enforce_caps=enforce_caps,
            attempts=attempts,
            group=job.guild_id,
            on_progress=functools.partial(self._on_progress, job),
            on_done=functools.partial(self._on_done, job),
            on_loading=functools.partial(self.say_loading, job.delivery),
        )
        self._inflight[job.id] = job

    async def reroll(
        self, interaction: discord.Interaction, job_id: int, *, seed: int | None = None
    ) -> int | None:
        """Draw a past job again with a new (or the given) seed: one's own, or one posted in a
        channel of this server the member can read now and not deleted."""
        record = await self.store.get_job(job_id)
        if record is None or not await self._may_reroll(interaction, record):
            await answer_privately(
                interaction, _("There is no job #{job} here that you can reroll.", job=job_id)
            )
            return None
        if record.kind == "compare":
            return await self.reroll_comparison(interaction, record, seed)
        new_seed = random_seed() if seed is None else seed
        if record.task == "upscale":
            # The same picture upscaled again with other noise: still an upscale of its source.
            request = replace(record.request, seed=new_seed)
            parent = record.parent_job_id or job_id
            return await self.start(interaction, request, parent_job_id=parent, kind="upscale")
        model = await self.same_model(interaction, record)
        if model is None:
            return None
        request = replace(record.request, seed=new_seed, model=model)
        return await self.start(interaction, request, parent_job_id=job_id)

    async def _picture_of(
        self, interaction: discord.Interaction, job_id: int, index: int, verb: str
    ) -> tuple[JobRecord, Path, int] | None:
        """Picture ``index`` of a past job that this member may work from (as for a reroll):
        the job, the picture's file and seed. Anything else is answered privately (None); an
        upscale is the end of the line and has nothing to vary, upscale or remix. ``verb``:
        "vary", "remix" or "upscale"."""
        record = await self.store.get_job(job_id)
        if record is None or not await self._may_reroll(interaction, record):
            await answer_privately(interaction, _(_NO_JOB[verb], job=job_id))
            return None
        usable = record.kind != "compare" and record.task != "upscale"
        if not usable or not 0 <= index < len(record.images):
            await answer_privately(interaction, _(_NO_PICTURE[verb], job=job_id, picture=index + 1))
            return None
        path, seed = record.images[index]
        return record, path, seed

    async def vary(
        self, interaction: discord.Interaction, job_id: int, index: int, strength: float
    ) -> int | None:
        """A variation of picture ``index`` of a past job: its settings and seed, its starting
        noise mixed with a new variation seed's at ``strength``."""
        found = await self._picture_of(interaction, job_id, index, "vary")
        if found is None:
            return None
        record, _path, seed = found
        if (model := await self.same_model(interaction, record)) is None:
            return None
        if record.task != "draw":
            await answer_privately(
                interaction,
                _("Variations are for pictures drawn from a prompt; Reroll or Remix this one."),
            )
            return None
        request = replace(
            record.request,
            seed=seed,
            count=1,
            variation_seed=random_seed(),
            variation_strength=strength,
            model=model,
        )
        return await self.start(interaction, request, parent_job_id=job_id, kind="vary")

    async def remix_form(self, interaction: discord.Interaction, job_id: int, images: int) -> None:
        """The Remix form, pre-filled with the job's prompt: only for a member who may remix it
        (the prompt is what a stranger must not read)."""
        found = await self._picture_of(interaction, job_id, 0, "remix")
        if found is None:
            return
        # Its model must still be here and allowed here: said now, not after the form is typed.
        if (model := await self.same_model(interaction, found[0])) is None:
            return
        try:
            (await self.policy(interaction.guild_id, model)).check_model(model)
        except EaselError as refusal:
            await answer_privately(interaction, refusal)
            return
        from bot.views import RemixForm

        await interaction.response.send_modal(RemixForm(job_id, images, found[0].prompt))

    async def remix(
        self,
        interaction: discord.Interaction,
        job_id: int,
        index: int,
        prompt: str,
        strength: float,
    ) -> int | None:
        """Draw from picture ``index`` of a past job with a new prompt (image to image): its
        settings, a new seed, ``strength`` of it redrawn."""
        found = await self._picture_of(interaction, job_id, index, "remix")
        if found is None:
            return None
        record, path, _seed = found
        if (model := await self.same_model(interaction, record)) is None:
            return None
        request = replace(
            record.request,
            prompt=prompt,
            seed=random_seed(),
            count=1,
            task="img2img",
            init_image=str(path),
            strength=strength,
            variation_seed=None,
            variation_strength=0.0,
            model=model,
            # The picture's own size (an upscale's is 4x its settings' size), checked as any.
            width=None,
            height=None,
        )
        return await self.start(interaction, request, parent_job_id=job_id, kind="remix")

    async def upscale(
        self, interaction: discord.Interaction, job_id: int, index: int
    ) -> int | None:
        """Picture ``index`` of a past job made 4x larger by the upscaler, through the same
        queue, caps and fairness as a drawing."""
        if self.models.upscaler is None:
            await answer_privately(interaction, _("This bot has no upscaler set up."))
            return None
        found = await self._picture_of(interaction, job_id, index, "upscale")
        if found is None:
            return None
        record, path, seed = found
        request = replace(record.request, seed=seed, count=1, task="upscale", init_image=str(path))
        return await self.start(interaction, request, parent_job_id=job_id, kind="upscale")

    async def _may_reroll(self, interaction: discord.Interaction, record: JobRecord) -> bool:
        if record.user_id == interaction.user.id:
            return True
        # Someone else's: it must have been posted in this server, still be there, and be in a
        # channel this member can read right now. Direct-message jobs are their requester's.
        if interaction.guild_id is None or record.guild_id != interaction.guild_id:
            return False
        if record.deleted or record.status != "done" or record.message_id is None:
            return False
        return await self._can_read(interaction.user, record.channel_id)

    async def _can_read(self, member: Any, channel_id: int | None) -> bool:
        channel = await self.bot.resolve_channel(channel_id)
        if channel is None or not hasattr(channel, "permissions_for"):
            return False
        if not isinstance(member, discord.Member):
            return False
        perms = channel.permissions_for(member)
        return bool(perms.view_channel and perms.read_message_history)

    async def recover(self) -> int:
        """Queue again the jobs a crash left queued or running; results go to their channel.

        A job that was started ``max_attempts`` times without finishing is not started again:
        it probably killed the process (the kernel's out-of-memory killer, a driver crash), and
        would on every start. Its requester is told in its channel.
        """
        records = await self.store.unfinished_jobs()
        requeued, handled = await self.recover_comparisons(records)
        for record in records:
            if record.id in handled:
                continue
            # An upscale keeps the model that drew its source; the rest draw with the model they
            # were queued with, under the name it has now.
            model = record.model if record.task == "upscale" else self.models.find(record.model)
            job = self._restored(record, replace(record.request, model=model))
            if record.attempts >= self.max_attempts:
                self._start_background(self._give_up(job, record.attempts))
                continue
            if model is None:  # the operator removed its model from MODELS meanwhile
                self._start_background(self._model_gone(job, record.model))
                continue
            try:
                # Its earlier starts count: a lost worker may start it only what is left.
                self._submit(job, job.request, enforce_caps=False, attempts=record.attempts)
                requeued += 1
            except Exception as exc:
                log.exception("could not re-queue job %s", record.id)
                await self.store.mark_failed(record.id, f"could not re-queue after restart: {exc}")
        if requeued:
            log.info("re-queued %d unfinished job(s) after a restart", requeued)
        for record in await self.store.undelivered_jobs():
            if record.id in handled:
                continue  # a comparison resumed above posts its grid itself
            # Drawn and stored, but the process died before posting: post from disk.
            if record.kind == "compare":
                self._start_background(self.repost_comparison(record))
                continue
            self._start_background(self._repost(self._restored(record, record.request), record))
        return requeued

    def _restored(self, record: JobRecord, request: DrawRequest) -> Job:
        """A job from the database, delivered to its channel (its interaction is long gone)."""
        delivery = Delivery(
            self.bot, channel_id=record.channel_id, user_id=record.user_id, locale=record.locale
        )
        return Job(
            record.id,
            delivery,
            record.parent_job_id,
            record.guild_id,
            record.user_id,
            request,
            kind=record.kind,
        )

    def _start_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _give_up(self, job: Job, attempts: int) -> None:
        await self._end_restored(
            job,
            f"stopped after {attempts} attempts: the bot went down while drawing it each time",
            messages.ngettext(
                "⚠️ Job #{job} was stopped: the bot went down {n} time while drawing it, so "
                "it won't be tried again. It may be too big for this machine; try a smaller "
                "size or fewer pictures.",
                "⚠️ Job #{job} was stopped: the bot went down {n} times while drawing it, so "
                "it won't be tried again. It may be too big for this machine; try a smaller "
                "size or fewer pictures.",
                attempts,
                job=job.id,
            ),
        )

    async def _model_gone(self, job: Job, model: str | None) -> None:
        await self._end_restored(
            job,
            f"its model {model} is no longer configured",
            Message(
                N_(
                    "⚠️ Job #{job} was not drawn: its model {model} was removed from the bot "
                    "while it waited. Draw it again with /draw; /models lists the models."
                ),
                job=job.id,
                model=model,
            ),
        )

    async def _end_restored(self, job: Job, reason: str, text: str) -> None:
        """A job found after a restart that will not run: recorded as failed with ``reason``
        (for the log and the moderators), its requester told ``text`` in its channel."""
        log.warning("job %s (user %s) not restarted: %s", job.id, job.user_id, reason)
        try:
            await self.store.mark_failed(job.id, reason)
            await job.delivery.final(content=text)
        except Exception:
            log.exception("telling the requester of job %s that it ended failed", job.id)

    async def _repost(self, job: Job, record: JobRecord) -> None:
        try:
            pngs = [await asyncio.to_thread(path.read_bytes) for path, _seed in record.images]
            await self.post(job, pngs, record.request, (), withheld=record.withheld)
        except Exception:
            log.exception("re-posting job %s after a restart failed", job.id)

    # -- callbacks from the executor -----------------------------------------------------

    def _record_start(self, tickets: list[int]) -> None:
        """On the worker thread, before a batch draws: count an attempt for each job and wait
        until it is committed, so a job that takes the process down is known after a restart."""
        future = asyncio.run_coroutine_threadsafe(self._mark_started(tickets), self._loop)
        try:
            future.result(timeout=10)
        except Exception:
            future.cancel()
            log.warning("could not record the start of jobs %s in time", tickets, exc_info=True)

    async def _mark_started(self, tickets: list[int]) -> None:
        for ticket in tickets:
            with contextlib.suppress(JobNotFound):  # purged while it waited: it stops soon
                await self.store.mark_running(ticket)

    async def _on_progress(self, job: Job, step: int, total: int) -> None:
        if step == 0:
            job.started_at = time.perf_counter()
            await job.delivery.status(Message(N_("Drawing job #{job}…"), job=job.id))
        else:
            await job.delivery.status(
                Message(N_("Drawing… {step}/{total}"), step=step, total=total)
            )

    @staticmethod
    async def say_loading(delivery: Delivery, model: str) -> None:
        """A job's (or a comparison's) message while its model is brought in."""
        await delivery.status(Message(N_("Loading {model}…"), model=model))

    async def _on_done(self, job: Job, outcome: JobOutcome) -> None:
        try:
            if outcome.status == "done" and outcome.result is not None:
                await self._deliver(job, outcome.result)
            elif outcome.status == "cancelled":
                with contextlib.suppress(JobNotFound):  # a purge may have deleted it already
                    await self.store.mark_cancelled(job.id)
                purged = job.id in self._purged or self._is_withdrawn(job)
                self._purged.discard(job.id)
                if purged:
                    text = Message(N_("Job #{job} was removed by a moderator."), job=job.id)
                else:
                    text = Message(N_("Job #{job} was cancelled."), job=job.id)
                if not self._is_forgotten(job):
                    await job.delivery.final(content=text)
            else:
                error = outcome.error
                await self.store.mark_failed(job.id, repr(error) if error else outcome.message)
                await job.delivery.final(
                    content=Message(
                        N_("⚠️ Job #{job} failed: {reason}"),
                        job=job.id,
                        reason=outcome_message(outcome),
                    )
                )
        except JobNotFound:
            self._purged.discard(job.id)
            log.info("job %s was removed while it ran; nothing posted", job.id)
            if not self._is_forgotten(job):
                with contextlib.suppress(discord.HTTPException):
                    await job.delivery.final(
                        content=Message(N_("Job #{job} was removed by a moderator."), job=job.id)
                    )
        except Exception:
            log.exception("delivering job %s failed", job.id)
        finally:
            self._log_outcome(job, outcome)
            self._inflight.pop(job.id, None)
            async with self._inflight_changed:
                self._inflight_changed.notify_all()

    def _log_outcome(self, job: Job, outcome: JobOutcome) -> None:
        """One line per job for the operator's terminal."""
        now = time.perf_counter()
        started = job.started_at
        waited = (started if started is not None else now) - job.queued_at
        drew = f"{now - started:.1f}s" if started is not None else "-"
        r = outcome.request
        log.info(
            "job %s %s: user %s, server %s, %d step(s) %s %sx%s x%d guidance %g, "
            "waited %.1fs, drew %s",
            job.id,
            outcome.status,
            job.user_id,
            job.guild_id if job.guild_id is not None else "DM",
            r.steps,
            sampler_label(r.sampler),
            r.width,
            r.height,
            r.count,
            r.guidance,
            waited,
            drew,
        )

    def _is_forgotten(self, job: Job) -> bool:
        return (None, job.user_id) in self._withdrawn

    def _is_withdrawn(self, job: Job) -> bool:
        """Whether this job's requester is being purged from its server or forgotten."""
        return self._is_forgotten(job) or (
            job.guild_id is not None and (job.guild_id, job.user_id) in self._withdrawn
        )

    async def _deliver(self, job: Job, result: DrawResult) -> None:
        """Keep the images (disk, then database) before posting, so a failed post loses none.

        Images the model's safety checker flagged are dropped before they are saved, unless the
        server allows them here (see ``_shows_flagged``). A result whose requester is being
        purged or forgotten is dropped, never posted.
        """
        if self._is_withdrawn(job):
            log.info("job %s finished while its requester's data was being removed", job.id)
            return
        request = result.request
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
        source = job.parent_job_id
        pngs = await asyncio.to_thread(
            lambda: [
                png_bytes(image, self.parameters(request, seed, source_job_id=source))
                for image, seed in pairs
            ]
        )
        seeds = [seed for _image, seed in pairs]
        paths = [await self.store.save_image(data) for data in pngs]
        try:
            if self._is_withdrawn(job):
                raise JobNotFound(f"job {job.id} is being removed")
            await self.store.mark_done(
                job.id,
                images=list(zip(paths, seeds, strict=True)),
                request=request,
                duration_s=result.duration_s,
                withheld=withheld,
            )
        except BaseException:
            await self.store.discard_images(paths)  # purged while it ran: keep nothing
            raise
        notes = (*job.notes, *result.notes)
        if shown_flagged:
            notes = (
                *notes,
                messages.ngettext(
                    "The safety checker flagged {n} picture; shown because this server allows "
                    "that in age-restricted channels.",
                    "The safety checker flagged {n} pictures; shown because this server allows "
                    "that in age-restricted channels.",
                    shown_flagged,
                ),
            )
        await self.post(job, pngs, request, notes, withheld=withheld)

    def parameters(
        self, request: DrawRequest, seed: int, *, source_job_id: int | None = None
    ) -> str:
        """The PNG's ``parameters`` for one picture: its settings, and an upscale's upscaler in
        A1111's hires-fix keys with the job it upscaled."""
        caps = self.capabilities(request)
        extra: tuple[tuple[str, str], ...] = ()
        upscaler = self.models.upscaler
        if request.task == "upscale" and upscaler is not None:
            extra = (
                ("Hires upscale", str(upscaler.factor)),
                ("Hires steps", str(upscaler.steps)),
                ("Hires upscaler", upscaler.model),
            )
            if source_job_id is not None:
                extra += (("Upscaled from", f"job #{source_job_id}"),)
        return format_parameters(
            request,
            seed,
            eta=caps.eta,
            pipeline_class=caps.pipeline_class,
            extra=extra,
            model_hash=self.model_hash(request),
        )

    def model_hash(self, request: DrawRequest) -> str | None:
        """A1111's hash of the checkpoint that drew ``request``, where it is one file."""
        name = self.models.find(request.model)
        return None if name is None else self.models.engine(name).model_hash

    async def _shows_flagged(self, job: Job) -> bool:
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
        job: Job,
        pngs: list[bytes],
        request: DrawRequest,
        notes: tuple[str, ...],
        *,
        withheld: int = 0,
    ) -> discord.Message | None:
        """Post a finished job's images with its settings and buttons; remember the message.

        ``withheld`` images (flagged by the safety checker) are not among ``pngs``: the post
        says how many. When it can't be posted anywhere, the reason is recorded so that a
        restart does not try again. Everything is in the server's language (the delivery's).
        """
        delivery = job.delivery
        if withheld:
            total = len(pngs) + withheld
            flagged: str
            if pngs:
                flagged = messages.ngettext(
                    "🔞 The model's safety checker flagged {n} of {total} pictures; it is not "
                    "posted. Try another seed or a different prompt.",
                    "🔞 The model's safety checker flagged {n} of {total} pictures; they are not "
                    "posted. Try another seed or a different prompt.",
                    withheld,
                    total=total,
                )
            elif total == 1:
                flagged = Message(
                    N_(
                        "🔞 The model's safety checker flagged the picture; it is not posted. "
                        "Try another seed or a different prompt."
                    )
                )
            else:
                flagged = messages.ngettext(
                    "🔞 The model's safety checker flagged all {n} picture; they are not "
                    "posted. Try another seed or a different prompt.",
                    "🔞 The model's safety checker flagged all {n} pictures; they are not "
                    "posted. Try another seed or a different prompt.",
                    total,
                )
            notes = (flagged, *notes)
        limit = delivery.upload_limit()
        # Discord hides an attachment whose name starts SPOILER_ until it is clicked.
        spoiler = bool(self.store.user_settings(job.user_id).spoiler)
        prefix = "SPOILER_" if spoiler else ""
        uploads = []
        for i, data in enumerate(pngs):
            name = f"{prefix}easel-{job.id}-{i}.png"
            upload = await asyncio.to_thread(fit_upload, data, limit, name)
            if upload is None:
                await delivery.final(
                    content=Message(
                        N_("Job #{job} is done, but its images are too large to upload here."),
                        job=job.id,
                    )
                )
                await self._gave_up(job, "images too large to upload, even scaled down")
                return None
            uploads.append(upload)
        if any(u.scaled for u in uploads):
            notes = (
                *notes,
                Message(N_("Scaled down to fit Discord's upload limit; the settings still apply.")),
            )
        # A public post: the embed and the buttons in the server's language.
        caps = self.capabilities(request)
        with in_locale(await delivery.locale()):
            embed = result_embed(
                request,
                job.id,
                requester=f"<@{delivery.user_id}>",
                eta_applies=caps.eta,
                pipeline_class=caps.pipeline_class,
                notes=notes,
                parent_job_id=job.parent_job_id,
                kind=job.kind,
                upscaled=self._upscaled(request),
            )
            view = self._result_view(job, len(uploads))
        if len(uploads) == 1 and not spoiler:  # an embed's image can't be hidden
            embed.set_image(url=f"attachment://{uploads[0].filename}")
        return await self.publish(job, embed=embed, uploads=uploads, view=view)

    async def publish(self, job: Job, **message: Any) -> discord.Message | None:
        """Post a finished job's message and remember where; a job withdrawn meanwhile is not
        posted, or its post is taken back. Shared by drawings and comparison grids."""
        if self._is_withdrawn(job):
            return None
        delivery = job.delivery
        posted = await delivery.final(**message)
        if posted is None:
            await self._gave_up(job, delivery.failure or "nowhere to post it")
            return None
        try:
            await self.store.set_message(job.id, posted.id, posted.jump_url)
        except JobNotFound:
            # Purged or forgotten while it was being posted: take the post back, so nothing
            # stays up that the bot no longer knows about.
            log.info("job %s was removed while being posted; deleting the post", job.id)
            with contextlib.suppress(discord.HTTPException):
                await posted.delete()
            return None
        except Exception:
            log.exception("could not record where job %s was posted", job.id)
        return posted

    def _upscaled(self, request: DrawRequest) -> tuple[int, str] | None:
        upscaler = self.models.upscaler
        if request.task != "upscale" or upscaler is None:
            return None
        return upscaler.factor, upscaler.model

    def _result_view(self, job: Job, images: int) -> discord.ui.View:
        task = job.request.task
        upscaler = self.models.upscaler
        # An upscale is the end of the line: no V, U or Remix under it. A picture drawn from
        # another has no variation seed to vary.
        return result_view(
            job.id,
            images=0 if task == "upscale" else images,
            vary=task == "draw",
            upscale=upscaler is not None and upscaler.failed is None,
            remix=self.capabilities(job.request).image_input,
        )

    async def _gave_up(self, job: Job, reason: str) -> None:
        log.warning("job %s: result not posted: %s", job.id, reason)
        with contextlib.suppress(JobNotFound):
            await self.store.mark_undeliverable(job.id, reason)

    # -- deleting ------------------------------------------------------------------------

    async def delete(self, interaction: discord.Interaction, job_id: int) -> None:
        """Delete a posted result: its requester, or a member with Manage Messages in the
        server it was posted in."""
        record = await self.store.get_job(job_id)
        mine = record is not None and interaction.user.id == record.user_id
        here = (
            record is not None
            and interaction.guild_id is not None
            and record.guild_id == interaction.guild_id
        )
        if record is None or not (mine or here):
            # Another server's or someone's DM job reads as missing: its number says nothing.
            await answer_privately(interaction, _("There is no job #{job} here.", job=job_id))
            return
        perms = getattr(interaction, "permissions", None)
        moderator = here and perms is not None and perms.manage_messages
        if not (mine or moderator):
            await answer_privately(
                interaction,
                _("Only the person who asked for this drawing or a moderator can delete it."),
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.message is not None:
            with contextlib.suppress(discord.NotFound):
                await interaction.message.delete()
        await self.store.mark_deleted(job_id, interaction.user.id)
        await interaction.followup.send(_("Deleted job #{job}.", job=job_id), ephemeral=True)

    # -- purging and forgetting ----------------------------------------------------------

    async def _stop_and_wait(self, key: tuple[int | None, int], *, timeout: float = 60) -> None:
        """Cancel the jobs ``key`` covers and wait until none of them is being delivered.

        ``key`` is (server, member) for a purge, (None, user) for everywhere.
        """
        guild_id, user_id = key

        def covered(job: Job) -> bool:
            return job.user_id == user_id and (guild_id is None or job.guild_id == guild_id)

        for job in [j for j in self._inflight.values() if covered(j)]:
            if guild_id is not None:
                self._purged.add(job.id)
            self.executor.cancel(job.id)  # ticket = job id

        async def settled() -> None:
            async with self._inflight_changed:
                await self._inflight_changed.wait_for(
                    lambda: not any(covered(j) for j in self._inflight.values())
                )

        try:
            await asyncio.wait_for(settled(), timeout)
        except TimeoutError:
            # A step that takes longer than this (a huge picture on a CPU): its result finds
            # the rows gone or the requester withdrawn, and is dropped or taken back then.
            log.warning(
                "jobs of %s still running after %ss; removing their rows anyway", key, timeout
            )

    async def purge(self, guild_id: int, user_id: int, moderator_id: int) -> PurgeRecord:
        """Remove a member's drawings from one server: stop their jobs there and drop their
        results in flight, delete the posted messages, then their rows and image files, with an
        audit row."""
        key = (guild_id, user_id)
        self._withdrawn.add(key)
        try:
            await self._stop_and_wait(key)
            deleted = missing = failed = 0
            for job_id, channel_id, message_id in await self.store.posted_messages(
                guild_id, user_id
            ):
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
        finally:
            self._withdrawn.discard(key)

    async def forget(self, user_id: int) -> int:
        """Delete everything of a user everywhere: their jobs are stopped and results in
        flight dropped first, so nothing of theirs is posted or stored afterwards."""
        key = (None, user_id)
        self._withdrawn.add(key)
        try:
            await self._stop_and_wait(key)
            return await self.store.forget_user(user_id)
        finally:
            self._withdrawn.discard(key)
