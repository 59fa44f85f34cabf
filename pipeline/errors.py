"""Domain errors: each carries a message a user can act on.

The bot maps these to polite ephemeral answers in one place (its CommandTree's on_error);
anything that is not an ``EaselError`` is an internal fault and is never shown verbatim.

A message is an English message id marked with ``N_`` and its values as keywords, never a
sentence put together beforehand, so it can be shown in the member's language::

    raise UnsupportedOption(N_("Steps must be between 1 and {limit}; got {steps}."),
                            limit=150, steps=r.steps)

``str(err)`` is the English text (logs, the CLI); ``err.localized()`` is the text in the current
language (``bot.i18n`` sets it per interaction); ``err.text`` is the ``Message`` (to nest it
in another message as a value, or keep it to show later).
"""

from __future__ import annotations

from typing import Any

from pipeline.messages import Message


class EaselError(Exception):
    """Base class for errors whose message is safe and useful to show to a user."""

    def __init__(self, message: str = "", /, **params: Any) -> None:
        text = message if isinstance(message, Message) and not params else None
        self.text: Message = text if text is not None else Message(str(message), **params)
        super().__init__(self.text)

    def __str__(self) -> str:
        return self.text

    def localized(self) -> str:
        """The message in the current language."""
        return self.text.localized()


class UnsupportedOption(EaselError, ValueError):
    """The request asks for something the loaded model cannot honour."""


class ModelLoadError(EaselError, OSError):
    """The model could not be loaded (not cached and no hub, bad folder, ...)."""


class QueueFull(EaselError):
    """A per-user or global queue cap was reached."""


class JobCancelled(EaselError):
    """The job was cancelled before or while it ran."""


class GpuOutOfMemory(EaselError):
    """The job did not fit in GPU memory even when run alone."""


class UnknownJob(EaselError):
    """No such job where the user asked (another server's jobs count as unknown)."""


class NotAllowed(EaselError):
    """The user may not do this (e.g. delete someone else's drawing)."""


class PromptRefused(EaselError):
    """The prompt contains a word the server's moderators banned."""


class BadCompareValue(EaselError, ValueError):
    """A /compare value can't be used (junk, a duplicate, too many cells); says what to write."""
