"""The offline preview: `python -m bot` without a token serves the real bot in a local page.

The page is driven through its HTTP API the way its own scripts do (protocol 3), so these tests
see what a person in the browser sees, including results that arrive after the action settled.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from bot.__main__ import NO_TOKEN, choose, main
from bot.preview import (
    BOT_NAME,
    FOLLOW_INTERVAL,
    MAX_CLOCK_LAG,
    PREVIEW_MODEL,
    PREVIEW_UPSCALER,
    PreviewError,
    PreviewPage,
    PreviewSession,
    SimulatedClock,
    describe,
    keep_time,
    pick_port,
    serve_preview,
)
from bot.settings import Settings
from pipeline.pngmeta import read_parameters

pytest.importorskip("linkify_it", reason="needs the simcord[preview] extra")

ROOT = Path(__file__).resolve().parent.parent

# -- choosing what `python -m bot` does -----------------------------------------------------


def settings_from(environ: dict[str, str]) -> Settings:
    return Settings.from_env(environ, dotenv=None)


def test_no_token_means_the_preview_with_the_tiny_model_and_its_own_database():
    mode, s = choose(None, settings_from({}), {})
    assert mode == "preview"
    assert s.model == PREVIEW_MODEL == "tiny:shapes"
    assert s.upscaler == PREVIEW_UPSCALER == "tiny:shapes-x4"  # its trained 4x companion
    assert s.db_path == Path("data/preview.sqlite3") and s.data_dir == Path("data/preview")
    assert s.discord_token is None


def test_the_preview_keeps_several_models_that_were_set():
    environ = {"MODELS": "shapes=tiny:shapes,sd=tiny:sd", "DEFAULT_MODEL": "sd"}
    mode, s = choose(None, settings_from(environ), environ)
    assert mode == "preview"
    assert [m.name for m in s.model_specs()] == ["shapes", "sd"]
    assert s.default_model_name == "sd"


def test_the_preview_keeps_a_model_and_paths_that_were_set():
    environ = {
        "MODEL": "/m/ldm",
        "DB_PATH": "/srv/p.db",
        "DATA_DIR": "/srv/p",
        "MAX_BATCH": "2",
    }
    mode, s = choose(None, settings_from(environ), environ)
    assert mode == "preview"
    assert (s.model, s.db_path, s.data_dir, s.max_batch) == (
        "/m/ldm",
        Path("/srv/p.db"),
        Path("/srv/p"),
        2,
    )


def test_a_token_means_discord_unless_the_preview_is_asked_for():
    environ = {"DISCORD_TOKEN": "t0ken", "DEV_GUILD_ID": "42"}
    real = settings_from(environ)
    assert choose(None, real, environ) == ("run", real)
    assert choose("run", real, environ) == ("run", real)
    assert choose("sync", real, environ) == ("sync", real)
    mode, s = choose("preview", real, environ)
    assert mode == "preview" and s.model == "tiny:shapes"
    # Neither the token nor a dev guild may leak into the simulated Discord.
    assert s.discord_token is None and s.dev_guild_id is None


@pytest.mark.parametrize("command", ["run", "sync"])
def test_run_or_sync_without_a_token_is_refused(command):
    assert choose(command, settings_from({}), {})[0] == "no-token"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A checkout with no .env and no Easel variables; main() leaves global logging alone."""
    monkeypatch.chdir(tmp_path)
    for name in ("DISCORD_TOKEN", "MODEL", "DB_PATH", "DATA_DIR", "DEV_GUILD_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("bot.app.configure_logging", lambda settings: None)
    discord_logger = logging.getLogger("discord")
    level = discord_logger.level
    yield
    discord_logger.setLevel(level)


def test_main_without_a_token_serves_the_preview(cli_env, monkeypatch, capsys):
    calls = []

    async def fake_serve(settings, *, port, on_ready):
        calls.append((settings, port))

    monkeypatch.setattr("bot.preview.serve_preview", fake_serve)
    assert main([]) == 0
    assert main(["preview", "--port", "0"]) == 0
    assert [(s.model, port) for s, port in calls] == [("tiny:shapes", None), ("tiny:shapes", 0)]
    assert main(["run"]) == 2
    assert NO_TOKEN in capsys.readouterr().err


def test_help_mentions_the_preview_and_its_port():
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "preview" in done.stdout and "DISCORD_TOKEN" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "bot", "preview", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "--port" in done.stdout and "tiny:shapes" in done.stdout


def test_a_taken_port_is_refused_before_the_model_loads_unless_it_was_the_default(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PreviewError, match=f"port {port} is already in use"):
            pick_port(port)
        monkeypatch.setattr("bot.preview.DEFAULT_PORT", port)
        assert pick_port(None) == 0  # `make run` falls back to any free port
    assert pick_port(0) == 0


# -- the page, served ---------------------------------------------------------------------------


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[PreviewSession]:
    """Run serve_preview as a background task of this test, as `python -m bot` would.

    Not a fixture: SimCord's context must be entered and left by the same task.
    """
    ready: asyncio.Future[PreviewSession] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_preview(settings, port=0, on_ready=ready.set_result))
    try:
        done, _ = await asyncio.wait({ready, task}, timeout=60, return_when="FIRST_COMPLETED")
        if task in done:
            task.result()  # raises what stopped it
        assert ready.done(), "the preview did not start in 60 s"
        session = ready.result()
        yield session
        await session.preview.close()  # what "End preview session" in the page does
        await asyncio.wait_for(task, 30)
        assert not session.bot.store.is_open
    finally:
        if not task.done():
            task.cancel()  # what Ctrl-C does
            await asyncio.gather(task, return_exceptions=True)


def cards(page: PreviewPage) -> list[dict]:
    """The messages with a picture, oldest first."""
    return [m for m in page.messages() if m["embeds"] and m["attachments"]]


async def png_of(page: PreviewPage, card: dict) -> bytes:
    """The picture as the page's download link gives it: the bot's own bytes."""
    asset = f"/api/assets/{card['attachments'][0]['asset_id']}"
    shown = await page.get(asset)  # re-encoded for display: SimCord strips metadata
    assert shown.startswith(b"\x89PNG\r\n\x1a\n")
    data = await page.get(asset + "?download=1")
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


async def test_the_page_draws_and_rerolls_with_the_real_bot(preview_settings):
    async with served(preview_settings) as session, aiohttp.ClientSession() as http:
        bot, world = session.bot, session.world
        base = session.url.split("/#")[0]
        assert session.url.startswith("http://127.0.0.1:")
        async with http.get(base + "/") as r:  # the page itself needs no capability
            assert r.status == 200 and "text/html" in r.content_type
        async with http.get(base + "/api/state", headers={"X-Simcord-Capability": "x"}) as r:
            assert r.status == 401

        mod = await PreviewPage(http, session.url).open(world.moderator)
        mod_commands = {e["invocation"] for e in (await mod.get("/api/commands"))["entries"]}
        assert {"draw", "mod history"} <= mod_commands
        alice = await PreviewPage(http, session.url).open(world.member)
        alice_commands = {e["invocation"] for e in (await alice.get("/api/commands"))["entries"]}
        assert "draw" in alice_commands and "mod history" not in alice_commands

        receipt = await alice.run_command("draw", prompt="a lighthouse at dusk", seed=7)
        assert not receipt["rejected"] and receipt["settlement"] == "settled", receipt
        # The drawing finishes on the GPU thread after the action settled; the page only shows
        # it because the preview republishes on the bot's own work. Poll like the page does.
        await bot.executor.wait_idle()
        await alice.wait_for(lambda p: len(cards(p)) == 1)
        (card,) = cards(alice)
        embed = card["embeds"][0]
        assert embed["description"] == "a lighthouse at dusk"
        assert {f["name"]: f["value"] for f in embed["fields"]}["Seed"] == "7"
        labels = [c["label"] for row in card["components"] for c in row["components"]]
        assert labels == ["Reroll", "Delete", "Remix", "V1", "U1"]
        params = read_parameters(await png_of(alice, card)) or ""
        assert params.startswith("a lighthouse at dusk\n") and "Seed: 7" in params

        receipt = await alice.click(card, "Reroll")
        assert not receipt["rejected"], receipt
        await bot.executor.wait_idle()
        await alice.wait_for(lambda p: len(cards(p)) == 2)
        second = cards(alice)[1]
        assert second["embeds"][0]["footer"]["text"] == "Job #2"
        params = read_parameters(await png_of(alice, second)) or ""
        assert params.startswith("a lighthouse at dusk\n") and "Seed: 7," not in params
        record = await bot.store.get_job(2)
        assert record.status == "done" and record.parent_job_id == 1


async def test_a_second_start_on_the_same_database_still_offers_the_commands(preview_settings):
    # setup_hook syncs only when the command set changed since the last start; each preview is
    # a fresh simulated Discord, so the preview must sync anyway.
    for _ in range(2):
        async with served(preview_settings) as session, aiohttp.ClientSession() as http:
            page = await PreviewPage(http, session.url).open(session.world.member)
            entries = (await page.get("/api/commands"))["entries"]
            assert "draw" in [e["invocation"] for e in entries]


# -- what a person sees: the bot's name, the model's own example, one clock ----------------------


@pytest.fixture
def shapes_preview(preview_settings: Settings) -> Settings:
    """The preview as `make run` serves it: the built-in shapes model."""
    return replace(preview_settings, model=PREVIEW_MODEL, default_steps=2)


async def test_the_bot_is_called_easel_on_the_page(shapes_preview):
    async with served(shapes_preview) as session, aiohttp.ClientSession() as http:
        assert session.bot.user.name == BOT_NAME == "Easel"
        assert f"bot {BOT_NAME}." in describe(session)
        page = await PreviewPage(http, session.url).open(session.world.member)
        receipt = await page.run_command("draw", prompt="a large red circle in the centre")
        assert not receipt["rejected"], receipt
        await session.bot.executor.wait_idle()
        await page.wait_for(lambda p: len(cards(p)) == 1)
        authors = {m["author"]["name"] for m in page.messages()}
        assert authors == {"Easel"}


async def test_the_prompt_hint_is_an_example_of_the_loaded_model(shapes_preview):
    async with served(shapes_preview) as session, aiohttp.ClientSession() as http:
        example = session.bot.models.capabilities().example_prompts[0]
        assert example == "a large red circle in the centre, white background"
        page = await PreviewPage(http, session.url).open(session.world.member)
        catalog = await page.get("/api/commands")
        entry = next(e for e in catalog["entries"] if e["invocation"] == "draw")
        (prompt,) = [o for o in entry["options"] if o["name"] == "prompt"]
        # What the composer shows beside the prompt field while it is being typed.
        assert prompt["description"] == f"What to draw, e.g. {example}"
        assert "squirrel" not in str(entry)
        assert f"try “{example}”" in describe(session)


def listings(page: PreviewPage) -> list[str]:
    """The embed texts on the page that show a time ("<t:…:R>")."""
    texts = [e.get("description") or "" for m in page.messages() for e in m["embeds"]]
    return [t for t in texts if "<t:" in t]


def unix_of(text: str) -> int:
    match = re.search(r"<t:(\d+):R>", text)
    assert match, text
    return int(match.group(1))


async def test_history_times_are_told_against_the_clock_the_page_shows(shapes_preview):
    real_start = time.time()
    async with served(shapes_preview) as session, aiohttp.ClientSession() as http:
        env, bot = session.env, session.bot
        # The simulated clock starts at today's real time, not SimCord's 2026-01-01.
        assert abs(env.now().timestamp() - real_start) < 60
        page = await PreviewPage(http, session.url).open(session.world.member)
        await page.run_command("draw", prompt="a small green ring in the centre")
        await bot.executor.wait_idle()
        await page.wait_for(lambda p: len(cards(p)) == 1)
        record = await bot.store.get_job(1)
        # The database stamps rows with the simulated clock.
        assert abs(record.created_at - env.now().timestamp()) < 5

        await page.run_command("history")
        await page.wait_for(lambda p: bool(listings(p)))
        (listing,) = listings(page)
        shown_at = datetime.fromisoformat(page.state["profile"]["presentationTime"]).timestamp()
        # "<t:…:R>" is rendered against the page's presentation time: seconds ago, not weeks.
        assert 0 <= shown_at - unix_of(listing) < 60, (listing, shown_at)

        # The page's clock keeps up with the real one while the preview runs.
        before = env.now()
        await asyncio.sleep(MAX_CLOCK_LAG + 2 * FOLLOW_INTERVAL + 0.5)
        assert (env.now() - before).total_seconds() >= MAX_CLOCK_LAG
        assert abs(env.now().timestamp() - time.time()) < MAX_CLOCK_LAG + 2


async def test_keep_time_moves_the_simulated_clock_up_to_the_real_one(simcord_env):
    real = time.time()
    assert simcord_env.now().timestamp() < real - 3600  # SimCord starts at 2026-01-01
    assert await keep_time(simcord_env)
    assert abs(simcord_env.now().timestamp() - time.time()) < 5
    assert not await keep_time(simcord_env)  # in step: nothing to do
    clock = SimulatedClock()
    assert abs(clock() - time.time()) < 5  # the real time until it has an env
    clock.env = simcord_env
    assert clock() == simcord_env.now().timestamp()


async def test_one_click_makes_a_preview_picture_256_px(shapes_preview):
    # The preview's upscaler (tiny:shapes-x4, trained for tiny:shapes) behind the U button.
    settings = replace(shapes_preview, upscaler=PREVIEW_UPSCALER)
    async with served(settings) as session, aiohttp.ClientSession() as http:
        bot = session.bot
        page = await PreviewPage(http, session.url).open(session.world.member)
        receipt = await page.run_command("draw", prompt="a large red circle in the centre")
        assert not receipt["rejected"], receipt
        await bot.executor.wait_idle()
        await page.wait_for(lambda p: len(cards(p)) == 1)
        (card,) = cards(page)
        receipt = await page.click(card, "U1")
        assert not receipt["rejected"], receipt
        await bot.executor.wait_idle()
        await page.wait_for(lambda p: len(cards(p)) == 2)
        data = await png_of(page, cards(page)[1])
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (256, 256)
        assert "Hires upscaler: tiny:shapes-x4" in (read_parameters(data) or "")
