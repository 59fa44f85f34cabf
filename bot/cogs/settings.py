"""/settings show|set|reset: a member's own /draw defaults and reply language, always private."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.cogs.draw import OPTION_NAMES, SAMPLER_CHOICES
from bot.defaults import DEFAULTABLE, Chosen, resolve
from bot.i18n import N_, _, enter, localize, private_locale
from bot.render import shorten
from bot.replies import answer_privately
from bot.store import UserSettings
from bot.text import plain
from bot.wordfilter import find_banned
from pipeline.errors import EaselError, PromptRefused
from pipeline.request import DrawRequest
from pipeline.samplers import sampler_label

if TYPE_CHECKING:
    from bot.protocols import Easel

# Discord locales with a catalogue, and how each is named in its own language.
LANGUAGES = {"en-US": "English", "zh-CN": "中文（简体）"}
AUTO = "auto"
# Every setting /settings knows, in the order it shows them, with its label.
LABELS = {
    "sampler": N_("Sampler"),
    "steps": N_("Steps"),
    "guidance": N_("Guidance"),
    "width": N_("Width"),
    "height": N_("Height"),
    "count": N_("Pictures per drawing"),
    "negative_prompt": N_("Negative prompt"),
    "spoiler": N_("Results as spoilers"),
    "language": N_("Reply language"),
}
SOURCES = {
    "you": N_("your setting"),
    "server": N_("this server's default"),
    "bot": N_("the bot's default"),
}


class Preferences(commands.Cog):
    def __init__(self, bot: Easel) -> None:
        self.bot = bot

    group = app_commands.Group(
        name="settings",
        description=locale_str("Your own defaults for /draw, and your reply language."),
    )

    @group.command(
        name="show", description=locale_str("What /draw uses when you leave an option out.")
    )
    async def show(self, interaction: discord.Interaction) -> None:
        await answer_privately(interaction, await self._describe(interaction))

    @group.command(name="set", description=locale_str("Set your own defaults for /draw."))
    @app_commands.rename(
        sampler=OPTION_NAMES["sampler"],
        steps=OPTION_NAMES["steps"],
        guidance=OPTION_NAMES["guidance"],
        width=OPTION_NAMES["width"],
        height=OPTION_NAMES["height"],
        count=locale_str("count"),
        negative_prompt=OPTION_NAMES["negative_prompt"],
        spoiler=locale_str("spoiler"),
        language=locale_str("language"),
    )
    @app_commands.describe(
        sampler=locale_str("Your default sampling method"),
        steps=locale_str("Your default number of denoising steps"),
        guidance=locale_str("Your default guidance (0-30)"),
        width=locale_str("Your default width in pixels, a multiple of 8"),
        height=locale_str("Your default height in pixels, a multiple of 8"),
        count=locale_str("How many pictures each /draw makes (1-4)"),
        negative_prompt=locale_str("What to keep out of every picture (models that support it)"),
        spoiler=locale_str("Post your results as spoilers, hidden until clicked"),
        language=locale_str("The language the bot answers you in"),
    )
    @app_commands.choices(
        sampler=SAMPLER_CHOICES,
        language=[
            app_commands.Choice(name=locale_str("Discord's language"), value=AUTO),
            *(app_commands.Choice(name=name, value=code) for code, name in LANGUAGES.items()),
        ],
    )
    async def set(
        self,
        interaction: discord.Interaction,
        sampler: app_commands.Choice[str] | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        width: app_commands.Range[int, 64, 2048] | None = None,
        height: app_commands.Range[int, 64, 2048] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        negative_prompt: app_commands.Range[str, 1, 2000] | None = None,
        spoiler: bool | None = None,
        language: app_commands.Choice[str] | None = None,
    ) -> None:
        changes: dict[str, Any] = {
            "sampler": sampler.value if sampler else None,
            "steps": steps,
            "guidance": guidance,
            "width": width,
            "height": height,
            "count": count,
            # Blank is no negative prompt at all, as /draw treats it.
            "negative_prompt": (negative_prompt or "").strip() or None,
            "spoiler": spoiler,
        }
        changes = {name: value for name, value in changes.items() if value is not None}
        if language is not None:
            changes["language"] = None if language.value == AUTO else language.value
        if not changes:
            await answer_privately(
                interaction,
                _("Nothing changed: pick at least one option to set, or use /settings reset."),
            )
            return
        try:
            await self._check(interaction, changes)
        except EaselError as refusal:
            await answer_privately(interaction, refusal)
            return
        await self.bot.store.update_user_settings(interaction.user.id, **changes)
        if "language" in changes:
            enter(interaction)  # answer in the language just chosen
        described = await self._describe(interaction)
        await answer_privately(interaction, _("Saved.") + "\n\n" + described)

    @group.command(
        name="reset", description=locale_str("Forget one of your defaults, or all of them.")
    )
    @app_commands.rename(setting=locale_str("setting"))
    @app_commands.describe(setting=locale_str("The one to forget; all of them if left out"))
    @app_commands.choices(
        setting=[
            app_commands.Choice(name=locale_str(label), value=name)
            for name, label in LABELS.items()
        ]
    )
    async def reset(
        self, interaction: discord.Interaction, setting: app_commands.Choice[str] | None = None
    ) -> None:
        store = self.bot.store
        if setting is None:
            await store.set_user_settings(interaction.user.id, UserSettings())
        else:
            await store.update_user_settings(interaction.user.id, **{setting.value: None})
        enter(interaction)  # a reset language answers in the client's language again
        done = (
            _("All your settings are reset.")
            if setting is None
            else _("{setting} is reset.", setting=_(LABELS[setting.value]))
        )
        await answer_privately(interaction, done + "\n\n" + await self._describe(interaction))

    async def _check(self, interaction: discord.Interaction, changes: dict[str, Any]) -> None:
        """Refuse a default this server's limits, its banned words or the loaded model don't
        allow, saying why: judged together with the member's other defaults, as a /draw with no
        options would use them all."""
        typed = {k: v for k, v in changes.items() if k in DEFAULTABLE}
        if not typed:
            return
        bot = self.bot
        others = replace(bot.store.user_settings(interaction.user.id), **dict.fromkeys(changes))
        default = await bot.jobs.policy(interaction.guild_id)
        # Good for any model the member may pick here (the server's default first): a sampler
        # only another model runs is a fair default, and /draw gives way where it can't apply.
        refusal: EaselError | None = None
        for model in sorted(default.models, key=lambda m: m != default.model):
            policy = await bot.jobs.policy(interaction.guild_id, model)
            used = resolve(typed, others, policy, bot.settings, bot.models.capabilities(model))
            probe = DrawRequest(
                prompt="settings", model=model, **{n: used.value(n) for n in DEFAULTABLE}
            )
            try:
                bot.models.validate(probe)
                policy.check(probe)
            except EaselError as exc:
                refusal = refusal or exc
                continue
            refusal = None
            break
        if refusal is not None:
            raise refusal
        negative = typed.get("negative_prompt")
        if negative and interaction.guild_id is not None:
            banned = await bot.store.banned_words(interaction.guild_id)
            word = find_banned(negative, banned) if banned else None
            if word is not None:
                raise PromptRefused(
                    N_(
                        "This server doesn't allow “{word}” in prompts, so your default negative "
                        "prompt was not saved."
                    ),
                    word=plain(word),
                )

    async def _describe(self, interaction: discord.Interaction) -> str:
        """Every setting's value for this member here, and where it comes from."""
        bot = self.bot
        mine = bot.store.user_settings(interaction.user.id)
        policy = await bot.jobs.policy(interaction.guild_id)
        caps = bot.models.capabilities(policy.model)
        here = interaction.guild_id
        banned = await bot.store.banned_words(here) if here is not None else []
        used = resolve({}, mine, policy, bot.settings, caps, banned)
        lines = [
            _("**Your settings** (a /draw option you type always wins over these):"),
        ]
        lines.extend(self._line(name, used.chosen[name], caps) for name in DEFAULTABLE)
        spoiler_source = "you" if mine.spoiler is not None else "bot"
        lines.append(
            _(
                "{label}: {value} ({source})",
                label=_(LABELS["spoiler"]),
                value=_("on") if mine.spoiler else _("off"),
                source=_(SOURCES[spoiler_source]),
            )
        )
        if mine.language is not None:
            language = LANGUAGES.get(mine.language, mine.language)
            source = _(SOURCES["you"])
        else:
            language = LANGUAGES[private_locale(interaction)]
            source = _("your Discord's language")
        lines.append(
            _(
                "{label}: {value} ({source})",
                label=_(LABELS["language"]),
                value=language,
                source=source,
            )
        )
        if used.notes:
            lines.append("")
            lines.extend("⚠️ " + localize(note) for note in used.notes)
        if mine == UserSettings():
            lines.append("")
            lines.append(_("Change them with /settings set; /settings reset forgets them."))
        return "\n".join(lines)

    @staticmethod
    def _line(name: str, chosen: Chosen, caps: Any) -> str:
        value = chosen.value
        if name == "sampler":
            shown = sampler_label(value or caps.default_sampler)
        elif name in ("width", "height") and value is None:
            side = caps.default_width if name == "width" else caps.default_height
            shown = _("{side} (the model's own)", side=side)
        elif name == "negative_prompt":
            shown = plain(shorten(value, 300)) if value else _("none")
        elif isinstance(value, float):
            shown = f"{value:g}"
        else:
            shown = str(value)
        return _(
            "{label}: {value} ({source})",
            label=_(LABELS[name]),
            value=shown,
            source=_(SOURCES[chosen.source]),
        )


async def setup(bot: Easel) -> None:
    await bot.add_cog(Preferences(bot))
