"""``python -m bot``: run the bot (what ``make run`` does), sync its slash commands, or preview it.

Without a DISCORD_TOKEN, ``python -m bot`` serves the bot in a local preview page instead of
failing: a newcomer sees it work before setting anything up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from bot.settings import Settings, SettingsError
from pipeline.cpu import CpuConfigError, configure_cpu_threads
from pipeline.models import thread_model

Mode = Literal["run", "sync", "preview", "no-token"]

log = logging.getLogger("bot.start")

# Seconds between tries while Discord can't be reached: 6 tries, giving up after about a minute.
RETRY_DELAYS: tuple[float, ...] = (2.0, 5.0, 10.0, 15.0, 30.0)

CHECK_NETWORK = (
    "Check this machine's internet connection, DNS, proxy (HTTPS_PROXY) and firewall, "
    "then run it again."
)

# The languages --locale offers: bot.i18n.SUPPORTED, written out so that --help needs no discord.
LOCALES = ("en-US", "zh-CN")


def N_(message: str) -> str:
    """Marks a message id for `make messages` (bot.i18n.N_, without importing it here)."""
    return message


CONNECT_STEPS = N_("""\
To connect to real Discord instead:
  1. Create an application and a bot at https://discord.com/developers/applications
     (Bot tab: Reset Token, copy it).
  2. Put it in .env:   DISCORD_TOKEN=your-token   (see .env.example for every setting).
  3. Invite the bot with the scopes bot and applications.commands (README: "Connect to Discord"),
     then run `make run` again.
""")

NO_TOKEN = f"""\
No DISCORD_TOKEN is set, so Easel can't connect to Discord.
(`python -m bot` without a token, or `python -m bot preview`, shows the bot in a local page.)

{CONNECT_STEPS}"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Easel: a Discord bot that draws pictures with diffusion models. "
        "Settings come from the environment and .env (see .env.example). "
        "Without DISCORD_TOKEN, the default is the offline preview "
        "(see `python -m bot preview --help`).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,sync,preview}")
    sub.add_parser(
        "run", help="connect to Discord and serve (the default when DISCORD_TOKEN is set)"
    )
    sub.add_parser("sync", help="send the slash commands to Discord now, then exit")
    preview = sub.add_parser(
        "preview",
        help="serve the bot offline in a local browser page, on a simulated Discord "
        "(the default without DISCORD_TOKEN)",
        description="Serve the real bot in a Discord-like page on 127.0.0.1, offline. "
        "It uses the built-in tiny:shapes model unless MODEL or MODELS is set, and its own "
        "database (data/preview.sqlite3, data/preview/) unless DB_PATH / DATA_DIR are set. "
        "Ctrl-C stops it.",
    )
    preview.add_argument(
        "--port",
        type=int,
        default=None,
        help="the port to serve the page on (default: 8765, or a free one if 8765 is taken; "
        "0: any free port)",
    )
    preview.add_argument(
        "--locale",
        choices=LOCALES,
        default=LOCALES[0],
        help="the language of the hints printed here and of the simulated members' Discord "
        "clients, so the bot answers in it (default: en-US; zh-CN: Simplified Chinese)",
    )
    return parser


def choose(
    command: str | None, settings: Settings, environ: Mapping[str, str]
) -> tuple[Mode, Settings]:
    """What to do, and with which settings: a token means Discord, no token means the preview.

    ``environ`` is the environment after .env was loaded: the preview only keeps the model and
    paths the user actually set there.
    """
    if command == "preview" or (command is None and not settings.discord_token):
        from bot.preview import preview_settings

        return "preview", preview_settings(settings, environ)
    if not settings.discord_token:
        return "no-token", settings
    return ("sync" if command == "sync" else "run"), settings


class DiscordUnreachable(Exception):
    """Discord could not be reached in any try; ``reason`` says why the last one failed."""

    def __init__(self, reason: str, tries: int, seconds: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tries = tries
        self.seconds = seconds


async def start(
    settings: Settings,
    *,
    sync_only: bool,
    proxy: str | None = None,
    delays: Sequence[float] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Log in and serve (or only sync the commands), trying again while Discord can't be
    reached: after ``delays[0]`` seconds, then ``delays[1]``, ...; when the last try fails too,
    raise ``DiscordUnreachable``. Every other failure is raised at once. ``delays`` defaults to
    ``RETRY_DELAYS``."""
    from bot.app import create_bot

    token = settings.discord_token or ""
    if delays is None:
        delays = RETRY_DELAYS
    began = time.perf_counter()
    tries = len(delays) + 1
    for attempt in range(1, tries + 1):
        bot = create_bot(settings, sync_only=sync_only, proxy=proxy)
        try:
            async with bot:
                if sync_only:
                    await bot.login(token)  # setup_hook syncs the commands
                else:
                    await bot.start(token)
            return
        except Exception as exc:
            reason = unreachable_reason(exc)
            if reason is None:
                raise
            if attempt == tries:
                raise DiscordUnreachable(reason, tries, time.perf_counter() - began) from exc
            delay = delays[attempt - 1]
            log.warning(
                "Discord can't be reached: %s; trying again in %g s (try %d of %d)",
                reason,
                delay,
                attempt,
                tries,
            )
            log.debug("the try failed with", exc_info=exc)
        await sleep(delay)


def unreachable_reason(exc: BaseException) -> str | None:
    """Why Discord couldn't be reached, in a few words; None if ``exc`` is about something else."""
    import aiohttp
    import discord

    from pipeline.errors import EaselError

    if isinstance(exc, EaselError):  # a ModelLoadError is an OSError, but not the network's
        return None
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"the proxy {exc.host}:{exc.port} can't be reached ({_os_reason(exc.os_error)})"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        why = exc.message or "an error"
        return f"the proxy answered {exc.status} {why} (credentials go in HTTPS_PROXY)"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the name {exc.host} can't be resolved (DNS: {_os_reason(exc.os_error)})"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return (
            f"the TLS connection to {exc.host} failed ({_os_reason(exc.os_error)}); a proxy or "
            "firewall may be intercepting HTTPS"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"no connection to {exc.host}:{exc.port} ({_os_reason(exc.os_error)})"
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError since 3.11
        return "no answer in time (timeout)"
    if isinstance(exc, discord.DiscordServerError):
        return f"Discord answered {exc.status} (a problem on its side)"
    if isinstance(exc, discord.GatewayNotFound):
        return "Discord's gateway could not be found"
    # Not every OSError: a data folder that can't be written is no reason to try again.
    if isinstance(exc, aiohttp.ClientError | ConnectionError | socket.gaierror):
        return str(exc) or type(exc).__name__
    return None


def _os_reason(error: OSError) -> str:
    if isinstance(error.errno, int) and error.errno > 0:  # asyncio words ECONNREFUSED oddly
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


def explain_start_failure(exc: BaseException, settings: Settings) -> tuple[str, int] | None:
    """What went wrong and what to do (one or two lines), and the exit code; None when the
    failure is not one the user can fix (a bug: it is logged with its traceback)."""
    import discord

    from bot.preview import PreviewError
    from pipeline.errors import EaselError

    if isinstance(exc, discord.LoginFailure):
        return (
            "Discord refused the token in DISCORD_TOKEN (401 Unauthorized); reset it in the "
            "Developer Portal, Bot tab, and put the new one in .env.",
            2,
        )
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return (
            "Discord refused the connection (close code 4014): the bot asks for a privileged "
            "intent that is not switched on; switch it on in the Developer Portal, Bot tab, "
            "Privileged Gateway Intents.",
            2,
        )
    if isinstance(exc, discord.Forbidden) and "/commands" in str(getattr(exc.response, "url", "")):
        detail = f"{exc.status} {exc.text or 'Forbidden'}, code {exc.code}"
        if settings.dev_guild_id:
            return (
                f"Discord refused to register the slash commands in server "
                f"{settings.dev_guild_id} ({detail}): invite the bot to that server with the "
                "scopes bot and applications.commands (README: Connect to Discord), or correct "
                "DEV_GUILD_ID.",
                2,
            )
        return (
            f"Discord refused to register the slash commands ({detail}): invite the bot again "
            "with the scopes bot and applications.commands (README: Connect to Discord).",
            2,
        )
    if isinstance(exc, discord.ConnectionClosed):  # the gateway said no (4014 is above)
        if exc.code == 4004:
            return explain_start_failure(discord.LoginFailure(), settings)
        return (
            f"Discord closed the gateway connection (close code {exc.code}"
            f"{': ' + exc.reason if exc.reason else ''}); the codes are listed at "
            "https://discord.com/developers/docs/topics/opcodes-and-status-codes",
            1,
        )
    if isinstance(exc, discord.HTTPException):
        answer = " ".join(str(part) for part in (exc.status, exc.text) if part)
        request = f"{getattr(exc.response, 'method', '')} {getattr(exc.response, 'url', '')}"
        return (
            f"Discord answered {answer} (code {exc.code}) to {request.strip() or 'a request'} "
            "while the bot was starting; see https://discordstatus.com, then try again.",
            1,
        )
    if isinstance(exc, DiscordUnreachable):
        return (
            f"Discord can't be reached after {exc.tries} tries over {exc.seconds:.0f} s: "
            f"{exc.reason}.\n{CHECK_NETWORK}",
            1,
        )
    if isinstance(exc, EaselError | PreviewError):  # the model failed to load, ...
        return str(exc), 2
    return None


def discord_proxy(environ: Mapping[str, str]) -> str | None:
    """The proxy for Discord from HTTPS_PROXY or ALL_PROXY (either case), unless NO_PROXY
    names Discord; discord.py itself reads none of them."""

    def get(name: str) -> str:
        return (environ.get(name.lower()) or environ.get(name.upper()) or "").strip()

    proxy = get("https_proxy") or get("all_proxy")
    if not proxy:
        return None
    for host in get("no_proxy").lower().split(","):
        host = host.strip().lstrip(".")
        if host == "*" or host in ("discord.com", "discord.gg", "gateway.discord.gg"):
            return None
    return proxy


class _NoVoiceWarnings(logging.Filter):
    """Drops discord.py's "PyNaCl/davey is not installed, voice will NOT be supported": the bot
    never uses voice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in record.getMessage()


class _OneLineReconnects(logging.Filter):
    """discord.py logs each gateway reconnect (it retries on its own once connected) with a
    traceback at ERROR: one WARNING line with the reason instead, unless LOG_LEVEL=DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            str(record.msg).startswith("Attempting a reconnect")
            and record.exc_info
            and not logging.getLogger().isEnabledFor(logging.DEBUG)
        ):
            exc = record.exc_info[1]
            why = (unreachable_reason(exc) if exc else None) or type(exc).__name__
            record.msg = f"the connection to Discord dropped ({why}); reconnecting in %.2fs"
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _silence_voice_warnings() -> None:
    """Quiet discord.py where it is loud about nothing the user can act on."""
    for name in ("discord.client", "discord.voice_state", "discord.voice_client"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoVoiceWarnings) for f in logger.filters):
            logger.addFilter(_NoVoiceWarnings())
    client = logging.getLogger("discord.client")
    if not any(isinstance(f, _OneLineReconnects) for f in client.filters):
        client.addFilter(_OneLineReconnects())


async def _preview(settings: Settings, *, port: int | None, show_connect: bool) -> None:
    from bot.i18n import _
    from bot.preview import PreviewSession, describe, serve_preview

    # discord.py's own warnings here are about the simulated connection (voice libraries, a
    # helper client's intents), not about anything the user can fix.
    logging.getLogger("discord").setLevel(logging.ERROR)

    def ready(session: PreviewSession) -> None:
        text = describe(session)
        print(text + ("\n" + _(CONNECT_STEPS) if show_connect else ""), flush=True)

    await serve_preview(settings, port=port, on_ready=ready)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        loaded = Settings.from_env()
        mode, settings = choose(args.command, loaded, os.environ)
        # Before anything imports torch; the thread count depends on the model.
        configure_cpu_threads(settings.torch_threads, model=thread_model(settings.model_specs()))
    except (SettingsError, CpuConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from bot.app import configure_logging
    from pipeline.engine import quiet_library_logs

    configure_logging(loaded)  # the loaded settings: they hold the token to redact
    quiet_library_logs()
    _silence_voice_warnings()
    if mode == "no-token":
        print(NO_TOKEN, file=sys.stderr)
        return 2
    try:
        if mode == "preview":
            from bot.i18n import in_locale

            port = getattr(args, "port", None)  # only `preview` has --port and --locale
            # The preview speaks the current language; asyncio.run's task inherits it.
            with in_locale(getattr(args, "locale", None) or LOCALES[0]):
                asyncio.run(_preview(settings, port=port, show_connect=not loaded.discord_token))
        else:
            proxy = discord_proxy(os.environ)
            asyncio.run(start(settings, sync_only=mode == "sync", proxy=proxy))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        failure = explain_start_failure(exc, settings)
        if failure is None:
            logging.getLogger("bot").exception("the bot stopped")
            return 1
        message, code = failure
        log.debug("the start failed with", exc_info=exc)  # the traceback, at LOG_LEVEL=DEBUG
        print(f"error: {message}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
