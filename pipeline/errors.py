"""Domain errors: each carries a message a user can act on.

The bot maps these to polite ephemeral answers in one place (its CommandTree's on_error);
anything that is not an ``EaselError`` is an internal fault and is never shown verbatim.
"""

from __future__ import annotations


class EaselError(Exception):
    """Base class for errors whose message is safe and useful to show to a user."""


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
