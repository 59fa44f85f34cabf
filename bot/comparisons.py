"""/compare: one request drawn as a grid of cells, each cell a job of its own.

A comparison is recorded as a job of kind ``compare`` (its shared settings and axes) with one
ordinary job per cell. The cells go through the executor one by one under the comparison's id as
their ``unit``: it counts once against the caps, yet each cell takes its own turn of the
round-robin, so nobody waits a whole grid. When every cell has ended, the grid is rendered from
the cells drawn (the others marked), stored and posted with a menu that opens each cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import discord
from PIL import Image

from bot.delivery import Delivery, Job, outcome_message
from bot.i18n import N_, Message, _, in_locale, localize, ngettext, public_locale
from bot.render import EMBED_COLOUR, fit_upload, result_embed, shorten
from bot.replies import answer_privately
from bot.store import InvalidTransition, JobNotFound, JobRecord
from bot.text import plain
from pipeline import messages
from pipeline.compare import Cell, Comparison
from pipeline.errors import EaselError, PromptRefused, QueueFull
from pipeline.executor import JobOutcome
from pipeline.grid import render_grid
from pipeline.pngmeta import png_bytes
from pipeline.request import DrawRequest, DrawResult, guidance_label, random_seed

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from bot.policy import Policy
    from bot.protocols import Host
    from bot.store import Store
    from pipeline.engine import Capabilities
    from pipeline.executor import Executor
    from pipeline.models import ModelSet

log = logging.getLogger(__name__)

# Drawn in a missing cell's place in the grid, in the server's language.
MISSING_LABELS = {
    "cancelled": Message(N_("cancelled")),
    "failed": Message(N_("failed")),
    "withheld": Message(N_("withheld (flagged)")),
    "removed": Message(N_("removed")),
}
# The names of the settings every cell shares (``Comparison.fixed``), as shown.
_FIXED_NAMES = {
    "Steps": N_("Steps"),
    "Guidance": N_("Guidance"),
    "Eta": N_("Eta"),
    "Sampler": N_("Sampler"),
    "Size": N_("Size"),
    "Seed": N_("Seed"),
    "Model": N_("Model"),
}


@dataclass
class ComparisonRun:
    """A comparison being drawn: its cells' pictures and ends as they come in."""

    id: int
    comparison: Comparison
    delivery: Delivery
    guild_id: int | None
    user_id: int
    cell_ids: list[int]  # by cell index
    parent_job_id: int | None = None
    notes: tuple[str, ...] = ()
    images: dict[int, Image.Image] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)  # cell index -> why it has no picture
    running: set[int] = field(default_factory=set)  # cell indexes drawing now
    step: tuple[int, int] = (0, 0)
    finishing: bool = False

    @property
    def size(self) -> int:
        return len(self.cell_ids)

    @property
    def ended(self) -> bool:
        return len(self.images) + len(self.missing) >= self.size

    def progress(self) -> Message:
        """``Comparing… cell 3 of 8 (step 20/50)``; cells drawn together read ``cells 3-4``."""
        done = len(self.images) + len(self.missing)
        if not self.running:
            return Message(N_("Comparing… {done} of {size} cells done."), done=done, size=self.size)
        first = done + 1
        last = done + len(self.running)
        step, total = self.step
        values = {"first": first, "last": last, "size": self.size, "step": step, "total": total}
        if first == last:
            if total:
                return Message(
                    N_("Comparing… cell {first} of {size} (step {step}/{total})"), **values
                )
            return Message(N_("Comparing… cell {first} of {size}"), **values)
        if total:
            return Message(
                N_("Comparing… cells {first}-{last} of {size} (step {step}/{total})"), **values
            )
        return Message(N_("Comparing… cells {first}-{last} of {size}"), **values)


class CompareMixin:
    """The /compare part of ``JobRunner``, which provides what is declared here."""

    if TYPE_CHECKING:
        bot: Host
        store: Store
        models: ModelSet
        executor: Executor
        max_attempts: int
        _inflight: dict[int, Job]
        _purged: set[int]
        _inflight_changed: asyncio.Condition
        _last_start: dict[tuple[int | None, int], float]
        _withdrawn: set[tuple[int | None, int]]
        _clock: Callable[[], float]

        async def policy(self, guild_id: int | None, model: str | None = None) -> Policy: ...
        def capabilities(self, request: DrawRequest) -> Capabilities: ...
        @staticmethod
        async def say_loading(delivery: Delivery, model: str) -> None: ...
        async def same_model(
            self, interaction: discord.Interaction, record: JobRecord
        ) -> str | None: ...
        async def _check_banned_words(self, guild_id: int | None, request: DrawRequest) -> None: ...
        def _check_cooldown(self, guild_id: int | None, user_id: int, policy: Policy) -> None: ...
        async def _record_refused(
            self, interaction: discord.Interaction, request: DrawRequest
        ) -> None: ...
        def _log_outcome(self, job: Job, outcome: JobOutcome) -> None: ...
        def _is_withdrawn(self, job: Job) -> bool: ...
        def _is_forgotten(self, job: Job) -> bool: ...
        async def _shows_flagged(self, job: Job) -> bool: ...
        def parameters(
            self, request: DrawRequest, seed: int, *, source_job_id: int | None = None
        ) -> str: ...
        async def _gave_up(self, job: Job, reason: str) -> None: ...
        async def publish(self, job: Job, **message: Any) -> discord.Message | None: ...
        async def _say_queued(
            self,
            delivery: Delivery,
            ticket: int,
            what: str,
            guild_id: int | None,
            *,
            loads: str | None = None,
        ) -> None: ...
        async def _may_reroll(
            self, interaction: discord.Interaction, record: JobRecord
        ) -> bool: ...
        def _start_background(self, coro: Coroutine[Any, Any, None]) -> None: ...

    async def compare(
        self,
        interaction: discord.Interaction,
        comparison: Comparison,
        *,
        parent_job_id: int | None = None,
        notes: tuple[str, ...] = (),
    ) -> int | None:
        """Check every cell as /draw checks a request, then record and queue the comparison.

        A refusal is answered privately and nothing is stored or queued; returns the
        comparison's job number otherwise. ``notes`` go on the grid's post (a member's default
        brought within this server's limits, say), before the engine's.
        """
        given = notes
        try:
            comparison, notes = await self._admit_comparison(interaction, comparison)
        except PromptRefused as refusal:
            await answer_privately(interaction, refusal)
            # The cell whose words were refused, so moderators see what was asked.
            await self._record_refused(interaction, getattr(refusal, "request", comparison.base))
            return None
        except EaselError as refusal:
            await answer_privately(interaction, refusal)
            return None
        user = interaction.user
        await interaction.response.defer(thinking=True)
        cells = comparison.cells()
        compare_id, cell_ids = await self.store.add_comparison(
            comparison.base,
            json.dumps(comparison.to_dict(), ensure_ascii=False),
            [cell.request for cell in cells],
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=user.id,
            user_name=user.display_name,
            parent_job_id=parent_job_id,
            locale=public_locale(interaction),
        )
        interaction.extras["job_id"] = compare_id
        delivery = Delivery(
            self.bot, channel_id=interaction.channel_id, user_id=user.id, interaction=interaction
        )
        run = ComparisonRun(
            compare_id,
            comparison,
            delivery,
            interaction.guild_id,
            user.id,
            cell_ids,
            parent_job_id=parent_job_id,
            notes=(*given, *(n for n in notes if n not in given)),
        )
        try:
            self._submit_cells(run, [(cell, cell.request) for cell in cells])
        except QueueFull as exc:  # filled up while we recorded it
            for cell_id in cell_ids:
                self.executor.cancel(cell_id)
            await self._cancel_rows(run)
            await delivery.final(content=exc.text)
            return compare_id
        self._last_start[(interaction.guild_id, user.id)] = self._clock()
        what = messages.ngettext(
            "comparison #{id} ({n} cell)", "comparison #{id} ({n} cells)", run.size, id=compare_id
        )
        await self._say_queued(
            delivery,
            cell_ids[0],
            what,
            interaction.guild_id,
            loads=self.models.needs_loading(comparison.base),
        )
        return compare_id

    async def _admit_comparison(
        self, interaction: discord.Interaction, comparison: Comparison
    ) -> tuple[Comparison, tuple[str, ...]]:
        """Every check /draw makes, on every cell; returns the comparison with its shared
        settings resolved, and the notes the engine has for it."""
        user = interaction.user
        policy = await self.policy(interaction.guild_id, comparison.base.model)
        # The server's model unless one was picked; the same for every cell.
        comparison = replace(
            comparison, base=replace(comparison.base, model=comparison.base.model or policy.model)
        )
        policy.check_model(comparison.base.model)
        cells = comparison.cells()
        if len(cells) > policy.max_compare_cells:
            raise QueueFull(
                N_(
                    "That comparison has {cells} cells; this server allows at most {limit}. "
                    "Give fewer values."
                ),
                cells=len(cells),
                limit=policy.max_compare_cells,
            )
        prompts = {(c.request.prompt, c.request.negative_prompt): c.request for c in cells}
        for request in prompts.values():
            try:
                await self._check_banned_words(interaction.guild_id, request)
            except PromptRefused as refusal:
                refusal.request = request  # type: ignore[attr-defined]
                raise
        self._check_cooldown(interaction.guild_id, user.id, policy)
        # The shared settings resolve once, so every cell has the same size, sampler and seed.
        base = self.models.resolve(comparison.base)
        comparison = replace(comparison, base=base)
        notes: list[str] = []
        for cell in comparison.cells():
            try:
                for note in self.models.validate(cell.request):
                    if note not in notes:
                        notes.append(note)
                policy.check(self.models.resolve(cell.request))
            except EaselError as exc:
                raise type(exc)(
                    N_("In the cell {cell}: {problem}"),
                    cell=self._cell_name(comparison, cell),
                    problem=exc.text,
                ) from exc
            except ValueError as exc:
                raise type(exc)(f"In the cell {self._cell_name(comparison, cell)}: {exc}") from exc
        if policy.stored.max_queued_per_user is not None:
            policy.check_queue(self.executor.pending(user.id, group=interaction.guild_id))
        self.executor.check_capacity(user.id)
        return comparison, tuple(notes)

    @staticmethod
    def _cell_name(comparison: Comparison, cell: Cell) -> str:
        """The cell as the grid labels it: “Steps: 200, Guidance: 6” (in the current locale: it
        is named in a private refusal, in the member's)."""
        labels = (shorten(localize(label), 60) for label in comparison.cell_labels(cell))
        return "“" + ", ".join(labels) + "”"

    def _submit_cells(
        self,
        run: ComparisonRun,
        cells: list[tuple[Cell, DrawRequest]],
        *,
        enforce_caps: bool = True,
        attempts: dict[int, int] | None = None,
    ) -> None:
        """Queue cells under the comparison's id: it counts once against the caps.
        ``attempts``: how many times each cell (by index) was started already."""
        for cell, request in cells:
            job = Job(
                run.cell_ids[cell.index], run.delivery, None, run.guild_id, run.user_id, request
            )
            self.executor.submit(
                request,
                user_id=run.user_id,
                ticket=job.id,
                enforce_caps=enforce_caps,
                group=run.guild_id,
                unit=run.id,
                attempts=(attempts or {}).get(cell.index, 0),
                on_progress=functools.partial(self._on_cell_progress, run, cell, job),
                on_done=functools.partial(self._on_cell_done, run, cell, job),
                on_loading=functools.partial(self.say_loading, run.delivery),
            )
            self._inflight[job.id] = job

    async def _cancel_rows(self, run: ComparisonRun) -> None:
        for job_id in (*run.cell_ids, run.id):
            with contextlib.suppress(JobNotFound, InvalidTransition):  # cancelled already
                await self.store.mark_cancelled(job_id)

    # -- callbacks -------------------------------------------------------------------------

    async def _on_cell_progress(
        self, run: ComparisonRun, cell: Cell, job: Job, step: int, total: int
    ) -> None:
        if step == 0:
            job.started_at = time.perf_counter()
            run.running.add(cell.index)
        run.step = (step, total)
        await run.delivery.status(run.progress())

    async def _on_cell_done(
        self, run: ComparisonRun, cell: Cell, job: Job, outcome: JobOutcome
    ) -> None:
        run.running.discard(cell.index)
        try:
            if outcome.status == "done" and outcome.result is not None:
                await self._keep_cell(run, cell, job, outcome.result)
            elif outcome.status == "cancelled":
                run.missing[cell.index] = "cancelled"
                with contextlib.suppress(JobNotFound):
                    await self.store.mark_cancelled(job.id)
            else:
                run.missing[cell.index] = "failed"
                error = outcome.error
                with contextlib.suppress(JobNotFound):
                    await self.store.mark_failed(job.id, repr(error) if error else outcome.message)
        except JobNotFound:
            run.missing[cell.index] = "removed"
            log.info("cell %s of comparison %s was removed while it ran", job.id, run.id)
        except Exception:
            run.missing.setdefault(cell.index, "failed")
            log.exception("keeping cell %s of comparison %s failed", job.id, run.id)
        finally:
            self._purged.discard(job.id)
            self._log_outcome(job, outcome)
            self._inflight.pop(job.id, None)
            async with self._inflight_changed:
                self._inflight_changed.notify_all()
        if run.ended and not run.finishing:
            run.finishing = True
            await self._finish_comparison(run, first_error=outcome_message(outcome))

    async def _keep_cell(
        self, run: ComparisonRun, cell: Cell, job: Job, result: DrawResult
    ) -> None:
        """Store a drawn cell (image file, then its row) and keep its picture for the grid."""
        if self._is_withdrawn(job):
            run.missing[cell.index] = "removed"
            return
        (image,) = result.images
        (seed,) = result.seeds
        flagged = bool(result.nsfw and result.nsfw[0])
        if flagged and not await self._shows_flagged(job):
            run.missing[cell.index] = "withheld"
            await self.store.mark_done(
                job.id, images=[], request=result.request, duration_s=result.duration_s, withheld=1
            )
            return
        text = self.parameters(result.request, seed)
        data = await asyncio.to_thread(png_bytes, image, text)
        path = await self.store.save_image(data)
        try:
            if self._is_withdrawn(job):
                raise JobNotFound(f"job {job.id} is being removed")
            await self.store.mark_done(
                job.id,
                images=[(path, seed)],
                request=result.request,
                duration_s=result.duration_s,
            )
        except BaseException:
            await self.store.discard_images([path])
            raise
        run.images[cell.index] = image

    async def _finish_comparison(self, run: ComparisonRun, first_error: str) -> None:
        """Every cell has ended: render, store and post the grid (or say why there is none)."""
        job = Job(
            run.id, run.delivery, run.parent_job_id, run.guild_id, run.user_id, run.comparison.base
        )
        stored = False
        try:
            if self._is_withdrawn(job):
                log.info("comparison %s ended while its requester's data was removed", run.id)
                if not self._is_forgotten(job):  # a forgotten user hears nothing
                    await run.delivery.final(
                        content=Message(
                            N_("Comparison #{id} was removed by a moderator."), id=run.id
                        )
                    )
                return
            if not run.images:
                await self._no_grid(run, job, first_error)
                return
            comparison = run.comparison
            caps = self.capabilities(comparison.base)
            missing = {i: MISSING_LABELS.get(why, why) for i, why in run.missing.items()}
            text = comparison.parameters(eta=caps.eta, pipeline_class=caps.pipeline_class)

            def render() -> bytes:
                return png_bytes(render_grid(comparison, run.images, missing=missing), text)

            # The labels drawn in the grid are in the server's language (to_thread carries
            # the locale over).
            with in_locale(await run.delivery.locale()):
                data = await asyncio.to_thread(render)
            path = await self.store.save_image(data)
            try:
                await self.store.mark_done(
                    run.id, images=[(path, comparison.base.seed or 0)], request=comparison.base
                )
            except BaseException:
                await self.store.discard_images([path])
                raise
            stored = True
            await self.post_comparison(run, data)
        except JobNotFound:
            log.info("comparison %s was removed before its grid was posted", run.id)
        except Exception as exc:
            log.exception("finishing comparison %s failed", run.id)
            # Ended either way, so a restart neither draws it again nor posts it again.
            with contextlib.suppress(Exception):
                if stored:
                    await self.store.mark_undeliverable(run.id, f"posting the grid failed: {exc!r}")
                else:
                    await self.store.mark_failed(run.id, f"making the grid failed: {exc!r}")
            if stored:
                failed = N_(
                    "⚠️ Comparison #{id} failed: its grid could not be posted; the error has "
                    "been logged."
                )
            else:
                failed = N_(
                    "⚠️ Comparison #{id} failed: its grid could not be made; the error has been "
                    "logged."
                )
            with contextlib.suppress(Exception):
                await run.delivery.final(content=Message(failed, id=run.id))

    async def _no_grid(self, run: ComparisonRun, job: Job, error: str) -> None:
        whys = set(run.missing.values())
        if whys <= {"cancelled", "removed"}:
            await self.store.mark_cancelled(run.id)
            if not self._is_forgotten(job):
                await run.delivery.final(
                    content=Message(N_("Comparison #{id} was cancelled."), id=run.id)
                )
            return
        await self.store.mark_failed(run.id, f"no cell was drawn: {', '.join(sorted(whys))}")
        if whys == {"withheld"}:
            error = Message(
                N_("the model's safety checker flagged every cell. Try another seed or prompt.")
            )
        await run.delivery.final(
            content=Message(N_("⚠️ Comparison #{id} failed: {reason}"), id=run.id, reason=error)
        )

    async def post_comparison(self, run: ComparisonRun, data: bytes) -> discord.Message | None:
        """Post the grid with its settings and the cell menu; remember the message."""
        delivery = run.delivery
        job = Job(
            run.id, delivery, run.parent_job_id, run.guild_id, run.user_id, run.comparison.base
        )
        # The member's /settings: a spoiler is hidden until clicked (SPOILER_ in its name).
        spoiler = bool(self.store.user_settings(run.user_id).spoiler)
        name = f"{'SPOILER_' if spoiler else ''}easel-compare-{run.id}.png"
        upload = await asyncio.to_thread(fit_upload, data, delivery.upload_limit(), name)
        if upload is None:
            await delivery.final(
                content=Message(
                    N_("Comparison #{id} is done, but its grid is too large to upload here."),
                    id=run.id,
                )
            )
            await self._gave_up(job, "grid too large to upload, even scaled down")
            return None
        notes = run.notes
        if upload.scaled:
            notes = (*notes, Message(N_("Scaled down to fit Discord's upload limit.")))
        from bot.views import comparison_view

        drawn = {i for i in range(run.size) if i not in run.missing}
        # A public post: the embed and the cell menu in the server's language.
        with in_locale(await delivery.locale()):
            embed = self.comparison_embed(run, requester=f"<@{run.user_id}>", notes=notes)
            view = comparison_view(run.id, run.comparison, run.cell_ids, drawn=drawn)
        if not spoiler:  # an embed's image can't be hidden
            embed.set_image(url=f"attachment://{upload.filename}")
        return await self.publish(job, embed=embed, uploads=[upload], view=view)

    def comparison_embed(
        self, run: ComparisonRun, *, requester: str, notes: tuple[str, ...] = ()
    ) -> discord.Embed:
        """The prompt, the axes and their values, the shared settings, seed, model and number,
        in the current locale (``notes`` may be ``Message``s)."""
        comparison = run.comparison
        base = comparison.base
        caps = self.capabilities(base)
        embed = discord.Embed(description=plain(shorten(base.prompt, 1000)), colour=EMBED_COLOUR)
        if base.negative_prompt:
            embed.add_field(
                name=_("Negative prompt"),
                value=plain(shorten(base.negative_prompt, 400)),
                inline=False,
            )
        where = (_("Columns (X)"), _("Rows (Y)"), _("Sub-grids (Z)"))
        for title, axis in zip(where, comparison.axes, strict=False):
            shown = [localize(axis.shown(i)) for i in range(len(axis.values))]
            if axis.title is None:  # the words that replace each other
                text = " · ".join(shown)
            else:  # "Steps: 20, 50" rather than "Steps: 20 · Steps: 50"
                text = _("{name}: {value}", name=axis.title, value=", ".join(shown))
            # Escaped, then cut: escaping can double a text that was short enough before.
            embed.add_field(name=title, value=shorten(plain(text), 1000), inline=False)
        fixed = []
        for name, value in comparison.fixed.items():
            if name == "Guidance":  # as it acts on this model: "1 (off)"
                value = guidance_label(base.guidance, caps.pipeline_class)
            shown_name = _(_FIXED_NAMES[name]) if name in _FIXED_NAMES else name
            value = localize(value)
            if name in ("Seed", "Model"):
                embed.add_field(name=shown_name, value=shorten(plain(value), 200))
            else:  # the settings every cell shares: in the footer, out of the way
                fixed.append(f"{shown_name} {value}")
        if run.parent_job_id:
            credit = _(
                "Rerolled from comparison #{id} by {requester}",
                id=run.parent_job_id,
                requester=requester,
            )
        else:
            credit = _("Compared by {requester}", requester=requester)
        embed.add_field(name="\u200b", value=credit, inline=False)
        absent = len(run.missing)
        if absent:
            notes = (
                ngettext(
                    "{n} cell of {total} not drawn: marked in the grid.",
                    "{n} cells of {total} not drawn: marked in the grid.",
                    absent,
                    total=run.size,
                ),
                *notes,
            )
        for note in notes[:3]:
            embed.add_field(name=_("Note"), value=shorten(localize(note), 1000), inline=False)
        first, last = run.cell_ids[0], run.cell_ids[-1]
        if fixed:
            footer = ngettext(
                "Job #{id} · comparison of {n} cell (jobs #{first}-#{last}) · every cell: "
                "{fixed} · open a cell below to reroll it",
                "Job #{id} · comparison of {n} cells (jobs #{first}-#{last}) · every cell: "
                "{fixed} · open a cell below to reroll it",
                run.size,
                id=run.id,
                first=first,
                last=last,
                fixed=", ".join(fixed),
            )
        else:
            footer = ngettext(
                "Job #{id} · comparison of {n} cell (jobs #{first}-#{last}) · open a cell "
                "below to reroll it",
                "Job #{id} · comparison of {n} cells (jobs #{first}-#{last}) · open a cell "
                "below to reroll it",
                run.size,
                id=run.id,
                first=first,
                last=last,
            )
        embed.set_footer(text=footer)
        return embed

    # -- opening a cell ----------------------------------------------------------------------

    async def open_cell(
        self, interaction: discord.Interaction, compare_id: int, cell_id: int
    ) -> None:
        """Show one cell privately, full size, with its own settings and a Reroll button."""
        record = await self.store.get_job(cell_id)
        # Whoever may reroll the cell may see it: its requester, or a member of its server who
        # can read the channel the grid is in now.
        if (
            record is None
            or record.compare_id != compare_id
            or record.deleted
            or not await self._may_reroll(interaction, record)
        ):
            await answer_privately(
                interaction, _("There is no cell #{cell} of this comparison here.", cell=cell_id)
            )
            return
        if record.status != "done" or not record.images:
            if record.withheld:
                why = N_(
                    "Cell #{cell} was withheld (the safety checker flagged it), so there is no "
                    "picture."
                )
            elif not record.finished:
                why = N_("Cell #{cell} is not drawn yet, so there is no picture.")
            elif record.status == "cancelled":
                why = N_("Cell #{cell} was cancelled, so there is no picture.")
            elif record.status == "failed":
                why = N_("Cell #{cell} failed, so there is no picture.")
            else:
                why = N_("Cell #{cell} has no picture.")
            await answer_privately(interaction, _(why, cell=cell_id))
            return
        path, _seed = record.images[0]
        data = await asyncio.to_thread(path.read_bytes)
        limit = getattr(interaction, "filesize_limit", None) or 10 * 1024 * 1024
        upload = await asyncio.to_thread(fit_upload, data, limit, f"easel-{cell_id}.png")
        caps = self.capabilities(record.request)
        embed = result_embed(
            record.request,
            cell_id,
            requester=f"<@{record.user_id}>",
            eta_applies=caps.eta,
            pipeline_class=caps.pipeline_class,
            notes=(_("A cell of comparison #{id}.", id=compare_id),),
        )
        from bot.views import cell_view

        if upload is None:
            await answer_privately(
                interaction, _("Cell #{cell} is too large to upload here.", cell=cell_id)
            )
            return
        embed.set_image(url=f"attachment://{upload.filename}")
        await interaction.response.send_message(
            embed=embed, file=upload.file(), view=cell_view(cell_id), ephemeral=True
        )

    async def reroll_comparison(
        self, interaction: discord.Interaction, record: JobRecord, seed: int | None
    ) -> int | None:
        """The same comparison with a new (or the given) seed."""
        comparison = comparison_of(record)
        if (model := await self.same_model(interaction, record)) is None:
            return None
        base = replace(comparison.base, seed=random_seed() if seed is None else seed, model=model)
        return await self.compare(
            interaction, replace(comparison, base=base), parent_job_id=record.id
        )

    # -- restarts ----------------------------------------------------------------------------

    async def recover_comparisons(self, records: list[JobRecord]) -> tuple[int, set[int]]:
        """Resume the comparisons a crash left unfinished: drawn cells are kept, the others
        queued again; returns how many cells were queued and the job ids handled here."""
        handled: set[int] = set()
        queued = 0
        for record in records:
            if record.kind != "compare":
                continue
            handled.add(record.id)
            try:
                cells = await self.store.comparison_cells(record.id)
                handled.update(c.id for c in cells)
                if self.models.find(record.request.model) is None:
                    # The operator removed its model from MODELS while it waited.
                    log.warning("comparison %s not resumed: its model is gone", record.id)
                    # In the background: this runs before the bot is ready, and posting waits
                    # for that.
                    self._start_background(
                        self._abandon(
                            record,
                            Message(
                                N_(
                                    "⚠️ Comparison #{id} was not finished: its model {model} was "
                                    "removed from the bot while it waited. Draw it again with "
                                    "/compare; /models lists the models."
                                ),
                                id=record.id,
                                model=record.request.model,
                            ),
                        )
                    )
                    continue
                queued += await self._resume(record, cells)
            except Exception:
                log.exception("could not resume comparison %s", record.id)
                self._start_background(self._abandon(record))
        for record in records:
            # A cell whose comparison is over (or gone) has nothing to join: stop it.
            if record.compare_id is not None and record.id not in handled:
                handled.add(record.id)
                with contextlib.suppress(Exception):
                    await self.store.mark_cancelled(record.id)
        return queued, handled

    async def _abandon(self, record: JobRecord, why: str | None = None) -> None:
        """A comparison that can't be resumed: end it and its unfinished cells, and say so
        (``why``: the message, if not that the error was logged)."""
        with contextlib.suppress(Exception):
            for cell in await self.store.comparison_cells(record.id):
                if not cell.finished:
                    await self.store.mark_failed(cell.id, "its comparison could not be resumed")
        with contextlib.suppress(Exception):
            await self.store.mark_failed(record.id, "could not resume after a restart")
            delivery = Delivery(
                self.bot, channel_id=record.channel_id, user_id=record.user_id, locale=record.locale
            )
            await delivery.final(
                content=why
                or Message(
                    N_(
                        "⚠️ Comparison #{id} failed: it could not be resumed after a restart; "
                        "the error has been logged."
                    ),
                    id=record.id,
                )
            )

    async def _resume(self, record: JobRecord, cells: list[JobRecord]) -> int:
        comparison = comparison_of(record)
        planned = comparison.cells()
        if len(cells) != len(planned):
            raise ValueError(f"comparison {record.id} has {len(cells)} cells, not {len(planned)}")
        delivery = Delivery(
            self.bot, channel_id=record.channel_id, user_id=record.user_id, locale=record.locale
        )
        run = ComparisonRun(
            record.id,
            comparison,
            delivery,
            record.guild_id,
            record.user_id,
            [c.id for c in cells],
            parent_job_id=record.parent_job_id,
        )
        again: list[tuple[Cell, DrawRequest]] = []
        started: dict[int, int] = {}
        for cell, row in zip(planned, cells, strict=True):
            if row.status == "done":
                try:
                    if not row.images:
                        raise FileNotFoundError("no image")
                    run.images[cell.index] = await asyncio.to_thread(_load_image, row.images[0][0])
                except OSError:
                    if not row.withheld:
                        log.warning("cell %s of comparison %s: its picture is gone", row.id, run.id)
                    run.missing[cell.index] = "withheld" if row.withheld else "failed"
            elif row.finished:
                run.missing[cell.index] = "cancelled" if row.status == "cancelled" else "failed"
            elif row.attempts >= self.max_attempts:
                reason = f"stopped after {row.attempts} attempts: the bot went down drawing it"
                await self.store.mark_failed(row.id, reason)
                run.missing[cell.index] = "failed"
            else:
                # Found: the comparison's model (checked before resuming), by its name now.
                model = self.models.find(row.request.model)
                again.append((cell, replace(row.request, model=model)))
                started[cell.index] = row.attempts
        if again:
            self._submit_cells(run, again, enforce_caps=False, attempts=started)
        elif run.ended:
            run.finishing = True
            self._start_background(
                self._finish_comparison(
                    run, first_error=Message(N_("the bot went down while drawing it"))
                )
            )
        return len(again)

    async def repost_comparison(self, record: JobRecord) -> None:
        """A grid stored but never posted (the process died in between): post it from disk."""
        try:
            cells = await self.store.comparison_cells(record.id)
            delivery = Delivery(
                self.bot, channel_id=record.channel_id, user_id=record.user_id, locale=record.locale
            )
            run = ComparisonRun(
                record.id,
                comparison_of(record),
                delivery,
                record.guild_id,
                record.user_id,
                [c.id for c in cells],
                parent_job_id=record.parent_job_id,
            )
            for i, cell in enumerate(cells):
                if not (cell.status == "done" and cell.images):
                    run.missing[i] = cell.status
            data = await asyncio.to_thread(record.images[0][0].read_bytes)
            await self.post_comparison(run, data)
        except Exception as exc:
            log.exception("re-posting comparison %s after a restart failed", record.id)
            with contextlib.suppress(Exception):  # once: the next restart must not try again
                await self.store.mark_undeliverable(record.id, f"re-posting failed: {exc!r}")


def comparison_of(record: JobRecord) -> Comparison:
    """The comparison a ``compare`` job row describes."""
    if record.kind != "compare" or not record.spec:
        raise ValueError(f"job {record.id} is not a comparison")
    return Comparison.from_dict(json.loads(record.spec))


def _load_image(path: Any) -> Image.Image:
    with Image.open(path) as opened:
        return opened.convert("RGB")
