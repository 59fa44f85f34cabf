"""The one way the bot answers a member privately: refusals, errors, confirmations."""

from __future__ import annotations

import logging

import discord

from bot.i18n import localize

log = logging.getLogger(__name__)


async def answer_privately(interaction: discord.Interaction, message: str | BaseException) -> None:
    """Answer ``interaction`` with an ephemeral ``message``, whatever state it is in.

    ``message`` is shown in the current locale (the member's, once ``i18n.enter`` ran): a
    translated text, or an ``EaselError`` or ``Message`` (``str(refusal)`` is one), translated
    here. A public "thinking…" placeholder is replaced rather than left spinning. A message over
    Discord's 2000 characters is cut rather than refused.
    """
    message = localize(message)
    if len(message) > 2000:
        message = message[:1999] + "…"
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(message, ephemeral=True)
        elif interaction.response.type == discord.InteractionResponseType.deferred_channel_message:
            await interaction.edit_original_response(content=message)
        else:
            await interaction.followup.send(message, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not answer user %s", interaction.user.id, exc_info=True)
