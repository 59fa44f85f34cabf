"""History listings, prompt search and totals over the ``jobs`` table."""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final

import aiosqlite

from bot.store.base import StoreBase
from bot.store.errors import StoreBusy
from bot.store.records import _JOB_COLUMNS, STATUSES, JobRecord


def _fold(text: Any) -> Any:
    """Case- and width-insensitive form used by prompt search (SQLite's lower() is ASCII-only)."""
    if not isinstance(text, str):
        return text
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


# ------------------------------------------------------------------ prompt search
# Tables, triggers and the reasons for them: migrations/0005_prompt_search.sql.

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


class HistoryMixin(StoreBase):
    """History pages and their counts, with prompt search, and totals (``stats``).

    A search matches the jobs whose easel_fold(prompt) contains easel_fold(query): plain text,
    case- and width-insensitive; %, _, quotes and backslashes are characters, not patterns or
    SQL (every text is a bound value). migrations/0005_prompt_search.sql keeps the folded
    prompts in job_search and a trigram index of them in job_search_fts. A search reads the
    newest SEARCH_WINDOW jobs in scope directly (a common word fills its page there), then asks
    the index about the older ones.
    """

    def _search_window(self) -> int:
        """SEARCH_WINDOW, read at each search from ``bot.store`` (``Store`` answers)."""
        raise NotImplementedError

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
                [*scope[1], self._search_window() - 1],
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
