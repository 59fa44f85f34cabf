"""User text shown by the bot (prompts, names, banned words) made inert: no markdown, no links."""

from __future__ import annotations

import re

import discord

# "https://..." in an embed is a clickable link even without markdown. An escaped colon
# ("https\://") renders as the same characters but Discord no longer sees a URL in it.
_SCHEME = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*):(?=//)")


def plain(text: str) -> str:
    """``text`` as Discord shows it literally: markdown escaped (so ``[label](url)`` is no
    masked link) and URLs left as plain, unclickable text."""
    return _SCHEME.sub(r"\1\\:", discord.utils.escape_markdown(text))
