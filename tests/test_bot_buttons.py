"""Reroll and Delete on results, and /reroll."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def fields(message) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


async def draw(world, member, **options):
    r = await member.slash(world.channel, "draw", **{"prompt": "a red fox", **options})
    await world.idle()
    return r.response


async def pixels(message) -> np.ndarray:
    data = await message.attachments[0].read()
    return np.asarray(Image.open(io.BytesIO(data)))


async def test_anyone_can_reroll_and_the_result_credits_the_clicker(world):
    card = await draw(world, world.alice, seed=5, steps=3, guidance=7.5)
    res = await world.bob.click(card, label="Reroll")
    await world.idle()
    rerolled = res.response
    assert not rerolled.ephemeral and rerolled.id != card.id
    f = fields(rerolled)
    assert f["Steps"] == "3" and f["Guidance"] == "7.5" and f["Sampler"] == "PNDM"
    assert f["Seed"] != "5"  # a new random seed, shown
    assert f"Rerolled from job #1 by <@{world.bob.id}>" in [
        fl.value for fl in rerolled.embeds[0].fields
    ]
    record = await world.bot.store.get_job(2)
    assert record.user_id == world.bob.id and record.parent_job_id == 1
    assert record.prompt == "a red fox" and record.status == "done"


async def test_reroll_command_with_the_same_seed_redraws_the_same_picture(world):
    card = await draw(world, world.alice, seed=99)
    r = await world.bob.slash(world.channel, "reroll", job=1, seed=99)
    await world.idle()
    assert fields(r.response)["Seed"] == "99"
    assert np.array_equal(await pixels(card), await pixels(r.response))


async def test_reroll_of_an_unknown_job_is_refused_politely(world):
    r = await world.alice.slash(world.channel, "reroll", job=42)
    assert r.ephemeral and r.response.content == "There is no job #42 here that you can reroll."
    assert not world.env.errors  # a refusal is an answer, not an error
    other = world.env.create_guild("Elsewhere")
    ch = other.create_text_channel("general")
    stranger = other.add_member(world.env.create_user("stranger"))
    await draw(world, world.alice)
    r = await stranger.slash(ch, "reroll", job=1)  # job 1 belongs to Art Club
    assert r.ephemeral and "no job #1 here that you can reroll" in r.response.content
    assert not world.env.errors  # a refusal is an answer, not an error


async def test_only_the_requester_or_a_moderator_can_delete(world):
    card = await draw(world, world.alice)
    res = await world.bob.click(card, label="Delete")
    assert res.ephemeral
    assert "Only the person who asked for this drawing or a moderator" in res.response.content
    assert world.channel.last_message.id == card.id
    assert not (await world.bot.store.get_job(1)).deleted

    res = await world.alice.click(card, label="Delete")
    assert res.ephemeral and "Deleted job #1" in (res.followups or [res.response])[-1].content
    assert card.id not in [m.id for m in world.channel.history()]
    record = await world.bot.store.get_job(1)
    assert record.deleted and record.deleted_by == world.alice.id


async def test_a_moderator_can_delete_anyones_picture(world):
    card = await draw(world, world.alice)
    await world.mod.click(card, label="Delete")
    assert card.id not in [m.id for m in world.channel.history()]
    assert (await world.bot.store.get_job(1)).deleted_by == world.mod.id
