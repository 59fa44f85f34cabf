"""What a server allows: its /mod settings laid over the bot-wide defaults, and the checks that
run on every request before it is queued."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from bot.errors import InvalidSetting, OverServerLimit
from bot.settings import Settings
from bot.store import GuildSettings
from pipeline import messages
from pipeline.compare import MAX_CELLS
from pipeline.engine import Capabilities
from pipeline.messages import N_, Message
from pipeline.request import DrawRequest
from pipeline.samplers import SAMPLERS, sampler_label

# Messages: translated where they are shown (``bot.i18n.localize``).
NSFW_LABELS = {
    "filter": Message(N_("flagged images are never posted")),
    "age_restricted": Message(N_("flagged images are posted in age-restricted channels only")),
}


@dataclass(frozen=True)
class Policy:
    """The effective limits and defaults for one server (or for DMs, which have no settings)."""

    stored: GuildSettings
    max_steps: int
    max_side: int
    max_count: int
    max_queued_per_user: int
    cooldown_s: int
    default_steps: int
    # None: the model's own default (the engine fills it in).
    default_sampler: str | None
    default_width: int | None
    default_height: int | None
    nsfw: str
    max_compare_cells: int
    # The model these limits are for (their defaults come from its capabilities).
    model: str = ""
    # The models members may pick here, in MODELS order, and the one drawn when they don't.
    models: tuple[str, ...] = ()
    default_model: str = ""

    @classmethod
    def build(
        cls,
        stored: GuildSettings,
        caps: Capabilities,
        settings: Settings,
        *,
        models: Sequence[str] = (),
        bot_default: str | None = None,
    ) -> Policy:
        """The policy for drawing with the model ``caps`` describes; ``models``: every model
        the bot has (default: that one), ``bot_default``: the bot's default among them."""
        names = tuple(models) or (caps.model,)
        allowed = allowed_models(stored, names, bot_default or names[0])
        # A server's limits were checked against its default model: another model of the bot
        # may allow less, and its own limits hold too.
        max_steps = min(stored.max_steps or caps.max_steps, caps.max_steps)
        max_side = min(stored.max_side or caps.max_side, caps.max_side)
        return cls(
            model=caps.model,
            models=allowed,
            default_model=server_model(stored, allowed, bot_default or names[0]),
            stored=stored,
            max_steps=max_steps,
            max_side=max_side,
            max_count=min(stored.max_count or caps.max_count, caps.max_count),
            max_queued_per_user=stored.max_queued_per_user or settings.max_queued_per_user,
            cooldown_s=stored.cooldown_s or 0,
            # A server that lowers the max steps below the bot's default must not see a request
            # refused for an option its member left out.
            default_steps=stored.default_steps or min(settings.default_steps, max_steps),
            # A server default this model lacks gives way to the model's own (the server may
            # have set it for another of the bot's models).
            default_sampler=stored.default_sampler
            if stored.default_sampler in caps.samplers
            else None,
            default_width=None if caps.default_width <= max_side else max_side,
            default_height=None if caps.default_height <= max_side else max_side,
            nsfw=stored.nsfw or "filter",
            max_compare_cells=stored.max_compare_cells or MAX_CELLS,
        )

    def check_model(self, model: str | None) -> None:
        """Raise ``OverServerLimit`` if members may not draw with ``model`` here."""
        if model is None or model in self.models:
            return
        raise OverServerLimit(
            N_("{model} isn't available in this server; pick one of: {names}."),
            model=model,
            names=", ".join(self.models),
        )

    def check(self, request: DrawRequest) -> None:
        """Raise ``OverServerLimit`` saying what to change if a resolved request is over a limit.

        An upscale redraws a picture that passed these checks when it was drawn; what it costs
        is the operator's choice (UPSCALER, UPSCALE_STEPS), not a member's."""
        if request.task == "upscale":
            return
        self.check_model(request.model)
        if request.steps > self.max_steps:
            raise OverServerLimit(
                N_("This server allows at most {limit} steps; pick {limit} or fewer."),
                limit=self.max_steps,
            )
        sides = (
            (
                N_(
                    "This server allows pictures up to {limit}x{limit} pixels; pick a width of "
                    "{limit} or less."
                ),
                request.width,
            ),
            (
                N_(
                    "This server allows pictures up to {limit}x{limit} pixels; pick a height "
                    "of {limit} or less."
                ),
                request.height,
            ),
        )
        for message, side in sides:
            if side is not None and side > self.max_side:
                raise OverServerLimit(message, limit=self.max_side)
        if request.count > self.max_count:
            raise OverServerLimit(
                messages.ngettext(
                    "This server allows at most {n} picture per drawing; ask for {n} or fewer.",
                    "This server allows at most {n} pictures per drawing; ask for {n} or fewer.",
                    self.max_count,
                )
            )

    def check_queue(self, mine: int) -> None:
        """Raise ``OverServerLimit`` if a member with ``mine`` jobs waiting can't add one."""
        if mine >= self.max_queued_per_user:
            raise OverServerLimit(
                messages.ngettext(
                    "This server allows {n} drawing per member waiting or in progress, and you "
                    "have {mine}. Wait for one to finish, or use /cancel.",
                    "This server allows {n} drawings per member waiting or in progress, and you "
                    "have {mine}. Wait for one to finish, or use /cancel.",
                    self.max_queued_per_user,
                    mine=mine,
                )
            )


def allowed_models(
    stored: GuildSettings, names: Sequence[str], bot_default: str
) -> tuple[str, ...]:
    """The models members may pick in a server: its allow-list (in MODELS order, less any the
    bot no longer has), or every model. An allow-list left empty by models the operator
    removed allows the bot's default alone: never models its moderators did not allow."""
    if stored.allowed_models is None:
        return tuple(names)
    wanted = set(split_names(stored.allowed_models))
    return tuple(n for n in names if n in wanted) or (bot_default,)


def server_model(stored: GuildSettings, allowed: Sequence[str], bot_default: str) -> str:
    """The model a server draws with when its member picks none."""
    for candidate in (stored.default_model, bot_default):
        if candidate is not None and candidate in allowed:
            return candidate
    return allowed[0]


def typed_model(text: str | None) -> str | None:
    """A model's name as typed in an option: None if left out; MODELS names are lower case, so
    "SD15" is sd15. Blank text is refused (``InvalidSetting``), saying what to give."""
    if text is None:
        return None
    name = text.strip().lower()
    if not name:
        raise InvalidSetting(
            N_("Give a model's name (/models lists them), or leave the model option out.")
        )
    return name


def split_names(text: str) -> list[str]:
    """Model names typed as a list: "sd15, shapes" or "sd15 shapes"."""
    return [n for n in text.replace(",", " ").split() if n]


def without_removed_models(
    stored: GuildSettings, names: Sequence[str], bot_default: str
) -> GuildSettings:
    """The server's settings less the models the bot no longer has (removed from MODELS since
    they were saved): what drawing goes by already, and what a moderator's next change keeps
    (an allow-list left empty: the bot's default alone, as ``allowed_models`` says)."""
    default = stored.default_model if stored.default_model in names else None
    allowed = stored.allowed_models
    if allowed is not None:
        allowed = ", ".join(allowed_models(stored, names, bot_default))
    return replace(stored, default_model=default, allowed_models=allowed)


def validate_models(stored: GuildSettings, names: Sequence[str], bot_default: str) -> None:
    """Raise ``InvalidSetting`` if the server's default model or allow-list names a model the
    bot doesn't have, or leaves its default out."""
    unknown = [
        n
        for n in [stored.default_model or "", *split_names(stored.allowed_models or "")]
        if n and n not in names
    ]
    if unknown:
        raise InvalidSetting(
            N_("This bot has no model called {model}; pick one of: {names}."),
            model=unknown[0],
            names=", ".join(names),
        )
    if stored.allowed_models is not None and not split_names(stored.allowed_models):
        raise InvalidSetting(
            N_("Allow at least one model; to allow them all, reset the allowed models.")
        )
    allowed = allowed_models(stored, names, bot_default)
    if stored.default_model is not None and stored.default_model not in allowed:
        raise InvalidSetting(
            N_(
                "The default model {model} is not among the allowed models ({names}); allow "
                "it too, or pick another default."
            ),
            model=stored.default_model,
            names=", ".join(allowed),
        )


def validate_settings(stored: GuildSettings, caps: Capabilities, settings: Settings) -> None:
    """Raise ``InvalidSetting`` saying what to change if the model or the bot can't honour it
    (``caps``: the server's default model's)."""
    if stored.max_steps is not None and stored.max_steps > caps.max_steps:
        raise InvalidSetting(
            N_("The bot allows at most {limit} steps; pick a max steps of {limit} or fewer."),
            limit=caps.max_steps,
        )
    if stored.max_side is not None:
        problem = caps.side_problem(Message(N_("The max size")), stored.max_side)
        if problem:
            raise InvalidSetting(problem)
    if stored.max_count is not None and stored.max_count > caps.max_count:
        raise InvalidSetting(
            N_(
                "The model draws at most {limit} pictures at once; pick a max count of {limit} "
                "or fewer."
            ),
            limit=caps.max_count,
        )
    cap = settings.max_queued_per_user
    if stored.max_queued_per_user is not None and stored.max_queued_per_user > cap:
        raise InvalidSetting(
            N_(
                "The bot allows at most {limit} drawings per member waiting across all "
                "servers; pick a max queued of {limit} or fewer."
            ),
            limit=cap,
        )
    if stored.default_sampler is not None and stored.default_sampler not in caps.samplers:
        names = ", ".join(SAMPLERS[s].label for s in caps.samplers)
        raise InvalidSetting(
            N_("{sampler} can't be used with {model}; pick one of: {names}."),
            sampler=sampler_label(stored.default_sampler),
            model=caps.model,
            names=names,
        )
    cells = stored.max_compare_cells
    if cells is not None and not 1 <= cells <= MAX_CELLS:
        raise InvalidSetting(
            N_("A comparison can have 1 to {max} cells; pick a number in that range."),
            max=MAX_CELLS,
        )
    max_steps = stored.max_steps or caps.max_steps
    if stored.default_steps is not None and stored.default_steps > max_steps:
        raise InvalidSetting(
            N_(
                "The default steps ({default}) can't be above the max steps ({max}); lower the "
                "default steps or raise the max steps."
            ),
            default=stored.default_steps,
            max=max_steps,
        )
