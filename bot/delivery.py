"""Where a job's messages go (the interaction, its channel, the requester's DMs), and what the
callbacks of one queued job need to finish it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from bot.render import DEFAULT_UPLOAD_LIMIT
from pipeline.request import DrawRequest

if TYPE_CHECKING:
    from bot.protocols import Host

log = logging.getLogger(__name__)

# Editing the interaction's message failed, but the channel may still take a new message:
# the token expired (Discord 50027; SimCord 10015), someone deleted the "Queued" message
# (10008), or the bot lost access to it (50001, 50013).
_POST_ELSEWHERE_CODES = {50027, 10015, 10008, 50001, 50013}


class Delivery:
    """Where a job's messages go: the interaction while its token lives, else the channel, else
    the requester's DMs. ``failure`` says why nothing could be posted, when that happens."""

    def __init__(
        self,
        bot: Host,
        *,
        channel_id: int | None,
        user_id: int,
        interaction: discord.Interaction | None = None,
    ) -> None:
        self.bot = bot
        self.channel_id = channel_id
        self.user_id = user_id
        self.interaction = interaction
        self.lock = asyncio.Lock()
        self.finished = False
        self.failure: str | None = None

    def _live(self) -> bool:
        return self.interaction is not None and not self.interaction.is_expired()

    async def status(self, text: str) -> None:
        """Show queue position or progress; never fails the job, dropped if an edit is busy."""
        if self.finished or not self._live() or self.lock.locked():
            return
        async with self.lock:
            if self.finished:
                return
            try:
                assert self.interaction is not None
                await self.interaction.edit_original_response(content=text)
            except discord.HTTPException as exc:
                log.debug("progress edit failed: %s", exc)

    async def final(self, **message: Any) -> discord.Message | None:
        """Post the final message: edit the interaction's response, or send it to the channel,
        or to the requester by DM. None (and ``failure`` set) when all of them failed."""
        async with self.lock:
            self.finished = True
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
            where = "its channel is gone or the bot can no longer post there"
            content = message.get("content")
            extra: dict[str, Any] = {
                key: message[key] for key in ("embed", "view") if message.get(key) is not None
            }
            return await user.send(
                content=f"{content}\n-# Sent here because {where}."
                if content
                else f"-# Sent here because {where}.",
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
    notes: tuple[str, ...] = ()  # for the result, e.g. "your picture was resized"
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
