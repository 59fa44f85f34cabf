"""History pages and prompt search at a busy server's size (issue 14), before and after 0005.

For each size it builds a database of that many jobs: the schema up to migration 0004 made by the
Store, then the jobs inserted in one transaction with the plain sqlite3 module. 80% of the jobs are
in one server (the busy one searched here), 10% in each of two others; a few members draw most of
them. Prompts are made of common words (Zipf-like), some with a made-up name, 5% in Japanese,
Korean or Chinese. Ten jobs carry a rare word and ten a rare 2-character Japanese word.

BEFORE: the SQL the store ran until migration 0005, timed directly (a page: the newest 5 matches;
the count: every match). AFTER: the Store with 0005 applied, as /history and /mod history call it
now (a page: 6 jobs, the 6th telling whether a next page exists; the count: stopped at 1001). Each
figure is the median of up to 5 runs, in milliseconds. Databases go to a temporary folder, removed
at the end.

    .venv/bin/python bench/history.py                  # 10k, 300k and 1M jobs (about 4 minutes)
    .venv/bin/python bench/history.py --sizes 10000    # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.store import MIGRATIONS_DIR, Store
from pipeline.request import DrawRequest

PAGE = 5
COUNT_CAP = 1000
BUSY_GUILD = 1
RARE_WORD = "quokka"
RARE_CJK = "富士"

# One string for the eye; split into words.
WORDS = """a an the of in on with and at by from cat dog fox owl horse dragon robot girl boy
woman man castle forest city street mountain river lake ocean beach sunset sunrise night
moon stars sky clouds rain snow winter summer autumn spring flowers garden tree trees house
village cottage tower bridge ship boat portrait landscape painting photo photograph
illustration drawing sketch watercolor oil digital art concept anime manga cartoon pixel 3d
render realistic hyperrealistic cinematic lighting dramatic soft golden hour neon cyberpunk
steampunk fantasy sci-fi futuristic medieval ancient ruins temple shrine japanese chinese
korean french italian style by artstation trending detailed intricate highly beautiful cute
small large red blue green yellow purple orange pink black white grey colorful vibrant dark
light bright misty foggy glowing magic wizard witch knight warrior princess king queen elf
fairy astronaut space planet galaxy nebula spaceship alien monster creature kitten puppy
bird birds eagle wolf bear lion tiger deer rabbit fish whale octopus butterfly bee mushroom
coffee cup tea book books library room kitchen bedroom window table chair lamp candle fire
smoke water ice crystal gold silver glass wooden stone metal paper origami sculpture statue
mask helmet armor sword shield car train bicycle motorcycle airplane balloon umbrella hat
dress coat shoes flower rose sunflower lotus bamboo cherry blossom sakura lantern festival
market cafe restaurant rooftop alley subway 8k 4k hd uhd masterpiece best quality sharp
focus bokeh depth field wide angle close-up macro octane unreal engine volumetric rim studio
ghibli pixar van gogh monet rembrandt picasso""".split()  # noqa: SIM905
WEIGHTS = [1 / (rank + 1) ** 0.9 for rank in range(len(WORDS))]
CJK = ["猫", "犬", "東京", "夜景", "桜", "山", "海", "少女", "ドラゴン", "城", "森", "雨", "星空"]
CJK += ["ラーメン", "침대", "고양이", "风景", "油画"]

# (label, member or None for the whole server, query or None)
CASES: list[tuple[str, bool, str | None]] = [
    ("/mod history, no query", False, None),
    ("/history (the busiest member), no query", True, None),
    ("search: common word 'cat'", False, "cat"),
    ("search: phrase 'golden hour'", False, "golden hour"),
    (f"search: rare word '{RARE_WORD}' (10 jobs)", False, RARE_WORD),
    ("search: no match 'zyzzyva'", False, "zyzzyva"),
    ("/history search: 'golden hour', busiest member", True, "golden hour"),
    ("search: 2 characters 'ca'", False, "ca"),
    ("search: 2 characters '東京'", False, "東京"),
    (f"search: 2 characters '{RARE_CJK}' (10 jobs)", False, RARE_CJK),
    ("search: 1 character '猫'", False, "猫"),
]


def prompt(rng: random.Random) -> str:
    words = rng.choices(WORDS, weights=WEIGHTS, k=rng.randint(4, 18))
    roll = rng.random()
    if roll < 0.05:
        return "".join(rng.choices(CJK, k=rng.randint(1, 3))) + " " + " ".join(words[:4])
    if roll < 0.35:  # a made-up name
        name = "".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(3))
        words.insert(rng.randrange(len(words)), name)
    text = " ".join(words)
    if rng.random() < 0.3:
        text = text.capitalize()
    if rng.random() < 0.2:
        text += ", " + ", ".join(rng.choices(WORDS, weights=WEIGHTS, k=3))
    return text


def rows(n: int, seed: int) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    rare = {n * (k + 1) // 11 for k in range(10)}
    rare_cjk = {n * (k + 1) // 11 + 1 for k in range(10)}
    for job_id in range(1, n + 1):
        guild = rng.choice([BUSY_GUILD] * 8 + [2, 3])
        user = guild * 1000 + min(int(rng.paretovariate(1.2)), 300)
        text = prompt(rng)
        if job_id in rare:
            text += f" with a {RARE_WORD}"
        if job_id in rare_cjk:
            text = f"{RARE_CJK}山と{text}"
        yield (job_id, guild, 5, user, f"user{user}", text, 1_700_000_000.0 + job_id)


def build(path: Path, n: int, old_migrations: Path) -> None:
    async def schema() -> None:
        async with Store(path, path.parent / "data", migrations_dir=old_migrations):
            pass

    asyncio.run(schema())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (id, guild_id, channel_id, user_id, user_name, prompt, steps, guidance, "
        "eta, sampler, count, status, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, 20, 7.5, 0, 'pndm', 1, 'done', ?)",
        rows(n, seed=n),
    )
    conn.execute("COMMIT")
    conn.close()


async def median_ms(run: Callable[[], Awaitable[Any]]) -> float:
    times: list[float] = []
    while len(times) < 5 and sum(times) < 1.0:
        start = time.perf_counter()
        await run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def timings(store: Store, member: int, *, new: bool) -> dict[str, tuple[float, float]]:
    """(page, count) in ms for each case, the way the bot asked before 0005 or asks now."""
    results = {}
    for label, one_member, query in CASES:
        user = member if one_member else None
        page = functools.partial(
            store.history, BUSY_GUILD, user_id=user, query=query, limit=PAGE + 1 if new else PAGE
        )
        count = functools.partial(
            store.count_history,
            BUSY_GUILD,
            user_id=user,
            query=query,
            **({"at_most": COUNT_CAP + 1} if new else {}),
        )
        results[label] = (await median_ms(page), await median_ms(count))
    return results


async def add_job_ms(store: Store, jobs: int = 50) -> float:
    """Median time to record one job (its own transaction, fsynced: synchronous=FULL)."""
    times = []
    for i in range(jobs):
        start = time.perf_counter()
        await store.add_job(
            DrawRequest(prompt=f"a red fox number {i}"),
            guild_id=BUSY_GUILD,
            channel_id=5,
            user_id=BUSY_GUILD * 1000 + 1,
            user_name="bench",
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(n: int, folder: Path) -> dict[str, Any]:
    old_migrations = folder / "migrations-0004"
    if not old_migrations.exists():
        old_migrations.mkdir()
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if int(path.name[:4]) <= 4:
                shutil.copy(path, old_migrations)
    path = folder / f"history-{n}.sqlite"
    start = time.perf_counter()
    build(path, n, old_migrations)
    built_s = time.perf_counter() - start
    size_before = path.stat().st_size
    conn = sqlite3.connect(path)
    # The member with the most jobs in the busy server (about 45% of them).
    (member,) = conn.execute(
        "SELECT user_id FROM jobs WHERE guild_id = ? GROUP BY user_id ORDER BY count(*) DESC "
        "LIMIT 1",
        (BUSY_GUILD,),
    ).fetchone()
    conn.close()

    async def run() -> tuple[dict[str, Any], dict[str, Any], float, float, float]:
        # Before: the store on the 0004 schema runs the SQL it ran before 0005.
        async with Store(path, folder / "data", migrations_dir=old_migrations) as store:
            old = await timings(store, member, new=False)
            add_before = await add_job_ms(store)
        start = time.perf_counter()
        async with Store(path, folder / "data") as store:
            migrate_s = time.perf_counter() - start
            new = await timings(store, member, new=True)
            add_after = await add_job_ms(store)
        return old, new, migrate_s, add_before, add_after

    old, results, migrate_s, add_before, add_after = asyncio.run(run())
    size_after = path.stat().st_size
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {
        "old": old,
        "new": results,
        "built_s": built_s,
        "migrate_s": migrate_s,
        "mb_before": size_before / 2**20,
        "mb_after": size_after / 2**20,
        "add": (add_before, add_after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 300_000, 1_000_000], help="jobs"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="easel-bench-history-") as tmp:
        folder = Path(tmp)
        measured = {}
        for n in args.sizes:
            print(f"building {n:,} jobs ...", file=sys.stderr, flush=True)
            measured[n] = measure(n, folder)
            m = measured[n]
            print(
                f"  built in {m['built_s']:.1f} s ({m['mb_before']:.0f} MB); "
                f"migration 0005 took {m['migrate_s']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    sizes = [f"{n:,} jobs" for n in args.sizes]
    lines = [(f"{label}, {part}", index) for label, _, _ in CASES for index, part in PARTS]
    width = max(_width(line) for line, _ in lines) + 2
    header = _pad("ms: before -> after", width) + "".join(f"{s:>22}" for s in sizes)
    print(header)
    print("-" * len(header))
    for (line, index), (label, _, _) in zip(lines, [c for c in CASES for _ in PARTS], strict=True):
        cells = []
        for n in args.sizes:
            old, new = measured[n]["old"][label][index], measured[n]["new"][label][index]
            cells.append(f"{old:9.1f} -> {new:7.1f}")
        print(_pad(line, width) + "".join(f"{c:>22}" for c in cells))
    rows = [
        ("add_job, committed (FULL sync)", [_arrow(*measured[n]["add"]) for n in args.sizes]),
        (
            "migration 0005 (index existing jobs)",
            [f"{measured[n]['migrate_s']:.1f} s" for n in args.sizes],
        ),
        (
            "database file, MB",
            [
                f"{measured[n]['mb_before']:.0f} -> {measured[n]['mb_after']:.0f}"
                for n in args.sizes
            ],
        ),
    ]
    for line, cells in rows:
        print(_pad(line, width) + "".join(f"{c:>22}" for c in cells))
    print(
        f"\nBEFORE: a page is the newest {PAGE}, the count counts every match. AFTER: a page is "
        f"{PAGE + 1} jobs (the last says whether there is a next page), the count stops at "
        f"{COUNT_CAP + 1}; the bot counts only when a first page has a next one."
    )


PARTS = ((0, "page"), (1, "count"))


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def _arrow(before: float, after: float) -> str:
    return f"{before:9.1f} -> {after:7.1f}"


if __name__ == "__main__":
    main()
