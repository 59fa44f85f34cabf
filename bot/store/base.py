"""The store's state and the plumbing every part of it uses: one connection, one transaction
at a time under ``_lock``, error translation, stored paths, and the ``meta`` table.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiosqlite

from bot.store.errors import StoreBusy, StoreError
from bot.store.migrations import MIGRATIONS_DIR
from bot.store.records import _JOB_COLUMNS, GuildSettings, JobRecord


class StoreBase:
    """What every part of ``Store`` shares: the connections, the locks, the caches and the
    helpers that run statements; the parts (the mixins beside this module) add the tables."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        data_dir: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 5000,
        migrations_dir: str | os.PathLike[str] = MIGRATIONS_DIR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must be >= 0")
        self.db_path = Path(db_path)
        self.data_dir = Path(data_dir).absolute()
        self.images_dir = self.data_dir / "images"
        self.busy_timeout_ms = busy_timeout_ms
        self.migrations_dir = Path(migrations_dir)
        # Names of the migration files applied by the last open(); empty when already up to date.
        self.applied_migrations: list[str] = []
        self._clock = clock
        self._db: aiosqlite.Connection | None = None
        # One connection carries one transaction at a time: without this, two coroutines'
        # statements would interleave inside each other's BEGIN ... COMMIT.
        self._lock = asyncio.Lock()
        # Whether the schema has the prompt search index (set by open()).
        self._search_index = False
        # A second, read-only connection for the reads an interaction needs before its 3-second
        # answer (a job by number): WAL readers never wait for the writer, so a long write on
        # the main connection can't make Discord give up on the interaction.
        self._reader: aiosqlite.Connection | None = None
        self._reader_lock = asyncio.Lock()
        # Server settings and banned words are read on every /draw: kept in memory, replaced
        # whenever this store (the only writer) changes them.
        self._settings_cache: dict[int, GuildSettings] = {}
        self._banned_cache: dict[int, list[str]] = {}
        # Image files saved but not yet referenced by a committed job_images row, by path
        # (counted: two jobs may save the same bytes). Deletion skips them, and the file lock
        # orders "is this file unreferenced? delete it" against "save this file".
        self._pinned: dict[Path, int] = {}
        self._files_lock = asyncio.Lock()

    # --------------------------------------------------------------- plumbing

    def _require_open(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open: await store.open() first")
        return self._db

    def _translate(self, error: sqlite3.Error) -> StoreError:
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return StoreBusy(
                f"the database is busy: another connection held {self.db_path.name} for more "
                f"than {self.busy_timeout_ms} ms; nothing was written, try again"
            )
        return StoreError(f"database error: {error}")

    @staticmethod
    async def _rollback(db: aiosqlite.Connection) -> None:
        # Fails harmlessly with "no transaction is active" when BEGIN or COMMIT never happened.
        with suppress(sqlite3.Error, ValueError):
            await db.execute("ROLLBACK")

    @asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction under the lock: committed on exit, rolled back on any exception."""
        async with self._lock, self._transaction_unlocked(write=write) as db:
            yield db

    @asynccontextmanager
    async def _transaction_unlocked(self, *, write: bool) -> AsyncIterator[aiosqlite.Connection]:
        """A transaction for a caller that already holds the lock.

        Writes take the write lock up front (BEGIN IMMEDIATE) so that busy_timeout applies to
        waiting for it; a DEFERRED transaction that reads and then writes can fail with
        SQLITE_BUSY at once in WAL mode, without waiting.
        """
        db = self._require_open()
        try:
            await db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as e:
            raise self._translate(e) from e
        try:
            yield db
            await db.execute("COMMIT")
        except BaseException as e:
            await self._rollback(db)
            if isinstance(e, sqlite3.Error):
                raise self._translate(e) from e
            raise

    @staticmethod
    async def _scalar(db: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = list(await db.execute_fetchall(sql, tuple(params)))
        return rows[0][0] if rows else None

    @staticmethod
    async def _write(db: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one data-changing statement; return the number of rows it changed."""
        cursor = await db.execute(sql, tuple(params))
        try:
            return cursor.rowcount
        finally:
            await cursor.close()

    def _to_db_path(self, path: str | os.PathLike[str]) -> str:
        absolute = Path(path).absolute()
        if absolute.is_relative_to(self.data_dir):
            return absolute.relative_to(self.data_dir).as_posix()
        return str(absolute)

    def _from_db_path(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.data_dir / path

    async def _records(self, db: aiosqlite.Connection, rows: Iterable[Any]) -> list[JobRecord]:
        rows = list(rows)
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        images: dict[int, list[tuple[Path, int]]] = {job_id: [] for job_id in ids}
        # In chunks: SQLite caps the number of bound parameters in one statement.
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for image in await db.execute_fetchall(
                f"SELECT job_id, path, seed FROM job_images WHERE job_id IN ({marks}) "
                "ORDER BY job_id, idx",
                chunk,
            ):
                images[image["job_id"]].append((self._from_db_path(image["path"]), image["seed"]))
        records = []
        for row in rows:
            values = {name: row[name] for name in _JOB_COLUMNS}
            if values.get("init_image"):  # stored like image paths: relative to data_dir
                values["init_image"] = str(self._from_db_path(values["init_image"]))
            records.append(JobRecord(**values, images=images[row["id"]]))
        return records

    # ------------------------------------------------------------------ meta

    async def get_meta(self, key: str) -> str | None:
        async with self._transaction(write=False) as db:
            return await self._scalar(db, "SELECT value FROM meta WHERE key = ?", (key,))

    async def set_meta(self, key: str, value: str) -> None:
        async with self._transaction(write=True) as db:
            await self._write(
                db,
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
