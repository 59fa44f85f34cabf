"""Per-server settings (/mod settings): who may use them, validation, enforcement before
queueing, defaults, cooldown, and persistence across a restart."""

from __future__ import annotations

import sqlite3

import discord
import pytest
import simcord

from bot.errors import InvalidSetting
from bot.policy import validate_settings
from bot.settings import Settings
from bot.store import GuildSettings
from tests.conftest import shut_down


def fields(message) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


def admin(world):
    """A member with Manage Server (settings) and Manage Messages (the /mod group)."""
    role = world.guild.create_role(
        "Admins", permissions=discord.Permissions(manage_guild=True, manage_messages=True)
    )
    return world.guild.add_member(world.env.create_user("boss"), roles=[role])


def jobs_in_db(world) -> int:
    with sqlite3.connect(world.bot.settings.db_path) as db:
        return db.execute("SELECT count(*) FROM jobs").fetchone()[0]


async def test_members_see_no_mod_command_and_overrides_meet_the_bot_check(world):
    alice, ch = world.alice, world.channel
    assert not [c for c in alice.available_commands(ch) if c.split()[0] == "mod"]
    for command in ("mod settings show", "mod banword list", "mod purge", "mod audit"):
        with pytest.raises(simcord.SetupError, match="not visible"):
            await alice.slash(ch, command)
    assert "mod settings show" in world.mod.available_commands(ch)

    # A server admin lets alice see /mod anyway: the bot still refuses her.
    mod_command = next(c for c in await world.bot.tree.fetch_commands() if c.name == "mod")
    world.guild.set_command_permissions(mod_command, {alice: True})
    for command, options in (
        ("mod settings show", {}),
        ("mod settings set", {"max_steps": 5}),
        ("mod banword add", {"word": "cat"}),
        ("mod purge", {"user": world.bob}),
        ("mod audit", {}),
    ):
        r = await alice.slash(ch, command, **options)
        assert r.ephemeral and "Only moderators" in r.response.content
        simcord.assert_error(world.env, discord.app_commands.MissingPermissions)
    assert await world.bot.store.guild_settings(world.guild.id) == GuildSettings()
    assert await world.bot.store.banned_words(world.guild.id) == []


async def test_changing_settings_needs_manage_server(world):
    r = await world.mod.slash(world.channel, "mod settings set", max_steps=5)
    assert r.ephemeral and "Manage Server" in r.response.content
    world.env.errors  # noqa: B018 - acknowledge the refusal
    assert await world.bot.store.guild_settings(world.guild.id) == GuildSettings()
    shown = await world.mod.slash(world.channel, "mod settings show")  # reading is for mods
    assert "Max steps: 150 (default)" in shown.response.content


async def test_settings_are_shown_applied_as_defaults_and_survive_a_restart(world, make_bot):
    boss, ch = admin(world), world.channel
    r = await boss.slash(
        ch,
        "mod settings set",
        max_steps=8,
        default_steps=3,
        default_sampler="ddim",
        max_size=96,
        max_count=2,
        max_queued=2,
        cooldown=5,
        nsfw="age_restricted",
    )
    text = r.response.content
    assert r.ephemeral and text.startswith("Saved.")
    for line in (
        "Max steps: 8 (set here)",
        "Max size: 96x96 pixels (set here)",
        "Max count: 2 (set here)",
        "Max queued per member: 2 (set here)",
        "Cooldown: 5 seconds (set here)",
        "Default sampler: DDIM (set here)",
        "Default steps: 3 (set here)",
        "Flagged images: flagged images are posted in age-restricted channels only (set here)",
    ):
        assert line in text

    await shut_down(world.bot)
    await world.env.restart_bot(make_bot())
    shown = await world.mod.slash(ch, "mod settings show")
    assert "Max steps: 8 (set here)" in shown.response.content
    assert "Default sampler: DDIM (set here)" in shown.response.content

    # Left-out options take the server's defaults.
    drawn = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    f = fields(drawn.response)
    assert f["Steps"] == "3" and f["Sampler"] == "DDIM" and f["Size"] == "64x64"

    r = await boss.slash(ch, "mod settings reset", setting="default_steps")
    assert "Default steps: 4 (default)" in r.response.content  # the bot's DEFAULT_STEPS
    assert "Max steps: 8 (set here)" in r.response.content
    r = await boss.slash(ch, "mod settings reset", setting="all")
    assert "(set here)" not in r.response.content
    assert await world.bot.store.guild_settings(world.guild.id) == GuildSettings()


async def test_a_lower_max_steps_lowers_the_default_rather_than_refusing(world, bot_settings):
    boss = admin(world)
    # The bot-wide default is 4 steps: a server max of 2 must not refuse a plain /draw.
    await boss.slash(world.channel, "mod settings set", max_steps=2)
    r = await world.alice.slash(world.channel, "draw", prompt="a cup")
    await world.idle()
    assert fields(r.response)["Steps"] == "2"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_size": 100}, "multiple of 8; try 96 or 104"),
        ({"max_size": 2048}, "between 64 and 128 pixels"),
        ({"max_queued": 10}, "at most 3 drawings per member"),
        ({"max_steps": 10, "default_steps": 20}, "default steps (20) can't be above the max"),
    ],
)
async def test_bad_settings_are_refused_politely_and_not_stored(world, options, message):
    r = await admin(world).slash(world.channel, "mod settings set", **options)
    assert r.ephemeral and message in r.response.content
    assert not world.env.errors  # a refusal is an answer, not an error
    assert await world.bot.store.guild_settings(world.guild.id) == GuildSettings()


async def test_lowering_the_max_below_the_stored_default_is_refused(world):
    boss = admin(world)
    await boss.slash(world.channel, "mod settings set", default_steps=20)
    r = await boss.slash(world.channel, "mod settings set", max_steps=10)
    assert "default steps (20) can't be above the max steps (10)" in r.response.content
    assert not world.env.errors  # a refusal is an answer, not an error
    stored = await world.bot.store.guild_settings(world.guild.id)
    assert stored == GuildSettings(default_steps=20)


async def test_set_without_options_says_what_to_do(world):
    r = await admin(world).slash(world.channel, "mod settings set")
    assert r.ephemeral and "Give at least one setting" in r.response.content


def test_default_sampler_must_be_one_the_model_runs(ldm_engine):
    caps = ldm_engine.capabilities
    with pytest.raises(InvalidSetting, match="Euler can't be used with tiny:ldm; pick one of"):
        validate_settings(GuildSettings(default_sampler="euler"), caps, Settings())
    validate_settings(GuildSettings(default_sampler="ddim"), caps, Settings())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 6}, "This server allows at most 5 steps; pick 5 or fewer."),
        ({"width": 72}, "up to 64x64 pixels; pick a width of 64 or less."),
        ({"height": 128}, "pick a height of 64 or less."),
        ({"count": 2}, "at most 1 picture per drawing; ask for 1 or fewer."),
    ],
)
async def test_requests_over_a_limit_are_refused_before_queueing(world, options, message):
    await admin(world).slash(
        world.channel, "mod settings set", max_steps=5, max_size=64, max_count=1
    )
    r = await world.alice.slash(world.channel, "draw", prompt="a cat", **options)
    assert r.ephemeral and message in r.response.content
    assert not world.env.errors  # a refusal is an answer, not an error
    assert world.bot.executor.pending() == 0
    assert jobs_in_db(world) == 0


async def test_rerolls_meet_the_limits_too(world):
    first = await world.alice.slash(world.channel, "draw", prompt="a cat", steps=6)
    await world.idle()
    await admin(world).slash(world.channel, "mod settings set", max_steps=5)
    r = await world.bob.slash(world.channel, "reroll", job=1)
    assert r.ephemeral and "at most 5 steps" in r.response.content
    assert not world.env.errors  # a refusal is an answer, not an error
    res = await world.bob.click(first.response, label="Reroll")
    assert res.response.ephemeral and "at most 5 steps" in res.response.content
    assert jobs_in_db(world) == 1 and world.bot.executor.pending() == 0


async def test_the_per_member_queue_cap_of_a_server(world):
    await admin(world).slash(world.channel, "mod settings set", max_queued=1)
    world.bot.executor.pause()
    r = await world.alice.slash(world.channel, "draw", prompt="a cat")
    assert "Queued as job #1" in r.response.content
    r = await world.alice.slash(world.channel, "draw", prompt="a dog")
    assert r.ephemeral
    assert r.response.content == (
        "This server allows 1 drawing per member waiting or in progress, and you have 1. "
        "Wait for one to finish, or use /cancel."
    )
    assert not world.env.errors  # a refusal is an answer, not an error
    other = await world.bob.slash(world.channel, "draw", prompt="an owl")  # bob has his own
    assert "Queued as job #2" in other.response.content
    world.bot.executor.resume()
    await world.idle()
    assert jobs_in_db(world) == 2


async def test_cooldown_between_a_members_drawings(world):
    await admin(world).slash(world.channel, "mod settings set", cooldown=30)
    first = await world.alice.slash(world.channel, "draw", prompt="a cat")
    await world.idle()
    assert first.response.embeds
    await world.env.advance_time(10)
    r = await world.alice.slash(world.channel, "draw", prompt="a dog")
    assert r.ephemeral and r.response.content == (
        "This server asks members to wait 30 seconds between drawings; "
        "you can draw again in 20 seconds."
    )
    assert not world.env.errors  # a refusal is an answer, not an error
    other = await world.bob.slash(world.channel, "draw", prompt="an owl")  # not bob's wait
    await world.idle()
    assert other.response.embeds
    await world.env.advance_time(21)
    again = await world.alice.slash(world.channel, "draw", prompt="a dog")
    await world.idle()
    assert again.response.embeds
    assert jobs_in_db(world) == 3
