"""/history: your own jobs in this server, newest first, in pages."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.i18n import _
from bot.store import JobRecord
from bot.text import plain
from bot.views import COUNT_CAP, PAGE_SIZE, HistoryPages

if TYPE_CHECKING:
    from bot.protocols import Easel


async def show_history(
    bot: Easel,
    interaction: discord.Interaction,
    *,
    user_id: int | None,
    query: str | None,
    title: str,
) -> None:
    """Send the first page of a history listing as an ephemeral message with Prev/Next.

    Listings of everyone's jobs (``user_id`` None) say who asked for each. ``title`` is in the
    member's language already; the pages are theirs only, so it stays right on every page."""
    guild_id = interaction.guild_id
    # Answered first: the reads below must not push the answer past Discord's 3 seconds.
    await interaction.response.defer(ephemeral=True, thinking=True)

    async def load(before: int | None) -> list[JobRecord]:
        # One more than a page: whether it comes tells whether there is a next page.
        return await bot.store.history(
            guild_id, user_id=user_id, query=query, before=before, limit=PAGE_SIZE + 1
        )

    pages = HistoryPages(interaction.user.id, title, load, show_requester=user_id is None)
    await pages.fetch()
    if pages.has_more:
        # Counted only as far as the footer shows ("1000+"): a common word in a busy server
        # matches hundreds of thousands of jobs.
        pages.total = await bot.store.count_history(
            guild_id, user_id=user_id, query=query, at_most=COUNT_CAP + 1
        )
    else:
        pages.total = len(pages.records)
    await interaction.followup.send(embed=pages.embed(), view=pages, ephemeral=True)


class History(commands.Cog):
    def __init__(self, bot: Easel) -> None:
        self.bot = bot

    @app_commands.command(name="history", description=locale_str("Your drawings in this server."))
    @app_commands.rename(query=locale_str("query"))
    @app_commands.describe(query=locale_str("Only prompts containing this text"))
    @app_commands.guild_only()
    async def history(self, interaction: discord.Interaction, query: str | None = None) -> None:
        if query:
            title = _("Your drawings matching “{query}”", query=plain(query))
        else:
            title = _("Your drawings")
        await show_history(
            self.bot, interaction, user_id=interaction.user.id, query=query, title=title
        )


async def setup(bot: Easel) -> None:
    await bot.add_cog(History(bot))
