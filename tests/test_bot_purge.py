"""/mod purge: a member's drawings removed from one server (messages, rows, files), audited."""

from __future__ import annotations

import sqlite3


def rows(world, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(world.bot.settings.db_path) as db:
        return db.execute(sql, params).fetchall()


def message_ids(channel) -> set[int]:
    return {m.id for m in channel.history()}


async def test_purge_removes_a_members_drawings_here_only_after_confirmation(world):
    env, alice, mod, ch = world.env, world.alice, world.mod, world.channel
    first = await alice.slash(ch, "draw", prompt="a cat", seed=1, count=2)
    await world.idle()
    second = await alice.slash(ch, "draw", prompt="a dog", seed=5)
    await world.idle()
    kept = await world.bob.slash(ch, "draw", prompt="bob's owl", seed=9)
    await world.idle()
    # The same person in another server keeps everything there.
    other = env.create_guild("Elsewhere")
    other_ch = other.create_text_channel("art")
    alice_there = other.add_member(alice.user)
    there = await alice_there.slash(other_ch, "draw", prompt="a fox", seed=20)
    await world.idle()

    first_id, kept_id = first.response.id, kept.response.id
    store = world.bot.store
    alice_files = [p for job in (1, 2) for p, _ in (await store.get_job(job)).images]
    assert len(alice_files) == 3 and all(p.is_file() for p in alice_files)
    await mod.delete(second.response)  # already deleted on Discord: the purge must not fail

    r = await mod.slash(ch, "mod purge", user=alice)
    assert r.ephemeral and "all 2 drawings" in r.response.content
    await mod.click(r.response, label="No, keep them")
    assert await store.get_job(1) is not None and first_id in message_ids(ch)

    r = await mod.slash(ch, "mod purge", user=alice)
    await mod.click(r.response, label="Yes, delete them")
    answer = next(m for m in ch.history(viewer=mod) if m.id == r.response.id)
    assert answer.content == (
        f"Done: 2 drawings and 3 images of <@{alice.id}> deleted from this server; "
        "1 message removed (1 was already gone)."
    )
    assert first_id not in message_ids(ch)
    assert kept_id in message_ids(ch)
    assert not any(p.exists() for p in alice_files)
    assert (
        rows(world, "SELECT id FROM jobs WHERE user_id = ? AND guild_id = ?", alice.id, ch.guild.id)
        == []
    )
    assert rows(world, "SELECT count(*) FROM job_images WHERE job_id IN (1, 2)") == [(0,)]
    assert (await store.get_job(3)).status == "done"  # bob's
    elsewhere = await store.get_job(4)
    assert elsewhere.user_id == alice.id and elsewhere.images[0][0].is_file()
    assert there.response.id in message_ids(other_ch)

    (audit,) = await store.purges(world.guild.id)
    assert (audit.moderator_id, audit.target_user_id, audit.guild_id) == (
        mod.id,
        alice.id,
        world.guild.id,
    )
    assert (audit.jobs, audit.images, audit.messages_deleted, audit.messages_missing) == (
        2,
        3,
        1,
        1,
    )
    assert await store.purges(other.id) == []
    shown = await mod.slash(ch, "mod audit")
    assert f"<@{mod.id}> purged <@{alice.id}>: 2 drawings, 3 images" in shown.response.content


async def test_purge_stops_the_members_queued_drawings(world):
    world.bot.executor.pause()
    queued = await world.alice.slash(world.channel, "draw", prompt="a cat")
    r = await world.mod.slash(world.channel, "mod purge", user=world.alice)
    await world.mod.click(r.response, label="Yes, delete them")
    assert world.bot.executor.pending() == 0
    world.bot.executor.resume()
    await world.idle()
    assert rows(world, "SELECT count(*) FROM jobs") == [(0,)]
    assert queued.response.content == "Job #1 was removed by a moderator."
    (audit,) = await world.bot.store.purges(world.guild.id)
    assert audit.jobs == 1 and audit.images == 0


async def test_nothing_to_purge(world):
    r = await world.mod.slash(world.channel, "mod purge", user=world.bob)
    assert r.ephemeral and "has no drawings in this server" in r.response.content
    r = await world.mod.slash(world.channel, "mod audit")
    assert r.response.content == "No purges in this server."
