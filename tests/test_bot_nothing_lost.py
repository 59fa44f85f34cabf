"""Issue 13, nothing lost and nothing twice: crash loops, lost placeholders, purges that race a
delivery, deliveries given up for good, and answers within Discord's 3 seconds however busy the
database is. The real bot, the real tiny model and a real SQLite file, through SimCord."""

from __future__ import annotations

import asyncio
import sqlite3

from pipeline.executor import Executor
from tests.conftest import shut_down


def rows(world, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(world.bot.settings.db_path) as db:
        return db.execute(sql, params).fetchall()


def results_in(channel) -> list:
    return [m for m in channel.history() if m.embeds]


async def test_attempts_are_recorded_before_drawing_and_a_crash_loop_stops(
    world, make_bot, monkeypatch
):
    env, bot = world.env, world.bot
    seen: list[int] = []
    real_run = bot.models.run_batch

    def spy(requests, **kw):  # a spy on the real engine: what the database says as it starts
        with sqlite3.connect(bot.settings.db_path) as db:
            seen.extend(n for (n,) in db.execute("SELECT attempts FROM jobs ORDER BY id"))
        return real_run(requests, **kw)

    bot.models.run_batch = spy
    await world.alice.slash(world.channel, "draw", prompt="a cat")
    await world.idle()
    assert seen == [1]  # committed before the first step

    # Two jobs left unfinished by a crash: the first was started twice already (it took the
    # process down both times, as a 1024x1024 x4 job under the OOM killer would), the second
    # once. Written straight into the database, as the dead process left it.
    bot.executor.pause()
    await world.alice.slash(world.channel, "draw", prompt="a huge thing")  # job 2
    await world.bob.slash(world.channel, "draw", prompt="a small dog")  # job 3
    await shut_down(bot)
    with sqlite3.connect(bot.settings.db_path) as db:
        db.execute("UPDATE jobs SET status = 'running', attempts = 2 WHERE id = 2")
        db.execute("UPDATE jobs SET status = 'running', attempts = 1 WHERE id = 3")
    new = make_bot()
    seeded: dict[int, int] = {}
    submit = Executor.submit

    def spy_submit(self, request, **kw):  # what the executor is told of the earlier starts
        seeded[kw["ticket"]] = kw.get("attempts", 0)
        return submit(self, request, **kw)

    monkeypatch.setattr(Executor, "submit", spy_submit)
    await env.restart_bot(new)
    await world.idle()
    # Job 3's first start counts towards MAX_ATTEMPTS in the executor too (a lost Ray worker
    # may start it only once more), not from 0 again.
    assert seeded == {3: 1}

    store = new.store
    two, three = await store.get_job(2), await store.get_job(3)
    assert two.status == "failed" and "2 attempts" in two.error and two.attempts == 2
    assert three.status == "done" and three.attempts == 2
    told = [m for m in world.channel.history() if "Job #2 was stopped" in (m.content or "")]
    assert len(told) == 1 and told[0].content.startswith(f"<@{world.alice.id}>")
    assert "smaller size or fewer pictures" in told[0].content
    # A second restart neither retries nor re-announces it.
    again = make_bot()
    await shut_down(new)
    await env.restart_bot(again)
    await world.idle()
    assert (
        len([m for m in world.channel.history() if "Job #2 was stopped" in (m.content or "")]) == 1
    )


async def test_a_deleted_queued_message_still_gets_its_result_in_the_channel(world):
    world.bot.executor.pause()
    r = await world.alice.slash(world.channel, "draw", prompt="a cat")
    assert "Queued as job #1" in r.response.content
    # Someone deleted the "Queued" message: editing it answers 404 / 10008 Unknown Message.
    world.env.inject_error(
        "PATCH", "/webhooks/*/messages/@original", status=404, code=10008, times=None
    )
    world.bot.executor.resume()
    await world.idle()
    (result,) = results_in(world.channel)
    assert result.content == f"<@{world.alice.id}>" and result.embeds[0].footer.text == "Job #1"
    job = await world.bot.store.get_job(1)
    assert job.message_id == result.id and job.delivery_failed is None


async def test_a_closed_channel_sends_the_result_by_dm(world):
    world.bot.executor.pause()
    await world.alice.slash(world.channel, "draw", prompt="a cat")
    world.env.inject_error(
        "PATCH", "/webhooks/*/messages/@original", status=403, code=50001, times=None
    )
    world.env.inject_error(
        "POST", f"/channels/{world.channel.id}/messages", status=403, code=50013, times=None
    )
    world.bot.executor.resume()
    await world.idle()
    assert results_in(world.channel) == []
    (dm,) = [m for m in world.alice.user.dm_channel.history() if m.embeds]
    assert dm.embeds[0].footer.text == "Job #1" and "Sent here because" in dm.content
    assert (await world.bot.store.get_job(1)).message_id == dm.id


async def test_a_result_that_cant_be_posted_anywhere_is_recorded_and_not_reposted(world, make_bot):
    env = world.env
    world.bot.executor.pause()
    await world.alice.slash(world.channel, "draw", prompt="a cat")
    env.inject_error("PATCH", "/webhooks/*/messages/@original", status=403, code=50001, times=None)
    env.inject_error("POST", "/channels/*/messages", status=403, code=50013, times=None)
    world.bot.executor.resume()
    await world.idle()
    job = await world.bot.store.get_job(1)
    assert job.status == "done" and job.images and job.message_id is None
    assert "50013" in job.delivery_failed and "DM refused" in job.delivery_failed
    env.backend.faults.clear()
    for _ in range(2):  # restarts don't try again
        old = world.bot
        await shut_down(old)
        await env.restart_bot(make_bot())
        await world.idle()
    assert results_in(world.channel) == []


async def test_too_large_results_are_given_up_once(world, make_bot, monkeypatch):
    from bot import jobs

    monkeypatch.setattr(jobs.Delivery, "upload_limit", lambda self: 100)  # tiny server limit
    await world.alice.slash(world.channel, "draw", prompt="a cat")
    await world.idle()
    job = await world.bot.store.get_job(1)
    assert "too large" in job.delivery_failed
    monkeypatch.undo()
    await shut_down(world.bot)
    await world.env.restart_bot(make_bot())
    await world.idle()
    assert results_in(world.channel) == []


async def test_a_purge_while_a_result_is_being_delivered_leaves_no_post(world, monkeypatch):
    bot, store = world.bot, world.bot.store
    real_save = store.save_image
    started: list[asyncio.Task] = []

    async def save_while_a_moderator_purges(data: bytes):
        # The race, made certain: the moderator confirms the purge just as the finished
        # drawing is being saved (timing stand-in; everything else is real).
        if not started:
            started.append(
                asyncio.create_task(bot.jobs.purge(world.guild.id, world.alice.id, world.mod.id))
            )
            for _ in range(20):
                await asyncio.sleep(0)
        return await real_save(data)

    monkeypatch.setattr(store, "save_image", save_while_a_moderator_purges)
    await world.alice.slash(world.channel, "draw", prompt="a cat", seed=3)
    await world.idle()
    purge = await started[0]
    assert purge.jobs == 1
    assert results_in(world.channel) == []  # nothing posted that the bot no longer tracks
    assert rows(world, "SELECT count(*) FROM jobs")[0][0] == 0
    images = store.images_dir
    assert not images.exists() or not any(images.rglob("*.png"))
    # The next drawing works, and the member's caps were released.
    assert bot.executor.pending() == 0
    r = await world.alice.slash(world.channel, "draw", prompt="a dog")
    await world.idle()
    assert r.response.embeds


async def test_forget_stops_queued_work_and_drops_results_in_flight(world):
    bot = world.bot
    bot.executor.pause()
    await world.alice.slash(world.channel, "draw", prompt="first")
    await world.alice.slash(world.channel, "draw", prompt="second")
    r = await world.alice.slash(world.channel, "forget")
    await world.alice.click(r.response, label="Yes, delete everything")
    await world.env.settle()
    msg = next(m for m in world.channel.history(viewer=world.alice) if m.id == r.response.id)
    assert msg.content.startswith("Done: 2 drawings and their stored images"), msg.content
    assert bot.executor.pending() == 0
    bot.executor.resume()
    await world.idle()
    assert results_in(world.channel) == []
    assert rows(world, "SELECT count(*) FROM jobs WHERE user_id = ?", world.alice.id)[0][0] == 0


async def test_interactions_answer_before_waiting_for_the_database(world, monkeypatch):
    """Every command answers (or defers) before it waits for the store's connection, so a
    long write elsewhere (a purge, a migration, a slow disk) can't make Discord give up on it
    after 3 seconds. Shown by watching the connection's lock and the answers in one log (SimCord
    can't hold the lock across an interaction: it reports any unknown wait as a hang)."""
    import discord

    await world.bob.slash(world.channel, "draw", prompt="a fox")  # job 1, to reroll later
    await world.idle()
    store = world.bot.store
    events: list[str] = []

    class WatchedLock(asyncio.Lock):
        async def acquire(self) -> bool:
            events.append("db")
            return await super().acquire()

    store._lock = WatchedLock()
    for name in ("defer", "send_message", "edit_message"):
        original = getattr(discord.InteractionResponse, name)

        def answered(self, *args, __original=original, **kwargs):
            events.append("answer")
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(discord.InteractionResponse, name, answered)

    commands = [
        (world.alice, "draw", {"prompt": "a cat"}),
        (world.alice, "draw", {"prompt": "a cat", "width": 100}),  # refused
        (world.alice, "reroll", {"job": 1}),
        (world.alice, "reroll", {"job": 99}),  # refused
        (world.alice, "history", {}),
        (world.alice, "history", {"query": "fox"}),
        (world.alice, "queue", {}),
        (world.mod, "mod history", {"query": "cat"}),
        (world.mod, "mod purge", {"user": world.bob}),
        (world.mod, "mod audit", {}),
        (world.mod, "mod banword add", {"word": "gore*"}),
        (world.mod, "mod settings show", {}),
    ]
    for member, name, options in commands:
        await world.idle()  # the previous command's drawing would use the store meanwhile
        events.clear()
        await member.slash(world.channel, name, **options)
        assert events and events[0] == "answer", (name, options, events)
    await world.idle()
    assert not world.env.errors
