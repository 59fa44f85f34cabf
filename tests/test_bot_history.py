"""/history for members and /mod history for moderators."""

from __future__ import annotations

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
    assert "**#7**" in text and "seed " in text and "PNDM" in text and "1 steps" in text
    assert "[message](" in text and "<t:" in text
    assert embed.footer.text == "Page 1 of 2 · 7 job(s)"

    await world.alice.click(r.response, label="Next")
    updated = next(m for m in world.channel.history(viewer=world.alice) if m.id == r.response.id)
    text2 = updated.embeds[0].description
    assert "alice picture 1" in text2 and "alice picture 0" in text2
    assert "alice picture 6" not in text2
    assert updated.embeds[0].footer.text == "Page 2 of 2 · 7 job(s)"

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
