"""/mod: tools for members with Manage Messages (hidden from others, and checked by the bot)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.draw import SAMPLER_CHOICES
from bot.cogs.history import show_history
from bot.errors import InvalidSetting
from bot.policy import NSFW_LABELS, Policy, validate_settings
from bot.render import plural
from bot.replies import answer_privately
from bot.store import EVERYWHERE, GuildSettings, PurgeRecord
from bot.text import plain
from bot.wordfilter import parse_pattern
from pipeline.samplers import sampler_label

if TYPE_CHECKING:
    from bot.protocols import Easel


_SETTING_LABELS = {
    "max_steps": "Max steps",
    "max_side": "Max size",
    "max_count": "Max count",
    "max_queued_per_user": "Max queued per member",
    "cooldown_s": "Cooldown",
    "default_sampler": "Default sampler",
    "default_steps": "Default steps",
    "nsfw": "Flagged images",
    "max_compare_cells": "Max compare cells",
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
        description="Moderator tools",
        guild_only=True,
        default_permissions=discord.Permissions(manage_messages=True),
    )

    def __init__(self, bot: Easel) -> None:
        self.bot = bot

    @mod.command(name="history", description="Any member's drawings in this server.")
    @app_commands.describe(user="Only this member's drawings", query="Only prompts with this text")
    async def history(
        self,
        interaction: discord.Interaction,
        user: discord.Member | discord.User | None = None,
        query: str | None = None,
    ) -> None:
        who = f"{plain(user.display_name)}'s drawings" if user else "All drawings"
        title = who + (f" matching “{plain(query)}”" if query else "")
        await show_history(
            self.bot, interaction, user_id=user.id if user else None, query=query, title=title
        )

    banword = ModGroup(
        name="banword", description="Words this server doesn't allow in prompts", parent=mod
    )

    @banword.command(name="add", description="Refuse prompts containing this word or phrase.")
    @app_commands.describe(
        word="cat: the whole word; cat*: words starting with it; *cat: ending; *cat*: anywhere"
    )
    async def banword_add(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]
    ) -> None:
        pattern = parse_pattern(word)
        if not pattern:
            await interaction.response.send_message(
                "That has no letters or digits to match; give a word.", ephemeral=True
            )
            return
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        added = await self.bot.store.add_banned_word(
            interaction.guild_id, pattern, interaction.user.id
        )
        shown = plain(pattern)
        text = (
            f"Prompts with “{shown}” are now refused ({_pattern_meaning(pattern)}), however "
            "it is spelled: N.S.F.W, ｎｓｆｗ, n5fw, n s f w..."
            if added
            else f"“{shown}” was already banned."
        )
        await interaction.followup.send(text, ephemeral=True)

    @banword.command(name="remove", description="Allow this word again.")
    @app_commands.describe(word="As /mod banword list shows it, e.g. cat or cat*")
    async def banword_remove(
        self, interaction: discord.Interaction, word: app_commands.Range[str, 1, 100]
    ) -> None:
        pattern = parse_pattern(word) or word
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        removed = await self.bot.store.remove_banned_word(interaction.guild_id, pattern)
        shown = plain(pattern)
        text = f"“{shown}” is allowed again." if removed else f"“{shown}” wasn't banned."
        await interaction.followup.send(text, ephemeral=True)

    @banword.command(name="list", description="The words this server doesn't allow.")
    async def banword_list(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        words = await self.bot.store.banned_words(interaction.guild_id)
        shown = ", ".join(f"“{plain(w)}”" for w in words)
        text = f"Banned: {shown}" if words else "No banned words."
        await interaction.response.send_message(text[:2000], ephemeral=True)

    @mod.command(name="pause", description="Start no new drawings here; the queue is kept.")
    @app_commands.describe(everywhere="Pause every server the bot is in (the bot's operator only)")
    async def pause(self, interaction: discord.Interaction, everywhere: bool = False) -> None:
        _require_manage_server(interaction)
        await self._set_paused(interaction, paused=True, everywhere=everywhere)

    @mod.command(name="resume", description="Start drawing this server's queue again.")
    @app_commands.describe(everywhere="End the operator's pause of every server (operator only)")
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
                "Only the bot's operator can pause or resume every server. "
                "Leave out `everywhere` to pause this server only.",
                ephemeral=True,
            )
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.bot.store.set_paused(
            EVERYWHERE if everywhere else guild_id, paused, interaction.user.id
        )
        if everywhere and paused:
            executor.pause()
            text = (
                "Paused in every server: drawings in progress finish, nothing new starts "
                "anywhere, queues are kept. Use /mod resume everywhere:True to continue."
            )
        elif everywhere:
            executor.resume()
            text = f"Resumed everywhere; {plural(executor.pending(), 'drawing')} waiting."
        elif paused:
            executor.pause_group(guild_id)
            text = (
                "Paused in this server: a drawing in progress finishes, nothing new starts here, "
                "the queue is kept. Other servers are not affected. Use /mod resume to continue."
            )
        else:
            executor.resume_group(guild_id)
            waiting = executor.pending(group=guild_id)
            text = f"Resumed; {plural(waiting, 'drawing')} waiting in this server."
            if executor.paused:
                text += " The bot's operator has paused every server, so nothing starts yet."
        await interaction.followup.send(text, ephemeral=True)

    # -- settings ------------------------------------------------------------------------

    settings = ModGroup(
        name="settings", description="This server's limits and defaults for /draw", parent=mod
    )

    @settings.command(name="show", description="This server's limits and defaults for /draw.")
    async def settings_show(self, interaction: discord.Interaction) -> None:
        policy = await self.bot.jobs.policy(interaction.guild_id)
        await interaction.response.send_message(self._describe(policy), ephemeral=True)

    @settings.command(
        name="set", description="Change this server's limits and defaults (Manage Server)."
    )
    @app_commands.describe(
        max_steps="The most denoising steps a member may ask for",
        max_size="The largest width or height in pixels (a multiple of 8)",
        max_count="The most pictures per drawing",
        max_queued="The most drawings one member may have waiting or in progress",
        cooldown="Seconds a member waits between starting drawings (0: no wait)",
        default_sampler="The sampler used when a member leaves it out",
        default_steps="The steps used when a member leaves them out",
        nsfw="What happens to images the model's safety checker flags",
        max_compare_cells="The most cells (pictures) one /compare grid may have (1-16)",
    )
    @app_commands.choices(
        default_sampler=SAMPLER_CHOICES,
        nsfw=[
            app_commands.Choice(name="Never post them (default)", value="filter"),
            app_commands.Choice(
                name="Post them in age-restricted channels only", value="age_restricted"
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
    ) -> None:
        _require_manage_server(interaction)
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
        }
        changes = {name: value for name, value in given.items() if value is not None}
        if not changes:
            await interaction.response.send_message(
                "Give at least one setting to change; /mod settings show lists them.",
                ephemeral=True,
            )
            return
        await self._save(interaction, lambda current: replace(current, **changes))

    @settings.command(name="reset", description="Put a setting back to the bot's default.")
    @app_commands.describe(setting="The setting to reset, or all of them")
    @app_commands.choices(
        setting=[
            app_commands.Choice(name=label, value=name) for name, label in _SETTING_LABELS.items()
        ]
        + [app_commands.Choice(name="All settings", value="all")]
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
        updated = change(await store.guild_settings(guild_id))
        try:
            validate_settings(updated, self.bot.engine.capabilities, self.bot.settings)
        except InvalidSetting as refusal:
            await answer_privately(interaction, str(refusal))
            return
        await store.set_guild_settings(guild_id, updated, interaction.user.id)
        policy = await self.bot.jobs.policy(guild_id)
        await interaction.response.send_message("Saved.\n" + self._describe(policy), ephemeral=True)

    def _describe(self, policy: Policy) -> str:
        caps = self.bot.engine.capabilities
        stored = policy.stored
        values = {
            "max_steps": str(policy.max_steps),
            "max_side": f"{policy.max_side}x{policy.max_side} pixels",
            "max_count": str(policy.max_count),
            "max_queued_per_user": str(policy.max_queued_per_user),
            "cooldown_s": f"{policy.cooldown_s} seconds" if policy.cooldown_s else "none",
            "default_sampler": sampler_label(policy.default_sampler or caps.default_sampler),
            "default_steps": str(policy.default_steps),
            "nsfw": NSFW_LABELS[policy.nsfw],
            "max_compare_cells": str(policy.max_compare_cells),
        }
        lines = ["**/draw settings in this server**"]
        for f in fields(GuildSettings):
            origin = "set here" if getattr(stored, f.name) is not None else "default"
            lines.append(f"{_SETTING_LABELS[f.name]}: {values[f.name]} ({origin})")
        return "\n".join(lines)

    # -- purge -----------------------------------------------------------------------------

    @mod.command(
        name="purge", description="Delete a member's drawings in this server (asks first)."
    )
    @app_commands.describe(user="Whose drawings to delete: posts, stored images and history")
    async def purge(
        self, interaction: discord.Interaction, user: discord.Member | discord.User
    ) -> None:
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        jobs = await self.bot.store.count_history(interaction.guild_id, user_id=user.id)
        if not jobs:
            await interaction.followup.send(
                f"{user.mention} has no drawings in this server.", ephemeral=True
            )
            return
        await interaction.followup.send(
            f"This deletes all {jobs} drawing(s) by {user.mention} in this server: the posted "
            "messages, the stored images and the history. Their drawings in other servers stay. "
            "It can't be undone. Continue?",
            view=ConfirmPurge(self.bot, interaction.user.id, user.id),
            ephemeral=True,
        )

    @mod.command(name="audit", description="Recent purges in this server.")
    async def audit(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        purges = await self.bot.store.purges(interaction.guild_id, limit=10)
        text = "\n".join(map(describe_purge, purges)) if purges else "No purges in this server."
        await interaction.followup.send(text[:2000], ephemeral=True)


def _pattern_meaning(pattern: str) -> str:
    if pattern.startswith("*") and pattern.endswith("*"):
        return "anywhere in a word"
    if pattern.endswith("*"):
        return "words starting with it"
    if pattern.startswith("*"):
        return "words ending with it"
    return "the whole word"


def describe_purge(purge: PurgeRecord) -> str:
    """One audit line: when, who, whom, and how much went."""
    gone = f"{purge.messages_deleted} message(s) deleted"
    if purge.messages_missing:
        gone += f", {purge.messages_missing} already gone"
    if purge.messages_failed:
        gone += f", {purge.messages_failed} could not be deleted"
    return (
        f"<t:{int(purge.purged_at)}:f> <@{purge.moderator_id}> purged <@{purge.target_user_id}>: "
        f"{purge.jobs} drawing(s), {purge.images} image(s); {gone}."
    )


class ConfirmPurge(discord.ui.View):
    """Yes/No for the moderator who asked; nothing is deleted until they click Yes."""

    def __init__(self, bot: Easel, moderator_id: int, target_id: int) -> None:
        super().__init__(timeout=120)
        self.bot = bot
        self.moderator_id = moderator_id
        self.target_id = target_id

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.moderator_id

    @discord.ui.button(label="Yes, delete them", style=discord.ButtonStyle.danger)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        assert interaction.guild_id is not None
        await interaction.response.edit_message(content="Deleting…", view=None)
        purge = await self.bot.jobs.purge(interaction.guild_id, self.target_id, interaction.user.id)
        text = (
            f"Done: {purge.jobs} drawing(s) and {purge.images} image(s) of <@{self.target_id}> "
            f"deleted from this server; {purge.messages_deleted} message(s) removed"
        )
        if purge.messages_missing:
            text += f" ({purge.messages_missing} were already gone)"
        if purge.messages_failed:
            text += (
                f". {purge.messages_failed} message(s) could not be deleted: check the bot's "
                "permissions and delete them by hand"
            )
        await interaction.edit_original_response(content=text + ".")

    @discord.ui.button(label="No, keep them", style=discord.ButtonStyle.secondary)
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.stop()
        await interaction.response.edit_message(content="Nothing was deleted.", view=None)


def _require_manage_server(interaction: discord.Interaction) -> None:
    # Pausing stops the bot's only GPU for everyone, and settings (what may be drawn, where
    # flagged images show) are the server's policy: bigger steps than moderating messages.
    if not interaction.permissions.manage_guild:
        raise app_commands.MissingPermissions(["manage_guild"])


async def setup(bot: Easel) -> None:
    await bot.add_cog(Moderation(bot))
