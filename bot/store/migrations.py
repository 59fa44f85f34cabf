"""The schema's migrations: numbered SQL files under ``migrations/``, found and split here.

``Store.open`` applies them (see ``bot/store/__init__.py``); nothing here needs a Store, so
tools can read the same folder.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bot.store.errors import MigrationError

# The top-level migrations/ folder, beside bot/.
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent.parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_\-]+\.sql$")


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
