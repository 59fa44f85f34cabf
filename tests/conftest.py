"""Shared fixtures: tiny random-weight pipelines built offline once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the model hub; a hub id that isn't cached must fail fast, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

# Torch's threads are set once, before torch loads, as the bot and the CLI do: a later call
# (a test running the CLI's main() in this process) must not change the count mid-session, since
# the count changes the pictures' bits, and spinning waiters slow every draw on a shared CPU.
from pipeline.cpu import configure_cpu_threads

configure_cpu_threads(model="tiny:sd")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny models are built (once) for this session."""
    env = os.environ.get("EASEL_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def sd_engine(model_cache: Path):
    from pipeline.engine import Engine

    return Engine.load("tiny:sd", device="cpu", cache_dir=model_cache)


@pytest.fixture(scope="session")
def ldm_engine(model_cache: Path):
    from pipeline.engine import Engine

    return Engine.load("tiny:ldm", device="cpu", cache_dir=model_cache)


# -- the bot, driven through SimCord -------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The tiny model draws on the CPU while SimCord settles: give bot tests room.
    for item in items:
        if item.get_closest_marker("simcord") is None:
            item.add_marker(pytest.mark.simcord(settle_timeout=60))


@pytest.fixture
def bot_settings(tmp_path: Path, model_cache: Path):
    from bot.settings import Settings

    return Settings(
        discord_token="test-token-not-real",
        model="tiny:sd",
        db_path=tmp_path / "easel.sqlite3",
        data_dir=tmp_path / "data",
        model_cache_dir=model_cache,
        device="cpu",
        default_steps=4,
        progress_interval=0,
    )


@pytest.fixture
async def simcord_bot(bot_settings):
    from bot.app import create_bot

    bot = create_bot(bot_settings)
    yield bot
    await shut_down(bot)


@pytest.fixture
async def make_bot(bot_settings):
    """Builds more bots on the same settings (restarts); all are shut down after the test."""
    from bot.app import create_bot

    made = []

    def make():
        made.append(create_bot(bot_settings))
        return made[-1]

    yield make
    for bot in made:
        await shut_down(bot)


async def until(world, condition, *, seconds: float = 60) -> None:
    """Let the bot work until ``condition()`` holds (world.idle() would wait for paused jobs)."""
    import asyncio
    import time

    for _ in range(int(seconds / 0.05)):
        await world.env.settle()
        if await condition():
            return
        await asyncio.to_thread(time.sleep, 0.05)  # real time: the worker thread draws
    raise AssertionError("the bot did not get there in time")


async def shut_down(bot) -> None:
    """What bot.close() would do; SimCord never calls it."""
    import asyncio

    executor = getattr(bot, "executor", None)
    if executor is not None:
        await asyncio.to_thread(executor.close)
    await bot.store.close()


class World:
    """A server with a #draw channel, two members and a moderator."""

    def __init__(self, env) -> None:
        import discord

        self.env = env
        self.guild = env.create_guild("Art Club")
        self.channel = self.guild.create_text_channel("draw")
        self.mods = self.guild.create_role(
            "Mods", permissions=discord.Permissions(manage_messages=True)
        )
        self.alice = self.guild.add_member(env.create_user("alice"))
        self.bob = self.guild.add_member(env.create_user("bob"))
        self.mod = self.guild.add_member(env.create_user("moddy"), roles=[self.mods])

    @property
    def bot(self):
        return self.env.bot

    async def idle(self) -> None:
        """Wait until every queued job ran and its messages were posted."""
        await self.bot.executor.wait_idle()
        await self.env.settle()


@pytest.fixture
def world(simcord_env) -> World:
    return World(simcord_env)


@pytest.fixture
def preview_settings(bot_settings, tmp_path: Path):
    """The bot's test settings as the offline preview runs them: no token, its own files."""
    from dataclasses import replace

    return replace(
        bot_settings,
        discord_token=None,
        db_path=tmp_path / "preview.sqlite3",
        data_dir=tmp_path / "preview",
    )


@pytest.fixture(autouse=True)
def _no_leaked_gpu_worker():
    """Fail a test that leaves a GPU worker thread running: later tests share its engine."""
    import threading

    before = {t for t in threading.enumerate() if t.name == "easel-gpu"}
    yield
    import time

    deadline = time.monotonic() + 5
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t.name == "easel-gpu" and t not in before and t.is_alive()
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"a GPU worker thread outlived the test: {leaked}"
