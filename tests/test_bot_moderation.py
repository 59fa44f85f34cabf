"""Moderation: banned words (however they are spelled), pause and resume."""

from __future__ import annotations

import discord
import pytest

from bot.wordfilter import find_banned, normalise


@pytest.mark.parametrize(
    "prompt",
    [
        "nsfw art",
        "N.S.F.W art",
        "N S F W art",
        "ＮＳＦＷ art",  # full-width letters
        "n\u200bsfw art",  # zero-width space
        "n5fw art",  # digit look-alike
        "n\u0455fw art",  # Cyrillic dze looks like s
        "Nsfw-ish art",
        "ｎ ｓ ｆ ｗ",
        "nśfw",  # accent
    ],
)
def test_every_spelling_variant_is_caught(prompt):
    assert find_banned(prompt, [normalise("NSFW")]) == "nsfw"


def test_whole_words_only():
    assert find_banned("a classic class of glass", ["ass"]) is None
    assert find_banned("a sad ass", ["ass"]) == "ass"
    assert find_banned("gore fest", [normalise("Gore Fest")]) == "gore fest"


async def test_banned_words_are_refused_privately_and_recorded(world):
    mod, alice, ch = world.mod, world.alice, world.channel
    r = await mod.slash(ch, "mod banword add", word="N.S.F.W")
    assert r.ephemeral and "“nsfw” are now refused" in r.response.content
    r = await alice.slash(ch, "draw", prompt="an ｎｓｆｗ painting")
    assert r.ephemeral and "doesn't allow “nsfw”" in r.response.content
    assert not world.env.errors  # a refusal is an answer, not an error
    assert world.bot.executor.pending() == 0
    history = await mod.slash(ch, "mod history")
    assert "refused" in history.response.embeds[0].description
    ok = await alice.slash(ch, "draw", prompt="a classic painting")
    await world.idle()
    assert ok.response.embeds
    listed = await mod.slash(ch, "mod banword list")
    assert listed.response.content == "Banned: “nsfw”"
    await mod.slash(ch, "mod banword remove", word="nsfw")
    allowed = await alice.slash(ch, "draw", prompt="nsfw painting")
    await world.idle()
    assert allowed.response.embeds


async def test_banned_words_are_per_server_and_survive_restart(world, make_bot):
    from tests.conftest import shut_down

    await world.mod.slash(world.channel, "mod banword add", word="gore")
    await shut_down(world.bot)
    await world.env.restart_bot(make_bot())
    r = await world.alice.slash(world.channel, "draw", prompt="GORE")
    assert r.ephemeral and "doesn't allow" in r.response.content
    assert not world.env.errors  # a refusal is an answer, not an error
    other = world.env.create_guild("Other")
    ch = other.create_text_channel("art")
    member = other.add_member(world.env.create_user("carol"))
    r = await member.slash(ch, "draw", prompt="gore")
    await world.idle()
    assert r.response.embeds


async def test_pause_needs_manage_server_and_keeps_the_queue(world):
    r = await world.mod.slash(world.channel, "mod pause")
    assert r.ephemeral and "Manage Server" in r.response.content
    world.env.errors  # noqa: B018
    perms = discord.Permissions(manage_guild=True, manage_messages=True)
    admins = world.guild.create_role("Admins", permissions=perms)
    boss = world.guild.add_member(world.env.create_user("boss"), roles=[admins])
    r = await boss.slash(world.channel, "mod pause")
    assert "Paused in this server" in r.response.content
    assert world.bot.executor.is_paused(world.guild.id) and not world.bot.executor.paused
    queued = await world.alice.slash(world.channel, "draw", prompt="a cat")
    assert "paused by the moderators" in queued.response.content
    r = await boss.slash(world.channel, "mod resume")
    assert "1 drawing waiting" in r.response.content
    await world.idle()
    assert queued.response.embeds


async def test_forget_deletes_rows_and_files_after_confirmation(world):
    import sqlite3

    for prompt in ("a cat", "a dog"):
        await world.alice.slash(world.channel, "draw", prompt=prompt, steps=1)
        await world.idle()
    await world.bob.slash(world.channel, "draw", prompt="bob's owl", steps=1)
    await world.idle()
    store = world.bot.store
    alice_files = [p for i in (1, 2) for p, _ in (await store.get_job(i)).images]
    assert all(p.is_file() for p in alice_files)

    r = await world.alice.slash(world.channel, "forget")
    assert r.ephemeral and "can't be undone" in r.response.content
    await world.alice.click(r.response, label="No, keep them")
    assert await store.get_job(1) is not None

    r = await world.alice.slash(world.channel, "forget")
    await world.alice.click(r.response, label="Yes, delete everything")
    msg = next(m for m in world.channel.history(viewer=world.alice) if m.id == r.response.id)
    assert msg.content.startswith("Done: 2 drawings and their stored images")
    assert not any(p.exists() for p in alice_files)
    assert (await store.get_job(3)).status == "done"  # bob's are untouched
    with sqlite3.connect(world.bot.settings.db_path) as db:
        rows = db.execute("SELECT count(*) FROM jobs WHERE user_id = ?", (world.alice.id,))
        assert rows.fetchone()[0] == 0
