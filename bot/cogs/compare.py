"""/compare: the same prompt and seed under several settings, as one labelled grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.cogs.draw import OPTION_NAMES
from bot.defaults import resolve
from bot.model_menu import model_choices
from bot.policy import typed_model
from bot.replies import answer_privately
from pipeline.compare import build_comparison, parse_numbers, parse_replace, parse_samplers
from pipeline.errors import EaselError
from pipeline.request import MAX_SEED, DrawRequest, random_seed
from pipeline.samplers import SAMPLERS

if TYPE_CHECKING:
    from bot.protocols import Easel

# Discord's longest autocomplete choice name and value.
_CHOICE_MAX = 100


def sampler_suggestions(current: str, available: tuple[str, ...]) -> list[app_commands.Choice[str]]:
    """Complete the last item of a comma list of samplers with the model's samplers."""
    done, _comma, last = current.rpartition(",")
    prefix = f"{done.strip()}, " if done.strip() else ""
    chosen = {item.strip().lower() for item in done.split(",") if item.strip()}
    typed = last.strip().lower()
    choices = []
    for sid in available:
        label = SAMPLERS[sid].label
        if sid in chosen or label.lower() in chosen:
            continue
        if typed and typed not in sid and typed not in label.lower():
            continue
        name, value = prefix + label, prefix + sid
        if len(name) <= _CHOICE_MAX and len(value) <= _CHOICE_MAX:
            choices.append(app_commands.Choice(name=name, value=value))
    return choices[:25]


class Compare(commands.Cog):
    def __init__(self, bot: Easel) -> None:
        self.bot = bot

    @app_commands.command(
        name="compare",
        description=locale_str("Draw one prompt under several settings, side by side."),
    )
    @app_commands.rename(**OPTION_NAMES, replace=locale_str("replace"))
    @app_commands.describe(
        prompt=locale_str("What to draw; every cell draws it with the same seed"),
        negative_prompt=locale_str("What to keep out of the picture (models that support it)"),
        steps=locale_str('One value or several: "20, 50", "10-50 (+10)" or "10-50 [5]"'),
        guidance=locale_str('One value or several: "2, 6", "2-8 (+2)" or "2-8 [4]"'),
        eta=locale_str('One value or several (DDIM only): "0.3, 0.8" or "0-1 [3]"'),
        sampler=locale_str("One sampler or a comma list of them: ddim, DPM++ 2M"),
        replace=locale_str(
            'Words of the prompt, then what to put instead: "painting, photo, sketch"'
        ),
        seed=locale_str("The one seed every cell uses; random if left out"),
        width=locale_str("Width in pixels, a multiple of 8"),
        height=locale_str("Height in pixels, a multiple of 8"),
        model=locale_str("Which model draws every cell (/models lists them)"),
    )
    async def compare(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 6000],
        negative_prompt: app_commands.Range[str, 1, 6000] | None = None,
        steps: app_commands.Range[str, 1, 200] | None = None,
        guidance: app_commands.Range[str, 1, 200] | None = None,
        eta: app_commands.Range[str, 1, 200] | None = None,
        sampler: app_commands.Range[str, 1, 300] | None = None,
        replace: app_commands.Range[str, 1, 2000] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        width: app_commands.Range[int, 64, 2048] | None = None,
        height: app_commands.Range[int, 64, 2048] | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        settings = self.bot.settings
        try:
            model = typed_model(model)
        except EaselError as refusal:
            await answer_privately(interaction, refusal)
            return
        policy = await self.bot.jobs.policy(interaction.guild_id, model)
        caps = self.bot.models.capabilities(policy.model)
        # What the axes leave out comes from where /draw takes it: the member's /settings, else
        # this server's, else the bot's. One picture per cell, whatever the member's count.
        here = interaction.guild_id
        banned = await self.bot.store.banned_words(here) if here is not None else []
        mine = self.bot.store.user_settings(interaction.user.id)
        typed = {"width": width, "height": height, "count": 1, "negative_prompt": negative_prompt}
        used = resolve(typed, mine, policy, settings, caps, banned)
        base = DrawRequest(
            prompt=prompt,
            negative_prompt=used.value("negative_prompt"),
            steps=used.value("steps"),
            guidance=used.value("guidance"),
            eta=0.0,
            sampler=used.value("sampler"),
            # One seed for every cell, so they differ only by what the axes change.
            seed=random_seed() if seed is None else seed,
            width=used.value("width"),
            height=used.value("height"),
            # A model not allowed here is refused with the rest of the checks.
            model=model or policy.model,
        )
        try:
            comparison = build_comparison(
                base,
                replace=parse_replace(replace, prompt) if replace else None,
                steps=[int(v) for v in parse_numbers(steps, option="steps", integer=True)]
                if steps
                else None,
                guidance=(
                    parse_numbers(guidance, option="guidance", integer=False) if guidance else None
                ),
                eta=parse_numbers(eta, option="eta", integer=False) if eta else None,
                samplers=parse_samplers(sampler, caps.samplers) if sampler else None,
                max_cells=policy.max_compare_cells,
            )
        except EaselError as refusal:
            await answer_privately(interaction, str(refusal))
            return
        await self.bot.jobs.compare(interaction, comparison, notes=used.notes)

    @compare.autocomplete("sampler")
    async def sampler_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        namespace = interaction.namespace
        typed = getattr(namespace, "model", None)
        model = typed.strip().lower() if isinstance(typed, str) else None
        policy = await self.bot.jobs.policy(interaction.guild_id, model)
        return sampler_suggestions(current, self.bot.models.capabilities(policy.model).samplers)

    @compare.autocomplete("model")
    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await model_choices(self.bot, interaction.guild_id, current)


async def setup(bot: Easel) -> None:
    await bot.add_cog(Compare(bot))
