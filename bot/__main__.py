"""``python -m bot``: run the bot (what ``make run`` does), sync its slash commands, or preview it.

Without a DISCORD_TOKEN, ``python -m bot`` serves the bot in a local preview page instead of
failing: a newcomer sees it work before setting anything up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from typing import Literal

from bot.settings import Settings, SettingsError

Mode = Literal["run", "sync", "preview", "no-token"]

CONNECT_STEPS = """\
To connect to real Discord instead:
  1. Create an application and a bot at https://discord.com/developers/applications
     (Bot tab: Reset Token, copy it).
  2. Put it in .env:   DISCORD_TOKEN=your-token   (see .env.example for every setting).
  3. Invite the bot with the scopes bot and applications.commands (README: "Connect to Discord"),
     then run `make run` again.
"""

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
        "It uses the built-in tiny:shapes model unless MODEL is set, and its own database "
        "(data/preview.sqlite3, data/preview/) unless DB_PATH / DATA_DIR are set. "
        "Ctrl-C stops it.",
    )
    preview.add_argument(
        "--port",
        type=int,
        default=None,
        help="the port to serve the page on (default: 8765, or a free one if 8765 is taken; "
        "0: any free port)",
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


async def _run(settings: Settings, *, sync_only: bool) -> None:
    from bot.app import create_bot

    bot = create_bot(settings, sync_only=sync_only)
    async with bot:
        if sync_only:
            await bot.login(settings.discord_token or "")
            return
        await bot.start(settings.discord_token or "")


async def _preview(settings: Settings, *, port: int | None, show_connect: bool) -> None:
    from bot.preview import PreviewSession, describe, serve_preview

    # discord.py's own warnings here are about the simulated connection (voice libraries, a
    # helper client's intents), not about anything the user can fix.
    logging.getLogger("discord").setLevel(logging.ERROR)

    def ready(session: PreviewSession) -> None:
        text = describe(session)
        print(text + ("\n" + CONNECT_STEPS if show_connect else ""), flush=True)

    await serve_preview(settings, port=port, on_ready=ready)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        loaded = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mode, settings = choose(args.command, loaded, os.environ)
    from bot.app import configure_logging
    from pipeline.engine import quiet_library_logs

    configure_logging(loaded)  # the loaded settings: they hold the token to redact
    quiet_library_logs()
    if mode == "no-token":
        print(NO_TOKEN, file=sys.stderr)
        return 2
    try:
        if mode == "preview":
            port = getattr(args, "port", None)  # only `preview` has --port
            asyncio.run(_preview(settings, port=port, show_connect=not loaded.discord_token))
        else:
            asyncio.run(_run(settings, sync_only=mode == "sync"))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        import discord

        from bot.preview import PreviewError
        from pipeline.errors import EaselError

        if isinstance(exc, discord.LoginFailure):
            print("error: Discord refused the token in DISCORD_TOKEN; check it.", file=sys.stderr)
            return 2
        if isinstance(exc, EaselError | PreviewError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        logging.getLogger("bot").exception("the bot stopped")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
