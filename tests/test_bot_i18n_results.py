"""Languages end to end: public posts in the server's language, private answers in the member's.

SimCord builds every interaction with ``locale`` and ``guild_locale`` set to en-US
(``simcord.interactions.base_payload``). The ``locales`` fixture below wraps that function to
patch the interaction payloads: a member listed in ``locales.members`` gets that ``locale``
(their client's language), a server listed in ``locales.servers`` that ``guild_locale``.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import simcord.interactions

from bot.store import GuildSettings


@pytest.fixture
def locales(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Patches the locales SimCord puts in interaction payloads (it always sends en-US)."""
    chosen = SimpleNamespace(members={}, servers={})
    original = simcord.interactions.base_payload

    def base_payload(backend, **kwargs):
        record, payload = original(backend, **kwargs)
        if kwargs["user_id"] in chosen.members:
            payload["locale"] = chosen.members[kwargs["user_id"]]
        guild_id = kwargs.get("guild_id")
        if guild_id is not None and guild_id in chosen.servers:
            payload["guild_locale"] = chosen.servers[guild_id]
        return record, payload

    monkeypatch.setattr(simcord.interactions, "base_payload", base_payload)
    return chosen


def fields(message) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}


def labels(message) -> list[str]:
    return [c.get("label") for row in message.components for c in row["components"]]


async def test_a_result_in_a_zh_cn_server_has_chinese_fields_and_buttons(world, locales):
    server = world.env.create_guild("画画俱乐部", preferred_locale="zh-CN")
    channel = server.create_text_channel("draw")
    member = server.add_member(world.env.create_user("lin"))
    locales.servers[server.id] = "zh-CN"

    r = await member.slash(channel, "draw", prompt="a squirrel eating a banana", seed=7, width=128)
    await world.idle()
    msg = r.response
    assert not msg.ephemeral
    f = fields(msg)
    assert f["种子"] == "7" and f["步数"] == "4" and f["引导系数 (CFG)"] == "6"
    assert f["采样器"] == "PNDM" and f["尺寸"] == "128x64" and f["模型"] == "tiny:sd"
    # The engine's note on the size, made on the GPU thread, is shown in the server's language.
    assert f["备注"] == (
        "tiny:sd 是在 64x64 下训练的；在 128x64 下画出的图片常常会被拉伸或出现重复，通常效果更差。"
    )
    assert "Seed" not in f and "Steps" not in f
    assert f["\u200b"] == f"发起人：<@{member.id}>"
    assert msg.embeds[0].description == "a squirrel eating a banana"  # the prompt as typed
    assert msg.embeds[0].footer.text == "任务 #1"
    assert labels(msg)[:3] == ["重新生成", "删除", "重混"]
    assert "V1" in labels(msg) and "U1" in labels(msg)

    # After a restart, a post has only its channel's server to go by: the same language.
    from bot.delivery import Delivery

    later = Delivery(world.bot, channel_id=channel.id, user_id=member.id)
    assert await later.locale() == "zh-CN"
    elsewhere = Delivery(world.bot, channel_id=world.channel.id, user_id=member.id)
    assert await elsewhere.locale() == "en-US"


async def test_each_member_is_refused_in_their_own_language_in_the_same_server(world, locales):
    await world.bot.store.set_guild_settings(
        world.guild.id, GuildSettings(max_steps=3), by_user_id=world.mod.id
    )
    locales.members[world.bob.id] = "zh-CN"

    english = await world.alice.slash(world.channel, "draw", prompt="a cat", steps=5)
    chinese = await world.bob.slash(world.channel, "draw", prompt="a cat", steps=5)
    assert english.ephemeral and chinese.ephemeral
    assert english.response.content == "This server allows at most 3 steps; pick 3 or fewer."
    assert chinese.response.content == "本服务器最多允许 3 步；请选择 3 步或更少。"

    # The engine's own refusals too (a pipeline/ message, translated when shown).
    chinese = await world.bob.slash(world.channel, "draw", prompt="a cat", width=100)
    assert chinese.response.content == "宽度必须是 8 的倍数；请用 96 或 104 代替 100。"
    english = await world.alice.slash(world.channel, "draw", prompt="a cat", width=100)
    assert (
        english.response.content == "Width must be a multiple of 8; try 96 or 104 instead of 100."
    )
    assert await world.bot.store.count_history(world.guild.id) == 0
    assert not world.env.errors


async def test_a_zh_cn_member_in_an_en_us_server_posts_english_and_hears_chinese(world, locales):
    locales.members[world.bob.id] = "zh-CN"
    r = await world.bob.slash(world.channel, "draw", prompt="a fox", seed=3)
    await world.idle()
    card = r.response
    assert not card.ephemeral
    # The result is the channel's: in the server's language, whoever asked.
    f = fields(card)
    assert f["Seed"] == "3" and f["Steps"] == "4"
    assert f["\u200b"] == f"Requested by <@{world.bob.id}>"
    assert labels(card)[:3] == ["Reroll", "Delete", "Remix"]

    # What only he sees is in his language: a refusal from a button...
    form = await world.bob.click(card, label="Remix")  # his own: the form, in Chinese
    assert form.modal is not None and form.modal["title"] == "重混任务 #1"
    res = await world.bob.submit_modal(form, {"prompt": "a fox", "strength": "lots"})
    assert res.ephemeral
    assert (
        res.response.content == "重绘幅度必须是像 0.6 这样的数字，图片编号必须是像 1 这样的数字。"
    )
    alice_card = (await world.alice.slash(world.channel, "draw", prompt="an owl", seed=4)).response
    await world.idle()
    res = await world.bob.click(alice_card, label="Delete")
    assert res.ephemeral
    assert res.response.content == "只有发起这次绘图的人或管理员才能删除它。"
    # ... and the same button answers alice in English.
    res = await world.alice.click(card, label="Delete")
    assert (
        res.response.content
        == "Only the person who asked for this drawing or a moderator can delete it."
    )
    # A public post made for him in this server stays English: the V button's private choice
    # is his, in Chinese, and the variation it queues is posted in English.
    res = await world.bob.click(card, label="V1")
    assert res.ephemeral and "任务 #1 第 1 张图片的变体" in res.response.content
    assert labels(res.response) == ["变化（轻微）", "变化（强烈）"]
    res = await world.bob.click(res.response, label="变化（轻微）")
    await world.idle()
    varied = res.response
    assert not varied.ephemeral
    assert fields(varied)["\u200b"] == f"Variation of job #1 by <@{world.bob.id}>"
    assert fields(varied)["Variation"].startswith("seed ")
    assert not world.env.errors


async def test_a_comparison_in_a_zh_cn_server_is_captioned_and_labelled_in_chinese(world, locales):
    server = world.env.create_guild("画画俱乐部", preferred_locale="zh-CN")
    channel = server.create_text_channel("draw")
    member = server.add_member(world.env.create_user("lin"))
    locales.servers[server.id] = "zh-CN"
    world.bot.executor.pause()
    r = await member.slash(channel, "compare", prompt="a fox", steps="2, 3", seed=5)
    # The queue notice is public: in the server's language, with why it waits.
    assert r.response.content == (
        "对比 #1（2 格） 已排队：下一个就是你。机器人的运营者已暂停绘图；恢复后就会开始。"
    )
    # A refusal is private: in the member's (here en-US) language.
    refused = await member.slash(channel, "compare", prompt="a fox", steps="2, 2")
    assert refused.ephemeral and refused.response.content.startswith("steps lists 2 twice")
    world.bot.executor.resume()
    await world.idle()
    grid = r.response
    f = fields(grid)
    assert f["列 (X)"] == "步数：2, 3"
    assert f["种子"] == "5"
    assert f["\u200b"] == f"对比发起人：<@{member.id}>"
    assert grid.embeds[0].footer.text.startswith("任务 #1 · 2 格对比（任务 #2-#3）· 每格相同：")
    (menu,) = [c for row in grid.components for c in row["components"] if c["type"] == 3]
    assert menu["placeholder"] == "打开一格"
    assert [o["label"] for o in menu["options"]] == ["步数：2", "步数：3"]
    assert [o["description"] for o in menu["options"]] == ["任务 #2", "任务 #3"]
    assert labels(grid)[-2:] == ["重新生成", "删除"]


async def test_a_dm_job_redelivered_after_a_restart_keeps_the_members_language(
    world, locales, make_bot
):
    from tests.conftest import shut_down

    env, old = world.env, world.bot
    hermit = env.create_user("hermit")
    locales.members[hermit.id] = "zh-CN"  # their client's language; no /settings choice
    old.executor.pause()
    await hermit.slash("draw", prompt="a lamp", seed=1)
    await shut_down(old)  # the process dies with the job queued: its interaction is gone
    await env.restart_bot(make_bot())
    await world.idle()
    (posted,) = [m for m in hermit.dm_channel.history() if m.embeds]
    assert "种子" in fields(posted)  # the language it was asked in, kept with the job
