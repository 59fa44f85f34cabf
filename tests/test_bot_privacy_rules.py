"""Issue 13, privacy and permissions: what a member may see and control is decided *here*.

Rerolls only of jobs the member may see, /queue per server, per-server pause with an
operator-only global one, and user text that can't become markdown or links.
"""

from __future__ import annotations

import dataclasses

import discord

from tests.conftest import shut_down, until


def posted(channel) -> list:
    return [m for m in channel.history() if m.embeds]


async def draw(world, member, channel=None, **options):
    r = await member.slash(channel or world.channel, "draw", **{"prompt": "a cat", **options})
    await world.idle()
    return r


async def test_a_dm_reroll_of_someone_elses_dm_job_shows_nothing(world):
    carol = world.env.create_user("carol")
    dave = world.env.create_user("dave")
    mine = await carol.slash("draw", prompt="my secret diary picture", negative_prompt="blur")
    await world.idle()
    assert mine.response.embeds
    job = await world.bot.store.get_job(1)
    assert job.guild_id is None and job.user_id == carol.id

    r = await dave.slash("reroll", job=1)
    await world.idle()
    assert r.ephemeral and r.response.content == "There is no job #1 here that you can reroll."
    assert "diary" not in str(r.response.content)
    assert (await world.bot.store.history(None, user_id=dave.id)) == []
    # A server member can't reach a DM job either (guild None vs a guild).
    r = await world.bob.slash(world.channel, "reroll", job=1)
    assert r.ephemeral and "no job #1" in r.response.content
    # The requester can reroll their own DM job.
    again = await carol.slash("reroll", job=1, seed=5)
    await world.idle()
    assert again.response.embeds[0].description == "my secret diary picture"
    assert not world.env.errors


async def test_reroll_needs_a_readable_channel_and_an_undeleted_post(world):
    g = world.guild
    secret = g.create_text_channel(
        "mods-only",
        overwrites={
            g.default_role: discord.PermissionOverwrite(view_channel=False),
            world.mods: discord.PermissionOverwrite(view_channel=True),
        },
    )
    await draw(world, world.mod, secret, prompt="the mods' private plan")  # job 1
    r = await world.alice.slash(world.channel, "reroll", job=1)
    assert r.ephemeral and "no job #1 here that you can reroll" in r.response.content
    assert len(await world.bot.store.history(g.id)) == 1  # nothing queued or stored

    card = (await draw(world, world.bob, prompt="a public fox")).response  # job 2
    ok = await world.alice.slash(world.channel, "reroll", job=2)
    await world.idle()
    assert ok.response.embeds and ok.response.embeds[0].footer.text == "Job #3"

    await world.mod.click(card, label="Delete")  # a moderator deleted job 2's post
    r = await world.alice.slash(world.channel, "reroll", job=2)
    assert r.ephemeral and "no job #2" in r.response.content
    # ...but its requester still may.
    mine = await world.bob.slash(world.channel, "reroll", job=2)
    await world.idle()
    assert mine.response.embeds
    assert not world.env.errors


async def test_queue_lists_only_this_servers_jobs_and_counts_the_rest(world):
    env = world.env
    other = env.create_guild("Elsewhere")
    there = other.create_text_channel("art")
    stranger = other.add_member(env.create_user("stranger"))
    dm_user = env.create_user("hermit")
    world.bot.executor.pause()  # nothing runs: everyone waits
    await world.alice.slash(world.channel, "draw", prompt="a cat")
    await stranger.slash(there, "draw", prompt="a secret elsewhere")
    await dm_user.slash("draw", prompt="a dm thing")

    r = await world.bob.slash(world.channel, "queue")
    text = r.response.content
    assert f"<@{world.alice.id}>" in text and "job #1" in text
    assert f"<@{stranger.id}>" not in text and "job #2" not in text and "job #3" not in text
    assert "2 drawings from elsewhere" in text

    r = await dm_user.slash("queue")
    text = r.response.content
    assert f"<@{dm_user.id}> (you), job #3" in text
    assert f"<@{world.alice.id}>" not in text and "2 drawings from elsewhere" in text
    world.bot.executor.resume()
    await world.idle()


def admin(world):
    perms = discord.Permissions(manage_guild=True, manage_messages=True)
    role = world.guild.create_role("Admins", permissions=perms)
    return world.guild.add_member(world.env.create_user("boss"), roles=[role])


async def test_pause_holds_this_server_only_and_survives_a_restart(world, make_bot):
    env = world.env
    other = env.create_guild("Elsewhere")
    there = other.create_text_channel("art")
    stranger = other.add_member(env.create_user("stranger"))
    boss = admin(world)
    r = await boss.slash(world.channel, "mod pause")
    assert "Paused in this server" in r.response.content

    held = await world.alice.slash(world.channel, "draw", prompt="a cat")
    assert "paused by the moderators" in held.response.content
    elsewhere = await stranger.slash(there, "draw", prompt="a dog")

    async def served() -> bool:
        return (await world.bot.store.get_job(2)).status == "done"

    await until(world, served)
    await world.env.settle()
    assert elsewhere.response.embeds  # the other server was served
    assert (await world.bot.store.get_job(1)).status == "queued"

    await shut_down(world.bot)
    await env.restart_bot(make_bot())
    await world.env.settle()
    assert world.bot.executor.is_paused(world.guild.id)
    assert (await world.bot.store.get_job(1)).status == "queued"  # still paused after restart
    r = await boss.slash(world.channel, "mod resume")
    assert "1 drawing waiting" in r.response.content
    await world.idle()
    assert (await world.bot.store.get_job(1)).status == "done"
    assert not env.errors


async def test_only_the_operator_pauses_every_server(world, bot_settings, make_bot):
    boss = admin(world)
    r = await boss.slash(world.channel, "mod pause", everywhere=True)
    assert r.ephemeral and "Only the bot's operator" in r.response.content
    assert not world.bot.executor.paused

    # The operator is named by OWNER_IDS.
    await shut_down(world.bot)
    operator_settings = dataclasses.replace(bot_settings, owner_ids=(boss.id,))
    from bot.app import create_bot

    bot = create_bot(operator_settings)
    try:
        await world.env.restart_bot(bot)
        r = await boss.slash(world.channel, "mod pause", everywhere=True)
        assert "Paused in every server" in r.response.content and bot.executor.paused
        queued = await world.alice.slash(world.channel, "draw", prompt="a cat")
        assert "operator has paused drawing" in queued.response.content
        r = await boss.slash(world.channel, "mod resume", everywhere=True)
        assert "Resumed everywhere" in r.response.content
        await world.idle()
        assert queued.response.embeds
    finally:
        await shut_down(bot)
    assert not world.env.errors


async def test_prompts_show_as_plain_text_not_links_or_markdown(world):
    prompt = "[Claim Nitro](https://evil.example/x) **free** https://evil.example"
    r = await draw(world, world.alice, prompt=prompt)
    description = r.response.embeds[0].description
    assert "[Claim Nitro](https://" not in description
    assert "\\[Claim Nitro]" in description and "\\*\\*free\\*\\*" in description
    assert "https://evil" not in description  # no clickable URL either
    hist = await world.alice.slash(world.channel, "history")
    entry = hist.response.embeds[0].description
    assert "[Claim Nitro](https://" not in entry and "https://evil" not in entry
    # The prompt itself is kept whole: the PNG and a reroll use the real text.
    assert (await world.bot.store.get_job(1)).prompt == prompt


async def test_banword_list_shows_the_automod_patterns_as_entered(world):
    for word in ("Cat*", "*dog", "squirrel"):
        await world.mod.slash(world.channel, "mod banword add", word=word)
    r = await world.mod.slash(world.channel, "mod banword list")
    # Escaped so Discord shows the asterisks instead of reading them as italics.
    assert r.response.content == "Banned: “\\*dog”, “cat\\*”, “squirrel”"
    refused = await world.alice.slash(world.channel, "draw", prompt="a s q u i r r e l")
    assert refused.ephemeral and "doesn't allow “squirrel”" in refused.response.content
    ok = await world.alice.slash(world.channel, "draw", prompt="a dogma")
    await world.idle()
    assert ok.response.embeds
