"""The history store: every drawing job and its images, in SQLite through one aiosqlite connection.

This is the only package that speaks SQL. The schema lives in numbered files under ``migrations/``;
images live on disk under ``<data_dir>/images`` with content-addressed names.

The one ``Store`` class is put together here from one part per group of tables, each in its own
module over ``StoreBase`` (``base.py``: the connection, the lock, the plumbing): ``jobs.py``,
``files.py`` (images on disk), ``moderation.py`` (banned words, server settings, pauses, purges),
``history.py`` (listings and prompt search), ``preferences.py`` (members' /settings) and
``privacy.py`` (/forget). ``records.py`` holds the
rows they return, ``errors.py`` what they raise, ``migrations.py`` finds the schema files; ``open``
below connects, applies them and readies the parts, ``close`` closes. Every part shares the one
connection and its lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from types import TracebackType
from typing import Final

import aiosqlite

from bot.store.errors import (
    DatabaseTooNew,
    InvalidTransition,
    JobNotFound,
    MigrationError,
    StoreBusy,
    StoreError,
)
from bot.store.files import PNG_SIGNATURE
from bot.store.history import HistoryMixin, _fold
from bot.store.jobs import JobsMixin
from bot.store.migrations import MIGRATIONS_DIR, Migration, discover_migrations, split_sql
from bot.store.moderation import EVERYWHERE, ModerationMixin
from bot.store.preferences import PreferencesMixin
from bot.store.privacy import PrivacyMixin
from bot.store.records import (
    NSFW_MODES,
    REQUEST_COLUMNS,
    STATUSES,
    UNFINISHED,
    GuildSettings,
    JobRecord,
    PurgeRecord,
    UserSettings,
)

__all__ = [
    "EVERYWHERE",
    "MIGRATIONS_DIR",
    "NSFW_MODES",
    "PNG_SIGNATURE",
    "REQUEST_COLUMNS",
    "SEARCH_WINDOW",
    "STATUSES",
    "UNFINISHED",
    "DatabaseTooNew",
    "GuildSettings",
    "InvalidTransition",
    "JobNotFound",
    "JobRecord",
    "Migration",
    "MigrationError",
    "PurgeRecord",
    "Store",
    "StoreBusy",
    "StoreError",
    "UserSettings",
    "discover_migrations",
    "split_sql",
]

# The newest jobs in scope that a search reads directly, before it asks the index (history.py).
# Read from here at every search, so that setting bot.store.SEARCH_WINDOW applies: the tests set
# it small to reach the index with a handful of jobs.
SEARCH_WINDOW: Final = 2000


class Store(JobsMixin, ModerationMixin, HistoryMixin, PreferencesMixin, PrivacyMixin):
    """Owns one aiosqlite connection; every method that writes has committed when it returns.

    ``Store(...)`` does no I/O; ``await store.open()`` connects, sets PRAGMAs and migrates, and
    ``await store.close()`` closes. ``async with Store(...) as store:`` does both.
    """

    # ----------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Connect, set the PRAGMAs, refuse a database newer than the code, and migrate."""
        if self._db is not None:
            raise StoreError("the store is already open")
        migrations = await asyncio.to_thread(discover_migrations, self.migrations_dir)
        scripts = await asyncio.to_thread(
            lambda: [(m, split_sql(m.path.read_text(encoding="utf-8"))) for m in migrations]
        )
        if str(self.db_path) != ":memory:":
            await asyncio.to_thread(self.db_path.parent.mkdir, parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(
                self.db_path,
                # We issue BEGIN/COMMIT ourselves; the sqlite3 module's implicit transactions
                # would start DEFERRED ones, which can fail with SQLITE_BUSY on the first write.
                isolation_level=None,
                timeout=self.busy_timeout_ms / 1000,
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the database {self.db_path}: {e}") from e
        try:
            db.row_factory = aiosqlite.Row
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            await db.execute("PRAGMA foreign_keys = ON")
            # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss or an
            # OS crash, and a job we have acknowledged to a user (and will re-queue after a
            # restart) must not vanish. One fsync per commit is cheap at our write rate.
            await db.execute("PRAGMA synchronous = FULL")
            await self._check_not_too_new(db, len(migrations))
            if str(self.db_path) != ":memory:":
                mode = await self._scalar(db, "PRAGMA journal_mode = WAL")
                if str(mode).lower() != "wal":
                    raise StoreError(
                        f"cannot use WAL journaling for {self.db_path} (got {mode!r}); "
                        "is it on a network filesystem?"
                    )
            await db.create_function("easel_fold", 1, _fold, deterministic=True)
            self.applied_migrations = await self._migrate(db, scripts)
            self._search_index = await self._prepare_search(db)
            await self._load_caches(db)
            await self._load_user_settings(db)
            reader = None
            if str(self.db_path) != ":memory:":
                reader = await aiosqlite.connect(
                    self.db_path, isolation_level=None, timeout=self.busy_timeout_ms / 1000
                )
                reader.row_factory = aiosqlite.Row
                await reader.execute("PRAGMA query_only = ON")
                await reader.create_function("easel_fold", 1, _fold, deterministic=True)
        except BaseException as e:
            await db.close()
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"cannot open the database {self.db_path}: {e}") from e
            raise
        self._db = db
        self._reader = reader

    async def close(self) -> None:
        """Close the connection (waiting for the operation in progress); a no-op if not open."""
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await db.close()
        async with self._reader_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                await reader.close()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._db is not None

    # ---------------------------------------------------------------- migrations

    async def _check_not_too_new(self, db: aiosqlite.Connection, latest: int) -> None:
        version = int(await self._scalar(db, "PRAGMA user_version"))
        if version > latest:
            raise DatabaseTooNew(
                f"the database {self.db_path} is at schema version {version}, but this version "
                f"of Easel only knows up to {latest}: it was written by a newer Easel. Upgrade "
                "Easel, or point it at another database file; refusing to touch it."
            )

    async def _migrate(
        self, db: aiosqlite.Connection, scripts: Sequence[tuple[Migration, list[str]]]
    ) -> list[str]:
        applied: list[str] = []
        current = int(await self._scalar(db, "PRAGMA user_version"))
        if all(m.version <= current for m, _ in scripts):
            return applied
        # A migration that rebuilds a table (SQLite's way to change a column) drops the old one;
        # with foreign keys on, that DROP would cascade into the rows that point at it. So they
        # are off while migrations run (the pragma is a no-op inside a transaction) and checked
        # before each commit instead, as SQLite's "making other kinds of table schema changes"
        # procedure says.
        await db.execute("PRAGMA foreign_keys = OFF")
        try:
            return await self._migrate_unchecked(db, scripts, current)
        finally:
            await db.execute("PRAGMA foreign_keys = ON")

    async def _migrate_unchecked(
        self,
        db: aiosqlite.Connection,
        scripts: Sequence[tuple[Migration, list[str]]],
        current: int,
    ) -> list[str]:
        applied: list[str] = []
        for migration, statements in scripts:
            if migration.version <= current:
                continue
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._translate(e) from e
            try:
                # Another process may have migrated while we waited for the lock.
                current = int(await self._scalar(db, "PRAGMA user_version"))
                if current >= migration.version:
                    await db.execute("ROLLBACK")
                    await self._check_not_too_new(db, len(scripts))
                    continue
                for statement in statements:
                    await db.execute(statement)
                broken = list(await db.execute_fetchall("PRAGMA foreign_key_check"))
                if broken:
                    raise MigrationError(
                        f"migration {migration.path.name} left {len(broken)} row(s) pointing "
                        f"at missing rows (first: {tuple(broken[0])}); rolled back"
                    )
                # user_version lives in the database header, so it commits or rolls back with
                # the schema change: no half-applied migration is ever recorded as done.
                await db.execute(f"PRAGMA user_version = {migration.version}")
                await db.execute("COMMIT")
            except BaseException as e:
                await self._rollback(db)
                if isinstance(e, sqlite3.Error):
                    raise MigrationError(
                        f"migration {migration.path.name} failed and was rolled back: {e}"
                    ) from e
                raise
            current = migration.version
            applied.append(migration.path.name)
        return applied

    # ---------------------------------------------------------------- search

    def _search_window(self) -> int:
        return SEARCH_WINDOW
