"""Drawing from a picture through SimCord: /draw image:, the Remix button, and what is kept."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.__main__ import main as cli
from pipeline.pngmeta import read_parameters
from tests.conftest import shut_down


def fields(message) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


async def pixels(attachment) -> np.ndarray:
    with Image.open(io.BytesIO(await attachment.read())) as image:
        return np.asarray(image.convert("RGB"))


def png(size=(64, 64), colour=(200, 40, 40), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def stored_inputs(world) -> list[Path]:
    return sorted((world.bot.settings.data_dir / "images").rglob("*.png"))


async def test_remix_through_the_form_draws_from_that_picture_and_redraws_from_its_png(
    world, tmp_path, model_cache, monkeypatch
):
    r = await world.alice.slash(world.channel, "draw", prompt="a red fox", seed=5)
    await world.idle()
    post = r.response
    form = await world.bob.click(post, label="Remix")
    res = await world.bob.submit_modal(form, {"prompt": "a blue fox", "strength": "0.5"})
    await world.idle()
    card = res.response
    f = fields(card)
    assert f["\u200b"] == f"Remix of job #1 by <@{world.bob.id}>"
    assert f["Strength"] == "0.5" and card.embeds[0].description == "a blue fox"
    job = await world.bot.store.get_job(2)
    source = await world.bot.store.get_job(1)
    assert job.kind == "remix" and job.task == "img2img" and job.strength == 0.5
    assert job.init_image == str(source.images[0][0]) and job.parent_job_id == 1
    data = await card.attachments[0].read()
    assert "Denoising strength: 0.5" in (read_parameters(data) or "")
    remixed = await pixels(card.attachments[0])
    assert not np.array_equal(remixed, await pixels(post.attachments[0]))

    # The command line redraws it from its PNG and the picture it started from.
    monkeypatch.setenv("EASEL_CACHE_DIR", str(model_cache))
    (tmp_path / "remix.png").write_bytes(data)
    out = tmp_path / "again.png"
    argv = ["draw", "--from", str(tmp_path / "remix.png"), "--image", job.init_image]
    assert cli([*argv, "--model", "tiny:sd", "-o", str(out)]) == 0
    with Image.open(out) as again:
        assert np.array_equal(np.asarray(again.convert("RGB")), remixed)


async def test_a_bad_strength_in_the_form_is_refused_privately(world):
    r = await world.alice.slash(world.channel, "draw", prompt="a red fox", seed=5)
    await world.idle()
    form = await world.alice.click(r.response, label="Remix")
    res = await world.alice.submit_modal(form, {"prompt": "a fox", "strength": "lots"})
    assert res.ephemeral and "a number like 0.6" in res.response.content
    assert await world.bot.store.get_job(2) is None


async def test_draw_from_an_attached_png(world):
    r = await world.alice.slash(
        world.channel, "draw", prompt="a fox", seed=3, image=("fox.png", png()), strength=0.7
    )
    await world.idle()
    f = fields(r.response)
    assert f["Strength"] == "0.7" and f["Started from"] == "a picture they attached"
    job = await world.bot.store.get_job(1)
    assert job.task == "img2img" and Path(job.init_image).is_file()
    with Image.open(job.init_image) as stored:
        assert stored.size == (64, 64)


async def test_a_rotated_jpeg_is_turned_upright_and_resized_with_a_note(world):
    upright = Image.new("RGB", (48, 72), (30, 160, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": a phone held sideways
    buffer = io.BytesIO()
    upright.save(buffer, format="JPEG", exif=exif)
    r = await world.alice.slash(
        world.channel, "draw", prompt="a field", image=("phone.jpg", buffer.getvalue())
    )
    await world.idle()
    job = await world.bot.store.get_job(1)
    with Image.open(job.init_image) as stored:
        assert stored.width > stored.height  # turned as the phone showed it
        assert stored.size == (96, 64)  # 72x48 fitted: multiples of 8, at least 64
    notes = [f.value for f in r.response.embeds[0].fields if f.name == "Note"]
    assert any("resized from 72x48 to 96x64" in n for n in notes)


async def test_bad_files_are_refused_privately_and_nothing_is_kept(world):
    big = io.BytesIO()
    Image.new("RGB", (6000, 5000), (1, 2, 3)).save(big, format="PNG")  # 30 megapixels
    cases = [
        (("notes.png", b"this is a text file, not a picture"), "isn't a picture"),
        (("huge.png", big.getvalue()), "30.0 megapixels"),
        (("fat.png", b"\x89PNG" + b"0" * (11 * 1024 * 1024)), "11.0 MB"),
    ]
    for attachment, answer in cases:
        r = await world.alice.slash(world.channel, "draw", prompt="a fox", image=attachment)
        assert r.ephemeral and answer in r.response.content, r.response.content
    r = await world.alice.slash(
        world.channel, "draw", prompt="a fox", image=("a.png", png()), width=128
    )
    assert r.ephemeral and "leave width and height out" in r.response.content
    r = await world.alice.slash(world.channel, "draw", prompt="a fox", strength=0.5)
    assert r.ephemeral and "attach one with image" in r.response.content
    await world.idle()
    assert await world.bot.store.get_job(1) is None
    assert stored_inputs(world) == []


async def test_an_animated_gif_uses_its_first_frame_and_says_so(world):
    frames = [Image.new("RGB", (64, 64), c) for c in ((250, 0, 0), (0, 0, 250))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    r = await world.alice.slash(
        world.channel, "draw", prompt="a fox", image=("blink.gif", buffer.getvalue())
    )
    await world.idle()
    notes = [f.value for f in r.response.embeds[0].fields if f.name == "Note"]
    assert any("animated; its first frame was used" in n for n in notes)
    with Image.open((await world.bot.store.get_job(1)).init_image) as stored:
        red, _, blue = stored.convert("RGB").getpixel((10, 10))
        assert red > 200 and blue < 50


async def test_a_transparent_png_is_flattened_on_white(world):
    await world.alice.slash(
        world.channel,
        "draw",
        prompt="a fox",
        image=("clear.png", png(colour=(0, 0, 0, 0), mode="RGBA")),
    )
    await world.idle()
    with Image.open((await world.bot.store.get_job(1)).init_image) as stored:
        assert stored.convert("RGB").getpixel((5, 5)) == (255, 255, 255)


async def test_a_queued_picture_job_survives_a_restart_and_reruns_from_its_stored_input(
    world, make_bot
):
    env, old = world.env, world.bot
    old.executor.pause()
    await world.alice.slash(world.channel, "draw", prompt="a fox", image=("a.png", png()))
    assert (await old.store.get_job(1)).status == "queued"
    await shut_down(old)
    new = make_bot()
    await env.restart_bot(new)
    await world.idle()
    job = await new.store.get_job(1)
    assert job.status == "done" and job.task == "img2img"


async def test_forget_and_purge_delete_the_stored_inputs(world):
    await world.alice.slash(world.channel, "draw", prompt="a fox", image=("a.png", png()))
    await world.bob.slash(
        world.channel, "draw", prompt="a hen", image=("b.png", png(colour=(9, 9, 200)))
    )
    await world.idle()
    store = world.bot.store
    alice_input = Path((await store.get_job(1)).init_image)
    bob_input = Path((await store.get_job(2)).init_image)
    assert alice_input.is_file() and bob_input.is_file()

    r = await world.alice.slash(world.channel, "forget")
    await world.alice.click(r.response, label="Yes, delete everything")
    assert not alice_input.exists() and bob_input.is_file()

    p = await world.mod.slash(world.channel, "mod purge", user=world.bob)
    await world.mod.click(p.response, label="Yes, delete them")
    await world.idle()
    assert not bob_input.exists()
    assert stored_inputs(world) == []


def admin(world):
    import discord

    role = world.guild.create_role(
        "Admins", permissions=discord.Permissions(manage_guild=True, manage_messages=True)
    )
    return world.guild.add_member(world.env.create_user("boss"), roles=[role])


async def test_server_limits_apply_to_pictures_and_uploads_are_fitted_to_them(world):
    await admin(world).slash(world.channel, "mod settings set", max_steps=5, max_size=64)
    r = await world.alice.slash(
        world.channel, "draw", prompt="a fox", steps=40, image=("a.png", png())
    )
    assert r.ephemeral and "at most 5 steps" in r.response.content
    big = png(size=(128, 96))
    r = await world.alice.slash(
        world.channel, "draw", prompt="a fox", steps=4, image=("b.png", big)
    )
    await world.idle()
    with Image.open((await world.bot.store.get_job(1)).init_image) as stored:
        assert max(stored.size) == 64  # this server's largest side, not the model's
    assert stored_inputs(world) and not r.ephemeral


async def test_other_formats_are_refused_and_a_refused_upload_is_not_kept(world):
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"
    r = await world.alice.slash(world.channel, "draw", prompt="a fox", image=("x.eps", eps))
    assert r.ephemeral and "isn't a picture" in r.response.content
    await world.mod.slash(world.channel, "mod banword add", word="fox")
    r = await world.alice.slash(world.channel, "draw", prompt="a fox", image=("a.png", png()))
    assert r.ephemeral and "doesn't allow" in r.response.content
    await world.idle()
    refused = await world.bot.store.get_job(1)
    assert refused.status == "refused" and refused.init_image is None
    assert stored_inputs(world) == []


async def test_a_picture_drawn_from_another_has_no_vary_buttons_but_remix(world):
    r = await world.alice.slash(world.channel, "draw", prompt="a fox", image=("a.png", png()))
    await world.idle()
    labels = [c["label"] for row in r.response.components for c in row["components"]]
    assert "Remix" in labels and not any(label.startswith("V") for label in labels)


async def test_after_forget_nobody_draws_from_the_forgotten_upload(world):
    await world.alice.slash(world.channel, "draw", prompt="a fox", image=("a.png", png()))
    await world.idle()
    await world.bob.slash(world.channel, "reroll", job=1)  # bob's job starts from her upload
    await world.idle()
    store = world.bot.store
    upload = Path((await store.get_job(1)).init_image)
    assert (await store.get_job(2)).init_image == str(upload)
    r = await world.alice.slash(world.channel, "forget")
    await world.alice.click(r.response, label="Yes, delete everything")
    assert not upload.exists()  # gone with her data, though bob's job started from it
    assert (await store.get_job(2)).init_image is None
    again = await world.bob.slash(world.channel, "reroll", job=2)
    await world.idle()
    assert "no longer stored" in (again.response.content or "")
