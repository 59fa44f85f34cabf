"""Prompt search through the FTS5 trigram index (migration 0005), against real SQLite files.

Search reads the newest ``SEARCH_WINDOW`` jobs directly and asks the index about older ones, so
most tests run twice: with a window of 1 (nearly everything comes from the index) and with the
default (everything is read directly). Both must give what search has always meant: the jobs whose
``_fold(prompt)`` contains ``_fold(query)``.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import bot.store
from bot.store import MIGRATIONS_DIR, Store, _fold
from pipeline.request import DrawRequest


@pytest.fixture(params=[1, bot.store.SEARCH_WINDOW], ids=["index", "window"])
def window(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(bot.store, "SEARCH_WINDOW", request.param)
    return request.param


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "easel.sqlite"


@pytest.fixture
async def store(db_path: Path, tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(db_path, tmp_path / "data") as s:
        yield s


async def add(store: Store, prompt: str, **kwargs: object) -> int:
    params: dict[str, object] = {
        "guild_id": 10,
        "channel_id": 20,
        "user_id": 30,
        "user_name": "ada",
    }
    params.update(kwargs)
    return await store.add_job(DrawRequest(prompt=prompt), **params)  # type: ignore[arg-type]


async def found(store: Store, query: str, guild_id: int | None = 10, **kwargs: object) -> set[str]:
    return {r.prompt for r in await store.history(guild_id, query=query, limit=1000, **kwargs)}  # type: ignore[arg-type]


def matching(prompts: list[str], query: str) -> set[str]:
    """What search means: the folded query is a substring of the folded prompt."""
    return {p for p in prompts if _fold(query) in _fold(p)}


def pending_and_indexed(path: Path) -> tuple[list[int], list[int]]:
    with sqlite3.connect(path) as conn:
        pending = [r[0] for r in conn.execute("SELECT job_id FROM job_search_pending ORDER BY 1")]
        indexed = [r[0] for r in conn.execute("SELECT job_id FROM job_search ORDER BY 1")]
    conn.close()
    return pending, indexed


def integrity_check(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO job_search_fts (job_search_fts) VALUES ('integrity-check')")
    conn.close()


PROMPTS = [
    "A Cat on a mat",
    "ＢＩＧ ＣＡＴ in full width",
    "die Straße bei Nacht",
    "Ein grüner APFEL",
    "ÉTÉ À PARIS",
    "ﬁne ligature",
    "夜の東京 🌃",
    "猫",
    "東京タワーと猫",
    "고양이 그림",
    "100% cotton shirt",
    "snake_case robot",
    "snakeXcase robot",
    "it's a cat",
    'a "quoted" dog',
    "back\\slash art",
    "'; DROP TABLE jobs; --",
    "qz",
    "xqz",
    "qzx",
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("cat", {"A Cat on a mat", "ＢＩＧ ＣＡＴ in full width", "it's a cat"}),
        ("CAT", {"A Cat on a mat", "ＢＩＧ ＣＡＴ in full width", "it's a cat"}),
        ("ｃａｔ", {"A Cat on a mat", "ＢＩＧ ＣＡＴ in full width", "it's a cat"}),
        ("big cat", {"ＢＩＧ ＣＡＴ in full width"}),
        ("STRASSE", {"die Straße bei Nacht"}),
        ("straße", {"die Straße bei Nacht"}),
        ("ß", {"die Straße bei Nacht"}),  # folds to "ss": two characters
        ("GRÜNER", {"Ein grüner APFEL"}),
        ("été à", {"ÉTÉ À PARIS"}),
        ("fine", {"ﬁne ligature"}),
        ("東京", {"夜の東京 🌃", "東京タワーと猫"}),
        ("猫", {"猫", "東京タワーと猫"}),
        ("夜の東京", {"夜の東京 🌃"}),
        ("🌃", {"夜の東京 🌃"}),
        ("고양이", {"고양이 그림"}),
        ("%", {"100% cotton shirt"}),
        ("0% c", {"100% cotton shirt"}),
        ("_", {"snake_case robot"}),
        ("e_c", {"snake_case robot"}),
        ("'", {"it's a cat", "'; DROP TABLE jobs; --"}),
        ('"', {'a "quoted" dog'}),
        ('"quoted"', {'a "quoted" dog'}),
        ("\\", {"back\\slash art"}),
        ("'; DROP TABLE jobs; --", {"'; DROP TABLE jobs; --"}),
        ("' OR 1=1 --", set()),
        ("cat OR dog", set()),  # FTS5 syntax is text here
        ("qz", {"qz", "xqz", "qzx"}),  # a whole prompt, its end, its start
        ("z", {"qz", "xqz", "qzx"}),
        ("Q", {"qz", "xqz", "qzx", 'a "quoted" dog'}),
        ("夜", {"夜の東京 🌃"}),
        ("zz", set()),
    ],
)
async def test_search_is_folded_plain_text(
    store: Store, window: int, query: str, expected: set[str]
) -> None:
    for prompt in PROMPTS:
        await add(store, prompt)
    assert expected == matching(PROMPTS, query)  # the cases agree with the definition
    assert await found(store, query) == expected
    assert await store.count_history(10, query=query) == len(expected)


async def test_random_prompts_and_queries_agree_with_the_definition(
    store: Store, window: int
) -> None:
    rng = random.Random(14)
    alphabet = "aAbB cC\"'%_ßﬁ猫東京ＡＢ\u0301é"
    prompts = ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(150)]
    for n, prompt in enumerate(prompts):
        await add(store, prompt, guild_id=10 + n % 2)
    guild10 = prompts[0::2]
    queries = ["".join(rng.choices(alphabet, k=rng.randint(1, 4))) for _ in range(40)]
    queries += [p[i : i + k] for p in rng.sample(prompts, 20) for i, k in [(0, 2), (1, 3)]]
    for query in queries:
        if not query:
            continue
        expected = matching(guild10, query)
        assert await found(store, query) == expected, query
        assert await store.count_history(10, query=query) == len(expected), query


async def test_direct_messages_and_users_narrow_a_search(store: Store, window: int) -> None:
    await add(store, "cat in a server", user_id=1)
    await add(store, "cat of another user", user_id=2)
    await add(store, "cat in a DM", guild_id=None, channel_id=None, user_id=1)
    await add(store, "cat elsewhere", guild_id=11, user_id=1)
    assert await found(store, "cat", user_id=1) == {"cat in a server"}
    assert await found(store, "cat", guild_id=None) == {"cat in a DM"}
    assert await found(store, "ca", guild_id=None) == {"cat in a DM"}
    assert await store.count_history(10, user_id=2, query="CAT") == 1


async def test_pages_of_a_search_with_one_more_row_to_tell_if_there_is_more(
    store: Store, window: int
) -> None:
    ids = []
    for i in range(23):
        ids.append(await add(store, f"red fox {i}"))
        await add(store, f"blue owl {i}")
    page_size = 5
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        rows = await store.history(10, query="FOX", before=before, limit=page_size + 1)
        page, more = rows[:page_size], len(rows) > page_size
        seen += [r.id for r in page]
        pages += 1
        if not more:
            break
        before = page[-1].id
    assert seen == sorted(ids, reverse=True)
    assert pages == 5
    # A two-character search pages the same way.
    two = [r.id for r in await store.history(10, query="fo", limit=100)]
    assert two == sorted(ids, reverse=True)


async def test_counting_can_stop_early(store: Store, window: int) -> None:
    for i in range(12):
        await add(store, f"a tiger {i}")
    await add(store, "a lion")
    assert await store.count_history(10, query="tiger", at_most=5) == 5
    assert await store.count_history(10, query="ti", at_most=5) == 5
    assert await store.count_history(10, query="tiger", at_most=100) == 12
    assert await store.count_history(10, at_most=3) == 3
    assert await store.count_history(10, at_most=100) == 13
    assert await store.count_history(10, query="lion", at_most=0) == 0
    with pytest.raises(ValueError):
        await store.count_history(10, at_most=-1)


async def test_the_stores_own_writes_are_indexed_at_once(store: Store, db_path: Path) -> None:
    job = await add(store, "Indexed AT ONCE")
    assert pending_and_indexed(db_path) == ([], [job])
    with sqlite3.connect(db_path) as conn:
        (folded,) = conn.execute("SELECT folded FROM job_search").fetchone()
    conn.close()
    assert folded == "indexed at once"


async def test_triggers_keep_the_index_in_step_with_deletes_and_rewrites(
    store: Store, db_path: Path, window: int
) -> None:
    forgotten = await add(store, "a cat to forget", user_id=1)
    purged = await add(store, "a cat to purge", user_id=2)
    rewritten = await add(store, "a cat before drawing", user_id=3)
    kept = await add(store, "a cat that stays", user_id=4)
    await add(store, "a cat in another server", guild_id=11, user_id=2)

    assert await store.forget_user(1) == 1
    await store.purge_user(10, 2, moderator_id=9)
    # mark_done stores the resolved request, prompt included: a changed prompt is reindexed,
    # and an unchanged one is left alone.
    await store.mark_done(rewritten, images=[], request=DrawRequest(prompt="a DOG after drawing"))
    await store.mark_done(kept, images=[], request=DrawRequest(prompt="a cat that stays", seed=5))

    assert await found(store, "cat") == {"a cat that stays"}
    assert await found(store, "ca") == {"a cat that stays"}
    assert await found(store, "dog after") == {"a DOG after drawing"}
    assert await found(store, "before") == set()
    assert await found(store, "cat", guild_id=11) == {"a cat in another server"}
    pending, indexed = pending_and_indexed(db_path)
    assert pending == []
    assert forgotten not in indexed and purged not in indexed
    assert rewritten in indexed and kept in indexed
    integrity_check(db_path)


async def test_jobs_written_by_another_connection_are_found_and_indexed_on_open(
    db_path: Path, tmp_path: Path, window: int
) -> None:
    async with Store(db_path, tmp_path / "data") as store:
        changed = await add(store, "a cat, first version")
        removed = await add(store, "a cat to delete")
    # The sqlite3 shell has no easel_fold: the schema's triggers must not need it.
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO jobs (guild_id, user_id, user_name, prompt, steps, guidance, eta, count, "
            "created_at) VALUES (10, 30, 'ada', 'ＣＡＴ from the shell', 20, 7.5, 0, 1, 0)"
        )
        conn.execute("UPDATE jobs SET prompt = 'a DOG, second version' WHERE id = ?", (changed,))
        conn.execute("DELETE FROM jobs WHERE id = ?", (removed,))
    conn.close()
    pending, _ = pending_and_indexed(db_path)
    assert len(pending) == 2

    store = Store(db_path, tmp_path / "data")
    await store.open()
    try:
        assert await found(store, "cat") == {"ＣＡＴ from the shell"}
        assert await found(store, "dog") == {"a DOG, second version"}
        assert pending_and_indexed(db_path)[0] == []  # indexed when the store opened
        # Jobs written while the store is open are read directly until it next opens.
        with sqlite3.connect(db_path) as conn:
            conn.execute("UPDATE jobs SET prompt = 'Ｆｉｓｈ now' WHERE id = ?", (changed,))
        conn.close()
        assert pending_and_indexed(db_path)[0] == [changed]
        assert await found(store, "fish") == {"Ｆｉｓｈ now"}
        assert await found(store, "fi") == {"Ｆｉｓｈ now"}
        assert await found(store, "dog") == set()
        assert await store.count_history(10, query="fish") == 1
    finally:
        await store.close()
    integrity_check(db_path)


async def test_the_migration_indexes_jobs_that_already_exist(
    db_path: Path, tmp_path: Path, window: int
) -> None:
    # Rows as version 4 wrote them, with SQL: today's Store reads columns schema 4 lacks.
    prompts = ["ＢＩＧ ＣＡＴ", "die Straße", "夜の東京", "猫", "a dog"]
    with sqlite3.connect(db_path) as conn:
        for version, sql in enumerate(sorted(MIGRATIONS_DIR.glob("000[1-4]_*.sql")), start=1):
            conn.executescript(sql.read_text())
            conn.execute(f"PRAGMA user_version = {version}")
        conn.executemany(
            "INSERT INTO jobs (guild_id, channel_id, user_id, user_name, prompt, steps, "
            "guidance, eta, count, created_at) VALUES (10, 20, 30, 'ada', ?, 50, 6, 0, 1, 0)",
            [(p,) for p in prompts],
        )
        ids = [row[0] for row in conn.execute("SELECT id FROM jobs ORDER BY id")]

    async with Store(db_path, tmp_path / "data") as store:
        # 0005 and every migration after it (later issues add their own).
        assert store.applied_migrations == sorted(
            p.name for p in MIGRATIONS_DIR.glob("*.sql") if p.name >= "0005"
        )
        assert pending_and_indexed(db_path) == ([], ids)
        assert await found(store, "cat") == {"ＢＩＧ ＣＡＴ"}
        assert await found(store, "STRASSE") == {"die Straße"}
        assert await found(store, "東京") == {"夜の東京"}
        assert await found(store, "猫") == {"猫"}
        new = await add(store, "another cat")
        assert await found(store, "cat") == {"ＢＩＧ ＣＡＴ", "another cat"}
    assert pending_and_indexed(db_path) == ([], [*ids, new])
    integrity_check(db_path)


async def test_a_search_past_the_window_asks_the_index(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.store, "SEARCH_WINDOW", 3)
    ids = [await add(store, f"{word} number {i}") for i, word in enumerate(["fox", "owl"] * 5)]
    statements: list[str] = []
    db = store._db
    assert db is not None
    await db.set_trace_callback(statements.append)
    rows = await store.history(10, query="fox", limit=4)
    assert [r.id for r in rows] == ids[8::-2][:4]
    assert any("job_search_fts MATCH" in s for s in statements)
    statements.clear()
    # A page the window fills never gets as far as the index.
    assert [r.id for r in await store.history(10, query="number", limit=2)] == ids[:-3:-1]
    assert not any("job_search_fts" in s for s in statements)
    await db.set_trace_callback(None)


async def test_pending_jobs_wait_if_another_connection_is_writing_when_the_store_opens(
    db_path: Path, tmp_path: Path
) -> None:
    async with Store(db_path, tmp_path / "data") as store:
        await add(store, "a cat from the store")
    writer = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer.execute(
            "INSERT INTO jobs (guild_id, user_id, user_name, prompt, steps, guidance, eta, count, "
            "created_at) VALUES (10, 30, 'ada', 'a cat from the shell', 20, 7.5, 0, 1, 0)"
        )
        writer.execute("BEGIN IMMEDIATE")  # holds the write lock
        async with Store(db_path, tmp_path / "data", busy_timeout_ms=50) as store:
            assert await found(store, "cat") == {"a cat from the store", "a cat from the shell"}
        writer.execute("ROLLBACK")
    finally:
        writer.close()
    assert len(pending_and_indexed(db_path)[0]) == 1
