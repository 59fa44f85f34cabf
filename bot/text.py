"""User text shown by the bot (prompts, names, banned words) made inert: no markdown, no links;
and translated sentences put one after another as the current language writes them."""

from __future__ import annotations

import re

import discord
from babel.lists import format_list

from bot.i18n import current

# "https://..." in an embed is a clickable link even without markdown. An escaped colon
# ("https\://") renders as the same characters but Discord no longer sees a URL in it.
_SCHEME = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*):(?=//)")
# Languages whose sentences follow each other without a space (their full stop is wide).
_NO_SPACE_BETWEEN_SENTENCES = ("zh-CN",)


def plain(text: str) -> str:
    """``text`` as Discord shows it literally: markdown escaped (so ``[label](url)`` is no
    masked link) and URLs left as plain, unclickable text."""
    return _SCHEME.sub(r"\1\\:", discord.utils.escape_markdown(text))


def sentences(*parts: str) -> str:
    """Whole translated sentences one after the other: "Done. Saved." but "完成。已保存。"
    (empty parts are left out). Never for pieces of one sentence."""
    between = "" if current() in _NO_SPACE_BETWEEN_SENTENCES else " "
    return between.join(part for part in parts if part)


def listing(items: list[str]) -> str:
    """``items`` as a list in the current language: "2, 5, and 7", "2、5和7"."""
    return format_list(items, locale=current().replace("-", "_"))


def chunks(text: str, limit: int = 2000) -> list[str]:
    """``text`` split between lines into messages of at most ``limit`` characters (Discord's
    limit); a single longer line is cut."""
    parts: list[str] = []
    current_part = ""
    for line in text.split("\n"):
        line = line if len(line) <= limit else line[: limit - 1] + "…"
        if current_part and len(current_part) + 1 + len(line) > limit:
            parts.append(current_part)
            current_part = line
        else:
            current_part = f"{current_part}\n{line}" if current_part else line
    return [*parts, current_part] if current_part or not parts else parts
