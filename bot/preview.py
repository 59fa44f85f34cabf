"""The offline preview: the real bot, in a local browser page, on SimCord's simulated Discord.

``python -m bot`` without a token (and ``python -m bot preview``) serves the bot built by the same
``create_bot(settings)``, with the same cogs, database and model code, in a Discord-like page on
127.0.0.1. Nothing reaches the network. Needs the ``simcord[preview]`` extra (in ``.[dev]``).

``--locale zh-CN`` (``python -m bot preview --locale zh-CN``) shows it as a Chinese member sees it:
the hints here, the simulated members' clients and the server all speak that language.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot import i18n
from bot.i18n import _
from bot.settings import DEFAULT_MODEL, Settings

if TYPE_CHECKING:
    import aiohttp
    import simcord
    from simcord.preview import Preview

    from bot.app import EaselBot

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
# What the bot is called on the page (SimCord names its bot user "TestBot").
BOT_NAME = "Easel"
PREVIEW_MODEL = "tiny:shapes"
PREVIEW_UPSCALER = "tiny:shapes-x4"
PREVIEW_DB_PATH = Path("data/preview.sqlite3")
PREVIEW_DATA_DIR = Path("data/preview")
# Seconds between checks whether the bot acted on its own (a drawing finished on the GPU thread)
# and the page must be republished: SimCord republishes only after the page's own actions.
FOLLOW_INTERVAL = 0.5
# Seconds between republishes for progress while drawings are under way (see _follow).
PROGRESS_REFRESH = 3.0
# The simulated clock is moved up to the real one when it is this many seconds behind (see
# keep_time).
MAX_CLOCK_LAG = 2.0


class PreviewError(Exception):
    """The preview could not start; the message says what to do."""


def preview_settings(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """``settings`` for a preview: the tiny model and a database of its own, unless set explicitly.

    Only variables actually present in ``environ`` (the environment plus .env) count as set, so
    the preview never loads a multi-GB model or writes into the real bot's history by default.
    """

    def given(name: str) -> bool:
        return bool(environ.get(name, "").strip())

    changes: dict[str, Any] = {
        # The preview never talks to Discord; a dev guild would hide the commands from its server.
        "discord_token": None,
        "dev_guild_id": None,
    }
    if not given("MODEL") and not given("MODELS"):
        changes["model"] = PREVIEW_MODEL
        if not given("UPSCALER"):  # the trained 64 -> 256 px companion of tiny:shapes
            changes["upscaler"] = PREVIEW_UPSCALER
    if not given("DB_PATH"):
        changes["db_path"] = PREVIEW_DB_PATH
    if not given("DATA_DIR"):
        changes["data_dir"] = PREVIEW_DATA_DIR
    return replace(settings, **changes)


class SimulatedClock:
    """The simulated Discord's wall clock as ``time.time()`` would give it: what the store stamps
    rows with, so "<t:…:R>" on the page (shown against the same clock) says "a minute ago".

    Until ``env`` is set it gives the real time; serve_preview sets it once keep_time has moved
    SimCord's clock (which starts at 2026-01-01) up to the real one.
    """

    def __init__(self) -> None:
        self.env: simcord.Env | None = None

    def __call__(self) -> float:
        env = self.env
        return env.now().timestamp() if env is not None else time.time()


async def keep_time(env: simcord.Env) -> bool:
    """Move the simulated clock up to the real one if it is behind; whether it moved.

    SimCord's clock only moves when the bot's own timers fire, so left alone the page's clock
    (and ``time.monotonic`` for the bot: cooldowns, view timeouts, the 15-minute interaction
    tokens) would stand still. Moving it is an env operation: while a page action is running it
    is skipped (SimCord refuses overlapping operations) and done at the next call.
    """
    import simcord

    lag = (datetime.now(UTC) - env.now()).total_seconds()
    if lag < MAX_CLOCK_LAG:
        return False
    try:
        await env.advance_time(lag)
    except simcord.SetupError:
        return False  # a page action is running; its answer must not be judged late
    except TimeoutError:
        log.debug("the bot was busy while the simulated clock moved on", exc_info=True)
    return True


@dataclass
class PreviewWorld:
    """The simulated server: #draw, a member and a moderator to act as."""

    guild: simcord.GuildHandle
    channel: simcord.ChannelHandle
    moderators: simcord.RoleHandle
    member: simcord.MemberActor
    moderator: simcord.MemberActor


def build_world(env: simcord.Env) -> PreviewWorld:
    """Create the server the page shows, its locale and topic in the current language."""
    import discord

    guild = env.create_guild("Easel preview", preferred_locale=i18n.current())
    channel = guild.create_text_channel("draw", topic=_("Type /draw in the box below."))
    moderators = guild.create_role(
        "Moderators", permissions=discord.Permissions(manage_messages=True)
    )
    member = guild.add_member(env.create_user("alice"))
    moderator = guild.add_member(env.create_user("moddy"), roles=[moderators])
    return PreviewWorld(guild, channel, moderators, member, moderator)


@dataclass
class PreviewSession:
    """Everything a running preview is made of, handed to ``on_ready``."""

    bot: EaselBot
    env: simcord.Env
    world: PreviewWorld
    preview: Preview

    @property
    def url(self) -> str:
        """The page's address; the #fragment is the capability that lets the browser in."""
        return self.preview.url


def describe(session: PreviewSession) -> str:
    """What the terminal shows once the page is up, in the current language."""
    s = session.bot.settings
    w = session.world
    if s.models.strip():
        model = _(
            "  Models: {names} (the default: {default}; /models lists what each supports).",
            names=", ".join(session.bot.models.names),
            default=session.bot.models.default,
        )
    elif s.model == "tiny:shapes":
        example = session.bot.models.capabilities().example_prompts[0]
        model = _(
            "  Model: {model} (a small model trained on coloured shapes: try “{example}”; set "
            "MODEL, e.g. MODEL={real}, for a real model).",
            model=s.model,
            example=example,
            real=DEFAULT_MODEL,
        )
    elif s.model.startswith("tiny:"):
        model = _(
            "  Model: {model} (random weights, so its pictures are noise; set MODEL, e.g. "
            "MODEL={real}, to draw for real).",
            model=s.model,
            real=DEFAULT_MODEL,
        )
    else:
        model = _("  Model: {model}.", model=s.model)
    lines = [
        _("Easel is running in a local preview: the real bot on a simulated Discord, offline."),
        "",
        _("  Open {url}", url=session.url),
        "",
        _(
            '  Server "Easel preview", channel #draw, bot {bot}. Act as {member}\n'
            '  (a member) or {moderator} (a moderator) with "Viewing as"; type /draw (or\n'
            "  /compare, to see settings side by side) in the message box.",
            bot=session.bot.user,
            member=w.member.name,
            moderator=w.moderator.name,
        ),
        model,
        _("  Database: {database}, pictures: {pictures}/", database=s.db_path, pictures=s.data_dir),
        _("  Press Ctrl-C here to stop."),
    ]
    return "\n".join(lines) + "\n"


async def serve_preview(
    settings: Settings,
    *,
    port: int | None = None,
    on_ready: Callable[[PreviewSession], Any] | None = None,
    follow_interval: float | None = FOLLOW_INTERVAL,
) -> None:
    """Serve the bot in a local page until the page ends the session or the task is cancelled.

    ``port``: None tries DEFAULT_PORT and falls back to a free port; 0 is any free port; any
    other port must be free. ``on_ready`` (sync or async) gets the session once the page is
    served; by default the address and instructions are printed. ``follow_interval`` None turns
    off republishing the page after the bot's own work (tests that refresh themselves).

    The preview speaks the current language (``i18n.in_locale``; ``--locale`` sets it): the
    hints, the page's dates, the server's locale and the language the simulated members'
    clients send, so the bot answers them in it.
    """
    try:
        import simcord
    except ImportError as exc:
        raise PreviewError(
            _("the preview needs SimCord: run `make install` (or pip install -e '.[dev]').")
        ) from exc

    from bot.app import create_bot

    chosen_port = pick_port(port)
    clock = SimulatedClock()
    bot = create_bot(settings, clock=clock)
    try:
        # check_errors=False: errors the bot answered politely (a bad width, a missing
        # permission) are recorded by SimCord and would otherwise be re-raised at exit.
        async with simcord.run(bot, check_errors=False) as env:
            # One clock for the page and the database: today's real time, then kept in step.
            await keep_time(env)
            clock.env = env
            # The bot renames itself as a real bot could (PATCH /users/@me).
            assert bot.user is not None
            await bot.user.edit(username=BOT_NAME)
            # setup_hook syncs only when the commands changed since the last start, but each
            # start is a fresh simulated Discord that has never seen them.
            await bot.tree.sync()
            world = build_world(env)
            async with contextlib.AsyncExitStack() as stack:
                stack.enter_context(_clients_speak(i18n.current()))
                preview = await _enter_preview(stack, env, world, chosen_port)
                session = PreviewSession(bot, env, world, preview)
                shown = (on_ready or _print_ready)(session)
                if inspect.isawaitable(shown):
                    await shown
                follower = None
                if follow_interval is not None:
                    follower = asyncio.create_task(_follow(session, follow_interval))
                try:
                    await preview.wait_closed()
                finally:
                    if follower is not None:
                        follower.cancel()
                        await asyncio.gather(follower, return_exceptions=True)
    finally:
        await shut_down(bot)


async def shut_down(bot: EaselBot) -> None:
    """What ``bot.close()`` would do: SimCord never calls it."""
    executor = getattr(bot, "executor", None)
    if executor is not None:
        await asyncio.to_thread(executor.close)  # joins the GPU thread
    await bot.store.close()


def _print_ready(session: PreviewSession) -> None:
    print(describe(session), flush=True)


def pick_port(port: int | None) -> int:
    """The port to serve on, checked before the model loads (a real one takes minutes).

    None means DEFAULT_PORT, or any free port when that one is taken; 0 means any free port.
    """
    wanted = DEFAULT_PORT if port is None else port
    if wanted == 0 or _can_bind(wanted):
        return wanted
    if port is None:
        log.info("port %d is in use; serving the preview on a free port instead", wanted)
        return 0
    raise PreviewError(
        _(
            "port {port} is already in use; choose another with --port (0 = any free port).",
            port=port,
        )
    )


def _can_bind(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        # As asyncio's server does: a port left in TIME_WAIT by a previous run counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _enter_preview(
    stack: contextlib.AsyncExitStack, env: simcord.Env, world: PreviewWorld, port: int
) -> Preview:
    import simcord

    preview = env.preview(
        world.channel,
        viewers=[world.member, world.moderator],
        layout="channel",
        port=port,
        locale=i18n.current(),  # dates on the page as the language writes them
    )
    try:
        return await stack.enter_async_context(preview)
    except simcord.SetupError as exc:
        if str(exc).startswith("Preview requires"):  # simcord without its [preview] extra
            raise PreviewError(_("{reason} (or run `make install`)", reason=exc)) from exc
        if isinstance(exc.__cause__, OSError):  # taken since pick_port looked
            raise PreviewError(_("port {port} is already in use; try again.", port=port)) from exc
        raise


@contextlib.contextmanager
def _clients_speak(locale: str) -> Iterator[None]:
    """Make the simulated members' clients send ``locale`` while the preview runs.

    SimCord's interactions always carry ``locale`` and ``guild_locale`` en-US; a member of a
    Chinese server with a Chinese client sends zh-CN for both, and that is what the bot answers
    by (its replies, its public posts). SimCord builds every interaction's payload through
    ``simcord.interactions.base_payload`` (looked up at each call), so the preview wraps it, and
    puts it back when it ends. en-US changes nothing.
    """
    if locale == i18n.DEFAULT:
        yield
        return
    from simcord import interactions

    original = interactions.base_payload

    def base_payload(*args: Any, **kwargs: Any) -> Any:
        record, payload = original(*args, **kwargs)
        payload["locale"] = locale
        if "guild_locale" in payload:
            payload["guild_locale"] = locale
        return record, payload

    interactions.base_payload = base_payload
    try:
        yield
    finally:
        interactions.base_payload = original


async def _follow(session: PreviewSession, interval: float) -> None:
    """Keep the simulated clock in step with the real one, and republish the page when the bot
    called Discord's API since the last look.

    Results and progress come from the GPU thread after the page's action has settled; without
    this the page would show "Queued…" until the user clicks "Refresh preview".
    """
    import simcord

    env, preview, executor = session.env, session.preview, session.bot.executor
    seen = len(env.http_requests)
    published = 0.0
    while True:
        await asyncio.sleep(interval)
        await keep_time(env)
        count = len(env.http_requests)
        if count == seen:
            continue
        # Each republish makes an action the browser sends before its next poll (within 0.5 s)
        # stale: SimCord rejects it and the user has to send it again. So while drawings are
        # under way their progress is shown at a slower pace; the last picture at once.
        if executor.pending() and time.perf_counter() - published < PROGRESS_REFRESH:
            continue
        try:
            await preview.refresh()
        except simcord.SetupError:
            continue  # a page action is running (it republishes by itself) or the page closed
        except TimeoutError:
            log.warning("the bot was still busy when the page was refreshed", exc_info=True)
        seen = count
        published = time.perf_counter()


# -- a client of the page's HTTP API ---------------------------------------------------------


class PreviewPage:
    """One browser tab on the preview, speaking the page's HTTP API (protocol 3).

    What the page's own scripts send; for tests and scripts that drive the preview.
    """

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.base, capability = url.split("/#", 1)
        self.headers = {"X-Simcord-Capability": capability}
        self.sequence = 0
        self.state: dict[str, Any] = {}

    async def open(self, viewer: simcord.MemberActor) -> PreviewPage:
        """Open a page context acting as ``viewer`` ("Viewing as")."""
        async with self.http.post(
            f"{self.base}/api/pages", headers=self.headers, json={"viewer_id": str(viewer.id)}
        ) as r:
            r.raise_for_status()
            self.state = await r.json()
        self.headers = {**self.headers, "X-Simcord-Context": self.state["context"]["id"]}
        return self

    async def get(self, path: str) -> Any:
        """GET an API path: JSON as Python values, anything else as bytes."""
        async with self.http.get(self.base + path, headers=self.headers) as r:
            r.raise_for_status()
            return await r.json() if r.content_type == "application/json" else await r.read()

    async def refresh(self) -> dict[str, Any]:
        """Read the published state again (what the page polls)."""
        self.state = await self.get("/api/state")
        return self.state

    async def act(self, kind: str, **extra: Any) -> dict[str, Any]:
        """Send one action; returns its receipt and re-reads the state."""
        self.sequence += 1
        st = self.state
        body = {
            "protocol_version": 3,
            "sequence": self.sequence,
            "request_id": str(uuid.uuid4()),
            "generation": st["context"]["generation"],
            "bot_generation": st["botGeneration"],
            "published_revision": st["publishedRevision"],
            "kind": kind,
            **extra,
        }
        async with self.http.post(f"{self.base}/api/action", headers=self.headers, json=body) as r:
            r.raise_for_status()
            receipt: dict[str, Any] = await r.json()
        # A rejected action does not use up its sequence number; the receipt says which is next.
        if isinstance(receipt.get("expectedSequence"), int):
            self.sequence = receipt["expectedSequence"]
        await self.refresh()
        return receipt

    async def run_command(self, invocation: str, **options: Any) -> dict[str, Any]:
        """Run a slash command from the composer, e.g. ``run_command("draw", prompt="a cat")``."""
        catalog = await self.get("/api/commands")
        entry = next(e for e in catalog["entries"] if e["invocation"] == invocation)
        return await self.act(
            "run_command",
            command_id=entry["commandId"],
            path=entry["path"],
            schema_fingerprint=entry["schemaFingerprint"],
            options={name: _wire(value) for name, value in options.items()},
        )

    async def click(self, message: Mapping[str, Any], label: str) -> dict[str, Any]:
        """Click the button labelled ``label`` on a message of the state."""
        button = next(
            c
            for row in message["components"]
            for c in row.get("components", [])
            if c.get("label") == label
        )
        return await self.act("click", control_key=button["control_key"], target_id=message["id"])

    def messages(self) -> list[dict[str, Any]]:
        """The visible messages, oldest first."""
        return [self.state["messages"][i] for i in self.state["timeline"]]

    async def wait_for(
        self, predicate: Callable[[PreviewPage], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll the state, as the page does, until ``predicate(self)`` holds."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await asyncio.sleep(0.2)
                await self.refresh()
        return self.state


def _wire(value: Any) -> Any:
    # The browser sends numbers as the text typed into the option field.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value
