"""/history for members and /mod history for moderators."""

from __future__ import annotations

import sys

import discord
import pytest
import simcord


async def draw_many(world, member, prompts):
    for p in prompts:
        await member.slash(world.channel, "draw", prompt=p, steps=1)
        await world.idle()


async def test_history_shows_your_own_jobs_newest_first_in_pages(world):
    await draw_many(world, world.alice, [f"alice picture {i}" for i in range(7)])
    await draw_many(world, world.bob, ["bob picture"])
    r = await world.alice.slash(world.channel, "history")
    assert r.ephemeral
    embed = r.response.embeds[0]
    text = embed.description
    assert text.index("alice picture 6") < text.index("alice picture 2")
    assert "alice picture 1" not in text and "bob picture" not in text
    assert "**#7**" in text and "seed " in text and "PNDM" in text and "1 step" in text
    assert "[message](" in text and "<t:" in text
    assert embed.footer.text == "Page 1 of 2 · 7 jobs"

    await world.alice.click(r.response, label="Next")
    updated = next(m for m in world.channel.history(viewer=world.alice) if m.id == r.response.id)
    text2 = updated.embeds[0].description
    assert "alice picture 1" in text2 and "alice picture 0" in text2
    assert "alice picture 6" not in text2
    assert updated.embeds[0].footer.text == "Page 2 of 2 · 7 jobs"

    await world.alice.click(updated, label="Prev")
    back = next(m for m in world.channel.history(viewer=world.alice) if m.id == r.response.id)
    assert "alice picture 6" in back.embeds[0].description


async def test_history_search_treats_wildcards_as_text(world):
    await draw_many(world, world.alice, ["100% cat", "dog_house", "plain cat"])
    r = await world.alice.slash(world.channel, "history", query="%")
    text = r.response.embeds[0].description
    assert "100% cat" in text and "plain cat" not in text
    r = await world.alice.slash(world.channel, "history", query="nothing like this")
    assert r.response.embeds[0].description == "Nothing here yet."


async def test_members_cannot_see_mod_history(world):
    assert "mod history" not in world.alice.available_commands(world.channel)
    with pytest.raises(simcord.SetupError):
        await world.alice.slash(world.channel, "mod history")


async def test_bot_checks_permissions_even_if_an_admin_shows_the_command(world):
    commands = await world.bot.tree.fetch_commands()
    mod = next(c for c in commands if c.name == "mod")
    world.guild.set_command_permissions(mod, {world.alice: True})
    r = await world.alice.slash(world.channel, "mod history")
    assert r.ephemeral and "Only moderators" in r.response.content
    simcord.assert_error(world.env, discord.app_commands.MissingPermissions)


async def test_moderators_see_everyones_jobs_with_deletions_marked(world):
    await draw_many(world, world.alice, ["alice fox"])
    await draw_many(world, world.bob, ["bob owl"])
    alice_card = world.channel.history()[0]
    await world.alice.click(alice_card, label="Delete")
    r = await world.mod.slash(world.channel, "mod history")
    assert r.ephemeral
    text = r.response.embeds[0].description
    assert "alice fox" in text and "bob owl" in text
    assert f"deleted by <@{world.alice.id}>" in text
    only_bob = await world.mod.slash(world.channel, "mod history", user=world.bob)
    text = only_bob.response.embeds[0].description
    assert "bob owl" in text and "alice fox" not in text


async def test_mod_history_search_pages_without_counting_every_match(world, monkeypatch):
    # Jobs written straight to the store: nothing is drawn, so the test stays quick.
    from pipeline.request import DrawRequest

    store = world.bot.store
    for i in range(7):
        for prompt, member in ((f"Red Ｆｏｘ {i}", world.alice), (f"blue owl {i}", world.bob)):
            await store.add_job(
                DrawRequest(prompt=prompt),
                guild_id=world.guild.id,
                channel_id=world.channel.id,
                user_id=member.id,
                user_name=member.name,
                status="refused",
            )
    r = await world.mod.slash(world.channel, "mod history", query="FOX")
    embed = r.response.embeds[0]
    assert "Red Ｆｏｘ 6" in embed.description and "owl" not in embed.description
    assert embed.footer.text == "Page 1 of 2 · 7 jobs"
    await world.mod.click(r.response, label="Next")
    page2 = next(m for m in world.channel.history(viewer=world.mod) if m.id == r.response.id)
    assert "Red Ｆｏｘ 1" in page2.embeds[0].description
    assert "Red Ｆｏｘ 2" not in page2.embeds[0].description
    with pytest.raises(simcord.SetupError, match="disabled"):
        await world.mod.click(page2, label="Next")

    # Past the cap the total is a lower bound; a first page with no next one needs no count.
    # (discord.py loads the cog's module itself: it is in sys.modules, not on bot.cogs.)
    monkeypatch.setattr(sys.modules["bot.cogs.history"], "COUNT_CAP", 3)
    monkeypatch.setattr(sys.modules["bot.views"], "COUNT_CAP", 3)
    r = await world.mod.slash(world.channel, "mod history", query="o")
    assert r.response.embeds[0].footer.text == "Page 1 · 3+ jobs"
    r = await world.mod.slash(world.channel, "mod history", user=world.bob, query="owl 1")
    assert r.response.embeds[0].footer.text == "Page 1 of 1 · 1 job"
