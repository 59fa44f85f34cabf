"""Restarts: queued jobs survive, buttons keep working, commands are synced only when changed."""

from __future__ import annotations

from tests.conftest import shut_down


def command_puts(env) -> int:
    return sum(1 for e in env.http_requests if e.method == "PUT" and e.path.endswith("/commands"))


async def test_jobs_queued_when_the_bot_died_run_after_restart_exactly_once(world, make_bot):
    env, old = world.env, world.bot
    old.executor.pause()  # the GPU is busy: both jobs wait
    first = await world.alice.slash(world.channel, "draw", prompt="a lighthouse", seed=1)
    await world.bob.slash(world.channel, "draw", prompt="a harbour", seed=2, count=2)
    assert [j.status for j in await old.store.unfinished_jobs()] == ["queued", "queued"]

    await shut_down(old)  # the process dies: nothing ran, nothing was delivered
    new = make_bot()
    await env.restart_bot(new)
    await world.idle()

    store = new.store
    assert [(await store.get_job(i)).status for i in (1, 2)] == ["done", "done"]
    assert await store.unfinished_jobs() == []
    posted = [m for m in world.channel.history() if m.embeds]
    footers = sorted(m.embeds[0].footer.text for m in posted)
    assert footers == ["Job #1", "Job #2"]  # each delivered once
    by_job = {m.embeds[0].footer.text: m for m in posted}
    assert by_job["Job #1"].content == f"<@{world.alice.id}>"
    assert by_job["Job #2"].content == f"<@{world.bob.id}>"
    assert len(by_job["Job #2"].attachments) == 2
    ping = env.backend.get_message(by_job["Job #1"].channel.id, by_job["Job #1"].id)
    assert ping.ping_user_ids == [world.alice.id]
    assert first.response.id not in [m.id for m in posted]

    await new.executor.wait_idle()
    again = make_bot()  # a second restart finds nothing left to run
    await shut_down(new)
    await env.restart_bot(again)
    await world.idle()
    assert len([m for m in world.channel.history() if m.embeds]) == 2


async def test_buttons_on_old_messages_work_after_restart(world, make_bot):
    env, old = world.env, world.bot
    r = await world.alice.slash(world.channel, "draw", prompt="an owl")
    await world.idle()
    card = r.response
    await shut_down(old)
    new = make_bot()
    await env.restart_bot(new)
    res = await world.bob.click(card, label="Reroll")
    await world.idle()
    assert res.response.embeds[0].footer.text == "Job #2"
    res = await world.alice.click(card, label="Delete")
    assert (await new.store.get_job(1)).deleted


async def test_commands_are_synced_only_when_they_change(world, make_bot):
    env = world.env
    assert command_puts(env) == 1  # first start: synced, hash remembered
    await shut_down(world.bot)
    same = make_bot()
    await env.restart_bot(same)
    assert command_puts(env) == 1  # same commands: no sync
    await shut_down(same)

    changed = make_bot()

    async def extra_setup() -> None:
        import discord

        @discord.app_commands.command(name="ping", description="test command")
        async def ping(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pong")

        changed.tree.add_command(ping)

    original = changed.setup_hook

    async def setup_hook() -> None:
        await extra_setup()
        await original()

    changed.setup_hook = setup_hook  # type: ignore[method-assign]
    await env.restart_bot(changed)
    assert command_puts(env) == 2


async def test_a_result_drawn_but_not_posted_before_the_crash_is_posted_after_restart(
    world, make_bot
):
    env, old = world.env, world.bot
    await world.alice.slash(world.channel, "draw", prompt="a comet", seed=4)
    await world.idle()
    posted = world.channel.history()[-1]
    assert posted.embeds[0].footer.text == "Job #1"
    # Simulate the crash window between storing the images and posting them.
    await old.store.close()
    import sqlite3

    with sqlite3.connect(old.settings.db_path) as db:
        db.execute("UPDATE jobs SET message_id = NULL, jump_url = NULL WHERE id = 1")
    await shut_down(old)
    new = make_bot()
    await env.restart_bot(new)
    await world.idle()
    reposted = world.channel.history()[-1]
    assert reposted.id != posted.id and reposted.embeds[0].footer.text == "Job #1"
    assert reposted.content == f"<@{world.alice.id}>"
    record = await new.store.get_job(1)
    assert record.message_id == reposted.id
    # ...and exactly once: another restart posts nothing more.
    await shut_down(new)
    await env.restart_bot(make_bot())
    await world.idle()
    assert world.channel.history()[-1].id == reposted.id
