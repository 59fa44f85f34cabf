"""Issue 13 below the Discord layer: job numbers, files and deliveries in the store (a real
SQLite file), a worker that dies inside a batch (the real tiny engine), and banned words."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store import MIGRATIONS_DIR, PNG_SIGNATURE, Store
from bot.wordfilter import find_banned, parse_pattern
from pipeline.executor import Executor, JobOutcome
from pipeline.request import DrawRequest


def png(payload: bytes) -> bytes:
    return PNG_SIGNATURE + payload


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "easel.sqlite", tmp_path / "data") as s:
        yield s


async def add(store: Store, user_id: int = 30, prompt: str = "a cat", **kw: object) -> int:
    return await store.add_job(
        DrawRequest(prompt=prompt),
        guild_id=kw.pop("guild_id", 10),  # type: ignore[arg-type]
        channel_id=20,
        user_id=user_id,
        user_name="ada",
        **kw,  # type: ignore[arg-type]
    )


# -- job numbers ---------------------------------------------------------------------------


async def test_job_numbers_are_never_reused_after_forget_or_purge(store: Store) -> None:
    assert [await add(store), await add(store), await add(store)] == [1, 2, 3]
    await store.forget_user(30)  # the newest rows go
    assert await add(store, user_id=31) == 4
    await store.purge_user(10, 31, moderator_id=1)
    assert await add(store, user_id=32) == 5


async def test_the_migration_keeps_jobs_and_their_numbers(tmp_path: Path) -> None:
    """A database written by the previous version (schema 3) is rebuilt with its rows, images,
    parent links and indexes, and continues numbering after its highest job."""
    # Written with SQL as version 3 wrote it: today's Store reads columns schema 3 lacks.
    db = tmp_path / "old.sqlite"
    image = tmp_path / "data" / "images" / "one.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(png(b"one"))
    path = image
    first, child, third = 1, 2, 3
    with sqlite3.connect(db) as conn:
        for version, sql in enumerate(sorted(MIGRATIONS_DIR.glob("000[123]_*.sql")), start=1):
            conn.executescript(sql.read_text())
            conn.execute(f"PRAGMA user_version = {version}")
        columns = "user_id, user_name, prompt, steps, guidance, eta, count, created_at, guild_id"
        for job_id, parent in ((first, None), (child, first), (third, None)):
            conn.execute(
                f"INSERT INTO jobs (id, parent_job_id, {columns}) "
                "VALUES (?, ?, 30, 'ada', 'a cat', 50, 6, 0, 1, 0, 10)",
                (job_id, parent),
            )
        conn.execute("UPDATE jobs SET status = 'done', attempts = 1 WHERE id = ?", (child,))
        conn.execute(
            "INSERT INTO job_images (job_id, idx, path, seed) VALUES (?, 0, 'images/one.png', 7)",
            (child,),
        )
        conn.execute("DELETE FROM jobs WHERE id = ?", (third,))  # the newest was deleted
    async with Store(db, tmp_path / "data") as s:
        record = await s.get_job(child)
        assert record is not None and record.parent_job_id == first
        assert record.images == [(path, 7)] and record.status == "done"
        # SQLite only knows the highest number still in the table; later deletions never
        # give a number back.
        new = await add(s)
        assert new == third
        await s.forget_user(30)
        assert await add(s, user_id=5) == new + 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 0  # a fresh connection
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"jobs_guild_id", "jobs_unfinished", "jobs_parent"} <= indexes


# -- files and deliveries ------------------------------------------------------------------


async def test_a_file_saved_for_a_job_in_flight_survives_a_forget_of_the_same_bytes(
    store: Store,
) -> None:
    data = png(b"the same picture")
    mine = await add(store, user_id=1)
    path = await store.save_image(data)
    await store.mark_running(mine)
    await store.mark_done(mine, images=[(path, 1)])
    # Another user's job drew the identical picture; its file is saved, the row not yet.
    theirs = await add(store, user_id=2)
    await store.mark_running(theirs)
    again = await store.save_image(data)
    assert again == path
    await store.forget_user(1)  # the only committed reference goes
    assert path.is_file()
    await store.mark_done(theirs, images=[(again, 2)])
    await store.forget_user(2)
    assert not path.exists()


async def test_files_are_deleted_outside_the_database_lock(store: Store, monkeypatch) -> None:
    job = await add(store, user_id=1)
    path = await store.save_image(png(b"x"))
    await store.mark_running(job)
    await store.mark_done(job, images=[(path, 1)])
    unlinking, release = threading.Event(), threading.Event()
    real = store._unlink_images

    def slow_unlink(paths):  # a slow disk: thousands of files
        unlinking.set()
        release.wait(120)
        real(paths)

    monkeypatch.setattr(store, "_unlink_images", slow_unlink)
    forgetting = asyncio.create_task(store.forget_user(1))
    await asyncio.to_thread(unlinking.wait, 120)
    # While the files are being deleted the connection is free, and the database answers:
    # these calls finish before the deletion is released (no timing asserted).
    assert not store._lock.locked()
    other = await add(store, user_id=2)
    assert (await store.get_job(other)) is not None
    assert not release.is_set() and not forgetting.done()
    release.set()
    assert await forgetting == 1
    assert not path.exists()


async def test_a_given_up_delivery_is_not_offered_again(store: Store) -> None:
    job = await add(store)
    await store.mark_running(job)
    await store.mark_done(job, images=[(await store.save_image(png(b"y")), 1)])
    assert [r.id for r in await store.undelivered_jobs()] == [job]
    await store.mark_undeliverable(job, "channel 20 is gone; DM refused: 403 50007")
    assert await store.undelivered_jobs() == []
    assert (await store.get_job(job)).delivery_failed.startswith("channel 20 is gone")


async def test_settings_and_banned_words_are_served_from_memory(store: Store, tmp_path) -> None:
    from bot.store import GuildSettings

    await store.add_banned_word(10, "gore", 1)
    await store.set_guild_settings(10, GuildSettings(max_steps=5), 1)
    async with store._lock:  # the connection is busy: the cached answers don't wait for it
        assert await asyncio.wait_for(store.banned_words(10), 30) == ["gore"]
        assert (await asyncio.wait_for(store.guild_settings(10), 30)).max_steps == 5
        assert await asyncio.wait_for(store.banned_words(11), 30) == []
    await store.remove_banned_word(10, "gore")
    assert await store.banned_words(10) == []
    await store.close()
    async with Store(store.db_path, tmp_path / "data") as again:  # loaded at open
        assert (await again.guild_settings(10)).max_steps == 5


# -- the worker thread ---------------------------------------------------------------------


class WorkerKilled(BaseException):
    """Stands in for what kills a thread outright (not an Exception the batch handler takes)."""


async def test_a_worker_that_dies_inside_a_batch_fails_each_job_once(sd_engine) -> None:
    # Fault injection on the real engine: its third step raises something the batch's own
    # error handling does not catch, as a bug in the worker would.
    class DiesMidway:
        capabilities = sd_engine.capabilities

        def __init__(self) -> None:
            self.broken = True

        def resolve(self, request):
            return sd_engine.resolve(request)

        def run_batch(self, requests, on_step=None):
            def step(i: int, total: int) -> None:
                if self.broken and i == 2:
                    self.broken = False
                    raise WorkerKilled
                if on_step is not None:
                    on_step(i, total)

            return sd_engine.run_batch(requests, on_step=step)

    ex = Executor(DiesMidway(), max_batch=4, max_per_user=2)
    outcomes: list[JobOutcome] = []

    async def on_done(outcome: JobOutcome) -> None:
        outcomes.append(outcome)

    def request(seed: int) -> DrawRequest:
        return DrawRequest("a cat", steps=4, seed=seed, sampler="pndm", guidance=6)

    ex.pause()
    batch = [ex.submit(request(i), user_id=i, on_done=on_done) for i in (1, 2, 3)]
    ex.resume()
    await ex.wait_idle()
    assert sorted(o.ticket for o in outcomes) == batch  # each exactly once
    assert {o.status for o in outcomes} == {"failed"}
    assert ex.pending() == 0  # nothing stuck against the caps
    assert not ex.cancel(batch[0])  # no KeyError: it is simply over
    # The restarted worker serves the next jobs, up to the cap again.
    more = [ex.submit(request(9), user_id=1, on_done=on_done) for _ in range(2)]
    await ex.wait_idle()
    assert [o.status for o in outcomes if o.ticket in more] == ["done", "done"]
    ex.close()


async def test_a_restarted_worker_is_the_only_worker(sd_engine, monkeypatch) -> None:
    # A submit() racing the dying worker's replacement used to start a second worker, and two
    # batches then drew on the same pipeline at once (each other's sampler, failed pictures).
    # Starting a thread is slowed so the race happens every time instead of once in a while.
    import pipeline.executor as executor_module

    class SlowToStart(threading.Thread):
        def start(self) -> None:
            threading.Event().wait(0.3)
            super().start()

    slowed = types.SimpleNamespace(**{**vars(threading), "Thread": SlowToStart})
    monkeypatch.setattr(executor_module, "threading", slowed)
    inside, overlaps = 0, 0
    count = threading.Lock()

    class DiesOnce:
        capabilities = sd_engine.capabilities
        broken = True

        def resolve(self, request):
            return sd_engine.resolve(request)

        def run_batch(self, requests, on_step=None):
            nonlocal inside, overlaps
            if self.broken:
                self.broken = False
                raise WorkerKilled
            with count:
                inside += 1
                overlaps += inside > 1
            try:
                threading.Event().wait(0.2)  # long enough for a second worker to join in
                return sd_engine.run_batch(requests, on_step=on_step)
            finally:
                with count:
                    inside -= 1

    ex = Executor(DiesOnce(), max_batch=1)
    outcomes: list[JobOutcome] = []
    first_failed = asyncio.Event()

    async def on_done(outcome: JobOutcome) -> None:
        outcomes.append(outcome)
        first_failed.set()

    req = DrawRequest("a cat", steps=2, seed=1, sampler="pndm", guidance=6)
    try:
        ex.submit(req, user_id=1, on_done=on_done)
        await asyncio.wait_for(first_failed.wait(), 60)
        # The old worker is now between failing its batch and starting its replacement.
        later = [ex.submit(req, user_id=u, on_done=on_done) for u in (2, 3, 4)]
        await ex.wait_idle()
        workers = [t for t in threading.enumerate() if t.name == "easel-gpu" and t.is_alive()]
        assert len(workers) == 1
        assert overlaps == 0
        assert [o.status for o in outcomes if o.ticket in later] == ["done"] * 3
    finally:
        ex.close()


async def test_a_paused_group_waits_while_others_run(sd_engine) -> None:
    ex = Executor(sd_engine, max_batch=1)
    done: list[int] = []

    async def on_done(outcome: JobOutcome) -> None:
        done.append(outcome.ticket)

    ex.pause_group(100)
    req = DrawRequest("a cat", steps=2, seed=1, sampler="pndm", guidance=6)
    held = ex.submit(req, user_id=1, group=100, on_done=on_done)
    mine_elsewhere = ex.submit(req, user_id=1, group=200, on_done=on_done)  # same user
    other = ex.submit(req, user_id=2, group=None, on_done=on_done)
    try:
        for _ in range(2400):  # up to 2 minutes on a loaded machine; usually well under 1 s
            if len(done) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(done) == sorted([mine_elsewhere, other])
        assert ex.position(held) == 1 and ex.pending(group=100) == 1
        ex.resume_group(100)
        await ex.wait_idle()
        assert done[-1] == held
    finally:
        ex.close()


async def test_the_start_hook_runs_before_each_batch_draws(sd_engine) -> None:
    order: list[str] = []

    class Spy:
        capabilities = sd_engine.capabilities

        def resolve(self, request):
            return sd_engine.resolve(request)

        def run_batch(self, requests, on_step=None):
            order.append("draw")
            return sd_engine.run_batch(requests, on_step=on_step)

    ex = Executor(Spy(), on_start=lambda tickets: order.append(f"start {tickets}"))
    ticket = ex.submit(DrawRequest("a cat", steps=2, seed=1, sampler="pndm"), user_id=1)
    await ex.wait_idle()
    assert order == [f"start [{ticket}]", "draw"]
    ex.close()


# -- banned words --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "banned", "caught"),
    [
        ("a s.q.u.i.r.r.e.l", ["squirrel"], "squirrel"),
        ("A S Q U I R R E L", ["squirrel"], "squirrel"),
        ("i saw a n s f w pic", ["nsfw"], "nsfw"),
        ("a classic class", ["ass"], None),  # plain words are whole words
        ("catalogue of cats", ["cat*"], "cat*"),
        ("a concatenation", ["cat*"], None),
        ("a hotdog stand", ["*dog"], "*dog"),
        ("dogma", ["*dog"], None),
        ("popcorn", ["*orn*"], "*orn*"),
        ("a bad  word here", ["bad word"], "bad word"),
        ("ｃａｔｓ", ["cat*"], "cat*"),
    ],
)
def test_banned_words_follow_automod_syntax_and_spelled_out_runs(text, banned, caught) -> None:
    assert find_banned(text, banned) == caught


def test_patterns_are_stored_as_entered_in_automod_syntax() -> None:
    assert parse_pattern("Cat*") == "cat*"
    assert parse_pattern("*N.S.F.W*") == "*nsfw*"
    assert parse_pattern("  *dog ") == "*dog"
    assert parse_pattern("Gore Fest") == "gore fest"
    assert parse_pattern("***") is None
