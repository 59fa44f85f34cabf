"""Where a job's messages go (the interaction, its channel, the requester's DMs), and what the
callbacks of one queued job need to finish it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from bot import i18n
from bot.i18n import N_, Message, _, in_locale, localize
from bot.render import DEFAULT_UPLOAD_LIMIT
from pipeline.errors import EaselError
from pipeline.request import DrawRequest

if TYPE_CHECKING:
    from bot.protocols import Host
    from pipeline.executor import JobOutcome

log = logging.getLogger(__name__)

# Editing the interaction's message failed, but the channel may still take a new message:
# the token expired (Discord 50027; SimCord 10015), someone deleted the "Queued" message
# (10008), or the bot lost access to it (50001, 50013).
_POST_ELSEWHERE_CODES = {50027, 10015, 10008, 50001, 50013}


class Delivery:
    """Where a job's messages go: the interaction while its token lives, else the channel, else
    the requester's DMs. ``failure`` says why nothing could be posted, when that happens.

    Everything posted is public, so it is in the server's language (``locale()``): text given
    as a ``Message`` is translated into it here; embeds and buttons are built by the caller
    inside ``in_locale(await delivery.locale())``."""

    def __init__(
        self,
        bot: Host,
        *,
        channel_id: int | None,
        user_id: int,
        interaction: discord.Interaction | None = None,
        locale: str | None = None,
    ) -> None:
        """``locale``: the language chosen when the job was queued (it outlives a restart)."""
        self.bot = bot
        self.channel_id = channel_id
        self.user_id = user_id
        self.interaction = interaction
        self.lock = asyncio.Lock()
        self.finished = False
        # The newest progress text waiting for the edit in progress to end.
        self._next_status: str | None = None
        self.failure: str | None = None
        self._locale: str | None = locale

    async def locale(self) -> str:
        """The language of this job's posts: the server's (from the interaction, or after a
        restart from the channel's server); in DMs the member's; else en-US."""
        if self._locale is None:
            if self.interaction is not None:
                self._locale = i18n.public_locale(self.interaction)
            else:
                channel = await self.bot.resolve_channel(self.channel_id)
                guild = getattr(channel, "guild", None)
                chooser: Any = getattr(self.bot, "user_locale", None)
                chosen = chooser(self.user_id) if guild is None and callable(chooser) else None
                # A DM after a restart: the member's chosen language (/settings), if any.
                self._locale = i18n.normalize(chosen) if chosen else i18n.public_locale(guild=guild)
        return self._locale

    def _live(self) -> bool:
        return self.interaction is not None and not self.interaction.is_expired()

    async def status(self, text: str) -> None:
        """Show queue position or progress (a ``Message`` is translated into the server's
        language); never fails the job. While an edit is busy the newest text waits and is
        shown when it ends (the ones between are skipped: Discord rate-limits edits)."""
        if self.finished or not self._live():
            return
        self._next_status = text
        if self.lock.locked():
            return  # the edit in progress sends it
        async with self.lock:
            while self._next_status is not None and not self.finished:
                text, self._next_status = self._next_status, None
                with in_locale(await self.locale()):
                    content = localize(text)
                try:
                    assert self.interaction is not None
                    await self.interaction.edit_original_response(content=content)
                except discord.HTTPException as exc:
                    log.debug("progress edit failed: %s", exc)

    async def final(self, **message: Any) -> discord.Message | None:
        """Post the final message: edit the interaction's response, or send it to the channel,
        or to the requester by DM. None (and ``failure`` set) when all of them failed.

        A ``content`` that is a ``Message`` is translated into the server's language."""
        async with self.lock:
            self.finished = True
            locale = await self.locale()
            if message.get("content") is not None:
                with in_locale(locale):
                    message["content"] = localize(message["content"])
            if self._live():
                assert self.interaction is not None
                try:
                    return await self.interaction.edit_original_response(
                        content=message.get("content"),
                        embed=message.get("embed"),
                        attachments=[u.file() for u in message.get("uploads", [])],
                        view=message.get("view"),
                    )
                except discord.HTTPException as exc:
                    if exc.code not in _POST_ELSEWHERE_CODES:
                        raise
                    log.info("editing the interaction failed (%s); posting anew", exc.code)
            sent = await self._send_to_channel(**message)
            if sent is not None:
                return sent
            with in_locale(locale):
                return await self._send_by_dm(**message)

    async def _send_to_channel(self, **message: Any) -> discord.Message | None:
        channel = await self.bot.resolve_channel(self.channel_id)
        if channel is None or not hasattr(channel, "send"):
            self.failure = f"channel {self.channel_id} is gone"
            return None
        mention = f"<@{self.user_id}>"
        content = message.get("content")
        try:
            return await channel.send(
                content=f"{mention} {content}" if content else mention,
                embed=message.get("embed"),
                files=[u.file() for u in message.get("uploads", [])],
                view=message.get("view"),
                # Only the requester is pinged, whatever the prompt says.
                allowed_mentions=discord.AllowedMentions(
                    everyone=False, roles=False, users=[discord.Object(self.user_id)]
                ),
            )
        except (discord.Forbidden, discord.NotFound) as exc:
            self.failure = f"could not post in channel {self.channel_id}: {exc.status} {exc.code}"
            return None

    async def _send_by_dm(self, **message: Any) -> discord.Message | None:
        """The channel is gone or closed to the bot: tell the requester privately instead."""
        try:
            user = self.bot.get_user(self.user_id) or await self.bot.fetch_user(self.user_id)
            why = _("-# Sent here because its channel is gone or the bot can no longer post there.")
            content = message.get("content")
            extra: dict[str, Any] = {
                key: message[key] for key in ("embed", "view") if message.get(key) is not None
            }
            return await user.send(
                content=f"{content}\n{why}" if content else why,
                files=[u.file() for u in message.get("uploads", [])],
                **extra,
            )
        except discord.HTTPException as exc:
            log.warning(
                "job result for user %s not delivered: %s; DM failed too (%s)",
                self.user_id,
                self.failure,
                exc,
            )
            self.failure = f"{self.failure}; DM refused: {exc.status} {exc.code}"
            return None

    def upload_limit(self) -> int:
        if self.interaction is not None:
            return getattr(self.interaction, "filesize_limit", None) or DEFAULT_UPLOAD_LIMIT
        channel = self.bot.get_channel(self.channel_id or 0)
        guild = getattr(channel, "guild", None)
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT


@dataclass
class Job:
    """What the callbacks of one queued job need to finish it."""

    id: int
    delivery: Delivery
    parent_job_id: int | None
    guild_id: int | None
    user_id: int
    request: DrawRequest
    kind: str = "draw"  # "draw", "vary", "upscale" or "remix": how the result credits its parent
    # For the result, e.g. "your picture was resized": Messages, translated when posted.
    notes: tuple[str, ...] = ()
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None


def outcome_message(outcome: JobOutcome) -> Message:
    """Why a job produced no images, to be shown in the language of wherever it is posted
    (``JobOutcome.message`` is the same in English, for the logs)."""
    if outcome.status == "cancelled":
        return Message(N_("This drawing was cancelled."))
    if isinstance(outcome.error, EaselError):
        return outcome.error.text
    return Message(N_("Something went wrong while drawing this; the error has been logged."))
