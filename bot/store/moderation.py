"""What moderators set and do: banned words, server settings, pauses, and purges with their
audit.
"""

from __future__ import annotations

from typing import Final

import aiosqlite

from bot.store.files import FilesMixin
from bot.store.records import (
    _PURGE_COLUMNS,
    _SETTINGS_COLUMNS,
    NSFW_MODES,
    GuildSettings,
    PurgeRecord,
)

# The paused table's row for the operator's pause of every server.
EVERYWHERE: Final = 0


class ModerationMixin(FilesMixin):
    """Per-server banned words and settings (kept in memory too), pauses, and purges."""

    # ---------------------------------------------------------- banned words

    async def add_banned_word(self, guild_id: int, word: str, by_user_id: int) -> bool:
        """Ban ``word`` (already normalised) in a server; False if it was banned already."""
        async with self._transaction(write=True) as db:
            changed = await self._write(
                db,
                "INSERT OR IGNORE INTO banned_words (guild_id, word, added_by, added_at) "
                "VALUES (?, ?, ?, ?)",
                (guild_id, word, by_user_id, self._clock()),
            )
            await self._reload_banned(db, guild_id)
        return bool(changed)

    async def remove_banned_word(self, guild_id: int, word: str) -> bool:
        async with self._transaction(write=True) as db:
            changed = await self._write(
                db, "DELETE FROM banned_words WHERE guild_id = ? AND word = ?", (guild_id, word)
            )
            await self._reload_banned(db, guild_id)
        return bool(changed)

    async def banned_words(self, guild_id: int) -> list[str]:
        """A server's banned words, from memory (loaded at open, kept in step by this store)."""
        return list(self._banned_cache.get(guild_id, ()))

    async def _reload_banned(self, db: aiosqlite.Connection, guild_id: int) -> None:
        rows = await db.execute_fetchall(
            "SELECT word FROM banned_words WHERE guild_id = ? ORDER BY word", (guild_id,)
        )
        self._banned_cache[guild_id] = [row["word"] for row in rows]

    async def _load_caches(self, db: aiosqlite.Connection) -> None:
        """Every server's settings and banned words into memory: /draw reads them before its
        3-second answer, so it must never wait for the database (a few rows per server)."""
        self._banned_cache = {}
        for row in await db.execute_fetchall(
            "SELECT guild_id, word FROM banned_words ORDER BY guild_id, word"
        ):
            self._banned_cache.setdefault(row[0], []).append(row[1])
        self._settings_cache = {
            row["guild_id"]: GuildSettings(**{name: row[name] for name in _SETTINGS_COLUMNS})
            for row in await db.execute_fetchall(
                f"SELECT guild_id, {', '.join(_SETTINGS_COLUMNS)} FROM guild_settings"
            )
        }

    # ------------------------------------------------------- server settings

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """A server's settings; all ``None`` (the defaults) for a server that set nothing.

        From memory (loaded at open, kept in step by this store, the only writer)."""
        return self._settings_cache.get(guild_id, GuildSettings())

    async def set_guild_settings(
        self, guild_id: int, settings: GuildSettings, by_user_id: int
    ) -> None:
        """Replace a server's settings (validated by the caller) with ``settings``."""
        if settings.nsfw is not None and settings.nsfw not in NSFW_MODES:
            raise ValueError(f"nsfw must be one of {NSFW_MODES}, not {settings.nsfw!r}")
        values = {name: getattr(settings, name) for name in _SETTINGS_COLUMNS}
        values |= {"guild_id": guild_id, "updated_by": by_user_id, "updated_at": self._clock()}
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        updates = ", ".join(f"{name} = excluded.{name}" for name in values if name != "guild_id")
        async with self._transaction(write=True) as db:
            await self._write(
                db,
                f"INSERT INTO guild_settings ({columns}) VALUES ({marks}) "
                f"ON CONFLICT (guild_id) DO UPDATE SET {updates}",
                list(values.values()),
            )
        self._settings_cache[guild_id] = settings

    # --------------------------------------------------------------- pausing

    async def set_paused(self, guild_id: int, paused: bool, by_user_id: int) -> None:
        """Pause or resume one server (``guild_id`` 0: the operator's pause of everything)."""
        async with self._transaction(write=True) as db:
            if paused:
                await self._write(
                    db,
                    "INSERT INTO paused (guild_id, paused_by, paused_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (guild_id) DO NOTHING",
                    (guild_id, by_user_id, self._clock()),
                )
            else:
                await self._write(db, "DELETE FROM paused WHERE guild_id = ?", (guild_id,))

    async def paused_guilds(self) -> list[int]:
        """The servers paused by their moderators; 0 stands for the operator's pause."""
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall("SELECT guild_id FROM paused ORDER BY guild_id")
        return [row[0] for row in rows]

    # ----------------------------------------------------------------- purge

    async def posted_messages(self, guild_id: int, user_id: int) -> list[tuple[int, int, int]]:
        """(job id, channel id, message id) of a user's results still posted in a server."""
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                # A comparison's cells share its message: it is listed once, with it.
                "SELECT id, channel_id, message_id FROM jobs WHERE guild_id = ? AND user_id = ? "
                "AND compare_id IS NULL AND message_id IS NOT NULL AND channel_id IS NOT NULL "
                "AND deleted_at IS NULL "
                "ORDER BY id",
                (guild_id, user_id),
            )
        return [(row[0], row[1], row[2]) for row in rows]

    async def unfinished_job_ids(self, guild_id: int, user_id: int) -> list[int]:
        """Ids of a user's queued or running jobs in a server."""
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT id FROM jobs WHERE guild_id = ? AND user_id = ? "
                "AND status IN ('queued', 'running') ORDER BY id",
                (guild_id, user_id),
            )
        return [row[0] for row in rows]

    async def purge_user(
        self,
        guild_id: int,
        user_id: int,
        *,
        moderator_id: int,
        messages_deleted: int = 0,
        messages_missing: int = 0,
        messages_failed: int = 0,
    ) -> PurgeRecord:
        """Delete a user's jobs, image rows and unshared image files in one server; audit it.

        Their jobs in other servers and in DMs are untouched. Rerolls others made of these jobs
        are kept with their parent link cleared. The audit row commits with the deletion.
        """
        async with self._transaction(write=True) as db:
            scope = "FROM jobs WHERE guild_id = ? AND user_id = ?"
            paths = [
                row[0]
                for row in await db.execute_fetchall(
                    f"SELECT i.path FROM job_images i WHERE i.job_id IN (SELECT id {scope})",
                    (guild_id, user_id),
                )
            ]
            # The pictures their jobs here started from (their uploads); not counted as images.
            inputs = [
                row[0]
                for row in await db.execute_fetchall(
                    f"SELECT DISTINCT init_image {scope} AND init_image IS NOT NULL",
                    (guild_id, user_id),
                )
            ]
            jobs = await self._write(db, f"DELETE {scope}", (guild_id, user_id))
            await self._let_go_of(db, [*paths, *inputs])
            now = self._clock()
            cursor = await db.execute(
                "INSERT INTO purges (guild_id, moderator_id, target_user_id, purged_at, jobs, "
                "images, messages_deleted, messages_missing, messages_failed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    guild_id,
                    moderator_id,
                    user_id,
                    now,
                    jobs,
                    len(paths),
                    messages_deleted,
                    messages_missing,
                    messages_failed,
                ),
            )
            purge_id = cursor.lastrowid
            await cursor.close()
        await self._delete_files([*paths, *inputs])
        assert purge_id is not None
        return PurgeRecord(
            id=purge_id,
            guild_id=guild_id,
            moderator_id=moderator_id,
            target_user_id=user_id,
            purged_at=now,
            jobs=jobs,
            images=len(paths),
            messages_deleted=messages_deleted,
            messages_missing=messages_missing,
            messages_failed=messages_failed,
        )

    async def purges(self, guild_id: int, limit: int = 10) -> list[PurgeRecord]:
        """A server's purge audit, newest first."""
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                f"SELECT {', '.join(_PURGE_COLUMNS)} FROM purges WHERE guild_id = ? "
                "ORDER BY id DESC LIMIT ?",
                (guild_id, limit),
            )
        return [PurgeRecord(**{name: row[name] for name in _PURGE_COLUMNS}) for row in rows]
