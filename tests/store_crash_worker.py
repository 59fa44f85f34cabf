"""Helper for the store's crash test: writes jobs forever until killed with SIGKILL.

Usage: ``python tests/store_crash_worker.py DB_PATH DATA_DIR SEED``

Before each store call it prints ``begin <op> <id-or-tag>``, and once the call has returned (the
commit is acknowledged) ``ack <op> <id> [<tag>]``. Lines are flushed one by one, so the test
knows every acknowledged commit and the single operation that may have been in flight.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.store import PNG_SIGNATURE, Store
from pipeline.request import DrawRequest


def say(*words: object) -> None:
    print(*words, flush=True)


async def main(db_path: str, data_dir: str, seed: int) -> None:
    rng = random.Random(seed)
    store = Store(db_path, data_dir)
    await store.open()
    say("ready")
    active: dict[int, str] = {}  # job id -> status, for jobs still queued or running
    n = 0
    while True:
        if not active or (len(active) < 8 and rng.random() < 0.4):
            n += 1
            tag = f"w{seed}-job{n}"
            say("begin", "add", tag)
            job_id = await store.add_job(
                DrawRequest(prompt=f"{tag} a lighthouse at dusk", seed=rng.randrange(2**32)),
                guild_id=1,
                channel_id=2,
                user_id=rng.randrange(1, 4),
                user_name="crash",
            )
            active[job_id] = "queued"
            say("ack", "add", job_id, tag)
            continue
        job_id = rng.choice(sorted(active))
        if active[job_id] == "queued" and rng.random() < 0.6:
            op = "running"
        else:
            op = rng.choice(["done", "done", "failed", "cancelled"])
        say("begin", op, job_id)
        if op == "running":
            await store.mark_running(job_id)
            active[job_id] = "running"
        elif op == "done":
            path = await store.save_image(PNG_SIGNATURE + rng.randbytes(64))
            await store.mark_done(job_id, images=[(path, 7)])
        elif op == "failed":
            await store.mark_failed(job_id, "out of memory")
        else:
            await store.mark_cancelled(job_id)
        if op != "running":
            del active[job_id]
        say("ack", op, job_id)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
