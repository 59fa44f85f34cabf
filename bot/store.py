"""The history store: every drawing job and its images, in SQLite through one aiosqlite connection.

This is the only module that speaks SQL. The schema lives in numbered files under ``migrations/``;
images live on disk under ``<data_dir>/images`` with content-addressed names.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import tempfile
import time
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiosqlite

from pipeline.request import DrawRequest

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_\-]+\.sql$")

STATUSES: Final = ("queued", "running", "done", "failed", "cancelled", "refused")
UNFINISHED: Final = ("queued", "running")
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# The paused table's row for the operator's pause of every server.
EVERYWHERE: Final = 0

# The DrawRequest fields, spelled out rather than derived, so that a field added to DrawRequest
# without a migration fails a test instead of an INSERT in production.
REQUEST_COLUMNS: Final = (
    "prompt",
    "negative_prompt",
    "steps",
    "guidance",
    "eta",
    "sampler",
    "seed",
    "width",
    "height",
    "count",
    "model",
)


class StoreError(Exception):
    """The history store could not do what was asked; the message says why."""


class StoreBusy(StoreError):
    """Another connection held the database's write lock for longer than busy_timeout."""


class DatabaseTooNew(StoreError):
    """The database was migrated by a newer version of the code than this one."""


class MigrationError(StoreError):
    """The migrations folder is malformed, or applying a migration failed (and was rolled back)."""


class JobNotFound(StoreError):
    """No job has this id (never existed, or its user was forgotten)."""


class InvalidTransition(StoreError):
    """The job is not in a state that allows this change (e.g. marking a cancelled job done)."""


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs`` with its images; ``request`` rebuilds the DrawRequest."""

    id: int
    guild_id: int | None
    channel_id: int | None
    user_id: int
    user_name: str
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    eta: float
    sampler: str | None
    seed: int | None
    width: int | None
    height: int | None
    count: int
    model: str | None
    status: str
    error: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    message_id: int | None
    jump_url: str | None
    parent_job_id: int | None
    deleted_at: float | None
    deleted_by: int | None
    withheld: int = 0  # images the safety checker flagged, neither kept nor posted
    delivery_failed: str | None = None  # why the bot gave up posting the result
    images: list[tuple[Path, int]] = field(default_factory=list, hash=False)

    @property
    def request(self) -> DrawRequest:
        return DrawRequest(**{name: getattr(self, name) for name in REQUEST_COLUMNS})

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED


_JOB_COLUMNS: Final = tuple(f.name for f in fields(JobRecord) if f.name != "images")
_SELECT_JOBS: Final = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"

NSFW_MODES: Final = ("filter", "age_restricted")


@dataclass(frozen=True)
class GuildSettings:
    """A server's own limits and defaults; ``None`` means "the bot-wide default"."""

    max_steps: int | None = None
    max_side: int | None = None  # the largest width or height, in pixels
    max_count: int | None = None
    max_queued_per_user: int | None = None
    cooldown_s: int | None = None  # seconds between one member's drawing starts
    default_sampler: str | None = None
    default_steps: int | None = None
    nsfw: str | None = None  # one of NSFW_MODES


_SETTINGS_COLUMNS: Final = tuple(f.name for f in fields(GuildSettings))


@dataclass(frozen=True)
class PurgeRecord:
    """One /mod purge: who removed whose drawings in which server, and how much went."""

    id: int
    guild_id: int
    moderator_id: int
    target_user_id: int
    purged_at: float
    jobs: int
    images: int
    messages_deleted: int
    messages_missing: int
    messages_failed: int


_PURGE_COLUMNS: Final = tuple(f.name for f in fields(PurgeRecord))


@dataclass(frozen=True)
class Migration:
    version: int
    path: Path


def discover_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in ``folder``, checked to be numbered 0001, 0002, ... without gaps."""
    if not folder.is_dir():
        raise MigrationError(f"the migrations folder {folder} does not exist")
    found: dict[int, Path] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            # A misnamed file would otherwise be skipped silently and its schema never applied.
            raise MigrationError(
                f"{path.name}: migration files must be named NNNN_description.sql "
                "(e.g. 0002_tags.sql)"
            )
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"two migrations share number {version:04d}: {found[version].name}, {path.name}"
            )
        found[version] = path
    expected = list(range(1, len(found) + 1))
    if sorted(found) != expected:
        missing = sorted(set(range(1, max(found, default=0) + 1)) - set(found))
        raise MigrationError(
            f"migrations in {folder} must be numbered contiguously from 0001; "
            f"missing: {', '.join(f'{n:04d}' for n in missing) or '0001'}"
        )
    return [Migration(version, found[version]) for version in expected]


def split_sql(script: str) -> list[str]:
    """Split a migration script into single statements (triggers and quoted ';' kept whole)."""
    statements: list[str] = []
    start = 0
    pos = script.find(";")
    while pos != -1:
        candidate = script[start : pos + 1]
        # sqlite3.complete_statement is SQLite's own tokenizer: it knows strings, comments, and
        # that a trigger body's ';' do not end the CREATE TRIGGER.
        if sqlite3.complete_statement(candidate):
            if _strip_sql_comments(candidate).strip(" \t\r\n;"):
                statements.append(candidate.strip())
            start = pos + 1
        pos = script.find(";", pos + 1)
    if _strip_sql_comments(script[start:]).strip():
        raise MigrationError(f"unterminated SQL statement: {script[start:].strip()[:80]!r}")
    return statements


def _strip_sql_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", " ", sql)


def _fold(text: Any) -> Any:
    """Case- and width-insensitive form used by prompt search (SQLite's lower() is ASCII-only)."""
    if not isinstance(text, str):
        return text
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


# ------------------------------------------------------------------ prompt search
# Tables, triggers and the reasons for them: migrations/0005_prompt_search.sql.

SEARCH_WINDOW: Final = 2000  # the newest jobs in scope that a search reads directly
_SEARCH_PAD: Final = "\x01\x01"  # 0005 indexes folded || char(1, 1)
_J_COLUMNS: Final = ", ".join(f"j.{name}" for name in _JOB_COLUMNS)

# TEMP triggers on the store's own connection, where easel_fold exists (they go when it closes):
# its new jobs are folded and indexed by the statement that writes them. 0005's triggers list a
# written job as pending unless it is indexed already; these take it off that list, so the
# outcome does not depend on the order SQLite fires the two sets in.
_SEARCH_TEMP_TRIGGERS: Final = (
    """CREATE TEMP TRIGGER IF NOT EXISTS easel_search_insert AFTER INSERT ON main.jobs
    BEGIN
        DELETE FROM job_search WHERE job_id = new.id;
        INSERT INTO job_search (job_id, folded) VALUES (new.id, easel_fold(new.prompt));
        DELETE FROM job_search_pending WHERE job_id = new.id;
    END""",
    """CREATE TEMP TRIGGER IF NOT EXISTS easel_search_update AFTER UPDATE OF id, prompt
    ON main.jobs WHEN old.id IS NOT new.id OR old.prompt IS NOT new.prompt
    BEGIN
        DELETE FROM job_search WHERE job_id = new.id;
        INSERT INTO job_search (job_id, folded) VALUES (new.id, easel_fold(new.prompt));
        DELETE FROM job_search_pending WHERE job_id = new.id;
    END""",
)

# Index the jobs other connections wrote (run at open, in one transaction).
_INDEX_PENDING: Final = (
    "DELETE FROM job_search WHERE job_id IN (SELECT job_id FROM job_search_pending)",
    "INSERT INTO job_search (job_id, folded) SELECT j.id, easel_fold(j.prompt) "
    "FROM job_search_pending p JOIN jobs j ON j.id = p.job_id",
    "DELETE FROM job_search_pending",
)


@dataclass(frozen=True)
class _Part:
    """One SQL source of history rows: ``FROM ... WHERE ...`` over ``jobs j``."""

    sql: str
    params: list[Any]
    order: str = "j.id DESC"


def _fts_phrase(text: str) -> str:
    """``text`` as an FTS5 string: one phrase, every character literal."""
    return '"' + text.replace('"', '""') + '"'


def _scan_part(scope: tuple[str, list[Any]], folded: str, *, indexed: bool = True) -> _Part:
    """Jobs in ``scope`` whose folded prompt contains ``folded``, read one by one."""
    if not indexed:
        text = "easel_fold(j.prompt)"
        source = "FROM jobs j"
    else:
        # job_search has the folded text already; a job it lacks is pending: fold it here.
        text = "coalesce(s.folded, easel_fold(j.prompt))"
        source = "FROM jobs j LEFT JOIN job_search s ON s.job_id = j.id"
    return _Part(f"{source} WHERE {scope[0]} AND instr({text}, ?) > 0", [*scope[1], folded])


class Store:
    """Owns one aiosqlite connection; every method that writes has committed when it returns.

    ``Store(...)`` does no I/O; ``await store.open()`` connects, sets PRAGMAs and migrates, and
    ``await store.close()`` closes. ``async with Store(...) as store:`` does both.
    """

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
        return [
            JobRecord(**{name: row[name] for name in _JOB_COLUMNS}, images=images[row["id"]])
            for row in rows
        ]

    async def _status_for_update(self, db: aiosqlite.Connection, job_id: int) -> Any:
        rows = list(
            await db.execute_fetchall("SELECT status, started_at FROM jobs WHERE id = ?", (job_id,))
        )
        if not rows:
            raise JobNotFound(f"job {job_id} does not exist")
        return rows[0]

    async def _finish(
        self,
        job_id: int,
        status: str,
        *,
        error: str | None = None,
        duration_s: float | None = None,
        extra: dict[str, Any] | None = None,
        images: Sequence[tuple[str | os.PathLike[str], int]] = (),
    ) -> None:
        async with self._transaction(write=True) as db:
            row = await self._status_for_update(db, job_id)
            if row["status"] not in UNFINISHED:
                raise InvalidTransition(
                    f"job {job_id} is already {row['status']}; it cannot become {status}"
                )
            now = self._clock()
            if duration_s is None and row["started_at"] is not None:
                duration_s = max(0.0, now - row["started_at"])
            values: dict[str, Any] = {
                **(extra or {}),
                "status": status,
                "error": error,
                "finished_at": now,
                "duration_s": duration_s,
            }
            # Column names come from this module, never from callers.
            assignments = ", ".join(f"{name} = ?" for name in values)
            await self._write(
                db, f"UPDATE jobs SET {assignments} WHERE id = ?", [*values.values(), job_id]
            )
            await db.executemany(
                "INSERT INTO job_images (job_id, idx, path, seed) VALUES (?, ?, ?, ?)",
                [
                    (job_id, idx, self._to_db_path(path), int(seed))
                    for idx, (path, seed) in enumerate(images)
                ],
            )
        # Committed: the rows now guard these files (no await since the commit, so no deletion
        # ran in between).
        self.release_images(path for path, _ in images)

    # ------------------------------------------------------------------ jobs

    async def add_job(
        self,
        request: DrawRequest,
        *,
        guild_id: int | None,
        channel_id: int | None,
        user_id: int,
        user_name: str,
        parent_job_id: int | None = None,
        status: str = "queued",
    ) -> int:
        """Record a new job (``queued``, or ``refused`` by moderation) and return its id."""
        if status not in ("queued", "refused"):
            raise ValueError(f"a new job is 'queued' or 'refused', not {status!r}")
        now = self._clock()
        values: dict[str, Any] = {name: getattr(request, name) for name in REQUEST_COLUMNS}
        values |= {
            "guild_id": guild_id,
            "channel_id": channel_id,
            "user_id": user_id,
            "user_name": user_name,
            "parent_job_id": parent_job_id,
            "status": status,
            "created_at": now,
            "finished_at": None if status == "queued" else now,
        }
        columns = ", ".join(values)
        marks = ", ".join("?" * len(values))
        async with self._transaction(write=True) as db:
            if parent_job_id is not None and not await self._scalar(
                db, "SELECT 1 FROM jobs WHERE id = ?", (parent_job_id,)
            ):
                raise JobNotFound(f"the parent job {parent_job_id} does not exist")
            cursor = await db.execute(
                f"INSERT INTO jobs ({columns}) VALUES ({marks})", list(values.values())
            )
            job_id = cursor.lastrowid
            await cursor.close()
        assert job_id is not None
        return job_id

    async def mark_running(self, job_id: int) -> None:
        """Mark a job as started; also allowed on a ``running`` job re-run after a crash."""
        async with self._transaction(write=True) as db:
            row = await self._status_for_update(db, job_id)
            if row["status"] not in UNFINISHED:
                raise InvalidTransition(
                    f"job {job_id} is already {row['status']}; it cannot start running"
                )
            await self._write(
                db,
                "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                (self._clock(), job_id),
            )

    async def mark_done(
        self,
        job_id: int,
        *,
        images: Sequence[tuple[str | os.PathLike[str], int]],
        request: DrawRequest | None = None,
        message_id: int | None = None,
        jump_url: str | None = None,
        duration_s: float | None = None,
        withheld: int = 0,
    ) -> None:
        """Record a finished job's images as (path, seed) pairs.

        ``request`` is the resolved request (seed, size, sampler filled in): its fields replace the
        stored ones so the job can be drawn again exactly. ``duration_s`` defaults to the time
        since ``mark_running``. ``withheld`` counts images the safety checker flagged that were
        not kept (they are not among ``images``).
        """
        if withheld < 0:
            raise ValueError("withheld must be >= 0")
        extra: dict[str, Any] = {"withheld": withheld}
        if request is not None:
            extra |= {name: getattr(request, name) for name in REQUEST_COLUMNS}
        if message_id is not None:
            extra["message_id"] = message_id
        if jump_url is not None:
            extra["jump_url"] = jump_url
        await self._finish(job_id, "done", duration_s=duration_s, extra=extra, images=images)

    async def mark_failed(self, job_id: int, error: str) -> None:
        await self._finish(job_id, "failed", error=error)

    async def mark_cancelled(self, job_id: int) -> None:
        await self._finish(job_id, "cancelled")

    async def set_message(self, job_id: int, message_id: int, jump_url: str) -> None:
        """Remember where the job's result was posted (the jump URL, never a CDN link)."""
        async with self._transaction(write=True) as db:
            changed = await self._write(
                db,
                "UPDATE jobs SET message_id = ?, jump_url = ? WHERE id = ?",
                (message_id, jump_url, job_id),
            )
            if not changed:
                raise JobNotFound(f"job {job_id} does not exist")

    async def mark_deleted(self, job_id: int, by_user_id: int) -> None:
        """Mark a job's post as deleted; it stays in history, marked. The first deletion wins."""
        async with self._transaction(write=True) as db:
            await self._status_for_update(db, job_id)  # raises JobNotFound
            await self._write(
                db,
                "UPDATE jobs SET deleted_at = ?, deleted_by = ? "
                "WHERE id = ? AND deleted_at IS NULL",
                (self._clock(), by_user_id, job_id),
            )

    async def get_job(self, job_id: int) -> JobRecord | None:
        """One job by number, read on the reader connection: never waits for a write."""
        if self._reader is None:
            async with self._transaction(write=False) as db:
                rows = await db.execute_fetchall(f"{_SELECT_JOBS} WHERE id = ?", (job_id,))
                records = await self._records(db, rows)
            return records[0] if records else None
        async with self._reader_lock:
            reader = self._reader
            if reader is None:
                raise StoreError("the store is not open: await store.open() first")
            try:
                await reader.execute("BEGIN")
                try:
                    rows = await reader.execute_fetchall(f"{_SELECT_JOBS} WHERE id = ?", (job_id,))
                    records = await self._records(reader, rows)
                finally:
                    await self._rollback(reader)
            except sqlite3.Error as e:
                raise self._translate(e) from e
        return records[0] if records else None

    async def mark_undeliverable(self, job_id: int, reason: str) -> None:
        """Record that a drawn result could not be posted anywhere, and why; it is not tried
        again after a restart."""
        async with self._transaction(write=True) as db:
            changed = await self._write(
                db, "UPDATE jobs SET delivery_failed = ? WHERE id = ?", (reason, job_id)
            )
            if not changed:
                raise JobNotFound(f"job {job_id} does not exist")

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs left ``queued`` or ``running`` (e.g. by a crash), oldest first."""
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                f"{_SELECT_JOBS} WHERE status IN ('queued', 'running') ORDER BY id"
            )
            return await self._records(db, rows)

    async def undelivered_jobs(self, *, max_age_s: float = 86400.0) -> list[JobRecord]:
        """Jobs drawn and stored but never posted (the process died in between), oldest first.

        Only recent ones: a result a day late is news to nobody.
        """
        since = self._clock() - max_age_s
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                f"{_SELECT_JOBS} WHERE status = 'done' AND message_id IS NULL "
                "AND deleted_at IS NULL AND delivery_failed IS NULL AND channel_id IS NOT NULL "
                "AND finished_at >= ? "
                "ORDER BY id",
                (since,),
            )
            return await self._records(db, rows)

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

    async def count_unfinished(self, guild_id: int | None, user_id: int) -> int:
        """How many of a user's jobs in a server (None: DMs) are queued or running."""
        where = "guild_id IS NULL" if guild_id is None else "guild_id = ?"
        params = [] if guild_id is None else [guild_id]
        async with self._transaction(write=False) as db:
            return int(
                await self._scalar(
                    db,
                    f"SELECT count(*) FROM jobs WHERE {where} AND user_id = ? "
                    "AND status IN ('queued', 'running')",
                    [*params, user_id],
                )
            )

    # ----------------------------------------------------------------- purge

    async def posted_messages(self, guild_id: int, user_id: int) -> list[tuple[int, int, int]]:
        """(job id, channel id, message id) of a user's results still posted in a server."""
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT id, channel_id, message_id FROM jobs WHERE guild_id = ? AND user_id = ? "
                "AND message_id IS NOT NULL AND channel_id IS NOT NULL AND deleted_at IS NULL "
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
            jobs = await self._write(db, f"DELETE {scope}", (guild_id, user_id))
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
        await self._delete_files(paths)
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

    async def discard_images(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Give up images saved for a job that won't keep them (e.g. it was purged meanwhile):
        unpinned, and deleted unless a job refers to them."""
        paths = list(paths)
        self.release_images(paths)
        await self._delete_files(self._to_db_path(path) for path in paths)

    def release_images(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Unpin images ``save_image`` returned (their rows are committed, or they are given
        up); unpinned files with no row may be deleted."""
        for path in paths:
            key = Path(path).absolute()
            left = self._pinned.get(key, 0) - 1
            if left > 0:
                self._pinned[key] = left
            else:
                self._pinned.pop(key, None)

    async def _delete_files(self, stored: Iterable[str]) -> None:
        """Delete the image files among ``stored`` (database paths) that no job refers to.

        Runs after the rows went, outside the database lock: unlinking thousands of files must
        not hold up the reads and writes that interactions wait on. The file lock keeps a
        ``save_image`` of the same bytes from interleaving with the check and the unlink, and
        files saved but not yet committed (pinned) are left alone.
        """
        stored = set(stored)
        if not stored:
            return
        async with self._files_lock:
            async with self._transaction(write=False) as db:
                orphans = await self._unreferenced(db, stored)
            orphans = [p for p in orphans if p.absolute() not in self._pinned]
            await asyncio.to_thread(self._unlink_images, orphans)

    async def _unreferenced(self, db: aiosqlite.Connection, stored: Iterable[str]) -> list[Path]:
        orphans = []
        for path in stored:
            if not await self._scalar(
                db, "SELECT 1 FROM job_images WHERE path = ? LIMIT 1", (path,)
            ):
                orphans.append(self._from_db_path(path))
        return orphans

    # --------------------------------------------------------------- history
    #
    # A search matches the jobs whose easel_fold(prompt) contains easel_fold(query): plain text,
    # case- and width-insensitive; %, _, quotes and backslashes are characters, not patterns or
    # SQL (every text is a bound value). migrations/0005_prompt_search.sql keeps the folded
    # prompts in job_search and a trigram index of them in job_search_fts. A search reads the
    # newest SEARCH_WINDOW jobs in scope directly (a common word fills its page there), then asks
    # the index about the older ones.

    async def _prepare_search(self, db: aiosqlite.Connection) -> bool:
        """Index this connection's job writes as they happen; index what others left pending.

        Returns False when the schema has no search index (a migrations folder without 0005):
        search then scans, as before it.
        """
        if not await self._scalar(
            db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_search_fts'"
        ):
            return False
        for statement in _SEARCH_TEMP_TRIGGERS:
            await db.execute(statement)
        if await self._scalar(db, "SELECT 1 FROM job_search_pending LIMIT 1"):
            try:
                await db.execute("BEGIN IMMEDIATE")
                for statement in _INDEX_PENDING:
                    await db.execute(statement)
                await db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                await self._rollback(db)
                if not isinstance(self._translate(e), StoreBusy):
                    raise
                # Another connection is writing: leave the jobs pending (search reads them
                # directly) rather than refuse to start.
            except BaseException:
                await self._rollback(db)
                raise
        return True

    @staticmethod
    def _scope(
        guild_id: int | None,
        user_id: int | None,
        *,
        below: int | None = None,
        from_id: int | None = None,
        id_column: str = "j.id",
    ) -> tuple[str, list[Any]]:
        """WHERE clauses on ``jobs j``: a server (None: DMs), maybe a user, an id range."""
        clauses = ["j.guild_id IS NULL" if guild_id is None else "j.guild_id = ?"]
        params: list[Any] = [] if guild_id is None else [guild_id]
        for clause, value in (
            ("j.user_id = ?", user_id),
            (f"{id_column} < ?", below),
            (f"{id_column} >= ?", from_id),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return " AND ".join(clauses), params

    async def _history_tiers(
        self,
        db: aiosqlite.Connection,
        guild_id: int | None,
        user_id: int | None,
        query: str | None,
        before: int | None,
    ) -> AsyncGenerator[list[_Part], None]:
        """The SQL that finds a history listing's jobs, in tiers, newest first.

        Every id in a tier is above every id in the next one; the parts of a tier are disjoint
        but interleave. Later tiers are built only if the caller asks for them.
        """
        scope = self._scope(guild_id, user_id, below=before)
        if not query:
            yield [_Part(f"FROM jobs j WHERE {scope[0]}", scope[1])]
            return
        folded = _fold(query)
        if not self._search_index:
            yield [_scan_part(scope, folded, indexed=False)]
            return
        floor = None
        if folded and "\x00" not in folded and _SEARCH_PAD[0] not in folded:
            # The oldest id of the window: the SEARCH_WINDOW-th newest job in scope.
            floor = await self._scalar(
                db,
                f"SELECT j.id FROM jobs j WHERE {scope[0]} ORDER BY j.id DESC LIMIT 1 OFFSET ?",
                [*scope[1], SEARCH_WINDOW - 1],
            )
        window = self._scope(guild_id, user_id, below=before, from_id=floor)
        yield [_scan_part(window, folded)]
        if floor is None:  # the window was the whole scope, or the index can't answer
            return
        older = self._scope(guild_id, user_id, below=floor)
        match = await self._match_expression(db, folded)
        if match is None:
            yield [_scan_part(older, folded)]
            return
        parts = [
            # Jobs another connection wrote are not in the index yet: read them directly.
            _Part(
                f"FROM job_search_pending p CROSS JOIN jobs j ON j.id = p.job_id "
                f"WHERE {older[0]} AND instr(easel_fold(j.prompt), ?) > 0",
                [*older[1], folded],
            )
        ]
        if match:
            indexed = self._scope(guild_id, user_id, below=floor, id_column="f.rowid")
            # CROSS JOIN keeps the index outside: it hands out matches newest first, so a page
            # stops reading as soon as it is full.
            parts.append(
                _Part(
                    "FROM job_search_fts f CROSS JOIN jobs j ON j.id = f.rowid "
                    f"WHERE job_search_fts MATCH ? AND {indexed[0]} "
                    "AND f.rowid NOT IN (SELECT job_id FROM job_search_pending)",
                    [match, *indexed[1]],
                    order="f.rowid DESC",
                )
            )
        yield parts

    async def _match_expression(self, db: aiosqlite.Connection, folded: str) -> str | None:
        """An FTS5 query for the indexed texts that contain ``folded``.

        '' when none can, None when the index can't express it (read those jobs instead).
        """
        if len(folded) >= 3:
            # A quoted phrase of trigrams at consecutive positions: exactly a substring.
            return _fts_phrase(folded)
        # 1 or 2 characters: the trigrams that start with them (the padding gives every
        # character of a text one).
        highest = folded + "\U0010ffff" * (3 - len(folded))
        terms = [
            row[0]
            for row in await db.execute_fetchall(
                "SELECT term FROM job_search_terms WHERE term >= ? AND term <= ?",
                (folded, highest),
            )
            if row[0].startswith(folded)
        ]
        if any("\x00" in term for term in terms):
            return None
        return " OR ".join(_fts_phrase(term) for term in terms)

    async def history(
        self,
        guild_id: int | None,
        user_id: int | None = None,
        query: str | None = None,
        before: int | None = None,
        limit: int = 10,
    ) -> list[JobRecord]:
        """Jobs of a guild (``None``: direct messages), newest first, deleted ones included.

        ``user_id`` narrows to one requester, ``query`` to prompts containing it (case-insensitive
        plain text), ``before`` to ids below it: pass the last id of a page to get the next one.
        Ask for one more than a page to learn whether there is a next page.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with self._transaction(write=False) as db:
            rows: list[Any] = []
            async with aclosing(self._history_tiers(db, guild_id, user_id, query, before)) as tiers:
                async for tier in tiers:
                    wanted = limit - len(rows)
                    found: list[Any] = []
                    for part in tier:
                        found += await db.execute_fetchall(
                            f"SELECT {_J_COLUMNS} {part.sql} ORDER BY {part.order} LIMIT ?",
                            [*part.params, wanted],
                        )
                    found.sort(key=lambda row: row["id"], reverse=True)
                    rows += found[:wanted]
                    if len(rows) >= limit:
                        break
            return await self._records(db, rows)

    async def count_history(
        self,
        guild_id: int | None,
        user_id: int | None = None,
        query: str | None = None,
        *,
        at_most: int | None = None,
    ) -> int:
        """How many jobs ``history`` would page through with the same filters.

        With ``at_most``, counting stops there (the answer is min(count, at_most)): a search for a
        common word in a busy server has hundreds of thousands of matches, and counting them all
        takes as long as reading them.
        """
        if at_most is not None and at_most < 0:
            raise ValueError("at_most must be >= 0")
        total = 0
        async with (
            self._transaction(write=False) as db,
            aclosing(self._history_tiers(db, guild_id, user_id, query, None)) as tiers,
        ):
            async for tier in tiers:
                for part in tier:
                    if at_most is not None and total >= at_most:
                        return total
                    total += int(
                        await self._scalar(
                            db,
                            f"SELECT count(*) FROM (SELECT 1 {part.sql} LIMIT ?)",
                            [*part.params, -1 if at_most is None else at_most - total],
                        )
                    )
        return total

    async def stats(self, guild_id: int | None = None) -> dict[str, Any]:
        """Totals for one guild, or for everything when ``guild_id`` is None.

        Keys: ``jobs``, ``by_status`` (every status, zeros included), ``images``, ``users``,
        ``mean_duration_s`` (over done jobs; None if there are none).
        """
        where, params = ("", []) if guild_id is None else ("WHERE guild_id = ?", [guild_id])
        async with self._transaction(write=False) as db:
            by_status = {status: 0 for status in STATUSES}
            for row in await db.execute_fetchall(
                f"SELECT status, count(*) FROM jobs {where} GROUP BY status", params
            ):
                by_status[row[0]] = row[1]
            rows = list(
                await db.execute_fetchall(
                    "SELECT count(*), count(DISTINCT user_id), "
                    f"avg(CASE WHEN status = 'done' THEN duration_s END) FROM jobs {where}",
                    params,
                )
            )
            images = await self._scalar(
                db,
                f"SELECT count(*) FROM job_images WHERE job_id IN (SELECT id FROM jobs {where})",
                params,
            )
        jobs, users, mean = rows[0]
        return {
            "jobs": jobs,
            "by_status": by_status,
            "images": images,
            "users": users,
            "mean_duration_s": mean,
        }

    # --------------------------------------------------------------- privacy

    async def forget_user(self, user_id: int) -> int:
        """Delete every job of this user, their image rows, and image files nobody else uses.

        Returns the number of jobs deleted. Rerolls others made of this user's jobs are kept with
        their parent link cleared; this user's id is also erased from ``deleted_by``.
        """
        async with self._transaction(write=True) as db:
            paths = [
                row[0]
                for row in await db.execute_fetchall(
                    "SELECT DISTINCT i.path FROM job_images i JOIN jobs j ON j.id = i.job_id "
                    "WHERE j.user_id = ?",
                    (user_id,),
                )
            ]
            # job_images rows go with their jobs (ON DELETE CASCADE), children's
            # parent_job_id becomes NULL (ON DELETE SET NULL).
            deleted = await self._write(db, "DELETE FROM jobs WHERE user_id = ?", (user_id,))
            await self._write(
                db, "UPDATE jobs SET deleted_by = NULL WHERE deleted_by = ?", (user_id,)
            )
            # A moderator who leaves keeps their server's bans, not their name on them.
            await self._write(
                db, "UPDATE banned_words SET added_by = 0 WHERE added_by = ?", (user_id,)
            )
            await self._write(
                db,
                "UPDATE guild_settings SET updated_by = 0 WHERE updated_by = ?",
                (user_id,),
            )
            # The audit keeps that a purge happened, not who was involved.
            await self._write(
                db, "UPDATE purges SET moderator_id = 0 WHERE moderator_id = ?", (user_id,)
            )
            await self._write(
                db,
                "UPDATE purges SET target_user_id = 0 WHERE target_user_id = ?",
                (user_id,),
            )
        # Files go only after the commit: a failed commit must not leave rows without files.
        await self._delete_files(paths)
        return deleted

    def _unlink_images(self, paths: Iterable[Path]) -> None:
        for path in paths:
            # Only our own content-addressed files: a path stored from elsewhere is not ours to
            # delete.
            if not path.absolute().is_relative_to(self.images_dir):
                continue
            with suppress(FileNotFoundError):
                path.unlink()

    # ---------------------------------------------------------------- images

    async def save_image(self, png_bytes: bytes) -> Path:
        """Write a PNG under ``images/`` named by its SHA-256 (atomically); return its path."""
        if not png_bytes.startswith(PNG_SIGNATURE):
            raise ValueError("save_image expects PNG bytes")
        async with self._files_lock:
            path = await asyncio.to_thread(self._write_image, bytes(png_bytes))
            # Pinned until the job's row is committed (mark_done) or it is given up
            # (discard_images, release_images): no deletion takes it from under the job.
            key = path.absolute()
            self._pinned[key] = self._pinned.get(key, 0) + 1
        return path

    def _write_image(self, data: bytes) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        folder = self.images_dir / digest[:2]
        path = folder / f"{digest}.png"
        with suppress(FileNotFoundError):
            # Compare rather than trust the name: a file cut short by a power cut gets rewritten.
            if path.read_bytes() == data:
                return path
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{digest[:16]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                # The job row that points at this file is committed with synchronous=FULL; the
                # file must be at least as durable, or a power cut leaves an empty PNG behind.
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(folder)
        return path

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


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not possible on every platform: best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
