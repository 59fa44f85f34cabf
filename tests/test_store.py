"""The history store against real SQLite files (never mocked)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path

import pytest

from bot.store import (
    MIGRATIONS_DIR,
    PNG_SIGNATURE,
    REQUEST_COLUMNS,
    DatabaseTooNew,
    GuildSettings,
    InvalidTransition,
    JobNotFound,
    MigrationError,
    Store,
    StoreBusy,
    StoreError,
    discover_migrations,
    split_sql,
)
from pipeline.request import DrawRequest

WORKER = Path(__file__).resolve().parent / "store_crash_worker.py"


def png(payload: bytes) -> bytes:
    return PNG_SIGNATURE + payload


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "easel.sqlite"


@pytest.fixture
async def store(db_path: Path, tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(db_path, tmp_path / "data") as s:
        yield s


async def add(store: Store, prompt: str = "a cat", **kwargs: object) -> int:
    params: dict[str, object] = {
        "guild_id": 10,
        "channel_id": 20,
        "user_id": 30,
        "user_name": "ada",
    }
    params.update(kwargs)
    return await store.add_job(DrawRequest(prompt=prompt), **params)  # type: ignore[arg-type]


def schema(path: Path) -> tuple[int, list[tuple[str, str]]]:
    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"
        ).fetchall()
    conn.close()
    return version, objects


# ------------------------------------------------------------------------ migrations


def test_migrations_are_numbered_contiguously_from_0001() -> None:
    names = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert names, "no migrations found"
    assert [int(name[:4]) for name in names] == list(range(1, len(names) + 1))
    assert [m.path.name for m in discover_migrations()] == names
    for migration in discover_migrations():
        statements = split_sql(migration.path.read_text(encoding="utf-8"))
        # The store wraps each file in its own transaction and bumps user_version itself; a
        # BEGIN/COMMIT or version bump inside a file would break that atomicity.
        for statement in statements:
            statement = re.sub(r"--[^\n]*", "", statement).strip()
            head = statement.split(None, 1)[0].upper()
            assert head not in {"BEGIN", "COMMIT", "END", "ROLLBACK"}, statement
            assert "user_version" not in statement.lower(), statement


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["0001_a.sql", "0003_c.sql"], "missing: 0002"),
        (["0002_b.sql"], "missing: 0001"),
        (["0001_a.sql", "0001_b.sql"], "share number 0001"),
        (["0001_a.sql", "2_b.sql"], "NNNN_description.sql"),
    ],
)
def test_malformed_migration_folders_are_refused(
    tmp_path: Path, files: list[str], message: str
) -> None:
    for name in files:
        (tmp_path / name).write_text("CREATE TABLE t (x);\n")
    with pytest.raises(MigrationError, match=message):
        discover_migrations(tmp_path)


def test_split_sql_keeps_triggers_and_quoted_semicolons_whole() -> None:
    script = """
        -- a comment; with a semicolon
        CREATE TABLE a (x TEXT DEFAULT 'one; two');
        CREATE TRIGGER t AFTER INSERT ON a BEGIN
            UPDATE a SET x = 'y;'; DELETE FROM a WHERE 0;
        END;   CREATE INDEX i ON a (x);
        /* trailing; comment */
    """
    statements = split_sql(script)
    assert len(statements) == 3
    assert statements[0].endswith("DEFAULT 'one; two');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    assert statements[2] == "CREATE INDEX i ON a (x);"
    with pytest.raises(MigrationError, match="unterminated"):
        split_sql("CREATE TABLE a (x); CREATE TABLE b (y)")


def test_creating_a_store_touches_nothing(tmp_path: Path) -> None:
    Store(tmp_path / "deep" / "db.sqlite", tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


async def test_empty_database_is_migrated_and_a_second_open_is_a_no_op(
    db_path: Path, tmp_path: Path
) -> None:
    first = Store(db_path, tmp_path / "data")
    await first.open()
    assert first.applied_migrations == [m.path.name for m in discover_migrations()]
    job = await add(first, "survives reopening")
    await first.close()
    after_first = schema(db_path)
    assert after_first[0] == len(discover_migrations())

    async with Store(db_path, tmp_path / "data") as second:
        assert second.applied_migrations == []
        record = await second.get_job(job)
        assert record is not None and record.prompt == "survives reopening"
    assert schema(db_path) == after_first


async def test_database_runs_in_wal_mode(store: Store, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_database_newer_than_the_code_is_refused_untouched(
    db_path: Path, tmp_path: Path
) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = schema(db_path)

    store = Store(db_path, tmp_path / "data")
    with pytest.raises(DatabaseTooNew, match=r"schema version 99.*newer Easel"):
        await store.open()
    assert not store.is_open
    assert schema(db_path) == before
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


async def test_a_failing_migration_is_rolled_back_whole(db_path: Path, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    shutil.copy(MIGRATIONS_DIR / "0001_initial.sql", migrations)
    (migrations / "0002_broken.sql").write_text(
        "CREATE TABLE tags (name TEXT);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    store = Store(db_path, tmp_path / "data", migrations_dir=migrations)
    with pytest.raises(MigrationError, match=r"0002_broken\.sql failed.*no_such_table"):
        await store.open()
    assert not store.is_open
    version, objects = schema(db_path)
    assert version == 1
    assert "tags" not in {name for name, _ in objects}
    assert "jobs" in {name for name, _ in objects}


async def test_a_file_that_is_not_a_database_gives_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"junk\.sqlite"):
        await Store(path, tmp_path / "data").open()


async def test_methods_refuse_to_run_before_open(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite", tmp_path / "data")
    with pytest.raises(StoreError, match="not open"):
        await store.get_job(1)


async def test_the_async_context_manager_closes_the_store(db_path: Path, tmp_path: Path) -> None:
    async with Store(db_path, tmp_path / "data") as store:
        assert store.is_open
    assert not store.is_open
    with pytest.raises(StoreError, match="not open"):
        await store.history(10)


# ------------------------------------------------------------------------ jobs


def test_every_request_field_has_a_column() -> None:
    assert set(REQUEST_COLUMNS) == {f.name for f in fields(DrawRequest)}


async def test_a_job_round_trips_every_field(store: Store) -> None:
    prompt = "🎨 猫の絵 مرحبا\u200b zero\u200dwidth " + "x" * 6000
    request = DrawRequest(
        prompt=prompt,
        negative_prompt="blurry, 低品質",
        steps=37,
        guidance=7.5,
        eta=0.25,
        sampler="DPM++ 2M Karras",
        seed=2**32 - 1,
        width=512,
        height=768,
        count=3,
        model="tiny:sd",
    )
    parent = await add(store)
    job = await store.add_job(
        request,
        guild_id=2**62,
        channel_id=2**61,
        user_id=2**60,
        user_name="ユーザー 👩‍🎨",
        parent_job_id=parent,
    )
    record = await store.get_job(job)
    assert record is not None
    assert record.request == request
    assert len(record.prompt) == len(prompt) and record.prompt == prompt
    assert (record.guild_id, record.channel_id, record.user_id) == (2**62, 2**61, 2**60)
    assert record.user_name == "ユーザー 👩‍🎨"
    assert record.parent_job_id == parent
    assert record.status == "queued"
    assert record.images == []
    assert record.created_at == pytest.approx(time.time(), abs=60)
    assert await store.get_job(job + 1000) is None


async def test_unresolved_request_fields_stay_unset(store: Store) -> None:
    record = await store.get_job(await add(store))
    assert record is not None
    assert record.request == DrawRequest(prompt="a cat")


async def test_a_reroll_of_a_missing_job_is_refused(store: Store) -> None:
    with pytest.raises(JobNotFound):
        await add(store, parent_job_id=999)
    assert await store.count_history(10) == 0


async def test_lifecycle_done_stores_images_and_the_resolved_request(store: Store) -> None:
    job = await add(store, "a red fox")
    await store.mark_running(job)
    running = await store.get_job(job)
    assert running is not None and running.status == "running" and running.attempts == 1
    resolved = DrawRequest(prompt="a red fox", seed=41, width=256, height=256, sampler="DDIM")
    paths = [await store.save_image(png(b"one")), await store.save_image(png(b"two"))]
    await store.mark_done(
        job,
        images=[(paths[0], 41), (paths[1], 42)],
        request=resolved,
        message_id=555,
        jump_url="https://discord.com/channels/10/20/555",
    )
    record = await store.get_job(job)
    assert record is not None
    assert record.status == "done"
    assert record.request == resolved
    assert record.images == [(paths[0], 41), (paths[1], 42)]
    assert record.message_id == 555
    assert record.jump_url == "https://discord.com/channels/10/20/555"
    assert record.started_at is not None and record.finished_at is not None
    assert record.finished_at >= record.started_at
    assert record.duration_s == pytest.approx(record.finished_at - record.started_at)


async def test_set_message_records_the_jump_url(store: Store) -> None:
    job = await add(store)
    await store.mark_failed(job, "boom")
    await store.set_message(job, 77, "https://discord.com/channels/10/20/77")
    record = await store.get_job(job)
    assert record is not None and record.message_id == 77
    assert record.jump_url == "https://discord.com/channels/10/20/77"
    with pytest.raises(JobNotFound):
        await store.set_message(job + 1, 1, "x")


@pytest.mark.parametrize("finish", ["done", "failed", "cancelled"])
async def test_finished_jobs_cannot_change_state(store: Store, finish: str) -> None:
    job = await add(store)
    if finish == "done":
        await store.mark_done(job, images=[])
    elif finish == "failed":
        await store.mark_failed(job, "out of memory")
    else:
        await store.mark_cancelled(job)
    for attempt in (
        store.mark_running(job),
        store.mark_done(job, images=[(Path("x.png"), 1)]),
        store.mark_failed(job, "late"),
        store.mark_cancelled(job),
    ):
        with pytest.raises(InvalidTransition, match=f"already {finish}"):
            await attempt
    record = await store.get_job(job)
    assert record is not None
    assert record.status == finish
    assert record.images == []
    assert record.error == ("out of memory" if finish == "failed" else None)


async def test_unknown_jobs_raise_job_not_found(store: Store) -> None:
    for attempt in (
        store.mark_running(5),
        store.mark_done(5, images=[]),
        store.mark_failed(5, "x"),
        store.mark_cancelled(5),
        store.mark_deleted(5, 1),
    ):
        with pytest.raises(JobNotFound, match="job 5"):
            await attempt


async def test_refused_jobs_are_recorded_finished(store: Store) -> None:
    job = await add(store, "something nasty", status="refused")
    record = await store.get_job(job)
    assert record is not None and record.status == "refused" and record.finished_at is not None
    assert await store.unfinished_jobs() == []
    with pytest.raises(InvalidTransition):
        await store.mark_running(job)
    with pytest.raises(ValueError, match="queued"):
        await add(store, status="done")


async def test_the_schema_rejects_an_unknown_status(store: Store, db_path: Path) -> None:
    await add(store)
    conn = sqlite3.connect(db_path, timeout=5)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute("UPDATE jobs SET status = 'exploded'")
    conn.close()


async def test_unfinished_jobs_are_the_queued_and_running_ones_oldest_first(store: Store) -> None:
    ids = [await add(store, f"job {i}") for i in range(6)]
    await store.mark_running(ids[1])
    await store.mark_done(ids[2], images=[])
    await store.mark_running(ids[3])
    await store.mark_failed(ids[3], "oom")
    await store.mark_cancelled(ids[4])
    assert [r.id for r in await store.unfinished_jobs()] == [ids[0], ids[1], ids[5]]
    assert [r.status for r in await store.unfinished_jobs()] == ["queued", "running", "queued"]


async def test_a_job_left_running_by_a_crash_can_run_again_and_counts_attempts(
    store: Store,
) -> None:
    job = await add(store)
    await store.mark_running(job)
    await store.mark_running(job)  # re-queued after a restart
    record = await store.get_job(job)
    assert record is not None and record.status == "running" and record.attempts == 2


async def test_concurrent_writers_on_one_store_do_not_collide(store: Store) -> None:
    ids = await asyncio.gather(*(add(store, f"p{i}") for i in range(40)))
    assert len(set(ids)) == 40
    await asyncio.gather(*(store.mark_running(i) for i in ids), store.set_meta("k", "v"))
    assert len(await store.unfinished_jobs()) == 40
    assert {r.status for r in await store.unfinished_jobs()} == {"running"}


# ------------------------------------------------------------------------ history


async def test_history_is_newest_first_and_pages_by_id(store: Store) -> None:
    ids = [await add(store, f"prompt {i}", user_id=30 + i % 3) for i in range(23)]
    await add(store, "another guild", guild_id=11)
    await add(store, "a direct message", guild_id=None, channel_id=None)

    seen: list[int] = []
    before = None
    while True:
        page = await store.history(10, before=before, limit=10)
        if not page:
            break
        assert len(page) <= 10
        seen += [r.id for r in page]
        before = page[-1].id
    assert seen == sorted(ids, reverse=True)
    assert await store.count_history(10) == 23

    mine = await store.history(10, user_id=31, limit=100)
    assert [r.id for r in mine] == sorted(
        (i for n, i in enumerate(ids) if n % 3 == 1), reverse=True
    )
    assert await store.count_history(10, user_id=31) == len(mine)
    assert [r.id for r in await store.history(10, user_id=31, before=mine[2].id, limit=2)] == [
        mine[3].id,
        mine[4].id,
    ]
    assert [r.prompt for r in await store.history(None)] == ["a direct message"]
    assert [r.prompt for r in await store.history(11)] == ["another guild"]
    with pytest.raises(ValueError):
        await store.history(10, limit=0)


SEARCH_PROMPTS = [
    "100% cotton shirt",
    "1000 cotton shirts",
    "snake_case robot",
    "snakeXcase robot",
    "it's a cat",
    'a "quoted" dog',
    "back\\slash art",
    "backslash art",
    "'; DROP TABLE jobs; --",
    "Ein grüner APFEL",
    "die Straße bei Nacht",
    "ÉTÉ À PARIS",
    "夜の東京 🌃",
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("%", ["100% cotton shirt"]),
        ("0% c", ["100% cotton shirt"]),
        ("_", ["snake_case robot"]),
        ("e_c", ["snake_case robot"]),
        ("'", ["it's a cat", "'; DROP TABLE jobs; --"]),
        ('"quoted"', ['a "quoted" dog']),
        ("\\", ["back\\slash art"]),
        ("'; DROP TABLE jobs; --", ["'; DROP TABLE jobs; --"]),
        ("' OR 1=1 --", []),
        ("COTTON", ["100% cotton shirt", "1000 cotton shirts"]),
        ("apfel", ["Ein grüner APFEL"]),
        ("GRÜNER", ["Ein grüner APFEL"]),
        ("STRASSE", ["die Straße bei Nacht"]),
        ("été à", ["ÉTÉ À PARIS"]),
        ("東京", ["夜の東京 🌃"]),
        ("🌃", ["夜の東京 🌃"]),
    ],
)
async def test_search_text_is_plain_case_insensitive_text(
    store: Store, query: str, expected: list[str]
) -> None:
    for prompt in SEARCH_PROMPTS:
        await add(store, prompt)
    found = await store.history(10, query=query, limit=50)
    assert sorted(r.prompt for r in found) == sorted(expected)
    assert await store.count_history(10, query=query) == len(expected)
    assert await store.count_history(10) == len(SEARCH_PROMPTS)  # no table was dropped


async def test_deleted_jobs_stay_in_history_marked(store: Store) -> None:
    keep = await add(store, "kept")
    gone = await add(store, "deleted")
    await store.mark_deleted(gone, by_user_id=99)
    await store.mark_deleted(gone, by_user_id=100)  # the first deletion is the one recorded
    page = {r.id: r for r in await store.history(10)}
    assert set(page) == {keep, gone}
    assert not page[keep].deleted
    assert page[gone].deleted and page[gone].deleted_by == 99


# ------------------------------------------------------------------------ images


async def test_images_are_content_addressed_and_deduplicated(store: Store, tmp_path: Path) -> None:
    data = png(b"pixels")
    first = await store.save_image(data)
    second = await store.save_image(data)
    other = await store.save_image(png(b"other pixels"))
    digest = hashlib.sha256(data).hexdigest()
    assert first == second == tmp_path / "data" / "images" / digest[:2] / f"{digest}.png"
    assert first.read_bytes() == data
    assert other != first and other.read_bytes() == png(b"other pixels")
    files = sorted(p for p in (tmp_path / "data" / "images").rglob("*") if p.is_file())
    assert files == sorted([first, other])  # no leftover temp files, no duplicate
    with pytest.raises(ValueError, match="PNG"):
        await store.save_image(b"GIF89a...")


async def test_a_truncated_image_file_is_rewritten(store: Store) -> None:
    data = png(b"a whole image")
    path = await store.save_image(data)
    path.write_bytes(data[:5])
    assert await store.save_image(data) == path
    assert path.read_bytes() == data


async def test_the_data_folder_can_move(db_path: Path, tmp_path: Path) -> None:
    async with Store(db_path, tmp_path / "data") as store:
        job = await add(store)
        path = await store.save_image(png(b"moving"))
        await store.mark_done(job, images=[(path, 3)])
    (tmp_path / "data").rename(tmp_path / "moved")
    async with Store(db_path, tmp_path / "moved") as store:
        record = await store.get_job(job)
    assert record is not None
    [(moved, seed)] = record.images
    assert seed == 3 and moved.is_relative_to(tmp_path / "moved") and moved.exists()


# ------------------------------------------------------------------------ privacy


async def test_forget_user_removes_rows_and_unshared_files(store: Store) -> None:
    shared = png(b"same pixels for both users")
    ada_1 = await add(store, "ada's secret", user_id=1, user_name="ada")
    ada_2 = await add(store, "ada's other", user_id=1, user_name="ada")
    bob = await add(store, "bob's", user_id=2, user_name="bob")
    reroll = await add(store, "ada's secret", user_id=2, user_name="bob", parent_job_id=ada_1)
    only_ada = await store.save_image(png(b"ada only"))
    shared_path = await store.save_image(shared)
    await store.mark_done(ada_1, images=[(only_ada, 1), (shared_path, 2)])
    await store.mark_done(ada_2, images=[(shared_path, 5)])
    await store.mark_done(bob, images=[(shared_path, 2)])
    await store.mark_deleted(bob, by_user_id=1)

    assert await store.forget_user(1) == 2

    assert await store.get_job(ada_1) is None and await store.get_job(ada_2) is None
    assert await store.count_history(10, user_id=1) == 0
    assert not only_ada.exists()
    assert shared_path.exists()  # bob's job still shows it
    bob_record = await store.get_job(bob)
    assert bob_record is not None and bob_record.images == [(shared_path, 2)]
    assert bob_record.deleted and bob_record.deleted_by is None
    reroll_record = await store.get_job(reroll)
    assert reroll_record is not None and reroll_record.parent_job_id is None
    stats = await store.stats()
    assert stats["jobs"] == 2 and stats["images"] == 1 and stats["users"] == 1

    assert await store.forget_user(2) == 2
    assert not shared_path.exists()
    assert await store.forget_user(2) == 0


# ------------------------------------------------------------- server settings, purge


async def test_guild_settings_default_to_none_and_are_kept_per_server(
    db_path: Path, tmp_path: Path
) -> None:
    async with Store(db_path, tmp_path / "data") as store:
        assert await store.guild_settings(10) == GuildSettings()
        mine = GuildSettings(max_steps=30, cooldown_s=5, default_sampler="ddim", nsfw="filter")
        await store.set_guild_settings(10, mine, by_user_id=1)
        await store.set_guild_settings(10, GuildSettings(max_steps=20), by_user_id=1)
        await store.set_guild_settings(11, mine, by_user_id=1)
        with pytest.raises(ValueError, match="nsfw must be one of"):
            await store.set_guild_settings(12, GuildSettings(nsfw="sometimes"), by_user_id=1)
    async with Store(db_path, tmp_path / "data") as store:  # reopened: still there
        assert await store.guild_settings(10) == GuildSettings(max_steps=20)  # replaced whole
        assert await store.guild_settings(11) == mine
        assert await store.guild_settings(12) == GuildSettings()


async def test_the_schema_refuses_nonsense_settings(store: Store, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO guild_settings (guild_id, max_steps, updated_by, updated_at) "
            "VALUES (1, 0, 1, 0)"
        )
    conn.close()


async def test_count_unfinished_is_per_server_and_user(store: Store) -> None:
    await add(store, guild_id=10, user_id=1)
    await add(store, guild_id=10, user_id=1, status="refused")
    done = await add(store, guild_id=10, user_id=1)
    await store.mark_done(done, images=[])
    await add(store, guild_id=11, user_id=1)
    await add(store, guild_id=None, user_id=1)
    assert await store.count_unfinished(10, 1) == 1
    assert await store.count_unfinished(None, 1) == 1
    assert await store.count_unfinished(10, 2) == 0


async def test_withheld_images_are_counted_on_the_job(store: Store) -> None:
    job = await add(store)
    kept = await store.save_image(png(b"kept"))
    await store.mark_done(job, images=[(kept, 8)], withheld=1)
    record = await store.get_job(job)
    assert record is not None and record.withheld == 1 and record.images == [(kept, 8)]


async def test_purge_user_removes_one_servers_rows_and_files_and_audits(store: Store) -> None:
    here_only = await store.save_image(png(b"here only"))
    shared = await store.save_image(png(b"in both servers"))
    here = await add(store, "here", guild_id=10, user_id=1)
    here_too = await add(store, "here too", guild_id=10, user_id=1)
    there = await add(store, "there", guild_id=11, user_id=1)
    other = await add(store, "someone else", guild_id=10, user_id=2, parent_job_id=here)
    await store.mark_done(here, images=[(here_only, 1), (shared, 2)])
    await store.set_message(here, 501, "https://discord.com/channels/10/20/501")
    await store.mark_done(there, images=[(shared, 2)])
    assert await store.posted_messages(10, 1) == [(here, 20, 501)]
    assert await store.unfinished_job_ids(10, 1) == [here_too]

    purge = await store.purge_user(
        10, 1, moderator_id=9, messages_deleted=1, messages_missing=0, messages_failed=0
    )

    assert (purge.jobs, purge.images, purge.moderator_id, purge.target_user_id) == (2, 2, 9, 1)
    assert await store.get_job(here) is None and await store.get_job(here_too) is None
    assert not here_only.exists() and shared.exists()  # the other server's job still uses it
    assert await store.get_job(there) is not None
    other_record = await store.get_job(other)
    assert other_record is not None and other_record.parent_job_id is None
    assert await store.purges(10) == [purge] and await store.purges(11) == []

    await store.forget_user(9)  # the moderator leaves: the audit stays, without their id
    (anonymous,) = await store.purges(10)
    assert anonymous.moderator_id == 0 and anonymous.jobs == 2


async def test_discard_images_keeps_files_a_job_still_uses(store: Store) -> None:
    used = await store.save_image(png(b"used"))
    stray = await store.save_image(png(b"stray"))
    job = await add(store)
    await store.mark_done(job, images=[(used, 1)])
    await store.discard_images([used, stray])
    assert used.exists() and not stray.exists()


# ------------------------------------------------------------------------ stats, meta


async def test_stats_count_statuses_images_and_mean_duration(store: Store) -> None:
    assert (await store.stats())["mean_duration_s"] is None
    a, b, c, d = [await add(store, guild_id=10 if i < 3 else 11) for i in range(4)]
    await store.mark_done(a, images=[(Path("/x/1.png"), 1), (Path("/x/2.png"), 2)], duration_s=2.0)
    await store.mark_done(b, images=[(Path("/x/3.png"), 3)], duration_s=4.0)
    await store.mark_failed(c, "oom")
    await store.mark_done(d, images=[(Path("/x/4.png"), 4)], duration_s=9.0)

    guild = await store.stats(10)
    assert guild["jobs"] == 3
    assert guild["by_status"] == {
        "queued": 0,
        "running": 0,
        "done": 2,
        "failed": 1,
        "cancelled": 0,
        "refused": 0,
    }
    assert guild["images"] == 3
    assert guild["mean_duration_s"] == pytest.approx(3.0)
    everything = await store.stats()
    assert everything["jobs"] == 4 and everything["images"] == 4
    assert everything["mean_duration_s"] == pytest.approx(5.0)


async def test_meta_values_are_kept_and_overwritten(db_path: Path, tmp_path: Path) -> None:
    async with Store(db_path, tmp_path / "data") as store:
        assert await store.get_meta("commands_hash") is None
        await store.set_meta("commands_hash", "abc")
        await store.set_meta("commands_hash", "déf 🎨")
    async with Store(db_path, tmp_path / "data") as store:
        assert await store.get_meta("commands_hash") == "déf 🎨"


# ------------------------------------------------------------------------ faults


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """A second connection, as another process would be, holding the write lock."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE jobs SET user_name = user_name")
    return conn


async def test_a_write_waits_for_a_briefly_held_lock(db_path: Path, tmp_path: Path) -> None:
    async with Store(db_path, tmp_path / "data", busy_timeout_ms=5000) as store:
        job = await add(store)
        other = hold_write_lock(db_path)
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        started = time.perf_counter()
        await store.mark_running(job)
        waited = time.perf_counter() - started
        other.close()
        record = await store.get_job(job)
    assert record is not None and record.status == "running"
    assert 0.2 < waited < 4


async def test_a_lock_held_past_busy_timeout_fails_cleanly(db_path: Path, tmp_path: Path) -> None:
    async with Store(db_path, tmp_path / "data", busy_timeout_ms=200) as store:
        job = await add(store)
        await store.mark_running(job)
        image = await store.save_image(png(b"busy"))
        other = hold_write_lock(db_path)
        try:
            started = time.perf_counter()
            with pytest.raises(StoreBusy, match="the database is busy"):
                await store.mark_done(job, images=[(image, 1)], message_id=5, jump_url="u")
            assert time.perf_counter() - started >= 0.15
            with pytest.raises(StoreBusy):
                await add(store, "never stored")
        finally:
            other.execute("ROLLBACK")
            other.close()
        record = await store.get_job(job)
        assert record is not None
        assert (record.status, record.images, record.message_id) == ("running", [], None)
        assert await store.count_history(10) == 1
        # Once the lock is free the store works again.
        await store.mark_done(job, images=[(image, 1)])
        record = await store.get_job(job)
        assert record is not None and record.status == "done"


def replay(lines: list[str]) -> tuple[dict[int, str], tuple[str, str] | None]:
    """The job states the worker's acknowledged commits imply, and the op left in flight."""
    states: dict[int, str] = {}
    in_flight: tuple[str, str] | None = None
    for line in lines:
        words = line.split()
        if words[0] == "begin":
            in_flight = (words[1], words[2])
        elif words[0] == "ack":
            op, job = words[1], int(words[2])
            states[job] = "queued" if op == "add" else op
            in_flight = None
    return states, in_flight


def run_worker_until_killed(db_path: Path, data_dir: Path, seed: int, acks: int) -> list[str]:
    """Start the worker, SIGKILL it after at least ``acks`` acknowledged commits; its lines."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(db_path), str(data_dir), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 5
    try:
        while sum(line.startswith("ack") for line in lines) < acks:
            line = proc.stdout.readline()
            assert line, f"the worker died early: {proc.stderr.read()}"
            lines.append(line)
            assert time.monotonic() < deadline, "the worker is too slow"
        time.sleep(random.random() * 0.02)  # land the kill at an arbitrary point
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines += proc.stdout.read().splitlines(keepends=True)
    proc.stdout.close()
    proc.stderr.close()
    # A line cut short by the kill was never a complete acknowledgement.
    return [line.strip() for line in lines if line.endswith("\n") and line.strip()]


async def test_acknowledged_commits_survive_sigkill(tmp_path: Path) -> None:
    db_path, data_dir = tmp_path / "crash.sqlite", tmp_path / "data"
    expected: dict[int, str] = {}  # every job of every run so far -> its status
    for run in range(3):
        log = run_worker_until_killed(db_path, data_dir, seed=run, acks=random.randint(15, 120))
        assert log[0] == "ready"
        states, in_flight = replay(log[1:])
        expected |= states

        conn = sqlite3.connect(db_path)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        actual = dict(conn.execute("SELECT id, status FROM jobs").fetchall())
        prompts = dict(conn.execute("SELECT id, prompt FROM jobs").fetchall())
        conn.close()

        # The one unacknowledged operation may or may not have committed; nothing else may differ.
        if in_flight is not None:
            op, target = in_flight
            if op == "add":
                extra = set(actual) - set(expected)
                assert len(extra) <= 1, extra
                for job in extra:
                    assert prompts[job].startswith(f"{target} ") and actual[job] == "queued"
                    expected[job] = "queued"
            else:
                job = int(target)
                assert actual.get(job) in {expected[job], op}, (op, job, actual.get(job))
                expected[job] = actual[job]
        assert actual == expected

        async with Store(db_path, data_dir) as store:
            unfinished = await store.unfinished_jobs()
            assert [r.id for r in unfinished] == sorted(
                job for job, status in expected.items() if status in ("queued", "running")
            )
            assert all(r.status == expected[r.id] for r in unfinished)
            for job, status in expected.items():
                if status == "done":
                    record = await store.get_job(job)
                    assert record is not None and len(record.images) == 1
                    assert record.images[0][0].read_bytes().startswith(PNG_SIGNATURE)
    assert "done" in expected.values() and "running" in expected.values()
