"""The bot's languages: gettext catalogues under ``bot/locales``, read with Babel.

Every user-facing string is written in English inside ``_()`` (or ``ngettext()`` for plurals,
``N_()`` where only marking is possible, as in ``pipeline/``) with ``{name}`` placeholders, and
translated at the moment it is shown, in the locale of the current context:

- private answers: the member's reply language (``/settings``), else their client's locale;
- public posts (results, queue notices): the server's locale (``in_locale(public_locale(...))``);
- otherwise en-US.

The current locale is a context variable: ``enter(interaction)`` sets it for the task serving
that interaction (every interaction_check calls it), and tasks started from there inherit it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import discord
from babel import Locale
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import Translations
from discord import app_commands

from pipeline import messages
from pipeline.messages import Message, localized

__all__ = [
    "N_",
    "Message",
    "Translator",
    "_",
    "enter",
    "in_locale",
    "localize",
    "ngettext",
    "number",
    "private_locale",
    "public_locale",
]

LOCALES_DIR = Path(__file__).with_name("locales")
DOMAIN = "messages"
DEFAULT = "en-US"
# Discord's locale names of the languages with a catalogue; en-US is the source language.
SUPPORTED = ("en-US", "zh-CN")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("easel_locale", default=DEFAULT)


def normalize(locale: str | discord.Locale | None) -> str:
    """The supported locale closest to a Discord locale: zh-CN for Chinese, else en-US."""
    value = str(locale.value if isinstance(locale, discord.Locale) else locale or "")
    # Traditional-Chinese clients read simplified Chinese better than English.
    if value.lower().startswith("zh"):
        return "zh-CN"
    return DEFAULT


@functools.cache
def catalogue(locale: str) -> Translations | None:
    """The compiled catalogue of ``locale`` (None for the source language)."""
    if locale == DEFAULT:
        return None
    catalog = read_catalogue(locale)
    # Compiled in memory: the .po files are the only thing kept in the repository.
    mo = io.BytesIO()
    write_mo(mo, catalog, use_fuzzy=False)
    mo.seek(0)
    return Translations(mo, domain=DOMAIN)


def read_catalogue(locale: str) -> Catalog:
    """``locale``'s messages (its ``messages.po``) as a Babel catalogue."""
    path = LOCALES_DIR / locale.replace("-", "_") / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as po:
        return read_po(po, locale=locale.replace("-", "_"))


def current() -> str:
    """The locale strings are translated into right now."""
    return _current.get()


@contextlib.contextmanager
def in_locale(locale: str | discord.Locale | None) -> Iterator[str]:
    """Translate into ``locale`` inside the block (for public posts: the server's locale)."""
    token = _current.set(normalize(locale))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def private_locale(interaction: discord.Interaction) -> str:
    """The language of private answers to ``interaction``'s member."""
    client: Any = interaction.client
    chosen = client.user_locale(interaction.user.id) if hasattr(client, "user_locale") else None
    return normalize(chosen or interaction.locale)


def public_locale(
    interaction: discord.Interaction | None = None, guild: discord.abc.Snowflake | None = None
) -> str:
    """The language of posts everyone in the channel sees: the server's (the interaction's
    ``guild_locale``, else ``guild.preferred_locale``); in DMs the member's; else en-US."""
    if interaction is not None:
        if interaction.guild_id is None:
            return private_locale(interaction)  # a DM is seen by its member only
        return normalize(interaction.guild_locale)
    preferred = getattr(guild, "preferred_locale", None)
    return normalize(preferred)


def enter(interaction: discord.Interaction) -> str:
    """Make the member's language current for the rest of the task serving ``interaction``."""
    locale = private_locale(interaction)
    _current.set(locale)
    return locale


def N_(message: str) -> str:
    """Mark ``message`` for extraction without translating it (it is translated when shown)."""
    return message


def _values(params: dict[str, Any]) -> dict[str, Any]:
    # A value that is a message itself (an error's reason, a note) is shown in the same language.
    return {k: localized(v) if hasattr(v, "localized") else v for k, v in params.items()}


def _(message: str, /, **params: Any) -> str:
    """``message`` in the current locale, its ``{placeholders}`` filled from ``params``."""
    translations = catalogue(_current.get())
    text = translations.gettext(message) if translations is not None else message
    return text.format(**_values(params)) if params else text


def ngettext(singular: str, plural: str, n: int, /, **params: Any) -> str:
    """The singular or plural form for ``n`` in the current locale; ``{n}`` is ``n``."""
    return _plural(singular, plural, n).format(n=number(n), **_values(params))


def _plural(singular: str, plural: str, n: int) -> str:
    translations = catalogue(_current.get())
    if translations is not None:
        return translations.ngettext(singular, plural, n)
    return singular if n == 1 else plural


def _lookup(msgid: str, plural: str | None, n: int | None) -> str:
    """How ``pipeline.messages`` translates a ``Message`` when it is shown."""
    if plural is not None:
        return _plural(msgid, plural, n if n is not None else 1)
    translations = catalogue(_current.get())
    return translations.gettext(msgid) if translations is not None else msgid


# Messages made in pipeline/ (refusals, notes) translate through this module's catalogues.
messages.set_translator(_lookup, lambda n: number(n))


def localize(value: Any) -> str:
    """A ``Message`` or an ``EaselError`` in the current locale; any other text as it is (user
    text is never looked up)."""
    return localized(value)


def _babel_locale() -> Locale:
    return Locale.parse(_current.get(), sep="-")


def number(value: float, *, digits: int | None = None) -> str:
    """``value`` written the way the current locale writes numbers."""
    pattern = None if digits is None else "#,##0." + "0" * digits if digits else "#,##0"
    return format_decimal(value, format=pattern, locale=_babel_locale())


class Translator(app_commands.Translator):
    """Gives Discord the zh-CN names, descriptions and choice labels of the commands.

    A ``locale_str`` is looked up by its text, or by ``extras["msgid"]`` when it has one (a
    message id with ``{placeholders}``, discord.py's advice); its other extras fill the
    placeholders: ``locale_str(f"What to draw, e.g. {example}", msgid="What to draw, e.g.
    {example}", example=example)``."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        target = normalize(locale)
        if target == DEFAULT or locale.value != target:
            return None  # only exact catalogue locales; Discord shows the default elsewhere
        translations = catalogue(target)
        if translations is None:
            return None
        extras = dict(string.extras)
        msgid = extras.pop("msgid", None)
        text = translations.gettext(msgid or string.message)
        if text == (msgid or string.message):
            return None  # not translated: Discord shows the default
        if msgid is None:
            return text  # the text itself: no placeholders to fill
        try:
            return text.format(**extras)
        except (KeyError, IndexError, ValueError):
            return None
