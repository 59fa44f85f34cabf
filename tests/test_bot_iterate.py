"""Iterating on a result through SimCord: the Vary buttons and the variation options of /draw."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipeline.pngmeta import read_parameters, request_from_parameters
from tests.conftest import shut_down


def fields(message) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


async def pixels(attachment) -> np.ndarray:
    with Image.open(io.BytesIO(await attachment.read())) as image:
        return np.asarray(image.convert("RGB"))


async def vary(world, member, message, index: int, how: str):
    """Click V<index> on a result, then Vary (Subtle|Strong) in the private picker."""
    picker = await member.click(message, label=f"V{index}")
    assert picker.ephemeral and f"picture {index} of job" in picker.response.content
    result = await member.click(picker.response, label=f"Vary ({how})")
    await world.idle()
    return result


async def test_v2_varies_the_picture_clicked_as_draw_would_with_that_variation_seed(world):
    r = await world.bob.slash(world.channel, "draw", prompt="a fox", seed=40, count=2)
    await world.idle()
    post = r.response
    ids = [c["custom_id"] for row in post.components for c in row["components"]]
    assert ids[3:5] == ["easel:vary:1:0", "easel:vary:1:1"]

    res = await vary(world, world.alice, post, 2, "Strong")
    card = res.response
    assert not card.ephemeral
    f = fields(card)
    assert f["Seed"] == "41"  # picture 2's own seed
    assert f["\u200b"] == f"Variation of job #1 by <@{world.alice.id}>"
    job = await world.bot.store.get_job(2)
    assert job.kind == "vary" and job.parent_job_id == 1 and job.count == 1
    assert job.variation_strength == 0.6 and job.variation_seed is not None
    assert f["Variation"] == f"seed {job.variation_seed} at 0.6"
    data = await card.attachments[0].read()
    text = read_parameters(data) or ""
    assert f"Variation seed: {job.variation_seed}, Variation seed strength: 0.6" in text
    again = request_from_parameters(text)
    assert (again.variation_seed, again.variation_strength) == (job.variation_seed, 0.6)

    by_hand = await world.alice.slash(
        world.channel,
        "draw",
        prompt="a fox",
        seed=41,
        variation_seed=job.variation_seed,
        variation_strength=0.6,
    )
    await world.idle()
    varied = await pixels(card.attachments[0])
    assert np.array_equal(await pixels(by_hand.response.attachments[0]), varied)
    plain = await world.alice.slash(world.channel, "draw", prompt="a fox", seed=41)
    await world.idle()
    assert not np.array_equal(await pixels(plain.response.attachments[0]), varied)

    subtle = await vary(world, world.alice, post, 1, "Subtle")
    assert (await world.bot.store.get_job(5)).variation_strength == 0.25
    assert fields(subtle.response)["Seed"] == "40"
    h = await world.alice.slash(world.channel, "history")
    assert "variation of #1" in h.response.embeds[0].description


async def test_strength_zero_is_the_original_picture(world):
    original = await world.alice.slash(world.channel, "draw", prompt="a hen", seed=9)
    same = await world.alice.slash(
        world.channel, "draw", prompt="a hen", seed=9, variation_seed=123, variation_strength=0.0
    )
    await world.idle()
    assert np.array_equal(
        await pixels(original.response.attachments[0]), await pixels(same.response.attachments[0])
    )
    assert "Variation" not in fields(same.response)  # nothing was varied


async def alices_post_with_bobs_queue_full(world):
    """Alice's finished drawing, and Bob at the queue cap (3) with drawing paused."""
    r = await world.alice.slash(world.channel, "draw", prompt="a cow", seed=1)
    await world.idle()
    world.bot.executor.pause()
    for prompt in ("a hen", "a pig", "a cat"):
        await world.bob.slash(world.channel, "draw", prompt=prompt)
    return r.response


async def test_a_variation_seed_alone_means_a_strong_variation(world):
    r = await world.alice.slash(world.channel, "draw", prompt="a hen", seed=9, variation_seed=5)
    await world.idle()
    assert fields(r.response)["Variation"] == "seed 5 at 0.6"


async def test_vary_obeys_the_caps_and_is_refused_privately_for_strangers(world):
    post = await alices_post_with_bobs_queue_full(world)
    picker = await world.bob.click(post, label="V1")
    full = await world.bob.click(picker.response, label="Vary (Strong)")
    assert full.ephemeral and "limit is 3" in full.response.content
    assert await world.bot.store.get_job(5) is None  # nothing recorded
    world.bot.executor.resume()
    await world.idle()


async def test_vary_buttons_work_after_a_restart_and_a_queued_variation_survives_it(
    world, make_bot
):
    env, old = world.env, world.bot
    r = await world.alice.slash(world.channel, "draw", prompt="an owl", seed=3)
    await world.idle()
    post = r.response
    old.executor.pause()
    picker = await world.bob.click(post, label="V1")
    await world.bob.click(picker.response, label="Vary (Subtle)")  # queued: the GPU is busy
    assert (await old.store.get_job(2)).status == "queued"
    await shut_down(old)
    new = make_bot()
    await env.restart_bot(new)
    await world.idle()
    job = await new.store.get_job(2)
    assert job.status == "done" and job.kind == "vary" and job.variation_strength == 0.25
    res = await vary(world, world.alice, post, 1, "Strong")
    assert fields(res.response)["\u200b"].startswith("Variation of job #1 by")
    posted = [m for m in world.channel.history() if m.embeds]
    restored = next(m for m in posted if m.embeds[0].footer.text == "Job #2")
    assert fields(restored)["\u200b"] == f"Variation of job #1 by <@{world.bob.id}>"


# -- Upscale ---------------------------------------------------------------------------------


@pytest.fixture
def bot_settings(bot_settings):
    # tiny:upscaler: a random-weight LDMSuperResolutionPipeline built offline (no hub here).
    return replace(bot_settings, upscaler="tiny:upscaler", upscale_steps=3)


async def test_u2_upscales_the_picture_clicked_4x_and_its_png_names_the_source(world):
    r = await world.bob.slash(world.channel, "draw", prompt="a fox", seed=40, count=2)
    await world.idle()
    post = r.response
    ids = [c["custom_id"] for row in post.components for c in row["components"]]
    assert ids[-2:] == ["easel:upscale:1:0", "easel:upscale:1:1"]

    res = await world.alice.click(post, label="U2")
    await world.idle()
    card = res.response
    assert not card.ephemeral
    f = fields(card)
    assert f["\u200b"] == f"Upscaled from job #1 by <@{world.alice.id}>"
    assert f["Size"] == "256x256 (4x 64x64)" and f["Upscaler"] == "tiny:upscaler"
    assert f["Seed"] == "41"
    data = await card.attachments[0].read()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (256, 256)
    text = read_parameters(data) or ""
    assert "Seed: 41, Size: 64x64" in text
    assert (
        "Hires upscale: 4, Hires steps: 3, Hires upscaler: tiny:upscaler, Upscaled from: job #1"
        in text
    )
    job = await world.bot.store.get_job(2)
    source = await world.bot.store.get_job(1)
    assert job.kind == "upscale" and job.task == "upscale" and job.parent_job_id == 1
    assert job.init_image == str(source.images[1][0])
    # The end of the line: no V, U or Remix under an upscale.
    assert [c["label"] for row in card.components for c in row["components"]] == [
        "Reroll",
        "Delete",
    ]
    h = await world.mod.slash(world.channel, "mod history")
    assert "upscaled from #1" in h.response.embeds[0].description

    again = await world.bob.click(post, label="U2")  # same picture, same seed: same pixels
    await world.idle()
    assert np.array_equal(
        await pixels(again.response.attachments[0]), await pixels(card.attachments[0])
    )


async def test_an_upscale_queued_at_a_restart_is_drawn_after_it(world, make_bot):
    env, old = world.env, world.bot
    r = await world.alice.slash(world.channel, "draw", prompt="an owl", seed=3)
    await world.idle()
    old.executor.pause()
    await world.bob.click(r.response, label="U1")
    assert (await old.store.get_job(2)).status == "queued"
    await shut_down(old)
    new = make_bot()
    await env.restart_bot(new)
    await world.idle()
    job = await new.store.get_job(2)
    assert job.status == "done" and job.kind == "upscale"
    with Image.open(job.images[0][0]) as image:
        assert image.size == (256, 256)
    res = await world.alice.click(r.response, label="U1")  # the button after the restart
    await world.idle()
    assert fields(res.response)["Size"] == "256x256 (4x 64x64)"


async def test_upscale_obeys_the_queue_cap_and_a_deleted_source_is_refused(world):
    post = await alices_post_with_bobs_queue_full(world)
    full = await world.bob.click(post, label="U1")
    assert full.ephemeral and "limit is 3" in full.response.content
    world.bot.executor.resume()
    await world.idle()
    source = await world.bot.store.get_job(1)
    source.images[0][0].unlink()  # the stored picture is gone (someone cleaned the folder)
    gone = await world.alice.click(post, label="U1")
    assert gone.ephemeral and "no longer stored" in gone.response.content


async def test_rerolling_an_upscale_upscales_again_and_stays_the_end_of_the_line(world):
    r = await world.alice.slash(world.channel, "draw", prompt="a fox", seed=4)
    await world.idle()
    up = await world.alice.click(r.response, label="U1")
    await world.idle()
    again = await world.bob.click(up.response, label="Reroll")
    await world.idle()
    job = await world.bot.store.get_job(3)
    assert job.kind == "upscale" and job.task == "upscale" and job.parent_job_id == 1
    card = again.response
    assert fields(card)["\u200b"] == f"Upscaled from job #1 by <@{world.bob.id}>"
    assert [c["label"] for row in card.components for c in row["components"]] == [
        "Reroll",
        "Delete",
    ]


def test_the_upscaler_keeps_sides_that_are_not_multiples_of_32(tmp_path, model_cache):
    from pipeline.engine import load_pipeline
    from pipeline.request import DrawRequest as Request
    from pipeline.upscale import Upscaler

    source = tmp_path / "odd.png"
    Image.new("RGB", (72, 64), (10, 200, 90)).save(source)
    upscaler = Upscaler("tiny:upscaler", steps=2, cache_dir=model_cache, loader=load_pipeline)
    result = upscaler.run(Request("x", seed=1, task="upscale", init_image=str(source)), None)
    assert result.images[0].size == (288, 256)  # 4x each side, not squashed to 256x256


def test_an_upscaler_that_fails_to_load_is_not_tried_again_on_every_click(model_cache):
    from pipeline.engine import load_pipeline
    from pipeline.errors import ModelLoadError, UnsupportedOption
    from pipeline.request import DrawRequest as Request
    from pipeline.upscale import Upscaler

    upscaler = Upscaler("tiny:nothing", cache_dir=model_cache, loader=load_pipeline)
    with pytest.raises(ModelLoadError):
        upscaler.load()
    assert upscaler.failed
    with pytest.raises(UnsupportedOption, match="not available"):
        upscaler.check(Request("x", task="upscale", init_image="/nonexistent.png"))
