"""The ``jobs`` table: a job from queued to done (or failed, cancelled, refused), with its
images, and the reads restart recovery needs.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

import aiosqlite

from bot.store.errors import InvalidTransition, JobNotFound, StoreError
from bot.store.files import FilesMixin
from bot.store.records import _JOB_COLUMNS, JOB_KINDS, REQUEST_COLUMNS, UNFINISHED, JobRecord
from pipeline.request import DrawRequest

_SELECT_JOBS: Final = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"


class JobsMixin(FilesMixin):
    """Jobs: recorded, started, finished with their images, posted, deleted, read back."""

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
        kind: str = "draw",
        locale: str | None = None,
    ) -> int:
        """Record a new job (``queued``, or ``refused`` by moderation) and return its id.

        ``kind`` says what it is for people: a drawing, a variation or an upscale of its parent;
        ``locale`` the language its posts are written in.
        """
        if status not in ("queued", "refused"):
            raise ValueError(f"a new job is 'queued' or 'refused', not {status!r}")
        if kind not in JOB_KINDS or kind == "compare":
            raise ValueError(f"add_job records a drawing, variation or upscale, not {kind!r}")
        now = self._clock()
        columns: dict[str, Any] = {
            "guild_id": guild_id,
            "channel_id": channel_id,
            "user_id": user_id,
            "user_name": user_name,
            "parent_job_id": parent_job_id,
            "status": status,
            "kind": kind,
            "created_at": now,
            "finished_at": None if status == "queued" else now,
            "locale": locale,
        }
        async with self._transaction(write=True) as db:
            await self._check_parent(db, parent_job_id)
            return await self._insert_job(db, request, columns)

    async def _check_parent(self, db: aiosqlite.Connection, parent_job_id: int | None) -> None:
        if parent_job_id is not None and not await self._scalar(
            db, "SELECT 1 FROM jobs WHERE id = ?", (parent_job_id,)
        ):
            raise JobNotFound(f"the parent job {parent_job_id} does not exist")

    async def add_comparison(
        self,
        base: DrawRequest,
        spec: str,
        cells: Sequence[DrawRequest],
        *,
        guild_id: int | None,
        channel_id: int | None,
        user_id: int,
        user_name: str,
        parent_job_id: int | None = None,
        locale: str | None = None,
    ) -> tuple[int, list[int]]:
        """Record a comparison (its shared settings and ``spec``) and one queued job per cell,
        in one transaction; returns the comparison's number and the cells' numbers in order."""
        if not cells:
            raise ValueError("a comparison needs at least one cell")
        now = self._clock()
        who: dict[str, Any] = {
            "guild_id": guild_id,
            "channel_id": channel_id,
            "user_id": user_id,
            "user_name": user_name,
            "status": "queued",
            "created_at": now,
            "locale": locale,
        }
        async with self._transaction(write=True) as db:
            await self._check_parent(db, parent_job_id)
            compare_id = await self._insert_job(
                db, base, who | {"kind": "compare", "spec": spec, "parent_job_id": parent_job_id}
            )
            cell_ids = [
                await self._insert_job(db, cell, who | {"compare_id": compare_id}) for cell in cells
            ]
        return compare_id, cell_ids

    def _request_values(self, request: DrawRequest) -> dict[str, Any]:
        values = {name: getattr(request, name) for name in REQUEST_COLUMNS}
        if values["init_image"]:  # so the data folder can move, as with images
            values["init_image"] = self._to_db_path(values["init_image"])
        return values

    async def _insert_job(
        self, db: aiosqlite.Connection, request: DrawRequest, columns: dict[str, Any]
    ) -> int:
        values = self._request_values(request) | columns
        cursor = await db.execute(
            f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            list(values.values()),
        )
        job_id = cursor.lastrowid
        await cursor.close()
        assert job_id is not None
        return job_id

    async def comparison_cells(self, compare_id: int) -> list[JobRecord]:
        """A comparison's cells with their images, in cell order."""
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                f"{_SELECT_JOBS} WHERE compare_id = ? ORDER BY id", (compare_id,)
            )
            return await self._records(db, rows)

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
            extra |= self._request_values(request)
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
        """Remember where the job's result was posted (the jump URL, never a CDN link).

        A comparison's cells are posted in its grid: they get the same message."""
        async with self._transaction(write=True) as db:
            changed = await self._write(
                db,
                "UPDATE jobs SET message_id = ?, jump_url = ? WHERE id = ? OR compare_id = ?",
                (message_id, jump_url, job_id, job_id),
            )
            if not changed:
                raise JobNotFound(f"job {job_id} does not exist")

    async def mark_deleted(self, job_id: int, by_user_id: int) -> None:
        """Mark a job's post as deleted; it stays in history, marked. The first deletion wins."""
        async with self._transaction(write=True) as db:
            await self._status_for_update(db, job_id)  # raises JobNotFound
            # A comparison's grid is its cells' post too: they go with it.
            await self._write(
                db,
                "UPDATE jobs SET deleted_at = ?, deleted_by = ? "
                "WHERE (id = ? OR compare_id = ?) AND deleted_at IS NULL",
                (self._clock(), by_user_id, job_id, job_id),
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

        Only recent ones: a result a day late is news to nobody. A comparison's cells are not
        posted on their own (their grid is), so they are not listed.
        """
        since = self._clock() - max_age_s
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                f"{_SELECT_JOBS} WHERE status = 'done' AND message_id IS NULL "
                "AND compare_id IS NULL AND deleted_at IS NULL AND delivery_failed IS NULL "
                "AND channel_id IS NOT NULL "
                "AND finished_at >= ? "
                "ORDER BY id",
                (since,),
            )
            return await self._records(db, rows)

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
