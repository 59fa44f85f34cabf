"""The languages: the catalogue matches the code, translations keep their placeholders, and the
helpers translate into the current locale. Fast: no model, no SimCord."""

from __future__ import annotations

import string
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg

from bot import i18n
from bot.i18n import N_, _, in_locale, localize, ngettext, number
from pipeline import messages
from pipeline.errors import EaselError, UnsupportedOption
from pipeline.messages import Message

ROOT = Path(__file__).resolve().parent.parent
# The keywords `make messages` extracts with (pybabel extract -k ...).
KEYWORDS: dict[str, Any] = {"_": None, "N_": None, "ngettext": (1, 2), "locale_str": None}


def code_ids() -> dict[str | tuple[str, str], str]:
    """Every message id the code uses, extracted as `make messages` does, with where it is."""
    with (ROOT / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found: dict[str | tuple[str, str], str] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(ROOT), method_map, options_map, keywords=KEYWORDS
    ):
        key = message if isinstance(message, str) else (message[0], message[1])
        found.setdefault(key, f"{filename}:{lineno}")
    return found


@pytest.fixture(scope="module")
def extracted() -> dict[str | tuple[str, str], str]:
    return code_ids()


@pytest.fixture(scope="module")
def zh() -> Catalog:
    # messages.po, as the bot reads it.
    return i18n.read_catalogue("zh-CN")


def placeholders(text: str) -> list[tuple[str, str, str | None]]:
    """The ``{name:spec!conv}`` fields of ``text``, sorted (a broken brace raises)."""
    return sorted(
        (name, spec or "", conversion)
        for _literal, name, spec, conversion in string.Formatter().parse(text)
        if name is not None
    )


def test_the_code_uses_messages(extracted):
    # The extraction itself works: core, engine and a plural are all found.
    assert "Reroll" in extracted
    assert "Steps must be between 1 and {limit}; got {steps}." in extracted
    assert ("Page {page} of {pages} · {n} job", "Page {page} of {pages} · {n} jobs") in extracted


def test_every_message_of_the_code_is_in_the_catalogue(extracted, zh):
    missing = [
        f"{where}: {key!r}"
        for key, where in sorted(extracted.items(), key=lambda kv: kv[1])
        if zh.get(key if isinstance(key, str) else key[0]) is None
    ]
    assert not missing, "not in bot/locales/zh_CN (run `make messages`):\n" + "\n".join(missing)


def test_the_catalogue_has_no_stale_entries(extracted, zh):
    used = {key if isinstance(key, str) else key[0] for key in extracted}
    stale = [m.id for m in zh if m.id and (m.id if isinstance(m.id, str) else m.id[0]) not in used]
    assert not stale, "no longer in the code (run `make messages`):\n" + "\n".join(map(repr, stale))


def test_every_message_is_translated(zh):
    empty = [
        m.id
        for m in zh
        if m.id and not (all(m.string) if isinstance(m.string, tuple) else m.string)
    ]
    assert not empty, "msgstr is empty:\n" + "\n".join(map(repr, empty))


def test_plural_entries_match_the_code(extracted, zh):
    for key in extracted:
        if isinstance(key, tuple):
            entry = zh.get(key[0])
            assert entry is not None and entry.pluralizable, key
            assert tuple(entry.id) == key, f"plural form changed: {key!r}"


def test_translations_keep_the_placeholders(zh):
    assert zh.num_plurals == 1  # Chinese has one form: the plural's placeholders
    wrong = []
    for m in zh:
        if not m.id:
            continue
        if isinstance(m.id, tuple):
            expected = placeholders(m.id[1])
            assert placeholders(m.id[0]) in (expected, [p for p in expected if p[0] != "n"])
            forms = m.string if isinstance(m.string, tuple) else (m.string,)
        else:
            expected = placeholders(m.id)
            forms = (m.string,)
        for form in forms:
            if form and placeholders(form) != expected:
                wrong.append(f"{m.id!r}\n  -> {form!r}")
    assert not wrong, "placeholders differ:\n" + "\n".join(wrong)


def test_translations_keep_markdown_and_emoji(zh):
    for m in zh:
        if not m.id or not m.string:
            continue
        source = m.id if isinstance(m.id, str) else m.id[1]
        forms = m.string if isinstance(m.string, tuple) else (m.string,)
        for marker in ("**", "`", "-# ", "⚠️", "🔞", "#"):
            if marker in source:
                assert all(marker in form for form in forms), (marker, m.id, forms)


# -- behaviour -------------------------------------------------------------------------------


def test_underscore_translates_into_the_current_locale():
    assert _("Reroll") == "Reroll"
    with in_locale("zh-CN"):
        assert _("Reroll") == "重新生成"
        assert _("Job #{job}", job=7) == "任务 #7"
        with in_locale("en-US"):
            assert _("Job #{job}", job=7) == "Job #7"
        assert i18n.current() == "zh-CN"
    assert i18n.current() == "en-US"
    # Text nobody translated is shown as it is, in every locale.
    with in_locale("zh-CN"):
        assert _("a prompt nobody translated {x}", x=1) == "a prompt nobody translated 1"


def test_ngettext_picks_the_form_and_formats_n():
    one, many = "Page {page} of {pages} · {n} job", "Page {page} of {pages} · {n} jobs"
    assert ngettext(one, many, 1, page=1, pages=1) == "Page 1 of 1 · 1 job"
    assert ngettext(one, many, 1234, page=1, pages=2) == "Page 1 of 2 · 1,234 jobs"
    with in_locale("zh-CN"):
        assert ngettext(one, many, 1, page=1, pages=1) == "第 1/1 页 · 共 1 个任务"
        assert ngettext(one, many, 3, page=2, pages=2) == "第 2/2 页 · 共 3 个任务"


def test_numbers_follow_the_locale():
    assert number(1234567) == "1,234,567"
    assert number(0.5, digits=2) == "0.50"
    with in_locale("zh-CN"):
        assert number(1234567) == "1,234,567"


def test_locales_normalize_to_the_two_catalogues():
    assert i18n.normalize("zh-CN") == "zh-CN"
    assert i18n.normalize(discord.Locale.taiwan_chinese) == "zh-CN"
    assert i18n.normalize("fr") == "en-US"
    assert i18n.normalize(None) == "en-US"


def test_errors_keep_english_for_logs_and_translate_when_shown():
    reason = Message(N_("the package {package} is not installed"), package="scipy")
    err = UnsupportedOption(
        N_("{sampler} can't be used with {model}: {why}. Try one of: {names}."),
        sampler="LMS",
        model="tiny:sd",
        why=reason,
        names="DDIM",
    )
    assert str(err) == (
        "LMS can't be used with tiny:sd: the package scipy is not installed. Try one of: DDIM."
    )
    assert isinstance(err, ValueError) and err.text.msgid.startswith("{sampler}")
    with in_locale("zh-CN"):
        shown = err.localized()
        assert shown == "LMS 不能用于 tiny:sd：未安装 scipy 包。请从以下选择：DDIM。"
        assert localize(err) == shown and localize(str(err)) == shown  # str(err) is a Message
        assert localize("a prompt") == "a prompt"  # plain text is never looked up
    assert err.localized() == str(err)


def test_an_error_made_from_plain_text_stays_as_it_is():
    err = EaselError("an operator's message, not marked")
    with in_locale("zh-CN"):
        assert err.localized() == "an operator's message, not marked"


def test_lazy_plurals_translate_when_shown():
    text = messages.ngettext("comparison #{id} ({n} cell)", "comparison #{id} ({n} cells)", 4, id=9)
    assert text == "comparison #9 (4 cells)"
    with in_locale("zh-CN"):
        assert localize(text) == "对比 #9（4 格）"


def test_messages_survive_pickling():
    import pickle

    err = UnsupportedOption(N_("The seed must be between 0 and {max}."), max=5)
    again = pickle.loads(pickle.dumps(err))
    with in_locale("zh-CN"):
        assert again.localized() == "种子必须在 0 到 5 之间。"


def fake_interaction(locale: str, guild_locale: str | None, *, guild: bool = True) -> Any:
    return SimpleNamespace(
        locale=discord.Locale(locale),
        guild_locale=discord.Locale(guild_locale) if guild_locale else None,
        guild_id=1 if guild else None,
        user=SimpleNamespace(id=5),
        client=SimpleNamespace(),
    )


def test_private_and_public_locales():
    zh_member_en_server = fake_interaction("zh-CN", "en-US")
    assert i18n.private_locale(zh_member_en_server) == "zh-CN"
    assert i18n.public_locale(zh_member_en_server) == "en-US"
    en_member_zh_server = fake_interaction("en-US", "zh-CN")
    assert i18n.private_locale(en_member_zh_server) == "en-US"
    assert i18n.public_locale(en_member_zh_server) == "zh-CN"
    # A DM is seen by its member alone.
    assert i18n.public_locale(fake_interaction("zh-CN", None, guild=False)) == "zh-CN"
    # After a restart there is only the channel's server.
    assert i18n.public_locale(guild=SimpleNamespace(preferred_locale=discord.Locale("zh-CN"))) == (
        "zh-CN"
    )
    assert i18n.public_locale() == "en-US"


async def test_enter_sets_the_member_locale_for_the_rest_of_the_task():
    import asyncio

    async def serve(interaction: Any) -> str:
        i18n.enter(interaction)
        await asyncio.sleep(0)
        return _("Delete")

    assert await asyncio.create_task(serve(fake_interaction("zh-CN", "en-US"))) == "删除"
    assert await asyncio.create_task(serve(fake_interaction("en-US", "zh-CN"))) == "Delete"
    assert i18n.current() == "en-US"  # tasks copy the context: this one is untouched


async def test_the_command_translator_gives_zh_cn_only():
    from discord import app_commands

    translator = i18n.Translator()
    context: Any = None
    text = app_commands.locale_str("Reroll")
    assert await translator.translate(text, discord.Locale.chinese, context) == "重新生成"
    assert await translator.translate(text, discord.Locale.taiwan_chinese, context) is None
    assert await translator.translate(text, discord.Locale.french, context) is None
    nobody = app_commands.locale_str("not in the catalogue")
    assert await translator.translate(nobody, discord.Locale.chinese, context) is None


# -- labels ----------------------------------------------------------------------------------


def labels_of(view: discord.ui.View) -> list[str]:
    out = []
    for child in view.children:
        item = getattr(child, "item", child)  # a DynamicItem wraps its button
        label = getattr(item, "label", None) or getattr(item, "placeholder", None)
        if label:
            out.append(label)
    return out


async def every_label() -> list[str]:
    """Every label of bot/views.py's buttons, menus and form, in the current locale."""
    from bot.views import (
        CellMenu,
        HistoryPages,
        RemixForm,
        VaryStrengthButton,
        result_view,
    )

    labels = labels_of(result_view(1, images=2, vary=True, upscale=True, remix=True))
    labels += [VaryStrengthButton(1, 0, how).item.label or "" for how in ("subtle", "strong")]
    labels.append(CellMenu(3).item.placeholder or "")

    async def load(before: int | None) -> list[Any]:
        return []

    labels += labels_of(HistoryPages(5, "title", load))
    form = RemixForm(4, 2, "a prompt")
    # TextInput.label warns (deprecated for discord.ui.Label): read what it sends instead.
    labels += [form.title or "", *(child._underlying.label for child in form.children)]  # type: ignore[attr-defined]
    # V1, U2...: numbered as Midjourney numbers them, in every language.
    return [label for label in labels if not (label[0] in "VU" and label[1:].isdigit())]


async def test_every_label_of_the_views_is_translated(zh):
    english = await every_label()
    assert "Reroll" in english and "Vary (Strong)" in english and "Open a cell" in english
    assert "Prev" in english and "Remix job #4" in english and "Which picture (1-2)" in english
    with in_locale("zh-CN"):
        chinese = await every_label()
    assert len(chinese) == len(english)
    for en, translated in zip(english, chinese, strict=True):
        assert translated != en, f"{en!r} is not translated"
    # And each is the catalogue's (not some other text).
    assert zh.get("Reroll").string == "重新生成"
    assert "重新生成" in chinese and "删除" in chinese and "打开一格" in chinese


def test_the_runtime_reads_the_same_catalogue_as_the_tests(zh):
    assert i18n.catalogue("zh-CN") is not None
    with in_locale("zh-CN"):
        for m in list(zh)[1:20]:
            if m.id and isinstance(m.id, str) and m.string:
                assert _(m.id) == m.string


async def test_the_command_translator_looks_up_a_message_id_and_fills_its_extras():
    from discord import app_commands

    translator = i18n.Translator()
    context: Any = None
    hint = app_commands.locale_str("Job #7", msgid="Job #{job}", job=7)
    assert await translator.translate(hint, discord.Locale.chinese, context) == "任务 #7"
    broken = app_commands.locale_str("Job #7", msgid="Job #{job}")  # no value for {job}
    assert await translator.translate(broken, discord.Locale.chinese, context) is None


def test_a_lazy_plural_writes_its_count_as_the_locale_does():
    text = messages.ngettext(
        "{n} cell of {total} not drawn: marked in the grid.",
        "{n} cells of {total} not drawn: marked in the grid.",
        1500,
        total=2000,
    )
    assert str(text) == "1500 cells of 2000 not drawn: marked in the grid."  # English for logs
    assert localize(text) == "1,500 cells of 2000 not drawn: marked in the grid."
    with in_locale("zh-CN"):
        assert localize(text) == "2000 格中有 1,500 格未绘制：已在网格中标出。"
