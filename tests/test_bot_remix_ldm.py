"""A model without an image-to-image form (LDM): picture input is refused, and no Remix."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from PIL import Image


@pytest.fixture
def bot_settings(bot_settings):
    return replace(bot_settings, model="tiny:ldm")


async def test_ldm_refuses_a_picture_politely_and_offers_no_remix(world):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    r = await world.alice.slash(
        world.channel, "draw", prompt="a fox", image=("fox.png", buffer.getvalue())
    )
    assert r.ephemeral and "can't start from a picture" in r.response.content
    assert "V buttons" in r.response.content
    d = await world.alice.slash(world.channel, "draw", prompt="a fox")
    await world.idle()
    labels = [c["label"] for row in d.response.components for c in row["components"]]
    assert "Remix" not in labels and "V1" in labels
    assert (await world.bot.store.get_job(2)) is None  # the refused one was never recorded
