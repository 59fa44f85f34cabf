"""Images flagged by the model's safety checker: withheld (the user is told), or posted only where
the server allows it and the channel is age-restricted (threads follow their parent; never DMs).

Two stand-ins, for what cannot exist here: the tiny test models have no safety checker (a real
one is a large download), so ``flag`` wraps the engine's run to set ``DrawResult.nsfw`` the way
a checker would; and SimCord channels carry no age-restricted flag, so ``age_restrict`` sets it
on the bot's cached channel, where discord.py keeps what the gateway sent.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import discord


def flag(bot, *flags: bool) -> None:
    """Make the engine report ``flags`` (per image) as its safety checker's verdict."""
    original = bot.models.run_batch

    def run_batch(requests, on_step=None):
        results = original(requests, on_step)
        return [replace(r, nsfw=tuple(flags[: len(r.images)])) for r in results]

    bot.models.run_batch = run_batch


def age_restrict(bot, channel) -> None:
    cached = bot.get_channel(channel.id)
    assert isinstance(cached, discord.TextChannel)
    cached.nsfw = True


def stored_files(bot) -> list:
    return sorted((bot.settings.data_dir / "images").rglob("*.png"))


def notes(message) -> list[str]:
    return [f.value for f in message.embeds[0].fields if f.name == "Note"]


async def allow_in_age_restricted(world) -> None:
    perms = discord.Permissions(manage_guild=True, manage_messages=True)
    role = world.guild.create_role("Admins", permissions=perms)
    boss = world.guild.add_member(world.env.create_user("boss"), roles=[role])
    r = await boss.slash(world.channel, "mod settings set", nsfw="age_restricted")
    assert "posted in age-restricted channels only (set here)" in r.response.content


async def test_flagged_images_are_withheld_and_the_user_told(world):
    flag(world.bot, True, False)
    r = await world.alice.slash(world.channel, "draw", prompt="a beach", seed=10, count=2)
    await world.idle()
    msg = r.response
    assert len(msg.attachments) == 1  # only the unflagged one
    assert "safety checker flagged 1 of 2 pictures; it is not posted" in notes(msg)[0]
    record = await world.bot.store.get_job(1)
    assert record.status == "done" and record.withheld == 1
    assert [seed for _, seed in record.images] == [11]  # the flagged seed 10 was not kept
    assert stored_files(world.bot) == [record.images[0][0]]
    history = await world.alice.slash(world.channel, "history")
    assert "🔞 1 withheld" in history.response.embeds[0].description


async def test_a_drawing_with_every_image_flagged_posts_none(world):
    flag(world.bot, True)
    r = await world.alice.slash(world.channel, "draw", prompt="a beach")
    await world.idle()
    assert r.response.attachments == []
    assert "safety checker flagged the picture; it is not posted" in notes(r.response)[0]
    record = await world.bot.store.get_job(1)
    assert record.status == "done" and record.withheld == 1 and record.images == []
    assert stored_files(world.bot) == []
    with sqlite3.connect(world.bot.settings.db_path) as db:
        assert db.execute("SELECT count(*) FROM job_images").fetchone()[0] == 0


async def test_an_age_restricted_channel_alone_is_not_enough(world):
    age_restrict(world.bot, world.channel)  # but the server still filters (the default)
    flag(world.bot, True)
    r = await world.alice.slash(world.channel, "draw", prompt="a beach")
    await world.idle()
    assert r.response.attachments == []


async def test_allowed_in_age_restricted_channels_only(world):
    await allow_in_age_restricted(world)
    flag(world.bot, True, False)
    plain = await world.alice.slash(world.channel, "draw", prompt="a beach", count=2)
    await world.idle()
    assert len(plain.response.attachments) == 1  # #draw is not age-restricted

    adults = world.guild.create_text_channel("adults")
    await world.env.settle()
    age_restrict(world.bot, adults)
    r = await world.alice.slash(adults, "draw", prompt="a beach", count=2)
    await world.idle()
    assert len(r.response.attachments) == 2
    assert any("shown because this server allows that" in n for n in notes(r.response))
    record = await world.bot.store.get_job(2)
    assert record.withheld == 0 and len(record.images) == 2


async def test_a_thread_follows_its_age_restricted_parent(world):
    await allow_in_age_restricted(world)
    adults = world.guild.create_text_channel("adults")
    await world.env.settle()
    age_restrict(world.bot, adults)
    world.env.backend.create_thread(adults.id, "beach pics", world.alice.id)
    await world.env.settle()
    (thread,) = adults.threads
    assert isinstance(world.bot.get_channel(thread.id), discord.Thread)
    flag(world.bot, True)
    r = await world.alice.slash(thread, "draw", prompt="a beach")
    await world.idle()
    assert len(r.response.attachments) == 1

    world.env.backend.create_thread(world.channel.id, "tame", world.alice.id)
    await world.env.settle()
    (tame,) = world.channel.threads
    r = await world.alice.slash(tame, "draw", prompt="a beach")
    await world.idle()
    assert r.response.attachments == []


async def test_direct_messages_are_never_age_restricted(world):
    flag(world.bot, True, False)
    carol = world.env.create_user("carol")
    r = await carol.slash("draw", prompt="a beach", count=2)
    await world.idle()
    assert len(r.response.attachments) == 1
    record = await world.bot.store.get_job(1)
    assert record.guild_id is None and record.withheld == 1
