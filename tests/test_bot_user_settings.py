"""/settings: a member's own /draw defaults. Precedence (typed > member > server > bot), the
server's limits at set time and at draw time, what /settings show says, persistence across a
restart, spoilers, and /forget taking them away."""

from __future__ import annotations

import sqlite3

from bot.store import UserSettings
from tests.conftest import shut_down
from tests.test_bot_settings import admin, fields


def notes(message) -> list[str]:
    return [f.value for f in message.embeds[0].fields if f.name == "Note"]


def rows(world) -> int:
    with sqlite3.connect(world.bot.settings.db_path) as db:
        return db.execute("SELECT count(*) FROM user_settings").fetchone()[0]


async def test_typed_beats_mine_beats_the_server_beats_the_bot(world):
    ch = world.channel
    await admin(world).slash(ch, "mod settings set", default_steps=3, default_sampler="ddim")
    r = await world.alice.slash(
        ch, "settings set", steps=2, guidance=4.5, negative_prompt="blurry", count=2
    )
    assert r.ephemeral and r.response.content.startswith("Saved.")

    mine = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    f = fields(mine.response)
    assert f["Steps"] == "2" and f["Guidance"] == "4.5"  # hers
    assert f["Sampler"] == "DDIM"  # the server's: she set none
    assert "blurry" in f["Negative prompt"]
    assert len(mine.response.attachments) == 2

    typed = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1, steps=1, count=1)
    await world.idle()
    assert fields(typed.response)["Steps"] == "1"  # what she typed wins
    assert len(typed.response.attachments) == 1

    theirs = await world.bob.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    f = fields(theirs.response)
    assert f["Steps"] == "3" and f["Guidance"] == "6"  # the server's, then the bot's
    assert "Negative prompt" not in f


async def test_show_says_where_each_value_comes_from(world):
    ch = world.channel
    await admin(world).slash(ch, "mod settings set", default_sampler="ddim")
    r = await world.alice.slash(ch, "settings show")
    text = r.response.content
    assert r.ephemeral
    assert "Sampler: DDIM (this server's default)" in text
    assert "Steps: 4 (the bot's default)" in text
    assert "Width: 64 (the model's own) (the bot's default)" in text
    assert "Change them with /settings set" in text

    r = await world.alice.slash(ch, "settings set", steps=3, spoiler=True)
    text = r.response.content
    assert "Steps: 3 (your setting)" in text and "Results as spoilers: on (your setting)" in text
    assert "Sampler: DDIM (this server's default)" in text

    r = await world.alice.slash(ch, "settings reset", setting="steps")
    assert "Steps is reset." in r.response.content
    assert "Steps: 4 (the bot's default)" in r.response.content
    assert world.bot.store.user_settings(world.alice.id) == UserSettings(spoiler=True)
    r = await world.alice.slash(ch, "settings reset")
    assert "All your settings are reset." in r.response.content
    assert rows(world) == 0


async def test_a_default_over_this_servers_limit_is_refused_when_set(world):
    ch = world.channel
    await admin(world).slash(ch, "mod settings set", max_steps=5, max_size=64, max_count=2)
    for options, says in (
        ({"steps": 8}, "This server allows at most 5 steps"),
        ({"width": 128}, "This server allows pictures up to 64x64 pixels"),
        ({"count": 3}, "This server allows at most 2 pictures per drawing"),
        ({"width": 100}, "multiple of 8"),  # the model's own rule
    ):
        r = await world.alice.slash(ch, "settings set", **options)
        assert r.ephemeral and says in r.response.content, r.response.content
    assert rows(world) == 0  # nothing stored
    r = await world.alice.slash(ch, "settings set")
    assert "pick at least one option" in r.response.content
    r = await world.alice.slash(ch, "settings set", negative_prompt="   ")
    assert "pick at least one option" in r.response.content  # blank sets nothing


async def test_a_limit_lowered_later_clamps_the_default_with_a_note(world):
    ch = world.channel
    r = await world.alice.slash(ch, "settings set", steps=6, count=2)
    assert r.response.content.startswith("Saved.")
    await admin(world).slash(ch, "mod settings set", max_steps=3, max_count=1)

    drawn = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    assert fields(drawn.response)["Steps"] == "3"
    assert len(drawn.response.attachments) == 1
    said = " ".join(notes(drawn.response))
    assert "Your default of 6 steps is over the limit here; drew 3 steps." in said
    assert "Your default of 2 pictures is over the limit here; drew 1." in said
    shown = await world.alice.slash(ch, "settings show")
    assert "Your default of 6 steps is over the limit here" in shown.response.content

    # Elsewhere (no such limit) the same defaults apply unclamped.
    other = world.env.create_guild("Elsewhere")
    there = other.create_text_channel("art")
    alice_there = other.add_member(world.alice.user)
    drawn = await alice_there.slash(there, "draw", prompt="a lamp", seed=1)
    await world.idle()
    assert fields(drawn.response)["Steps"] == "6" and not notes(drawn.response)


async def test_settings_survive_a_restart_and_forget_removes_them(world, make_bot):
    ch = world.channel
    await world.alice.slash(ch, "settings set", steps=2, negative_prompt="blurry")
    await shut_down(world.bot)
    await world.env.restart_bot(make_bot())
    r = await world.alice.slash(ch, "settings show")
    assert "Steps: 2 (your setting)" in r.response.content
    assert "Negative prompt: blurry (your setting)" in r.response.content

    r = await world.alice.slash(ch, "forget")
    await world.alice.click(r.response, label="Yes, delete everything")
    assert rows(world) == 0
    assert world.bot.store.user_settings(world.alice.id) == UserSettings()
    r = await world.alice.slash(ch, "settings show")
    assert "Steps: 4 (the bot's default)" in r.response.content


async def test_spoiler_results_are_hidden_until_clicked(world):
    ch = world.channel
    await world.alice.slash(ch, "settings set", spoiler=True)
    drawn = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    (attachment,) = drawn.response.attachments
    assert attachment.filename.startswith("SPOILER_")
    assert drawn.response.embeds[0].image.url is None  # an embed's image can't be hidden
    plain = await world.bob.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    assert not plain.response.attachments[0].filename.startswith("SPOILER_")


async def test_a_chosen_reply_language_overrides_the_clients(world):
    # SimCord's interactions carry en-US: the language here comes from the setting alone.
    ch = world.channel
    await admin(world).slash(ch, "mod settings set", max_steps=5)
    r = await world.alice.slash(ch, "settings set", language="zh-CN")
    assert r.response.content.startswith("已保存。")
    assert "回复语言：中文（简体）（你的设置）" in r.response.content

    refused = await world.alice.slash(ch, "draw", prompt="a lamp", steps=8)
    assert refused.ephemeral and "5" in refused.response.content
    assert "This server" not in refused.response.content  # Chinese, not English
    english = await world.bob.slash(ch, "draw", prompt="a lamp", steps=8)
    assert "This server allows at most 5 steps" in english.response.content

    # Her public result is in the server's language (en-US here), not hers.
    drawn = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    assert "Steps" in fields(drawn.response)

    r = await world.alice.slash(ch, "settings reset", setting="language")
    assert "Reply language is reset." in r.response.content  # English again


async def test_defaults_are_judged_together_and_give_way_rather_than_refuse(world):
    ch = world.channel
    # Each fine alone; together a negative prompt with guidance 1 draws nothing different.
    await world.alice.slash(ch, "settings set", guidance=1.0)
    r = await world.alice.slash(ch, "settings set", negative_prompt="blurry")
    assert "negative prompt only has an effect with guidance above 1" in r.response.content
    assert world.bot.store.user_settings(world.alice.id).negative_prompt is None
    r = await world.alice.slash(ch, "settings set", guidance=6.0, negative_prompt="blurry")
    assert r.response.content.startswith("Saved.")
    # Setting guidance 1 later is allowed: the negative prompt gives way, saying so.
    r = await world.alice.slash(ch, "settings set", guidance=1.0)
    assert "⚠️ A negative prompt needs guidance above 1" in r.response.content
    drawn = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    assert not drawn.ephemeral and "Negative prompt" not in fields(drawn.response)
    assert "A negative prompt needs guidance above 1" in " ".join(notes(drawn.response))
    # What she types wins over her defaults, never the other way round.
    typed = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1, guidance=7.0)
    await world.idle()
    assert "blurry" in fields(typed.response)["Negative prompt"]


async def test_a_banned_word_in_a_default_negative_prompt(world):
    ch = world.channel
    r = await world.alice.slash(ch, "settings set", negative_prompt="cat, blurry")
    assert r.response.content.startswith("Saved.")
    await world.mod.slash(ch, "mod banword add", word="cat")
    r = await world.bob.slash(ch, "settings set", negative_prompt="a cat")
    assert "so your default negative prompt was not saved" in r.response.content
    assert world.bot.store.user_settings(world.bob.id).negative_prompt is None
    # Hers was set before the ban: drawn without it, not refused, and nothing is flagged.
    drawn = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    assert "Negative prompt" not in fields(drawn.response)
    assert "has a word this server doesn't allow" in " ".join(notes(drawn.response))
    with sqlite3.connect(world.bot.settings.db_path) as db:
        assert not db.execute("SELECT count(*) FROM jobs WHERE status = 'refused'").fetchone()[0]


async def test_one_note_per_clamp_and_a_long_negative_prompt_is_shortened(world):
    ch = world.channel
    long = "low quality, " * 150
    r = await world.alice.slash(
        ch, "settings set", width=128, height=128, negative_prompt=long, language="zh-CN"
    )
    assert len(r.response.content) < 2000 and "回复语言" in r.response.content
    await world.alice.slash(ch, "settings reset", setting="language")
    await admin(world).slash(ch, "mod settings set", max_size=64)
    drawn = await world.alice.slash(ch, "draw", prompt="a lamp", seed=1)
    await world.idle()
    said = notes(drawn.response)
    assert sum("Your default size" in n for n in said) == 1
    assert fields(drawn.response)["Size"] == "64x64"


async def test_a_comparison_of_a_spoiler_member_is_hidden_too(world):
    await world.alice.slash(world.channel, "settings set", spoiler=True)
    r = await world.alice.slash(world.channel, "compare", prompt="a lamp", steps="1, 2", seed=1)
    await world.idle()
    (attachment,) = r.response.attachments
    assert attachment.filename.startswith("SPOILER_")
    assert r.response.embeds[0].image.url is None
