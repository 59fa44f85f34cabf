"""/draw end to end: the real bot, the real tiny model, SimCord as Discord."""

from __future__ import annotations

import io

import discord
import pytest
import simcord
from PIL import Image

from pipeline.pngmeta import read_parameters, request_from_parameters


def fields(message) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


def button_ids(message) -> list[str]:
    return [c["custom_id"] for row in message.components for c in row["components"]]


async def test_draw_posts_the_image_with_its_settings(world):
    r = await world.alice.slash(world.channel, "draw", prompt="a squirrel eating a banana", seed=7)
    await world.idle()
    msg = r.response
    assert not msg.ephemeral
    f = fields(msg)
    assert f["Seed"] == "7" and f["Steps"] == "4" and f["Guidance"] == "6"
    assert f["Sampler"] == "PNDM" and f["Size"] == "64x64" and f["Model"] == "tiny:sd"
    assert "Eta" not in f
    assert msg.embeds[0].description == "a squirrel eating a banana"
    assert msg.embeds[0].footer.text == "Job #1"
    (attachment,) = msg.attachments
    data = await attachment.read()
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    again = request_from_parameters(read_parameters(data) or "")
    assert again.seed == 7 and again.prompt == "a squirrel eating a banana"
    assert button_ids(msg) == [
        "easel:reroll:1",
        "easel:delete:1",
        "easel:remix:1:1",
        "easel:vary:1:0",
        "easel:upscale:1:0",
    ]
    record = await world.bot.store.get_job(1)
    assert record.status == "done" and record.jump_url and record.message_id == msg.id
    assert record.images and record.images[0][0].is_file()


async def test_count_gives_one_attachment_per_seed_and_eta_shows_for_ddim(world):
    r = await world.bob.slash(
        world.channel, "draw", prompt="a fox", seed=40, count=2, sampler="ddim", eta=0.5
    )
    await world.idle()
    msg = r.response
    f = fields(msg)
    assert f["Seed"] == "40, 41" and f["Sampler"] == "DDIM" and f["Eta"] == "0.5"
    seeds = [
        request_from_parameters(read_parameters(await a.read()) or "").seed for a in msg.attachments
    ]
    assert seeds == [40, 41]


async def test_no_seed_means_a_random_one_that_is_shown(world):
    r = await world.alice.slash(world.channel, "draw", prompt="a cat")
    await world.idle()
    seed = int(fields(r.response)["Seed"])
    record = await world.bot.store.get_job(1)
    assert record.seed == seed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 100}, "multiple of 8; try 96 or 104"),
        ({"width": 1024}, "between 64 and 128"),
        ({"eta": 0.5, "sampler": "euler"}, "Eta only changes images drawn with the DDIM"),
        ({"negative_prompt": "blur", "guidance": 1.0}, "guidance above 1"),
        ({"prompt": "   "}, "prompt is empty"),
    ],
)
async def test_bad_input_gets_an_ephemeral_answer_and_nothing_is_stored(world, options, message):
    r = await world.alice.slash(world.channel, "draw", **{"prompt": "a cat", **options})
    await world.idle()
    assert r.ephemeral and message in r.response.content
    assert await world.bot.store.count_history(world.guild.id) == 0
    assert world.bot.executor.pending() == 0
    assert not world.env.errors  # a refusal is an answer, not an error


async def test_discord_itself_enforces_the_declared_ranges(world):
    with pytest.raises(simcord.OptionError):
        await world.alice.slash(world.channel, "draw", prompt="a cat", steps=500)
    with pytest.raises(simcord.OptionError):
        await world.alice.slash(world.channel, "draw", prompt="a cat", sampler="k_magic")


async def test_a_fourth_queued_job_is_refused_with_the_count(world):
    world.bot.executor.pause()
    for i in range(3):
        r = await world.alice.slash(world.channel, "draw", prompt=f"cat {i}")
        assert "Queued as job" in r.response.content
    r = await world.alice.slash(world.channel, "draw", prompt="cat 4")
    assert r.ephemeral and "You already have 3 drawings waiting" in r.response.content
    assert not world.env.errors  # a refusal is an answer, not an error
    assert await world.bot.store.count_history(world.guild.id) == 3
    other = await world.bob.slash(world.channel, "draw", prompt="a dog")
    # Fair share: bob goes right after alice's first job, not behind all three.
    assert "Queued as job #4: 1 ahead of you" in other.response.content
    world.bot.executor.resume()
    await world.idle()
    statuses = [(await world.bot.store.get_job(i)).status for i in range(1, 5)]
    assert statuses == ["done"] * 4


async def test_progress_is_shown_while_drawing(world):
    edits = []
    r = await world.alice.slash(world.channel, "draw", prompt="a cat", steps=6)
    await world.idle()
    for entry in world.env.http_requests:
        if entry.method == "PATCH" and entry.path.endswith("@original") and entry.json:
            edits.append(entry.json.get("content"))
    assert any(e and e.startswith("Drawing… ") and e.endswith("/6") for e in edits)
    assert r.response.embeds  # the final edit replaced the progress text


async def test_a_prompt_with_everyone_pings_nobody(world):
    prompt = f"@everyone @here <@&{world.mods.id}> <@{world.bob.id}> a party"
    r = await world.alice.slash(world.channel, "draw", prompt=prompt)
    await world.idle()
    record = world.env.backend.get_message(r.response.channel_id, r.response.id)
    assert record.ping_user_ids == [] and record.ping_role_ids == []
    assert not record.mention_everyone


async def test_result_after_the_token_expired_is_posted_in_the_channel(world):
    world.bot.executor.pause()
    r = await world.alice.slash(world.channel, "draw", prompt="a slow cat", seed=3)
    await world.env.advance_time(16 * 60)
    world.bot.executor.resume()
    await world.idle()
    msg = world.channel.last_message
    assert msg.id != r.response.id
    assert msg.content.startswith(f"<@{world.alice.id}>")
    assert msg.embeds[0].footer.text == "Job #1"
    record = world.env.backend.get_message(msg.channel.id, msg.id)
    assert record.ping_user_ids == [world.alice.id] and not record.mention_everyone
    assert (await world.bot.store.get_job(1)).jump_url.endswith(str(msg.id))


async def test_real_discords_expired_token_answer_also_falls_back(world):
    world.bot.executor.pause()
    r = await world.alice.slash(world.channel, "draw", prompt="a cat")
    world.env.inject_error("PATCH", "/webhooks/*", status=401, code=50027, times=None)
    world.bot.executor.resume()
    await world.idle()
    msg = world.channel.last_message
    assert msg.id != r.response.id and msg.embeds[0].footer.text == "Job #1"


async def test_an_internal_error_gives_a_short_message_and_is_logged(world, monkeypatch, caplog):
    def explode(requests, on_step=None):
        raise RuntimeError("CUDA driver exploded at 0xdeadbeef")

    monkeypatch.setattr(world.bot.models, "run_batch", explode)
    r = await world.alice.slash(world.channel, "draw", prompt="a cat")
    await world.idle()
    text = r.response.content
    assert "Job #1 failed" in text and "logged" in text and "0xdeadbeef" not in text
    assert "0xdeadbeef" in caplog.text and "job 1" in caplog.text
    record = await world.bot.store.get_job(1)
    assert record.status == "failed" and "0xdeadbeef" in record.error
    monkeypatch.undo()
    ok = await world.alice.slash(world.channel, "draw", prompt="a cat")
    await world.idle()
    assert ok.response.embeds  # the bot keeps serving


async def test_cancel_and_queue(world):
    world.bot.executor.pause()
    first = await world.alice.slash(world.channel, "draw", prompt="a cat")
    await world.alice.slash(world.channel, "draw", prompt="a dog")
    await world.bob.slash(world.channel, "draw", prompt="a cow")
    q = await world.bob.slash(world.channel, "queue")
    assert q.ephemeral
    assert "paused" in q.response.content and "Your job is at place 2." in q.response.content
    c = await world.alice.slash(world.channel, "cancel")
    assert c.ephemeral and c.response.content == "Cancelled 2 drawings."
    await world.env.settle()
    assert first.response.content == "Job #1 was cancelled."
    assert (await world.bot.store.get_job(2)).status == "cancelled"
    world.bot.executor.resume()
    await world.idle()
    assert (await world.bot.store.get_job(3)).status == "done"
    none = await world.alice.slash(world.channel, "cancel")
    assert none.response.content == "You have nothing queued or drawing."
    empty = await world.alice.slash(world.channel, "queue")
    assert "The queue is empty" in empty.response.content


def test_client_pings_nobody_by_default(bot_settings):
    from bot.app import create_bot

    bot = create_bot(bot_settings)
    mentions = bot.allowed_mentions
    assert mentions is not None
    assert mentions.everyone is False and mentions.users is False and mentions.roles is False
    assert isinstance(bot.tree, discord.app_commands.CommandTree)
