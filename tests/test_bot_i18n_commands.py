"""The commands and the cogs' answers in the member's language (issue 18): the synced commands
carry their zh-CN descriptions, option names and choice labels; /history, /mod, /queue and the
confirmations answer a zh-CN member in Chinese and an en-US member in English; the preview takes
``--locale zh-CN``.

SimCord's interactions always carry ``locale`` (and ``guild_locale``) en-US: ``client_locales``
below patches the payload SimCord builds (``simcord.interactions.base_payload``) so that the
members named there send the locale of their Discord client, as a real zh-CN client does.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import discord
import pytest
import simcord.interactions
from babel.messages.extract import extract

from bot import i18n
from bot.__main__ import LOCALES, main
from bot.cogs.draw import PROMPT_HINT, prompt_description
from bot.preview import PreviewPage, describe, serve_preview

ROOT = Path(__file__).resolve().parent.parent
# The files whose strings this test answers for.
SOURCES = [
    *sorted((ROOT / "bot" / "cogs").glob("*.py")),
    ROOT / "bot" / "listing.py",
    ROOT / "bot" / "preview.py",
    ROOT / "bot" / "__main__.py",
    ROOT / "bot" / "text.py",
]
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2), "locale_str": None}
OWN_COMMANDS = {
    "draw",
    "reroll",
    "cancel",
    "queue",
    "compare",
    "history",
    "forget",
    "mod",
    "settings",
}
ZH = discord.Locale.chinese.value  # "zh-CN"


@pytest.fixture
def client_locales(monkeypatch: pytest.MonkeyPatch) -> dict[int, str]:
    """user id -> the locale that member's Discord client sends (SimCord always says en-US)."""
    locales: dict[int, str] = {}
    original = simcord.interactions.base_payload

    def base_payload(*args, **kwargs):
        record, payload = original(*args, **kwargs)
        if kwargs["user_id"] in locales:
            payload["locale"] = locales[kwargs["user_id"]]
        return record, payload

    monkeypatch.setattr(simcord.interactions, "base_payload", base_payload)
    return locales


def placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"\{(\w*)\}", text))


# -- the catalogue covers these files ---------------------------------------------------------


def extracted() -> list[tuple[str | tuple[str, str], Path]]:
    """The message ids of SOURCES, as `make messages` extracts them."""
    found = []
    for path in SOURCES:
        with path.open("rb") as source:
            for _line, message, _comments, _context in extract("python", source, KEYWORDS):
                found.append((message, path))
    return found


def test_every_string_of_the_commands_and_cogs_is_translated_with_its_placeholders():
    catalog = i18n.read_catalogue("zh-CN")  # messages.po, as the bot reads
    found = extracted()
    assert len(found) > 150  # the extraction saw the files' strings
    for message, path in found:
        msgid = message if isinstance(message, str) else message[0]
        entry = catalog.get(msgid)
        assert entry is not None and entry.string, f"{msgid!r} ({path.name}) has no translation"
        translations = [entry.string] if isinstance(entry.string, str) else list(entry.string)
        for text in translations:
            assert text, f"{msgid!r} ({path.name}) has an empty translation"
            assert placeholders(text) == placeholders(msgid), (msgid, text)


# -- the synced commands ----------------------------------------------------------------------


def walk(payload: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every (sub)command and option of a command payload, with where it is."""
    here = f"{path} {payload['name']}".strip()
    yield here, payload
    for option in payload.get("options", []):
        yield from walk(option, here)


def valid_name(name: str) -> bool:
    # Discord: ^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$, lowercase where a case exists.
    return (
        1 <= len(name) <= 32
        and all(ch.isalnum() or ch in "-_" for ch in name)
        and name == name.lower()
    )


async def test_the_synced_commands_carry_chinese_descriptions_option_names_and_choices(world):
    bot = world.bot
    assert isinstance(bot.tree.translator, i18n.Translator)  # set before the first sync
    await bot.tree.sync()
    # What the sync sent and SimCord keeps, as Discord would return it.
    fetched = {c.name: c for c in await bot.tree.fetch_commands()}
    assert set(fetched) >= OWN_COMMANDS
    draw = fetched["draw"]
    # Command names stay English in every client (see bot/cogs/draw.py).
    assert draw.name_localizations == {}
    assert draw.description_localizations[discord.Locale.chinese] == "根据文字提示词画一张图。"
    options = {o.name: o for o in draw.options}
    steps = options["steps"]
    assert steps.name_localizations[discord.Locale.chinese] == "步数"
    assert (
        steps.description_localizations[discord.Locale.chinese]
        == "去噪步数：越多越慢，通常也越精细（1-150）"
    )
    assert options["negative_prompt"].name_localizations[discord.Locale.chinese] == "负面提示词"
    assert options["seed"].name_localizations[discord.Locale.chinese] == "种子"
    assert options["strength"].name_localizations[discord.Locale.chinese] == "重绘幅度"
    assert options["eta"].name_localizations == {}  # a symbol, the same in Chinese tools
    # Sampler names are proper names: no localizations.
    assert all(c.name_localizations == {} for c in options["sampler"].choices)

    mod = fetched["mod"]
    assert mod.description_localizations[discord.Locale.chinese] == "管理工具"
    groups = {o.name: o for o in mod.options}
    assert groups["settings"].name_localizations == {}  # subcommand names stay English too
    settings_set = next(o for o in groups["settings"].options if o.name == "set")
    nsfw = next(o for o in settings_set.options if o.name == "nsfw")
    labels = {c.value: c.name_localizations[discord.Locale.chinese] for c in nsfw.choices}
    assert labels == {"filter": "从不发布（默认）", "age_restricted": "只在年龄限制频道中发布"}
    reset = next(o for o in groups["settings"].options if o.name == "reset")
    setting = reset.options[0]
    assert setting.name_localizations[discord.Locale.chinese] == "设置项"
    resets = {c.value: c.name_localizations[discord.Locale.chinese] for c in setting.choices}
    assert resets["max_steps"] == "最大步数" and resets["all"] == "全部设置"


async def test_every_description_option_and_choice_of_these_commands_has_valid_chinese(world):
    tree = world.bot.tree
    payloads = [
        await command.get_translated_payload(tree, tree.translator)
        for command in tree.get_commands()
        if command.name in OWN_COMMANDS
    ]
    assert {p["name"] for p in payloads} == OWN_COMMANDS
    for command in payloads:
        for where, item in walk(command):
            assert len(item["description"]) <= 100, where
            zh_description = item.get("description_localizations", {}).get(ZH)
            assert zh_description and len(zh_description) <= 100, where
            assert re.search(r"[\u4e00-\u9fff]", zh_description), where
            zh_name = item.get("name_localizations", {}).get(ZH)
            is_option = item.get("type", 1) not in (1, 2)  # not a (sub)command or group
            if item is command or not is_option:
                assert zh_name is None, f"{where}: command names stay English"
            elif item["name"] not in ("eta", "nsfw"):
                assert zh_name and valid_name(zh_name), (where, zh_name)
            for choice in item.get("choices", []):
                zh_choice = choice.get("name_localizations", {}).get(ZH)
                if zh_choice is not None:
                    assert len(zh_choice) <= 100, (where, choice)
        names = [
            o.get("name_localizations", {}).get(ZH, o["name"])
            for _where, o in walk(command)
            if o is not command
        ]
        assert all(valid_name(n) for n in names)


def test_the_prompt_hint_keeps_the_models_example_in_both_languages():
    from bot.cogs.draw import prompt_hint

    example = "a large red circle in the centre, white background"
    hint = prompt_hint((example,))
    assert str(hint) == prompt_description((example,)) == f"What to draw, e.g. {example}"
    # The translator looks the message id up and puts the example back in.
    assert hint.extras == {"msgid": PROMPT_HINT, "example": example}
    with i18n.in_locale("zh-CN"):
        assert i18n._(PROMPT_HINT, example=example) == f"要画的内容，例如 {example}"


async def test_the_synced_prompt_description_is_chinese_with_the_models_example(world):
    tree = world.bot.tree
    draw = tree.get_command("draw")
    payload = await draw.get_translated_payload(tree, tree.translator)
    prompt = next(o for o in payload["options"] if o["name"] == "prompt")
    example = world.bot.models.capabilities().example_prompts[0]
    assert prompt["description"] == f"What to draw, e.g. {example}"
    assert prompt["name_localizations"][ZH] == "提示词"
    assert prompt["description_localizations"][ZH] == f"要画的内容，例如 {example}"


# -- answers in the member's language ---------------------------------------------------------


async def test_history_answers_each_member_in_their_language(world, client_locales):
    ch, alice, bob = world.channel, world.alice, world.bob
    client_locales[alice.id] = "zh-CN"
    await alice.slash(ch, "draw", prompt="a red fox", seed=3, steps=2)
    await bob.slash(ch, "draw", prompt="a blue owl", seed=4, steps=2)
    await world.idle()

    zh = (await alice.slash(ch, "history")).response.embeds[0]
    assert zh.title == "你的绘图"
    assert "a red fox" in zh.description  # the prompt is the member's own text
    assert "种子 3" in zh.description and "2 步" in zh.description
    en = (await bob.slash(ch, "history", query="owl")).response.embeds[0]
    assert en.title == "Your drawings matching “owl”"
    assert "seed 4" in en.description and "2 steps" in en.description

    client_locales[world.mod.id] = "zh-CN"
    listing = (await world.mod.slash(ch, "mod history", user=bob)).response.embeds[0]
    assert listing.title == "bob 的绘图" and "种子 4" in listing.description
    listing = (await world.mod.slash(ch, "mod history", query="fox")).response.embeds[0]
    assert listing.title == "包含“fox”的所有绘图"
    assert f"发起人：<@{alice.id}>" in listing.description


async def test_mod_answers_in_chinese_to_a_chinese_moderator_and_in_english_to_another(
    world, client_locales
):
    ch, env = world.channel, world.env
    other_mod = world.guild.add_member(env.create_user("mo"), roles=[world.mods])
    client_locales[world.mod.id] = "zh-CN"
    zh_mod, en_mod = world.mod, other_mod

    r = await zh_mod.slash(ch, "mod banword add", word="gore*")
    assert r.ephemeral
    assert r.response.content == (
        "现在会拒绝包含“gore\\*”的提示词（以它开头的词），无论怎样拼写："
        "N.S.F.W、ｎｓｆｗ、n5fw、n s f w……"
    )
    r = await en_mod.slash(ch, "mod banword add", word="gore*")
    assert r.response.content == "“gore\\*” was already banned."
    assert (await zh_mod.slash(ch, "mod banword list")).response.content == "已屏蔽：“gore\\*”"

    shown = (await zh_mod.slash(ch, "mod settings show")).response.content
    assert shown.startswith("**本服务器的 /draw 设置**\n")
    assert "最大步数：150（默认）" in shown and "冷却时间：无（默认）" in shown
    assert "被标记的图片：" in shown
    shown = (await en_mod.slash(ch, "mod settings show")).response.content
    assert "Max steps: 150 (default)" in shown

    assert (await zh_mod.slash(ch, "mod audit")).response.content == "本服务器没有清除记录。"
    assert (await en_mod.slash(ch, "mod audit")).response.content == "No purges in this server."


async def test_a_purge_asks_and_answers_in_the_moderators_language(world, client_locales):
    ch, alice, mod = world.channel, world.alice, world.mod
    client_locales[mod.id] = "zh-CN"
    await alice.slash(ch, "draw", prompt="a cat", seed=1, steps=2, count=2)
    await world.idle()

    r = await mod.slash(ch, "mod purge", user=alice)
    assert (
        r.ephemeral and f"{alice.user.mention} 在本服务器的全部 1 个绘图任务" in r.response.content
    )
    labels = [c["label"] for row in r.response.components for c in row["components"]]
    assert labels == ["是的，删除", "不，保留"]
    await mod.click(r.response, label="不，保留")
    assert next(m for m in ch.history(viewer=mod) if m.id == r.response.id).content == (
        "没有删除任何内容。"
    )

    r = await mod.slash(ch, "mod purge", user=alice)
    await mod.click(r.response, label="是的，删除")
    answer = next(m for m in ch.history(viewer=mod) if m.id == r.response.id)
    assert answer.content == (
        f"完成：已从本服务器删除 <@{alice.id}> 的 1 个绘图任务和 2 张图片；移除了 1 条消息。"
    )
    audit = (await mod.slash(ch, "mod audit")).response.content
    assert f"清除了 <@{alice.id}>：1 个绘图任务，2 张图片；删除了 1 条消息。" in audit


async def test_english_plurals_and_the_forget_confirmation(world, client_locales):
    ch, alice, bob = world.channel, world.alice, world.bob
    client_locales[bob.id] = "zh-CN"
    await alice.slash(ch, "draw", prompt="a cat", seed=1, steps=2)
    await world.idle()
    r = await world.mod.slash(ch, "mod purge", user=alice)
    assert "This deletes 1 drawing by" in r.response.content  # not "1 drawing(s)"

    r = await bob.slash(ch, "forget")
    assert r.response.content.startswith("这会删除你在所有服务器用本机器人画的每一张图")
    labels = [c["label"] for row in r.response.components for c in row["components"]]
    assert labels == ["是的，全部删除", "不，保留"]
    await bob.click(r.response, label="是的，全部删除")
    done = next(m for m in ch.history(viewer=bob) if m.id == r.response.id)
    assert done.content == (
        "完成：已从本机器人（所有服务器）删除 0 个绘图任务及其保存的图片，你排队中的任务也已停止。"
        "已经发到频道里的图片会一直保留，直到有人删除那些消息。"
    )
    r = await alice.slash(ch, "forget")
    await alice.click(r.response, label="Yes, delete everything")
    done = next(m for m in ch.history(viewer=alice) if m.id == r.response.id)
    assert done.content.startswith("Done: 1 drawing and its stored images are deleted")


async def test_queue_and_cancel_in_each_members_language(world, client_locales):
    ch, alice, bob = world.channel, world.alice, world.bob
    client_locales[alice.id] = "zh-CN"
    assert (await alice.slash(ch, "queue")).response.content == "队列是空的：/draw 会立即开始。"
    assert (await bob.slash(ch, "queue")).response.content == (
        "The queue is empty: /draw starts right away."
    )
    assert (await alice.slash(ch, "cancel")).response.content == "你没有排队中或正在绘制的任务。"

    world.bot.executor.pause_group(world.guild.id)  # so the jobs wait in the queue
    try:
        await alice.slash(ch, "draw", prompt="a cat", steps=2)
        await bob.slash(ch, "draw", prompt="a dog", steps=2)
        await alice.slash(ch, "draw", prompt="a cow", steps=2)
        queued = (await alice.slash(ch, "queue")).response.content
        assert "⏸️ 这里的队列已暂停" in queued
        assert f"#1：<@{alice.id}>（你），任务 #1" in queued
        assert "你的任务排在第 1和3 位。" in queued
        queued = (await bob.slash(ch, "queue")).response.content
        assert f"#2: <@{bob.id}> (you), job #2" in queued and "Your job is at place 2." in queued
        cancelled = (await alice.slash(ch, "cancel")).response.content
        assert cancelled == "已取消 2 个绘图任务。"
        assert (await bob.slash(ch, "cancel")).response.content == "Cancelled 1 drawing."
    finally:
        world.bot.executor.resume_group(world.guild.id)
    await world.idle()


async def test_a_refused_picture_is_explained_in_the_members_language(world, client_locales):
    client_locales[world.alice.id] = "zh-CN"
    image = ("cat.png", b"not a picture")
    r = await world.alice.slash(world.channel, "draw", prompt="a cat", width=128, image=image)
    assert r.ephemeral
    assert r.response.content == "使用图片时请不要填写宽度和高度：会使用图片本身的尺寸。"


# -- the preview's --locale -------------------------------------------------------------------


def test_the_preview_offers_the_catalogues_languages():
    assert LOCALES == i18n.SUPPORTED


def test_main_passes_locale_to_the_preview(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("DISCORD_TOKEN", "MODEL", "DB_PATH", "DATA_DIR", "DEV_GUILD_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("bot.app.configure_logging", lambda settings: None)
    spoken = []

    async def fake_serve(settings, *, port, on_ready):
        spoken.append(i18n.current())

    monkeypatch.setattr("bot.preview.serve_preview", fake_serve)
    assert main(["preview", "--locale", "zh-CN"]) == 0
    assert main(["preview"]) == 0
    assert spoken == ["zh-CN", "en-US"]
    assert i18n.current() == "en-US"  # only the preview's task spoke Chinese
    with pytest.raises(SystemExit):
        main(["preview", "--locale", "fr"])


async def test_the_preview_in_chinese(preview_settings):
    original = simcord.interactions.base_payload
    loop = asyncio.get_running_loop()
    ready: asyncio.Future = loop.create_future()
    with i18n.in_locale("zh-CN"):  # what --locale zh-CN does; the task inherits it
        task = asyncio.create_task(
            serve_preview(preview_settings, port=0, on_ready=ready.set_result, follow_interval=None)
        )
    try:
        await asyncio.wait({ready, task}, timeout=60, return_when="FIRST_COMPLETED")
        if task.done():
            task.result()
        session = ready.result()
        with i18n.in_locale("zh-CN"):
            hints = describe(session)
        assert hints.startswith("Easel 正在本地预览中运行：")
        assert f"  打开 {session.url}\n" in hints and "  在这里按 Ctrl-C 停止。" in hints
        assert "用“Viewing as”选择身份：alice" in hints
        with i18n.in_locale("en-US"):
            assert describe(session).startswith("Easel is running in a local preview")

        async with aiohttp.ClientSession() as http:
            page = await PreviewPage(http, session.url).open(session.world.member)
            receipt = await page.run_command("queue")
            assert not receipt["rejected"], receipt
            await page.refresh()
            texts = [m.get("content") for m in page.messages()]
            assert "队列是空的：/draw 会立即开始。" in texts, texts
        await session.preview.close()
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert simcord.interactions.base_payload is original  # put back when the preview ends
