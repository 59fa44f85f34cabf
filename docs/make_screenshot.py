"""Regenerate docs/preview.png: the offline preview after a /draw, shot by headless Chromium.

    .venv/bin/python docs/make_screenshot.py        # needs Debian's `chromium` on PATH

Starts the preview on a throwaway database with the built-in tiny:shapes model, runs /draw as the
member through the page's HTTP API, waits for the picture, then screenshots the page as a browser
would show it.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.preview import PreviewPage, PreviewSession, serve_preview  # noqa: E402
from bot.settings import Settings  # noqa: E402

OUTPUT = ROOT / "docs" / "preview.png"


async def shoot(session: PreviewSession, chromium: str, profile: str) -> None:
    async with aiohttp.ClientSession() as http:
        page = await PreviewPage(http, session.url).open(session.world.member)
        receipt = await page.run_command(
            "draw",
            prompt="a large yellow star in the centre, blue background",
            seed=7,
            steps=20,
            count=2,
        )
        if receipt["rejected"]:
            raise SystemExit(f"/draw was rejected: {receipt['diagnostics']}")
        await session.bot.executor.wait_idle()
        await page.wait_for(lambda p: any(m["attachments"] for m in p.messages()))
    proc = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1200,900",
        # Lets the page's scripts fetch the state and render before the shot is taken.
        "--virtual-time-budget=8000",
        f"--screenshot={OUTPUT}",
        session.url,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"chromium failed ({proc.returncode}): {err.decode()[-2000:]}")


async def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            model="tiny:shapes",
            db_path=Path(tmp) / "preview.sqlite3",
            data_dir=Path(tmp) / "preview",
            device="cpu",
        )
        profile = str(Path(tmp) / "chromium")
        ready: asyncio.Future[PreviewSession] = asyncio.get_running_loop().create_future()
        # serve_preview keeps serving the page in its own task while the browser loads it.
        server = asyncio.create_task(serve_preview(settings, port=0, on_ready=ready.set_result))
        await asyncio.wait({ready, server}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            server.result()  # raises why the preview could not start
        session = ready.result()
        try:
            await shoot(session, chromium, profile)
        finally:
            await session.preview.close()
            await server
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
