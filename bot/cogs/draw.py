"""/draw, /reroll, /cancel and /queue.

Languages (issue 18). Command names stay English in every client: /draw, /reroll, /cancel,
/queue (and /compare, /history, /forget, /mod with its subcommands). The README, the bot's own
answers ("/mod settings show lists them") and members helping each other across clients all
say /draw; a name that differed by client would make them disagree, and "/" plus a short
English word is what Chinese users of drawing bots type already.

Option names are translated (``prompt`` is 提示词, ``steps`` 步数, ``seed`` 种子 ...): Discord
allows Chinese names, they are the labels a zh-CN client shows and types in the composer, and
the terms are the ones Chinese users of Stable Diffusion tools know. What the bot receives is the
English name whatever the client shows, so nothing else changes. Kept English: ``eta`` (a
symbol, written so in Chinese tools too) and ``nsfw``. Answers that name an option use the name
the reader's language shows. Descriptions and choice labels are translated; sampler names are
proper names and stay as they are.

Every option name, description and choice label is a ``locale_str`` (extracted by ``make
messages``); ``bot.i18n.Translator`` gives Discord their zh-CN text when the tree syncs. Command
names are plain strings with no catalogue entry (discord.py asks the translator for them too:
tests/test_bot_i18n_commands.py checks that none comes back translated).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.defaults import resolve
from bot.i18n import N_, _, ngettext, number
from bot.model_menu import default_source, model_choices
from bot.policy import typed_model
from bot.replies import answer_privately
from bot.text import listing
from bot.uploads import BadUpload, read_upload
from bot.views import DEFAULT_REMIX_STRENGTH, VARY_STRONG
from pipeline.engine import DEFAULT_EXAMPLE_PROMPTS, example_prompts
from pipeline.errors import EaselError
from pipeline.fairqueue import QueueEntry
from pipeline.request import MAX_SEED, DrawRequest
from pipeline.samplers import SAMPLERS

if TYPE_CHECKING:
    from bot.protocols import Easel

# Sampler names are proper names (DDIM, Euler a, DPM++ 2M Karras): the same in every language.
SAMPLER_CHOICES = [app_commands.Choice(name=s.label, value=s.id) for s in SAMPLERS.values()]
# Discord refuses option descriptions longer than this.
MAX_DESCRIPTION = 100
PROMPT_HINT = N_("What to draw, e.g. {example}")
PROMPT_HINT_SHORT = N_("What to draw")

# The options of /draw and /compare that share a name, and their names' message ids.
OPTION_NAMES = {
    "prompt": locale_str("prompt"),
    "negative_prompt": locale_str("negative_prompt"),
    "steps": locale_str("steps"),
    "guidance": locale_str("guidance"),
    "eta": locale_str("eta"),
    "sampler": locale_str("sampler"),
    "seed": locale_str("seed"),
    "width": locale_str("width"),
    "height": locale_str("height"),
    "model": locale_str("model"),
}


def prompt_description(examples: tuple[str, ...]) -> str:
    """The /draw ``prompt`` option's description: the first example that fits Discord's limit."""
    return str(prompt_hint(examples))


def prompt_hint(examples: tuple[str, ...]) -> locale_str:
    """``prompt_description`` as Discord is sent it: the English text, and (for the translator)
    its message id and the example, which stays in the model's own words in every language."""
    for example in examples:
        text = PROMPT_HINT.format(example=example)
        if len(text) <= MAX_DESCRIPTION:
            return locale_str(text, msgid=PROMPT_HINT, example=example)
    return locale_str(PROMPT_HINT_SHORT)


class Draw(commands.Cog):
    def __init__(self, bot: Easel) -> None:
        self.bot = bot
        # The prompt's hint suggests what the loaded model draws (the shapes model knows only its
        # own words). The description is part of the synced command, so it is set before the
        # sync; `python -m bot sync` loads no model and asks by name.
        models = getattr(bot, "models", None)
        examples = (
            models.capabilities().example_prompts
            if models
            else example_prompts(default_source(bot.settings))
        )
        params = self.draw._params  # this cog's copy of the command; the dict is its own
        # to_dict sends str(description); the translator reads the message id and the example.
        params["prompt"] = replace(params["prompt"], description=prompt_hint(examples))

    @app_commands.command(name="draw", description=locale_str("Draw a picture from a text prompt."))
    @app_commands.rename(
        **OPTION_NAMES,
        count=locale_str("count"),
        variation_seed=locale_str("variation_seed"),
        variation_strength=locale_str("variation_strength"),
        image=locale_str("image"),
        strength=locale_str("strength"),
    )
    @app_commands.describe(
        prompt=prompt_hint(DEFAULT_EXAMPLE_PROMPTS),  # each cog: the model's own
        negative_prompt=locale_str("What to keep out of the picture (models that support it)"),
        steps=locale_str("Denoising steps: more is slower and usually finer (1-150)"),
        guidance=locale_str("How closely to follow the prompt (0-30; about 6-8 is typical)"),
        eta=locale_str("Randomness added at each DDIM step (0-1; DDIM only)"),
        sampler=locale_str("The sampling method"),
        seed=locale_str("Same seed and settings give the same picture; random if left out"),
        width=locale_str("Width in pixels, a multiple of 8"),
        height=locale_str("Height in pixels, a multiple of 8"),
        count=locale_str("How many pictures (1-4); picture i uses seed + i"),
        model=locale_str(
            "Which model draws it (/models lists them); the server's default if left out"
        ),
        variation_seed=locale_str(
            "Mix in this seed's noise (A1111's variation seed); random if only strength"
        ),
        variation_strength=locale_str(
            "How far towards the variation seed (0-1): 0.25 subtle, 0.6 strong"
        ),
        image=locale_str(
            "A picture to start from (PNG, JPEG, WebP, GIF; up to 10 MB and 4 megapixels)"
        ),
        strength=locale_str(
            "With image: how much of it to redraw (0.1 keeps it, 1 redraws all; 0.6)"
        ),
    )
    @app_commands.choices(sampler=SAMPLER_CHOICES)
    async def draw(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 6000],
        negative_prompt: app_commands.Range[str, 1, 6000] | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        guidance: app_commands.Range[float, 0.0, 30.0] | None = None,
        eta: app_commands.Range[float, 0.0, 1.0] | None = None,
        sampler: app_commands.Choice[str] | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        width: app_commands.Range[int, 64, 2048] | None = None,
        height: app_commands.Range[int, 64, 2048] | None = None,
        count: app_commands.Range[int, 1, 4] | None = None,
        model: app_commands.Range[str, 1, 100] | None = None,
        variation_seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        variation_strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        image: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.01, 1.0] | None = None,
    ) -> None:
        # Options left out take the member's own defaults (/settings), else this server's
        # (/mod settings), else the bot's; this server's limits apply to all of them.
        try:
            model = typed_model(model)
        except EaselError as refusal:
            await answer_privately(interaction, refusal)
            return
        policy = await self.bot.jobs.policy(interaction.guild_id, model)
        caps = self.bot.models.capabilities(policy.model)
        mine = self.bot.store.user_settings(interaction.user.id)
        if image is not None:  # the picture's own size is drawn, whatever the defaults say
            mine = replace(mine, width=None, height=None)
        typed = {
            "sampler": sampler.value if sampler else None,
            "steps": steps,
            "guidance": guidance,
            "width": width,
            "height": height,
            "count": count,
            "negative_prompt": negative_prompt,
        }
        # A default negative prompt with a word banned here gives way rather than refusing.
        here = interaction.guild_id
        banned = await self.bot.store.banned_words(here) if here is not None else []
        used = resolve(typed, mine, policy, self.bot.settings, caps, banned)
        request = DrawRequest(
            prompt=prompt,
            negative_prompt=used.value("negative_prompt"),
            steps=used.value("steps"),
            guidance=used.value("guidance"),
            eta=eta or 0.0,
            sampler=used.value("sampler"),
            seed=seed,
            width=used.value("width"),
            height=used.value("height"),
            count=used.value("count"),
            model=model or policy.model,
            variation_seed=variation_seed,
            # A variation seed alone asks for a variation: strong unless told otherwise.
            variation_strength=variation_strength
            if variation_strength is not None
            else (VARY_STRONG if variation_seed is not None else 0.0),
        )
        if image is None:
            if strength is not None:
                request = replace(request, strength=strength)  # refused, saying why
            await self.bot.jobs.start(interaction, request, notes=used.notes)
            return
        await self._draw_from(
            interaction, request, image, strength, sized=bool(width or height), notes=used.notes
        )

    async def _draw_from(
        self,
        interaction: discord.Interaction,
        request: DrawRequest,
        image: discord.Attachment,
        strength: float | None,
        *,
        sized: bool,
        notes: tuple[str, ...] = (),
    ) -> None:
        """/draw image: check and store the picture, then draw from it like any request."""
        policy = await self.bot.jobs.policy(interaction.guild_id, request.model)
        try:
            policy.check_model(request.model)  # a model not allowed here: said before the rest
        except EaselError as refusal:
            await answer_privately(interaction, refusal)
            return
        caps = self.bot.models.capabilities(policy.model)
        if not caps.image_input:
            await answer_privately(
                interaction,
                _(
                    "{model} ({pipeline}) can't start from a picture, so nothing was drawn. "
                    "Draw from a prompt, and use the V buttons under a result for variations "
                    "of it.",
                    model=caps.model,
                    pipeline=caps.pipeline_class,
                ),
            )
            return
        if sized:
            await answer_privately(
                interaction,
                _("With a picture, leave width and height out: the picture's own size is used."),
            )
            return
        try:
            upload = await read_upload(
                image, caps, max_side=policy.max_side, owner=interaction.user.id
            )
        except BadUpload as refusal:
            await answer_privately(interaction, str(refusal))
            return
        store = self.bot.store
        path = await store.save_image(upload.png)
        request = replace(
            request,
            task="img2img",
            init_image=str(path),
            strength=strength if strength is not None else DEFAULT_REMIX_STRENGTH,
            width=upload.width,
            height=upload.height,
        )
        job_id = None
        try:
            job_id = await self.bot.jobs.start(interaction, request, notes=(*notes, *upload.notes))
        finally:
            if job_id is None:  # refused: nothing of it is kept
                await store.discard_images([path])
            else:  # its job's row holds on to it now
                store.release_images([path])

    @draw.autocomplete("model")
    async def draw_model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await model_choices(self.bot, interaction.guild_id, current)

    @app_commands.command(
        name="reroll", description=locale_str("Draw a past job of this server again.")
    )
    @app_commands.rename(job=locale_str("job"), seed=OPTION_NAMES["seed"])
    @app_commands.describe(
        job=locale_str("The job number (shown under each picture)"),
        seed=locale_str("Random if left out"),
    )
    async def reroll(
        self,
        interaction: discord.Interaction,
        job: app_commands.Range[int, 1],
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
    ) -> None:
        await self.bot.jobs.reroll(interaction, job, seed=seed)

    @app_commands.command(
        name="cancel", description=locale_str("Cancel your queued and running drawings.")
    )
    async def cancel(self, interaction: discord.Interaction) -> None:
        cancelled = self.bot.executor.cancel_user(interaction.user.id)
        # A comparison's cells count as the one comparison they make up.
        comparisons = len({e.unit for e in cancelled if e.unit != e.ticket})
        drawings = sum(1 for e in cancelled if e.unit == e.ticket)
        if drawings and comparisons:
            text = _(
                "Cancelled {drawings} and {comparisons}.",
                drawings=ngettext("{n} drawing", "{n} drawings", drawings),
                comparisons=ngettext("{n} comparison", "{n} comparisons", comparisons),
            )
        elif drawings:
            text = ngettext("Cancelled {n} drawing.", "Cancelled {n} drawings.", drawings)
        elif comparisons:
            text = ngettext("Cancelled {n} comparison.", "Cancelled {n} comparisons.", comparisons)
        else:
            text = _("You have nothing queued or drawing.")
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(
        name="queue", description=locale_str("Who is waiting, and your place in line.")
    )
    async def queue(self, interaction: discord.Interaction) -> None:
        executor = self.bot.executor
        me = interaction.user.id
        here = interaction.guild_id

        def shown(entry: QueueEntry) -> bool:
            # Only this server's jobs; in DMs only one's own: nobody learns who draws elsewhere.
            if here is None:
                return entry.group is None and entry.user_id == me
            return entry.group == here

        snapshot = executor.snapshot()
        places = [(place, e) for place, e in enumerate(snapshot, start=1) if shown(e)]
        elsewhere = len(snapshot) - len(places)
        lines = []
        if executor.paused:
            lines.append(_("⏸️ The bot's operator has paused drawing: nothing new starts for now."))
        elif executor.is_paused(here):
            lines.append(_("⏸️ The queue is paused here: nothing new starts until it resumes."))
        if not snapshot:
            lines.append(_("The queue is empty: /draw starts right away."))
        for place, entry in places[:15]:
            doing = _("drawing now") if entry.state == "running" else f"#{place}"
            mention = f"<@{entry.user_id}>"
            who = _("{member} (you)", member=mention) if entry.user_id == me else mention
            if entry.unit != entry.ticket:
                # A comparison's cells wait one by one, each at its own place in the round-robin.
                line = _(
                    "{place}: {member}, job #{job} (cell of comparison #{comparison})",
                    place=doing,
                    member=who,
                    job=entry.ticket,
                    comparison=entry.unit,
                )
            else:
                line = _("{place}: {member}, job #{job}", place=doing, member=who, job=entry.ticket)
            lines.append(line)
        if len(places) > 15:
            lines.append(_("… and {n} more here", n=number(len(places) - 15)))
        if elsewhere:
            lines.append(
                ngettext(
                    "… and {n} drawing from elsewhere.",
                    "… and {n} drawings from elsewhere.",
                    elsewhere,
                )
            )
        mine = [place for place, e in places if e.user_id == me]
        if snapshot:
            if not mine:
                lines.append(_("You have nothing in the queue here."))
            elif len(mine) == 1:
                lines.append(_("Your job is at place {place}.", place=mine[0]))
            else:
                places_text = listing([str(place) for place in mine])
                lines.append(_("Your jobs are at places {places}.", places=places_text))
        await interaction.response.send_message("\n".join(lines), ephemeral=True)


async def setup(bot: Easel) -> None:
    await bot.add_cog(Draw(bot))
