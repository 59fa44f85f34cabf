"""/mod: tools for members with Manage Messages (hidden from others, and checked by the bot)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from bot.cogs.draw import SAMPLER_CHOICES
from bot.cogs.history import show_history
from bot.errors import InvalidSetting
from bot.i18n import N_, _, enter, ngettext, number
from bot.policy import (
    NSFW_LABELS,
    Policy,
    allowed_models,
    server_model,
    split_names,
    typed_model,
    validate_models,
    validate_settings,
    without_removed_models,
)
from bot.replies import answer_privately
from bot.store import EVERYWHERE, GuildSettings, PurgeRecord
from bot.text import plain, sentences
from bot.wordfilter import parse_pattern
from pipeline.errors import EaselError
from pipeline.samplers import sampler_label

if TYPE_CHECKING:
    from bot.protocols import Easel


# Message ids: the labels of /mod settings show, and the choices of /mod settings reset.
_SETTING_LABELS = {
    "max_steps": N_("Max steps"),
    "max_side": N_("Max size"),
    "max_count": N_("Max count"),
    "max_queued_per_user": N_("Max queued per member"),
    "cooldown_s": N_("Cooldown"),
    "default_sampler": N_("Default sampler"),
    "default_steps": N_("Default steps"),
    "nsfw": N_("Flagged images"),
    "max_compare_cells": N_("Max compare cells"),
    "default_model": N_("Default model"),
    "allowed_models": N_("Allowed models"),
}


class ModGroup(app_commands.Group):
    """Discord hides the group from members without Manage Messages, but server admins can
    change that default, so every subcommand is also checked here.

    discord.py runs only the immediate parent's check, so subgroups must be ModGroups too.
    """

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        perms = interaction.permissions
        if not perms.manage_messages:
            raise app_commands.MissingPermissions(["manage_messages"])
        return True


class Moderation(commands.Cog):
    mod = ModGroup(
        name="mod",
        description=locale_str("Moderator tools"),
        guild_only=True,
        default_permissions=discord.Permissions(manage_messages=True),
    )

    def __init__(self, bot: Easel) -> None:
        self.bot = bot

    @mod.command(name="history", description=locale_str("Any member's drawings in this server."))
    @app_commands.rename(user=locale_str("user"), query=locale_str("query"))
    @app_commands.describe(
        user=locale_str("Only this member's drawings"),
        query=locale_str("Only prompts with this text"),
    )
    async def history(
        self,
        interaction: discord.Interaction,
        user: discord.Member | discord.User | None = None,
        query: str | None = None,
    ) -> None:
        if user and query:
            title = _(
                "{member}'s drawings matching “{query}”",
                member=plain(user.display_name),
                query=plain(query),
            )
        elif user:
            title = _("{member}'s drawings", member=plain(user.display_name))
        elif query:
            title = _("All drawings matching “{query}”", query=plain(query))
        else:
            title = _("All drawings")
        await show_history(
            self.bot, interaction, user_id=user.id if user else None, query=query, title=title
        )

    banword = ModGroup(
        name="banword",
        description=locale_str("Words this server doesn't allow in prompts"),
        parent=mod,
    )

    @banword.command(
        name="add", description=locale_str("Refuse prompts containing this word or phrase.")
    )
    @app_commands.rename(word=locale_str("word"))
    @app_commands.describe(
        word=locale_str(
            "cat: the whole word; cat*: words starting with it; *cat: ending; *cat*: anywhere"
        )
    )
    async def banword_add(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]
    ) -> None:
        pattern = parse_pattern(word)
        if not pattern:
            await interaction.response.send_message(
                _("That has no letters or digits to match; give a word."), ephemeral=True
            )
            return
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        added = await self.bot.store.add_banned_word(
            interaction.guild_id, pattern, interaction.user.id
        )
        shown = plain(pattern)
        text = (
            _(
                "Prompts with “{word}” are now refused ({meaning}), however it is spelled: "
                "N.S.F.W, ｎｓｆｗ, n5fw, n s f w...",
                word=shown,
                meaning=_(_pattern_meaning(pattern)),
            )
            if added
            else _("“{word}” was already banned.", word=shown)
        )
        await interaction.followup.send(text, ephemeral=True)

    @banword.command(name="remove", description=locale_str("Allow this word again."))
    @app_commands.rename(word=locale_str("word"))
    @app_commands.describe(word=locale_str("As /mod banword list shows it, e.g. cat or cat*"))
    async def banword_remove(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]
    ) -> None:
        pattern = parse_pattern(word) or word
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        removed = await self.bot.store.remove_banned_word(interaction.guild_id, pattern)
        shown = plain(pattern)
        text = (
            _("“{word}” is allowed again.", word=shown)
            if removed
            else _("“{word}” wasn't banned.", word=shown)
        )
        await interaction.followup.send(text, ephemeral=True)

    @banword.command(name="list", description=locale_str("The words this server doesn't allow."))
    async def banword_list(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        words = await self.bot.store.banned_words(interaction.guild_id)
        # The words stay apart as written (", "): a list in words would hide where one ends.
        shown = ", ".join(f"“{plain(w)}”" for w in words)
        text = _("Banned: {words}", words=shown) if words else _("No banned words.")
        await interaction.response.send_message(text[:2000], ephemeral=True)

    @mod.command(
        name="pause", description=locale_str("Start no new drawings here; the queue is kept.")
    )
    @app_commands.rename(everywhere=locale_str("everywhere"))
    @app_commands.describe(
        everywhere=locale_str("Pause every server the bot is in (the bot's operator only)")
    )
    async def pause(self, interaction: discord.Interaction, everywhere: bool = False) -> None:
        _require_manage_server(interaction)
        await self._set_paused(interaction, paused=True, everywhere=everywhere)

    @mod.command(name="resume", description=locale_str("Start drawing this server's queue again."))
    @app_commands.rename(everywhere=locale_str("everywhere"))
    @app_commands.describe(
        everywhere=locale_str("End the operator's pause of every server (operator only)")
    )
    async def resume(self, interaction: discord.Interaction, everywhere: bool = False) -> None:
        _require_manage_server(interaction)
        await self._set_paused(interaction, paused=False, everywhere=everywhere)

    async def _set_paused(
        self, interaction: discord.Interaction, *, paused: bool, everywhere: bool
    ) -> None:
        guild_id = interaction.guild_id
        assert guild_id is not None
        executor = self.bot.executor
        if everywhere and not await self.bot.is_owner(interaction.user):
            # One server's moderators must not stop a public bot for everyone else.
            await interaction.response.send_message(
                _(
                    "Only the bot's operator can pause or resume every server. "
                    "Leave out `everywhere` to pause this server only."
                ),
                ephemeral=True,
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.bot.store.set_paused(
            EVERYWHERE if everywhere else guild_id, paused, interaction.user.id
        )
        if everywhere and paused:
            executor.pause()
            text = _(
                "Paused in every server: drawings in progress finish, nothing new starts "
                "anywhere, queues are kept. Use /mod resume everywhere:True to continue."
            )
        elif everywhere:
            executor.resume()
            text = ngettext(
                "Resumed everywhere; {n} drawing waiting.",
                "Resumed everywhere; {n} drawings waiting.",
                executor.pending(),
            )
        elif paused:
            executor.pause_group(guild_id)
            text = _(
                "Paused in this server: a drawing in progress finishes, nothing new starts here, "
                "the queue is kept. Other servers are not affected. Use /mod resume to continue."
            )
        else:
            executor.resume_group(guild_id)
            waiting = executor.pending(group=guild_id)
            text = ngettext(
                "Resumed; {n} drawing waiting in this server.",
                "Resumed; {n} drawings waiting in this server.",
                waiting,
            )
            if executor.paused:
                text = sentences(
                    text, _("The bot's operator has paused every server, so nothing starts yet.")
                )
        await interaction.followup.send(text, ephemeral=True)

    # -- settings ------------------------------------------------------------------------

    settings = ModGroup(
        name="settings",
        description=locale_str("This server's limits and defaults for /draw"),
        parent=mod,
    )

    @settings.command(
        name="show", description=locale_str("This server's limits and defaults for /draw.")
    )
    async def settings_show(self, interaction: discord.Interaction) -> None:
        policy = await self.bot.jobs.policy(interaction.guild_id)
        await interaction.response.send_message(self._describe(policy), ephemeral=True)

    @settings.command(
        name="set",
        description=locale_str("Change this server's limits and defaults (Manage Server)."),
    )
    @app_commands.rename(
        max_steps=locale_str("max_steps"),
        max_size=locale_str("max_size"),
        max_count=locale_str("max_count"),
        max_queued=locale_str("max_queued"),
        cooldown=locale_str("cooldown"),
        default_sampler=locale_str("default_sampler"),
        default_steps=locale_str("default_steps"),
        nsfw=locale_str("nsfw"),
        max_compare_cells=locale_str("max_compare_cells"),
        default_model=locale_str("default_model"),
        allowed_models=locale_str("allowed_models"),
    )
    @app_commands.describe(
        max_steps=locale_str("The most denoising steps a member may ask for"),
        max_size=locale_str("The largest width or height in pixels (a multiple of 8)"),
        max_count=locale_str("The most pictures per drawing"),
        max_queued=locale_str("The most drawings one member may have waiting or in progress"),
        cooldown=locale_str("Seconds a member waits between starting drawings (0: no wait)"),
        default_sampler=locale_str("The sampler used when a member leaves it out"),
        default_steps=locale_str("The steps used when a member leaves them out"),
        nsfw=locale_str("What happens to images the model's safety checker flags"),
        max_compare_cells=locale_str("The most cells (pictures) one /compare grid may have (1-16)"),
        default_model=locale_str("The model used when a member leaves it out (/models)"),
        allowed_models=locale_str("The models members may pick, like: sd15, shapes"),
    )
    @app_commands.choices(
        default_sampler=SAMPLER_CHOICES,
        nsfw=[
            app_commands.Choice(name=locale_str("Never post them (default)"), value="filter"),
            app_commands.Choice(
                name=locale_str("Post them in age-restricted channels only"),
                value="age_restricted",
            ),
        ],
    )
    async def settings_set(
        self,
        interaction: discord.Interaction,
        max_steps: app_commands.Range[int, 1, 150] | None = None,
        max_size: app_commands.Range[int, 64, 2048] | None = None,
        max_count: app_commands.Range[int, 1, 4] | None = None,
        max_queued: app_commands.Range[int, 1, 50] | None = None,
        cooldown: app_commands.Range[int, 0, 3600] | None = None,
        default_sampler: app_commands.Choice[str] | None = None,
        default_steps: app_commands.Range[int, 1, 150] | None = None,
        nsfw: app_commands.Choice[str] | None = None,
        max_compare_cells: app_commands.Range[int, 1, 16] | None = None,
        default_model: app_commands.Range[str, 1, 100] | None = None,
        allowed_models: app_commands.Range[str, 1, 1000] | None = None,
    ) -> None:
        _require_manage_server(interaction)
        try:
            model = typed_model(default_model)
        except EaselError as refusal:
            await answer_privately(interaction, refusal)
            return
        given: dict[str, Any] = {
            "max_steps": max_steps,
            "max_side": max_size,
            "max_count": max_count,
            "max_queued_per_user": max_queued,
            "cooldown_s": cooldown,
            "default_sampler": default_sampler.value if default_sampler else None,
            "default_steps": default_steps,
            "nsfw": nsfw.value if nsfw else None,
            "max_compare_cells": max_compare_cells,
            "default_model": model,
            # Names checked on saving, written the one way /mod settings shows them.
            "allowed_models": ", ".join(split_names(allowed_models.lower()))
            if allowed_models
            else None,
        }
        changes = {name: value for name, value in given.items() if value is not None}
        if not changes:
            await interaction.response.send_message(
                _("Give at least one setting to change; /mod settings show lists them."),
                ephemeral=True,
            )
            return
        await self._save(interaction, lambda current: replace(current, **changes))

    @settings_set.autocomplete("default_model")
    async def default_model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        # Every model the bot has: the allow-list may be changed in the same command.
        typed = current.strip().casefold()
        names = [n for n in self.bot.models.names if typed in n.casefold()]
        return [app_commands.Choice(name=n, value=n) for n in names[:25]]

    @settings.command(
        name="reset", description=locale_str("Put a setting back to the bot's default.")
    )
    @app_commands.rename(setting=locale_str("setting"))
    @app_commands.describe(setting=locale_str("The setting to reset, or all of them"))
    @app_commands.choices(
        setting=[
            app_commands.Choice(name=locale_str(label), value=name)
            for name, label in _SETTING_LABELS.items()
        ]
        + [app_commands.Choice(name=locale_str("All settings"), value="all")]
    )
    async def settings_reset(
        self, interaction: discord.Interaction, setting: app_commands.Choice[str]
    ) -> None:
        _require_manage_server(interaction)
        if setting.value == "all":
            await self._save(interaction, lambda current: GuildSettings())
        else:
            await self._save(interaction, lambda current: replace(current, **{setting.value: None}))

    async def _save(self, interaction: discord.Interaction, change: Any) -> None:
        """Apply ``change`` to the stored settings, validate the result whole, and store it."""
        guild_id = interaction.guild_id
        assert guild_id is not None
        store = self.bot.store
        models = self.bot.models
        names, bot_default = models.names, models.default
        # Models removed from MODELS since they were set here must not block every change.
        current = await store.guild_settings(guild_id)
        updated = change(without_removed_models(current, names, bot_default))
        try:
            validate_models(updated, names, bot_default)
            allowed = allowed_models(updated, names, bot_default)
            default = server_model(updated, allowed, bot_default)
            validate_settings(updated, models.capabilities(default), self.bot.settings)
        except InvalidSetting as refusal:
            await answer_privately(interaction, str(refusal))
            return
        await store.set_guild_settings(guild_id, updated, interaction.user.id)
        policy = await self.bot.jobs.policy(guild_id)
        text = "\n".join((_("Saved."), self._describe(policy)))
        await interaction.response.send_message(text, ephemeral=True)

    def _describe(self, policy: Policy) -> str:
        caps = self.bot.models.capabilities(policy.model)
        stored = policy.stored
        values = {
            "max_steps": number(policy.max_steps),
            "max_side": _("{width}x{height} pixels", width=policy.max_side, height=policy.max_side),
            "max_count": number(policy.max_count),
            "max_queued_per_user": number(policy.max_queued_per_user),
            "cooldown_s": (
                ngettext("{n} second", "{n} seconds", policy.cooldown_s)
                if policy.cooldown_s
                else _("none")
            ),
            "default_sampler": sampler_label(policy.default_sampler or caps.default_sampler),
            "default_steps": number(policy.default_steps),
            "nsfw": _(NSFW_LABELS[policy.nsfw]),
            "max_compare_cells": number(policy.max_compare_cells),
            "default_model": policy.default_model,
            "allowed_models": ", ".join(policy.models),
        }
        lines = [_("**/draw settings in this server**")]
        for f in fields(GuildSettings):
            if getattr(stored, f.name) is not None:
                line = _(
                    "{setting}: {value} (set here)",
                    setting=_(_SETTING_LABELS[f.name]),
                    value=values[f.name],
                )
            else:
                line = _(
                    "{setting}: {value} (default)",
                    setting=_(_SETTING_LABELS[f.name]),
                    value=values[f.name],
                )
            lines.append(line)
        return "\n".join(lines)

    # -- purge -----------------------------------------------------------------------------

    @mod.command(
        name="purge",
        description=locale_str("Delete a member's drawings in this server (asks first)."),
    )
    @app_commands.rename(user=locale_str("user"))
    @app_commands.describe(
        user=locale_str("Whose drawings to delete: posts, stored images and history")
    )
    async def purge(
        self, interaction: discord.Interaction, user: discord.Member | discord.User
    ) -> None:
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        jobs = await self.bot.store.count_history(interaction.guild_id, user_id=user.id)
        if not jobs:
            await interaction.followup.send(
                _("{member} has no drawings in this server.", member=user.mention), ephemeral=True
            )
            return
        await interaction.followup.send(
            ngettext(
                "This deletes {n} drawing by {member} in this server: the posted message, the "
                "stored images and the history. Their drawings in other servers stay. It can't "
                "be undone. Continue?",
                "This deletes all {n} drawings by {member} in this server: the posted "
                "messages, the stored images and the history. Their drawings in other servers "
                "stay. It can't be undone. Continue?",
                jobs,
                member=user.mention,
            ),
            view=ConfirmPurge(self.bot, interaction.user.id, user.id),
            ephemeral=True,
        )

    @mod.command(name="audit", description=locale_str("Recent purges in this server."))
    async def audit(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        purges = await self.bot.store.purges(interaction.guild_id, limit=10)
        none = _("No purges in this server.")
        text = "\n".join(map(describe_purge, purges)) if purges else none
        await interaction.followup.send(text[:2000], ephemeral=True)


def _pattern_meaning(pattern: str) -> str:
    """What a banned pattern matches (a message id)."""
    if pattern.startswith("*") and pattern.endswith("*"):
        return N_("anywhere in a word")
    if pattern.endswith("*"):
        return N_("words starting with it")
    if pattern.startswith("*"):
        return N_("words ending with it")
    return N_("the whole word")


def describe_purge(purge: PurgeRecord) -> str:
    """One audit line: when, who, whom, and how much went."""
    gone = ngettext("{n} message deleted", "{n} messages deleted", purge.messages_deleted)
    if purge.messages_missing:
        gone = _("{deleted}, {n} already gone", deleted=gone, n=number(purge.messages_missing))
    if purge.messages_failed:
        gone = _(
            "{deleted}, {n} could not be deleted", deleted=gone, n=number(purge.messages_failed)
        )
    when = f"<t:{int(purge.purged_at)}:f>"  # Discord writes it in each reader's language
    moderator, member = f"<@{purge.moderator_id}>", f"<@{purge.target_user_id}>"
    return _(
        "{when} {moderator} purged {member}: {drawings}, {images}; {messages}.",
        when=when,
        moderator=moderator,
        member=member,
        drawings=ngettext("{n} drawing", "{n} drawings", purge.jobs),
        images=ngettext("{n} image", "{n} images", purge.images),
        messages=gone,
    )


class ConfirmPurge(discord.ui.View):
    """Yes/No for the moderator who asked; nothing is deleted until they click Yes."""

    def __init__(self, bot: Easel, moderator_id: int, target_id: int) -> None:
        super().__init__(timeout=120)
        self.bot = bot
        self.moderator_id = moderator_id
        self.target_id = target_id
        # Made while the moderator's language is current: the labels are theirs.
        self.confirm.label = _("Yes, delete them")
        self.cancel.label = _("No, keep them")

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        enter(interaction)  # what the click answers is in the clicker's language
        return interaction.user.id == self.moderator_id

    @discord.ui.button(label="Yes, delete them", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        assert interaction.guild_id is not None
        await interaction.response.edit_message(content=_("Deleting…"), view=None)
        purge = await self.bot.jobs.purge(interaction.guild_id, self.target_id, interaction.user.id)
        removed = ngettext("{n} message removed", "{n} messages removed", purge.messages_deleted)
        if purge.messages_missing:
            removed = ngettext(
                "{removed} ({n} was already gone)",
                "{removed} ({n} were already gone)",
                purge.messages_missing,
                removed=removed,
            )
        done = _(
            "Done: {drawings} and {images} of {member} deleted from this server; {removed}.",
            drawings=ngettext("{n} drawing", "{n} drawings", purge.jobs),
            images=ngettext("{n} image", "{n} images", purge.images),
            member=f"<@{self.target_id}>",
            removed=removed,
        )
        failed = ""
        if purge.messages_failed:
            failed = ngettext(
                "{n} message could not be deleted: check the bot's permissions and delete it "
                "by hand.",
                "{n} messages could not be deleted: check the bot's permissions and delete "
                "them by hand.",
                purge.messages_failed,
            )
        await interaction.edit_original_response(content=sentences(done, failed))

    @discord.ui.button(label="No, keep them", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content=_("Nothing was deleted."), view=None)


def _require_manage_server(interaction: discord.Interaction) -> None:
    # Pausing stops the bot's only GPU for everyone, and settings (what may be drawn, where
    # flagged images show) are the server's policy: bigger steps than moderating messages.
    if not interaction.permissions.manage_guild:
        raise app_commands.MissingPermissions(["manage_guild"])


async def setup(bot: Easel) -> None:
    await bot.add_cog(Moderation(bot))
