"""Where each /draw setting comes from: the option typed, else the member's /settings, else the
server's default (/mod settings), else the bot's; the server's limits apply to all of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bot.policy import Policy
from bot.settings import Settings
from bot.store import UserSettings
from bot.wordfilter import find_banned
from pipeline.engine import Capabilities
from pipeline.messages import N_, Message
from pipeline.samplers import sampler_label

Source = Literal["typed", "you", "server", "bot"]
# The /draw options a member can give a default of their own, in the order /settings shows them.
DEFAULTABLE = ("sampler", "steps", "guidance", "width", "height", "count", "negative_prompt")


@dataclass(frozen=True)
class Chosen:
    """One setting's value for a drawing and who chose it."""

    value: Any
    source: Source


@dataclass(frozen=True)
class Defaults:
    """The settings a /draw uses for the options its member left out, and why."""

    chosen: dict[str, Chosen]
    # Said on the result (in the server's language, so kept as messages until then): a member's
    # default the server's limits (or the model) did not allow.
    notes: tuple[str, ...] = ()

    def value(self, name: str) -> Any:
        return self.chosen[name].value


def server_default(name: str, policy: Policy, settings: Settings) -> Chosen:
    """What a drawing uses for ``name`` when neither the option nor the member says."""
    stored = policy.stored
    if name == "sampler":
        return Chosen(policy.default_sampler, "server" if stored.default_sampler else "bot")
    if name == "steps":
        return Chosen(policy.default_steps, "server" if stored.default_steps else "bot")
    if name == "guidance":
        return Chosen(settings.default_guidance, "bot")
    if name in ("width", "height"):
        # The model's own size, unless it is over this server's largest.
        value = policy.default_width if name == "width" else policy.default_height
        return Chosen(value, "server" if value is not None else "bot")
    if name == "count":
        return Chosen(1, "bot")
    if name == "negative_prompt":
        return Chosen("", "bot")
    raise KeyError(name)


def resolve(
    typed: dict[str, Any],
    mine: UserSettings,
    policy: Policy,
    settings: Settings,
    caps: Capabilities,
    banned: list[str] | None = None,
) -> Defaults:
    """Each defaultable /draw setting: typed > the member's > the server's > the bot's.

    A member's default that this server's limits or the loaded model do not allow (set in
    another server, or before a moderator lowered a limit) is brought within them, with a note.
    """
    chosen: dict[str, Chosen] = {}
    notes: list[str] = []

    def say(note: str | None) -> None:
        if note and note not in notes:  # width and height over a limit say it once
            notes.append(note)

    for name in DEFAULTABLE:
        if typed.get(name) is not None:
            chosen[name] = Chosen(typed[name], "typed")
            continue
        value = getattr(mine, name)
        if value is None:
            chosen[name] = server_default(name, policy, settings)
            continue
        fitted, note = _fit(name, value, policy, caps)
        say(note)
        chosen[name] = (
            Chosen(fitted, "you") if fitted is not None else server_default(name, policy, settings)
        )
    # A default that only makes sense with others: it gives way to what was typed or to what
    # the model can do, rather than refusing every /draw.
    if chosen["guidance"].source == "you" and not caps.guidance:
        chosen["guidance"] = server_default("guidance", policy, settings)
        say(Message(N_("This model takes no guidance; your default guidance was not used.")))
    if chosen["negative_prompt"].source == "you":
        if banned and find_banned(chosen["negative_prompt"].value, banned) is not None:
            # Set elsewhere, before or without this server's ban: drawn without it.
            say(
                Message(
                    N_(
                        "Your default negative prompt has a word this server doesn't "
                        "allow; drew without it."
                    )
                )
            )
            chosen["negative_prompt"] = server_default("negative_prompt", policy, settings)
        elif not caps.negative_prompt:
            say(Message(N_("This model can't use a negative prompt; drew without your default.")))
            chosen["negative_prompt"] = server_default("negative_prompt", policy, settings)
        elif chosen["guidance"].value <= 1:
            say(
                Message(
                    N_(
                        "A negative prompt needs guidance above 1; drew without your default "
                        "negative prompt."
                    )
                )
            )
            chosen["negative_prompt"] = server_default("negative_prompt", policy, settings)
    return Defaults(chosen, tuple(notes))


def _fit(name: str, value: Any, policy: Policy, caps: Capabilities) -> tuple[Any, str | None]:
    """``value`` within this server's limits and the model's (None: unusable here), and a note."""
    if name == "steps" and value > policy.max_steps:
        return policy.max_steps, Message(
            N_("Your default of {value} steps is over the limit here; drew {limit} steps."),
            value=value,
            limit=policy.max_steps,
        )
    if name == "count" and value > policy.max_count:
        return policy.max_count, Message(
            N_("Your default of {value} pictures is over the limit here; drew {limit}."),
            value=value,
            limit=policy.max_count,
        )
    if name in ("width", "height"):
        if value % caps.size_multiple or value < caps.min_side:
            return None, Message(
                N_("Your default size can't be drawn by this model; drew its own size instead.")
            )
        if value > policy.max_side:
            return policy.max_side, Message(
                N_(
                    "Your default size is over the limit here of {limit} pixels a side; "
                    "drew {limit}."
                ),
                limit=policy.max_side,
            )
    if name == "sampler" and value not in caps.samplers:
        return None, Message(
            N_(
                "Your default sampler {sampler} can't be used with this model; drew with the "
                "default one."
            ),
            sampler=sampler_label(value),
        )
    return value, None
