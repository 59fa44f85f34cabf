"""/models: the models a member may pick here, what each supports, and which are loaded."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.model_menu import describe_models
from bot.text import chunks

if TYPE_CHECKING:
    from bot.protocols import Easel


class Models(commands.Cog):
    def __init__(self, bot: Easel) -> None:
        self.bot = bot

    @app_commands.command(
        name="models",
        description=locale_str("The models you can draw with here, and what each supports."),
    )
    async def models(self, interaction: discord.Interaction) -> None:
        jobs, here = self.bot.jobs, interaction.guild_id
        allowed = (await jobs.policy(here)).models
        policies = [await jobs.policy(here, name) for name in allowed]
        parts = chunks(describe_models(self.bot.models, policies))
        await interaction.response.send_message(parts[0], ephemeral=True)
        for part in parts[1:]:
            await interaction.followup.send(part, ephemeral=True)


async def setup(bot: Easel) -> None:
    await bot.add_cog(Models(bot))
