"""Messages for people that stay translatable on their way out of the engine.

``pipeline/`` never imports the bot, yet its refusals and notes are shown to Discord members in
their language. So a message is kept as what it *is* (an English message id with ``{named}``
placeholders and their values) and translated only when it is shown:

- ``Message(N_("Steps must be between 1 and {limit}."), limit=150)`` is a ``str`` whose value
  is the English text (logs, the CLI, tests), and whose ``localized()`` is the text in the
  current language of whoever installed a translator (``bot.i18n`` does, at import);
- ``ngettext(singular, plural, n, **params)`` is the same for a message with plural forms
  (``{n}`` is ``n``); unlike ``bot.i18n.ngettext`` it translates later, not now;
- ``N_`` only marks a message id for extraction (``make messages``).

A value that is itself a ``Message`` (a reason inside a sentence) is translated with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# (msgid, plural msgid or None, n or None) -> the translated template.
Translate = Callable[[str, str | None, int | None], str]


def _english(msgid: str, plural: str | None, n: int | None) -> str:
    if plural is None:
        return msgid
    return msgid if n == 1 else plural


_translate: Translate = _english
# How a plural message writes its ``{n}`` when shown (the translator's locale's digits).
_number: Callable[[int], str] = str


def set_translator(translate: Translate | None, number: Callable[[int], str] | None = None) -> None:
    """Make ``Message.localized`` translate with ``translate`` and write a plural's ``{n}``
    with ``number`` (None: English again)."""
    global _translate, _number
    _translate = translate or _english
    _number = number or str


def N_(message: str) -> str:
    """Mark ``message`` for extraction without translating it (it is translated when shown)."""
    return message


class Message(str):
    """English text that remembers its message id and values, to be translated when shown."""

    msgid: str
    plural: str | None
    n: int | None
    params: Mapping[str, Any]

    def __new__(cls, msgid: str, /, **params: Any) -> Message:
        return cls._make(msgid, None, None, params)

    @classmethod
    def _make(
        cls, msgid: str, plural: str | None, n: int | None, params: Mapping[str, Any]
    ) -> Message:
        values = dict(params)
        if n is not None:
            values.setdefault("n", n)
        self = super().__new__(cls, _fill(_english(msgid, plural, n), values, translate=False))
        self.msgid = msgid
        self.plural = plural
        self.n = n
        self.params = values
        return self

    def localized(self) -> str:
        """The text in the current language (English when no translator is installed)."""
        params = self.params
        if self.n is not None and params.get("n") == self.n:
            params = {**params, "n": _number(self.n)}
        return _fill(_translate(self.msgid, self.plural, self.n), params, translate=True)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.msgid, self.plural, self.n, dict(self.params)))


def _rebuild(msgid: str, plural: str | None, n: int | None, params: dict[str, Any]) -> Message:
    return Message._make(msgid, plural, n, params)


def ngettext(singular: str, plural: str, n: int, /, **params: Any) -> Message:
    """A message with plural forms, translated when shown; ``{n}`` is ``n``."""
    return Message._make(singular, plural, n, params)


def localized(value: Any) -> str:
    """``value`` in the current language if it knows how (a ``Message``, an ``EaselError``),
    else as it is: user text and plain strings are never looked up."""
    localize = getattr(value, "localized", None)
    if callable(localize):
        return str(localize())
    return str(value)


def _fill(template: str, params: Mapping[str, Any], *, translate: bool) -> str:
    if not params:
        return template
    if translate:
        params = {k: localized(v) if hasattr(v, "localized") else v for k, v in params.items()}
    return template.format(**params)
