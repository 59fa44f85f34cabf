"""Buttons: Reroll and Delete on every result, the cell menu under comparison grids (they survive
restarts), and history pages.

Labels are set when a view is built, in the current locale: the caller builds a public post's
view inside ``in_locale(<the server's>)``. Items re-created from custom ids after a restart only
dispatch (the labels shown are the message's). Every item's, form's and page's
``interaction_check`` enters the clicking member's locale, so the callback answers in it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from bot import i18n
from bot.i18n import _, localize, ngettext
from bot.listing import describe_record
from bot.render import EMBED_COLOUR, shorten
from bot.replies import answer_privately
from bot.store import JobRecord

if TYPE_CHECKING:
    from bot.protocols import Easel
    from pipeline.compare import Comparison

PAGE_SIZE = 5


class InMemberLocale:
    """Mixed into items: the click is answered in the clicking member's language."""

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        # discord.py runs the check and then the callback in one task: the locale holds.
        i18n.enter(interaction)
        return True


def _job_button(action: str, job_id: int, label: str, emoji: str, style: discord.ButtonStyle):
    return discord.ui.Button(
        label=label, emoji=emoji, style=style, custom_id=f"easel:{action}:{job_id}"
    )


class RerollButton(
    InMemberLocale,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"easel:reroll:(?P<job>\d+)",
):
    """Same settings, new random seed; anyone may click, and the result credits the clicker."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            _job_button("reroll", job_id, _("Reroll"), "🎲", discord.ButtonStyle.primary)
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RerollButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: Easel = interaction.client  # type: ignore[assignment]
        await bot.guarded(interaction, bot.jobs.reroll(interaction, self.job_id))


class DeleteButton(
    InMemberLocale,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"easel:delete:(?P<job>\d+)",
):
    """Deletes the result: its requester or a member with Manage Messages."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            _job_button("delete", job_id, _("Delete"), "🗑️", discord.ButtonStyle.secondary)
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> DeleteButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: Easel = interaction.client  # type: ignore[assignment]
        await bot.guarded(interaction, bot.jobs.delete(interaction, self.job_id))


# Midjourney's Vary (Subtle) and Vary (Strong), as A1111 variation-seed strengths.
VARY_SUBTLE = 0.25
VARY_STRONG = 0.6
_STRENGTHS = {"subtle": VARY_SUBTLE, "strong": VARY_STRONG}


class VaryButton(
    InMemberLocale,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"easel:vary:(?P<job>\d+):(?P<i>\d)",
):
    """``V1``..``Vn``: asks (privately) how strong a variation of that picture to draw."""

    def __init__(self, job_id: int, index: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"V{index + 1}",
                style=discord.ButtonStyle.secondary,
                custom_id=f"easel:vary:{job_id}:{index}",
                row=1,
            )
        )
        self.job_id, self.index = job_id, index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> VaryButton:
        return cls(int(match["job"]), int(match["i"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None)
        for how in _STRENGTHS:
            view.add_item(VaryStrengthButton(self.job_id, self.index, how))
        subtle, strong = f"{VARY_SUBTLE:g}", f"{VARY_STRONG:g}"
        await interaction.response.send_message(
            _(
                "A variation of picture {picture} of job #{job}: same settings and seed, its "
                "noise mixed with a new seed's. Subtle keeps it close ({subtle}); strong "
                "changes more ({strong}).",
                picture=self.index + 1,
                job=self.job_id,
                subtle=subtle,
                strong=strong,
            ),
            view=view,
            ephemeral=True,
        )


class VaryStrengthButton(
    InMemberLocale,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"easel:varyby:(?P<job>\d+):(?P<i>\d):(?P<how>subtle|strong)",
):
    """Vary (Subtle) / Vary (Strong): queues the variation; the result credits the clicker."""

    def __init__(self, job_id: int, index: int, how: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=_("Vary (Strong)") if how == "strong" else _("Vary (Subtle)"),
                emoji="🌀" if how == "strong" else "🌱",
                style=discord.ButtonStyle.primary,
                custom_id=f"easel:varyby:{job_id}:{index}:{how}",
            )
        )
        self.job_id, self.index, self.how = job_id, index, how

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> VaryStrengthButton:
        return cls(int(match["job"]), int(match["i"]), match["how"])

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: Easel = interaction.client  # type: ignore[assignment]
        strength = _STRENGTHS[self.how]
        await bot.guarded(
            interaction, bot.jobs.vary(interaction, self.job_id, self.index, strength)
        )


class UpscaleButton(
    InMemberLocale,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"easel:upscale:(?P<job>\d+):(?P<i>\d)",
):
    """``U1``..``Un``: that picture made 4x larger by the upscaler (queued like a drawing)."""

    def __init__(self, job_id: int, index: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"U{index + 1}",
                style=discord.ButtonStyle.secondary,
                custom_id=f"easel:upscale:{job_id}:{index}",
                row=2,
            )
        )
        self.job_id, self.index = job_id, index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> UpscaleButton:
        return cls(int(match["job"]), int(match["i"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: Easel = interaction.client  # type: ignore[assignment]
        await bot.guarded(interaction, bot.jobs.upscale(interaction, self.job_id, self.index))


DEFAULT_REMIX_STRENGTH = 0.6


class RemixButton(
    InMemberLocale,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"easel:remix:(?P<job>\d+):(?P<n>\d)",
):
    """Remix: a form with the prompt (to edit) and the strength, then a drawing from that
    result (models with an image-to-image form only)."""

    def __init__(self, job_id: int, images: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=_("Remix"),
                emoji="🎨",
                style=discord.ButtonStyle.secondary,
                custom_id=f"easel:remix:{job_id}:{images}",
            )
        )
        self.job_id, self.images = job_id, images

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RemixButton:
        return cls(int(match["job"]), int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: Easel = interaction.client  # type: ignore[assignment]
        await bot.guarded(interaction, bot.jobs.remix_form(interaction, self.job_id, self.images))


class RemixForm(discord.ui.Modal):
    """The prompt (pre-filled) and the strength of a remix; the picture's number when a post
    has several. Built in the member's locale (it is theirs alone)."""

    def __init__(self, job_id: int, images: int, prompt: str) -> None:
        super().__init__(
            title=_("Remix job #{job}", job=job_id), custom_id=f"easel:remixform:{job_id}"
        )
        self.job_id = job_id
        self.prompt: discord.ui.TextInput[RemixForm] = discord.ui.TextInput(
            label=_("Prompt"),
            custom_id="prompt",
            style=discord.TextStyle.paragraph,
            default=prompt[:4000],
            max_length=4000,
        )
        self.strength: discord.ui.TextInput[RemixForm] = discord.ui.TextInput(
            label=_("Strength: how much to redraw (0.1-1)"),
            custom_id="strength",
            default=f"{DEFAULT_REMIX_STRENGTH:g}",
            max_length=8,
        )
        self.picture: discord.ui.TextInput[RemixForm] | None = None
        self.add_item(self.prompt)
        self.add_item(self.strength)
        if images > 1:
            self.picture = discord.ui.TextInput(
                label=_("Which picture (1-{images})", images=images),
                custom_id="picture",
                default="1",
                max_length=1,
            )
            self.add_item(self.picture)

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        i18n.enter(interaction)  # the submit is answered in the member's language
        return True

    async def on_submit(self, interaction: discord.Interaction) -> None:
        bot: Easel = interaction.client  # type: ignore[assignment]
        try:
            strength = float(self.strength.value.replace(",", "."))
            index = int(self.picture.value) - 1 if self.picture is not None else 0
        except ValueError:
            await answer_privately(
                interaction,
                _("The strength must be a number like 0.6, and the picture a number like 1."),
            )
            return
        if not 0 < strength <= 1:
            await answer_privately(
                interaction, _("The strength must be above 0 and at most 1, like 0.6.")
            )
            return
        work = bot.jobs.remix(interaction, self.job_id, index, self.prompt.value, strength)
        await bot.guarded(interaction, work)


def result_view(
    job_id: int,
    *,
    images: int = 0,
    vary: bool = True,
    upscale: bool = False,
    remix: bool = False,
) -> discord.ui.View:
    """Reroll, Delete and Remix (models that draw from a picture); V1..Vn (one per posted
    picture) on the next row, U1..Un (when an upscaler is set up) on the row after. Labelled
    in the current locale."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(job_id))
    view.add_item(DeleteButton(job_id))
    if remix and images:
        view.add_item(RemixButton(job_id, min(images, 9)))
    for i in range(min(images, 5) if vary else 0):
        view.add_item(VaryButton(job_id, i))
    for i in range(min(images, 5) if upscale else 0):
        view.add_item(UpscaleButton(job_id, i))
    return view


def cell_view(cell_id: int) -> discord.ui.View:
    """Under a comparison's cell opened privately: reroll that cell."""
    view = discord.ui.View(timeout=None)
    view.add_item(RerollButton(cell_id))
    return view


class CellMenu(
    InMemberLocale,
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=r"easel:cells:(?P<job>\d+)",
):
    """ "Open a cell" under a comparison grid: shows the chosen cell privately, full size."""

    def __init__(self, compare_id: int, options: list[discord.SelectOption] | None = None) -> None:
        super().__init__(
            discord.ui.Select(
                custom_id=f"easel:cells:{compare_id}",
                placeholder=_("Open a cell"),
                options=options or [discord.SelectOption(label="-", value="0")],
            )
        )
        self.compare_id = compare_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> CellMenu:
        options = list(getattr(item, "options", []) or [])
        return cls(int(match["job"]), options)

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: Easel = interaction.client  # type: ignore[assignment]
        data: Any = interaction.data or {}
        values = list(self.item.values) or list(data.get("values", []))
        if not values or not str(values[0]).isdigit():
            await interaction.response.send_message(_("Pick a cell from the menu."), ephemeral=True)
            return
        await bot.guarded(
            interaction, bot.jobs.open_cell(interaction, self.compare_id, int(values[0]))
        )


def comparison_view(
    compare_id: int, comparison: Comparison, cell_ids: list[int], *, drawn: set[int]
) -> discord.ui.View:
    """Under a grid: the cell menu (its drawn cells), Reroll (the whole grid, new seed), Delete."""
    view = discord.ui.View(timeout=None)
    options = []
    for cell in comparison.cells():
        if cell.index not in drawn:
            continue
        label = ", ".join(localize(label) for label in comparison.cell_labels(cell))
        options.append(
            discord.SelectOption(
                label=shorten(label, 100) or _("Cell {cell}", cell=cell.index + 1),
                value=str(cell_ids[cell.index]),
                description=_("Job #{job}", job=cell_ids[cell.index]),
            )
        )
    if options:
        view.add_item(CellMenu(compare_id, options[:25]))
    view.add_item(RerollButton(compare_id))
    view.add_item(DeleteButton(compare_id))
    return view


PageLoader = Callable[[int | None], Awaitable[list[JobRecord]]]

# Totals are counted this far and no further: "1000+ job(s)". A search for a common word in a
# busy server matches hundreds of thousands of jobs, and counting them all costs as much as
# reading them.
COUNT_CAP = 1000


class HistoryPages(discord.ui.View):
    """Newest-first pages of jobs with Prev/Next, for the member who asked (ephemeral).

    ``load(before)`` returns up to PAGE_SIZE + 1 jobs with ids below ``before`` (None: the
    newest): the extra one only tells that a next page exists. ``total`` is how many jobs there
    are, counted up to COUNT_CAP + 1 (more shows as "1000+"), or None when not counted.
    """

    def __init__(
        self,
        owner_id: int,
        title: str,
        load: PageLoader,
        *,
        total: int | None = None,
        show_requester: bool = False,
    ) -> None:
        super().__init__(timeout=600)
        self.show_requester = show_requester
        self.owner_id = owner_id
        self.title = title
        self.total = total
        self.load = load
        # cursors[i] is the "before" id of page i (None: the newest page); keyset paging keeps
        # pages stable while new jobs arrive.
        self.cursors: list[int | None] = [None]
        self.page = 0
        self.records: list[JobRecord] = []
        self.has_more = False
        # The decorators' labels are English: the pages are in the member's locale.
        self.previous.label = _("Prev")
        self.next.label = _("Next")

    async def fetch(self) -> None:
        rows = await self.load(self.cursors[self.page])
        self.records = rows[:PAGE_SIZE]
        self.has_more = len(rows) > PAGE_SIZE
        self.previous.disabled = self.page == 0
        self.next.disabled = not self.has_more

    def footer(self) -> str:
        page = self.page + 1
        if self.total is None:
            return _("Page {page}", page=page)
        if self.total > COUNT_CAP:
            return _("Page {page} · {count}+ jobs", page=page, count=COUNT_CAP)
        pages = max(1, -(-self.total // PAGE_SIZE), self.page + 1)
        return ngettext(
            "Page {page} of {pages} · {n} job",
            "Page {page} of {pages} · {n} jobs",
            self.total,
            page=page,
            pages=pages,
        )

    def embed(self) -> discord.Embed:
        embed = discord.Embed(title=self.title, colour=EMBED_COLOUR)
        if not self.records:
            embed.description = _("Nothing here yet.")
        else:
            embed.description = "\n\n".join(
                describe_record(r, show_requester=self.show_requester) for r in self.records
            )
        embed.set_footer(text=self.footer())
        return embed

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        i18n.enter(interaction)
        if interaction.user.id != self.owner_id:
            await interaction.response.send_message(
                _("These pages belong to someone else; run the command yourself."), ephemeral=True
            )
            return False
        return True

    async def _turn(self, interaction: discord.Interaction, delta: int) -> None:
        if delta > 0 and self.records and len(self.cursors) <= self.page + 1:
            self.cursors.append(self.records[-1].id)
        self.page = max(0, self.page + delta)
        await self.fetch()
        await interaction.response.edit_message(embed=self.embed(), view=self)

    @discord.ui.button(label="Prev", emoji="◀️", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._turn(interaction, -1)

    @discord.ui.button(label="Next", emoji="▶️", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self._turn(interaction, +1)
