"""Image files: saved under ``<data_dir>/images`` by content, pinned until a committed row
guards them, and deleted only when no job refers to them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Final

import aiosqlite

from bot.store.base import StoreBase

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


class FilesMixin(StoreBase):
    """The image files of jobs, content-addressed under ``images_dir``."""

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

    async def _let_go_of(self, db: aiosqlite.Connection, stored: Iterable[str]) -> None:
        """Other jobs that start from these pictures (someone's upscale or remix of a result,
        a reroll of an upload) no longer hold them: the pictures go with their owner's data,
        and those jobs, if they still wait, are refused as "no longer stored"."""
        stored = list(stored)
        for start in range(0, len(stored), 500):
            chunk = stored[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            await db.execute(
                f"UPDATE jobs SET init_image = NULL WHERE init_image IN ({marks})", chunk
            )

    async def _unreferenced(self, db: aiosqlite.Connection, stored: Iterable[str]) -> list[Path]:
        orphans = []
        for path in stored:
            if await self._scalar(db, "SELECT 1 FROM job_images WHERE path = ? LIMIT 1", (path,)):
                continue
            # A picture a job starts from (an upload, a result being upscaled or remixed).
            if await self._scalar(db, "SELECT 1 FROM jobs WHERE init_image = ? LIMIT 1", (path,)):
                continue
            orphans.append(self._from_db_path(path))
        return orphans

    def _unlink_images(self, paths: Iterable[Path]) -> None:
        for path in paths:
            # Only our own content-addressed files: a path stored from elsewhere is not ours to
            # delete.
            if not path.absolute().is_relative_to(self.images_dir):
                continue
            with suppress(FileNotFoundError):
                path.unlink()


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
