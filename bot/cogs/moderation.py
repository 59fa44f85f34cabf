"""/mod: tools for members with Manage Messages (hidden from others, and checked by the bot)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.history import show_history
from bot.wordfilter import normalise

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

    banword = app_commands.Group(
        name="banword", description="Words this server doesn't allow in prompts", parent=mod
    )

    @banword.command(name="add", description="Refuse prompts containing this word or phrase.")
    @app_commands.describe(word="Caught however it is spelled: N.S.F.W, ｎｓｆｗ, n5fw...")
    async def banword_add(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]
    ) -> None:
        normal = normalise(word)
        if not normal:
            await interaction.response.send_message(
                "That has no letters or digits to match; give a word.", ephemeral=True
            )
            return
        assert interaction.guild_id is not None
        added = await self.bot.store.add_banned_word(
            interaction.guild_id, normal, interaction.user.id
        )
        text = (
            f"Prompts with “{normal}” are now refused."
            if added
            else f"“{normal}” was already banned."
        )
        await interaction.response.send_message(text, ephemeral=True)

    @banword.command(name="remove", description="Allow this word again.")
    async def banword_remove(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]
    ) -> None:
        normal = normalise(word)
        assert interaction.guild_id is not None
        removed = await self.bot.store.remove_banned_word(interaction.guild_id, normal)
        text = f"“{normal}” is allowed again." if removed else f"“{normal}” wasn't banned."
        await interaction.response.send_message(text, ephemeral=True)

    @banword.command(name="list", description="The words this server doesn't allow.")
    async def banword_list(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        words = await self.bot.store.banned_words(interaction.guild_id)
        text = ("Banned: " + ", ".join(f"“{w}”" for w in words)) if words else "No banned words."
        await interaction.response.send_message(text[:2000], ephemeral=True)

    @mod.command(name="pause", description="Start no new drawings; the queue is kept.")
    async def pause(self, interaction: discord.Interaction) -> None:
        _require_manage_server(interaction)
        self.bot.executor.pause()
        await interaction.response.send_message(
            "Paused: the drawing in progress finishes, nothing new starts, the queue is kept. "
            "Use /mod resume to continue.",
            ephemeral=True,
        )

    @mod.command(name="resume", description="Start drawing the queue again.")
    async def resume(self, interaction: discord.Interaction) -> None:
        _require_manage_server(interaction)
        self.bot.executor.resume()
        waiting = self.bot.executor.pending()
        await interaction.response.send_message(
            f"Resumed; {waiting} drawing(s) waiting.", ephemeral=True
        )


def _require_manage_server(interaction: discord.Interaction) -> None:
    # Pausing stops the bot's only GPU for everyone: a bigger step than moderating messages.
    if not interaction.permissions.manage_guild:
        raise app_commands.MissingPermissions(["manage_guild"])


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Moderation(bot))
