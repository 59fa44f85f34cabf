"""The models a member may pick here: /draw's and /mod settings' autocomplete, and /models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from discord import app_commands

from bot.i18n import _, number
from bot.policy import Policy
from bot.settings import Settings
from bot.text import listing
from pipeline.samplers import sampler_label

if TYPE_CHECKING:
    from bot.protocols import Easel
    from pipeline.models import ModelSet

# Discord shows at most 25 autocomplete choices, each name up to 100 characters.
MAX_CHOICES = 25
MAX_CHOICE_NAME = 100


def default_source(settings: Settings) -> str:
    """Where the bot's default model is loaded from (no model loaded: ``python -m bot sync``)."""
    default = settings.default_model_name
    return next(s.source for s in settings.model_specs() if s.name == default)


def placement_label(models: ModelSet, name: str, *, short: bool = False) -> str:
    """Whether a model is ready to draw now, in the current locale (``short``: a word or two,
    for an autocomplete choice)."""
    placement = models.placement(name)
    if placement == "device":
        return _("loaded")
    if placement == "cpu":
        return _("in memory, quick to load")
    if short:
        return _("not loaded")
    return _("not loaded: the first drawing waits while it loads")


async def model_choices(
    bot: Easel, guild_id: int | None, current: str
) -> list[app_commands.Choice[str]]:
    """The models allowed here whose name contains what was typed, the default first."""
    policy = await bot.jobs.policy(guild_id)
    typed = current.strip().casefold()
    names = sorted(policy.models, key=lambda n: (n != policy.default_model, n))
    choices = []
    for name in names:
        if typed and typed not in name.casefold():
            continue
        notes = [placement_label(bot.models, name, short=True)]
        if name == policy.default_model:
            notes.insert(0, _("default"))
        label = f"{name} ({', '.join(notes)})"
        choices.append(app_commands.Choice(name=label[:MAX_CHOICE_NAME], value=name))
    return choices[:MAX_CHOICES]


def describe_models(models: ModelSet, policies: list[Policy]) -> str:
    """/models: each model allowed here (``policies``: this server's for each), what it
    supports within this server's limits, and whether it is loaded."""
    lines = [_("**Models you can pick with /draw model:**")]
    for policy in policies:
        name = policy.model
        caps = models.capabilities(name)
        header = f"**{name}** — {caps.pipeline_class}"
        if name == policy.default_model:
            header += " " + _("(the default here)")
        lines.append(header)
        lines.append(
            _(
                "• {state}. Size {width}x{height} (up to {max}x{max}, multiples of {multiple}); "
                "up to {steps} steps and {count} pictures at once.",
                state=placement_label(models, name),
                width=caps.default_width,
                height=caps.default_height,
                # The policy for this model: the server's limits within the model's own.
                max=policy.max_side,
                multiple=caps.size_multiple,
                steps=number(policy.max_steps),
                count=number(policy.max_count),
            )
        )
        yes, no = _("yes"), _("no")
        lines.append(
            _(
                "• Negative prompt: {negative}. Starting picture (image, Remix): {image}. "
                "Guidance: {guidance}.",
                negative=yes if caps.negative_prompt else no,
                image=yes if caps.image_input else no,
                guidance=yes if caps.guidance else no,
            )
        )
        lines.append(
            _(
                "• Samplers: {samplers} (default {default}).",
                samplers=listing([sampler_label(s) for s in caps.samplers]),
                default=sampler_label(caps.default_sampler),
            )
        )
    return "\n".join(lines)
