"""/forget: a user takes all their data back, after confirming."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.i18n import _, enter, ngettext
from bot.text import sentences

if TYPE_CHECKING:
    from bot.protocols import Easel


class ConfirmForget(discord.ui.View):
    """Yes/No buttons for the one user who asked; nothing happens until they click Yes.

    Made while the member's language is current: the labels are theirs."""

    def __init__(self, bot: Easel, user_id: int) -> None:
        super().__init__(timeout=120)
        self.bot = bot
        self.user_id = user_id
        self.confirm.label = _("Yes, delete everything")
        self.cancel.label = _("No, keep them")

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        enter(interaction)  # what the click answers is in the clicker's language
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Yes, delete everything", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content=_("Deleting…"), view=None)
        # Queued and running drawings are stopped first, and results on their way are dropped,
        # so nothing of this user is posted or stored after the deletion.
        count = await self.bot.jobs.forget(self.user_id)
        await interaction.edit_original_response(
            content=sentences(
                ngettext(
                    "Done: {n} drawing and its stored images are deleted from this bot, in "
                    "every server, and anything you had queued was stopped.",
                    "Done: {n} drawings and their stored images are deleted from this bot, in "
                    "every server, and anything you had queued was stopped.",
                    count,
                ),
                _("Pictures already posted in channels stay until someone deletes those messages."),
            ),
        )

    @discord.ui.button(label="No, keep them", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content=_("Nothing was deleted."), view=None)


class Privacy(commands.Cog):
    def __init__(self, bot: Easel) -> None:
        self.bot = bot

    @app_commands.command(
        name="forget",
        description=locale_str("Delete all your drawings and history from this bot."),
    )
    async def forget(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            _(
                "This deletes every drawing you made with this bot, in every server: the "
                "history, the settings and the stored images, and stops anything you have "
                "queued. It can't be undone. Continue?"
            ),
            view=ConfirmForget(self.bot, interaction.user.id),
            ephemeral=True,
        )


async def setup(bot: Easel) -> None:
    await bot.add_cog(Privacy(bot))
