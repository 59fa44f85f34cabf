"""Errors of the bot's own rules (server settings); like every ``EaselError``, their message is
shown to the user privately, in their language: raise them with an ``N_``-marked English message
id and its values, ``OverServerLimit(N_("... {limit} steps ..."), limit=30)`` (see
``pipeline.errors``)."""

from __future__ import annotations

from pipeline.errors import EaselError


class OverServerLimit(EaselError):
    """The request is over a limit this server's moderators set (steps, size, count, queue)."""


class CoolingDown(EaselError):
    """The member started a drawing too recently for this server's cooldown."""


class InvalidSetting(EaselError):
    """A /mod settings value the loaded model or the bot can't honour."""
