"""``python -m bot``: run the bot (what ``make run`` does), or sync its slash commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bot.settings import Settings, SettingsError

NO_TOKEN = """\
No DISCORD_TOKEN is set, so Easel can't connect to Discord.

To connect to real Discord:
  1. Create an application and a bot at https://discord.com/developers/applications
     (Bot tab: Reset Token, copy it).
  2. Put it in .env:   DISCORD_TOKEN=your-token   (see .env.example for every setting).
  3. Invite the bot with the scopes bot and applications.commands (README: "Connect to Discord"),
     then run `make run` again.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Easel: a Discord bot that draws pictures with diffusion models. "
        "Settings come from the environment and .env (see .env.example).",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="connect to Discord and serve (the default)")
    sub.add_parser("sync", help="send the slash commands to Discord now, then exit")
    return parser


async def _run(settings: Settings, *, sync_only: bool) -> None:
    from bot.app import create_bot

    bot = create_bot(settings, sync_only=sync_only)
    async with bot:
        if sync_only:
            await bot.login(settings.discord_token or "")
            return
        await bot.start(settings.discord_token or "")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from bot.app import configure_logging
    from pipeline.engine import quiet_library_logs

    configure_logging(settings)
    quiet_library_logs()
    if not settings.discord_token:
        print(NO_TOKEN, file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(settings, sync_only=args.command == "sync"))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        import discord

        from pipeline.errors import EaselError

        if isinstance(exc, discord.LoginFailure):
            print("error: Discord refused the token in DISCORD_TOKEN; check it.", file=sys.stderr)
            return 2
        if isinstance(exc, EaselError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        logging.getLogger("bot").exception("the bot stopped")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
