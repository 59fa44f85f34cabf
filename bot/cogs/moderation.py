"""/mod: tools for members with Manage Messages (hidden from others, and checked by the bot)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.history import show_history

if TYPE_CHECKING:
    from bot.app import EaselBot


class ModGroup(app_commands.Group):
    """Discord hides the group from members without Manage Messages, but server admins can
    change that default, so every subcommand is also checked here."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        perms = interaction.permissions
        if not perms.manage_messages:
            raise app_commands.MissingPermissions(["manage_messages"])
        return True


class Moderation(commands.Cog):
    mod = ModGroup(
        name="mod",
        description="Moderator tools",
        guild_only=True,
        default_permissions=discord.Permissions(manage_messages=True),
    )

    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot

    @mod.command(name="history", description="Any member's drawings in this server.")
    @app_commands.describe(user="Only this member's drawings", query="Only prompts with this text")
    async def history(
        self,
        interaction: discord.Interaction,
        user: discord.Member | discord.User | None = None,
        query: str | None = None,
    ) -> None:
        who = f"{user.display_name}'s drawings" if user else "All drawings"
        title = who + (f" matching “{query}”" if query else "")
        await show_history(
            self.bot, interaction, user_id=user.id if user else None, query=query, title=title
        )


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Moderation(bot))
