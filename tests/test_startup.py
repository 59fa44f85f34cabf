"""`python -m bot run|sync` when the start fails: one clear message per cause, an exit code,
bounded retries while Discord can't be reached, and the traceback only at LOG_LEVEL=DEBUG.

These run the real entry point (``bot.__main__.main``) with the real discord.py client. Only
the network is replaced, and nothing leaves this machine: discord.py's API base URL points at a
small HTTP server on 127.0.0.1 that answers like Discord (or at a closed local port), the DNS
lookup is refused in-process, and the gateway connection is patched where a test needs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import discord
import discord.http
import pytest

import bot.__main__ as entry
from bot.__main__ import (
    RETRY_DELAYS,
    DiscordUnreachable,
    discord_proxy,
    explain_start_failure,
    main,
    start,
)
from bot.settings import Settings

TOKEN = "MTIz.fake-token.for-tests"
APP_ID = "222"
USER = {"id": "111", "username": "easel", "discriminator": "0", "avatar": None, "bot": True}
APP = {
    "id": APP_ID,
    "name": "Easel",
    "description": "",
    "icon": None,
    "bot_public": True,
    "bot_require_code_grant": False,
    "owner": {**USER, "id": "999", "username": "owner", "bot": False},
    "verify_key": "0" * 64,
    "flags": 0,
}
MISSING_ACCESS = {"message": "Missing Access", "code": 50001}


class FakeDiscord(BaseHTTPRequestHandler):
    """Answers like Discord's REST API; ``token_ok`` decides the login, and command syncs are
    refused with 403 Missing Access (the answer when applications.commands is missing)."""

    protocol_version = "HTTP/1.1"
    token_ok = True
    seen: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer()

    def _answer(self) -> None:
        self.seen.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
        if self.path == "/api/v10/users/@me":
            if self.token_ok:
                return self._send(200, USER)
            return self._send(401, {"message": "401: Unauthorized", "code": 0})
        if self.path == "/api/v10/oauth2/applications/@me":
            return self._send(200, APP)
        if self.command == "PUT" and self.path.endswith("/commands"):
            return self._send(403, MISSING_ACCESS)
        return self._send(404, {"message": "404: Not Found", "code": 0})

    def _send(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(token_ok: bool) -> tuple[ThreadingHTTPServer, list[str]]:
    seen: list[str] = []
    handler = type("Discord", (FakeDiscord,), {"seen": seen, "token_ok": token_ok})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_cache: Path) -> Iterator[None]:
    """A checkout with a token, a tiny model, no .env and no proxy; global logging restored."""
    monkeypatch.chdir(tmp_path)
    for name in ("DEV_GUILD_ID", "LOG_LEVEL", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("MODEL", "tiny:sd")
    monkeypatch.setenv("MODEL_CACHE_DIR", str(model_cache))
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("DB_PATH", str(tmp_path / "easel.sqlite3"))
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def api_at(monkeypatch: pytest.MonkeyPatch, base: str) -> None:
    """Point discord.py's REST calls at ``base`` instead of https://discord.com."""
    monkeypatch.setattr(discord.http.Route, "BASE", f"{base}/api/v10")


def fake_discord(monkeypatch: pytest.MonkeyPatch, *, token_ok: bool) -> Iterator[list[str]]:
    server, seen = serve(token_ok)
    api_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
    yield seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def refusing_discord(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    yield from fake_discord(monkeypatch, token_ok=False)


@pytest.fixture
def discord_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    yield from fake_discord(monkeypatch, token_ok=True)


def errors(stderr: str) -> list[str]:
    """What the user reads, without the INFO log lines ("logging in using static token")."""
    return [line for line in stderr.splitlines() if " INFO " not in line]


# -- each way the start can fail -----------------------------------------------------------


def test_a_refused_token_is_one_line_and_exit_2(env, refusing_discord, capsys, monkeypatch):
    # discord.py warns about voice libraries once per process: make sure it would, here.
    monkeypatch.setattr(discord.VoiceClient, "warn_nacl", True)
    monkeypatch.setattr(discord.VoiceClient, "warn_dave", True)
    assert main(["run"]) == 2
    assert errors(capsys.readouterr().err) == [
        "error: Discord refused the token in DISCORD_TOKEN (401 Unauthorized); reset it in the "
        "Developer Portal, Bot tab, and put the new one in .env."
    ]
    assert refusing_discord == [f"GET /api/v10/users/@me Bot {TOKEN}"]


def test_the_traceback_is_kept_for_log_level_debug(env, refusing_discord, capsys, monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "discord.errors.LoginFailure" in err
    assert err.rstrip().endswith("Bot tab, and put the new one in .env.")
    assert TOKEN not in err  # redacted, tracebacks included


def test_unreachable_discord_is_retried_then_explained(env, capsys, monkeypatch):
    port = closed_port()
    api_at(monkeypatch, f"http://127.0.0.1:{port}")
    monkeypatch.setattr(entry, "RETRY_DELAYS", (0.0, 0.0))
    assert main(["run"]) == 1
    lines = errors(capsys.readouterr().err)
    reason = f"no connection to 127.0.0.1:{port} (Connection refused)"
    assert [line.split(" WARNING ", 1)[-1] for line in lines[:2]] == [
        f"bot.start: Discord can't be reached: {reason}; trying again in 0 s (try 1 of 3)",
        f"bot.start: Discord can't be reached: {reason}; trying again in 0 s (try 2 of 3)",
    ]
    assert lines[2:] == [
        f"error: Discord can't be reached after 3 tries over 0 s: {reason}.",
        "Check this machine's internet connection, DNS, proxy (HTTPS_PROXY) and firewall, "
        "then run it again.",
    ]


def test_a_dns_failure_is_named(env, capsys, monkeypatch):
    from aiohttp.resolver import DefaultResolver, ThreadedResolver

    if DefaultResolver is not ThreadedResolver:
        pytest.skip("aiohttp resolves names with aiodns here; socket.getaddrinfo is not asked")
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # what a resolver says for a name it can't find
        if host == "discord.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    api_at(monkeypatch, "https://discord.invalid")
    monkeypatch.setattr(entry, "RETRY_DELAYS", ())
    assert main(["run"]) == 1
    assert errors(capsys.readouterr().err)[0] == (
        "error: Discord can't be reached after 1 tries over 0 s: the name discord.invalid can't "
        "be resolved (DNS: Name or service not known)."
    )


def test_https_proxy_is_used_for_discord_and_named_when_it_fails(env, capsys, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(entry, "RETRY_DELAYS", ())
    assert main(["run"]) == 1  # https://discord.com itself is never looked up: the proxy is
    assert errors(capsys.readouterr().err)[0] == (
        "error: Discord can't be reached after 1 tries over 0 s: the proxy "
        f"127.0.0.1:{port} can't be reached (Connection refused)."
    )


def test_a_timeout_is_retried_and_named(env, capsys, monkeypatch):
    calls = []

    async def static_login(self, token):  # the network part: no answer in time
        calls.append(token)
        raise TimeoutError

    monkeypatch.setattr(discord.http.HTTPClient, "static_login", static_login)
    monkeypatch.setattr(entry, "RETRY_DELAYS", (0.0,))
    assert main(["sync"]) == 1
    assert len(calls) == 2
    assert errors(capsys.readouterr().err)[-2] == (
        "error: Discord can't be reached after 2 tries over 0 s: no answer in time (timeout)."
    )


@pytest.mark.parametrize("guild", [None, "333"])
def test_missing_applications_commands_scope(env, discord_api, capsys, monkeypatch, guild):
    if guild:
        monkeypatch.setenv("DEV_GUILD_ID", guild)
    assert main(["sync"]) == 2
    where = f" in server {guild}" if guild else ""
    fix = (
        "invite the bot to that server with the scopes bot and applications.commands (README: "
        "Connect to Discord), or correct DEV_GUILD_ID."
        if guild
        else "invite the bot again with the scopes bot and applications.commands (README: "
        "Connect to Discord)."
    )
    assert errors(capsys.readouterr().err) == [
        f"error: Discord refused to register the slash commands{where} (403 Missing Access, "
        f"code 50001): {fix}"
    ]
    route = f"/applications/{APP_ID}/guilds/{guild}/commands" if guild else "/commands"
    assert any(line.startswith("PUT /api/v10") and route in line for line in discord_api)


def test_privileged_intents_not_switched_on(env, capsys, monkeypatch):
    async def login(self, token):  # the network part: logged in
        return None

    async def connect(self, *, reconnect=True):  # the gateway closes with 4014
        raise discord.PrivilegedIntentsRequired(None)

    monkeypatch.setattr(discord.Client, "login", login)
    monkeypatch.setattr(discord.Client, "connect", connect)
    assert main(["run"]) == 2
    assert errors(capsys.readouterr().err) == [
        "error: Discord refused the connection (close code 4014): the bot asks for a privileged "
        "intent that is not switched on; switch it on in the Developer Portal, Bot tab, "
        "Privileged Gateway Intents."
    ]


def test_a_model_that_fails_to_load_is_one_line(env, discord_api, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL", "models/dreamy.safetensors")
    assert main(["run"]) == 2
    assert errors(capsys.readouterr().err) == [
        "error: The checkpoint file models/dreamy.safetensors does not exist (looked for "
        f"{tmp_path / 'models' / 'dreamy.safetensors'})."
    ]
    assert f"GET /api/v10/users/@me Bot {TOKEN}" in discord_api  # it got that far


# -- the parts -------------------------------------------------------------------------------


def test_backoff_is_bounded(tmp_path):
    """The default schedule, with a sleep that only records: 6 tries, about a minute, then stop."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    base = f"http://127.0.0.1:{closed_port()}/api/v10"
    settings = Settings(
        discord_token=TOKEN, db_path=tmp_path / "db.sqlite3", data_dir=tmp_path / "data"
    )
    original = discord.http.Route.BASE
    discord.http.Route.BASE = base
    try:
        with pytest.raises(DiscordUnreachable) as caught:
            asyncio.run(start(settings, sync_only=True, sleep=sleep))
    finally:
        discord.http.Route.BASE = original
    assert slept == list(RETRY_DELAYS) and 30 <= sum(slept) <= 90
    assert caught.value.tries == len(RETRY_DELAYS) + 1
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)


def test_failures_that_are_not_the_network_are_never_retried(tmp_path):
    from pipeline.errors import ModelLoadError

    settings = Settings(discord_token=TOKEN)
    # A ModelLoadError is an OSError, but not a network one.
    assert entry.unreachable_reason(ModelLoadError("no model")) is None
    assert explain_start_failure(ModelLoadError("The model x is gone."), settings) == (
        "The model x is gone.",
        2,
    )
    assert explain_start_failure(RuntimeError("a bug"), settings) is None  # logged in full


def test_the_voice_warnings_are_dropped_and_other_warnings_kept(caplog):
    entry._silence_voice_warnings()
    logger = logging.getLogger("discord.client")
    with caplog.at_level(logging.WARNING, logger="discord"):
        logger.warning("PyNaCl is not installed, voice will NOT be supported")
        logger.warning("davey is not installed, voice will NOT be supported")
        logger.warning("Application has an interaction endpoint URL set")
    assert [r.getMessage() for r in caplog.records] == [
        "Application has an interaction endpoint URL set"
    ]


@pytest.mark.parametrize(
    ("environ", "proxy"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        ({"https_proxy": "http://p:1", "ALL_PROXY": "http://q:2"}, "http://p:1"),
        ({"ALL_PROXY": "http://q:2"}, "http://q:2"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "localhost,.discord.com"}, None),
        ({"HTTPS_PROXY": "http://p:1", "no_proxy": "*"}, None),
    ],
)
def test_discord_proxy_comes_from_the_environment(environ, proxy):
    assert discord_proxy(environ) == proxy


def test_only_network_errors_are_retried():
    assert entry.unreachable_reason(PermissionError(13, "Permission denied")) is None
    assert entry.unreachable_reason(ConnectionResetError(104, "reset")) == "[Errno 104] reset"
    assert entry.unreachable_reason(TimeoutError()) == "no answer in time (timeout)"


def test_gateway_close_codes_are_explained():
    class Socket:  # what discord.ConnectionClosed reads from the closed websocket
        close_code = 4004

    settings = Settings(discord_token=TOKEN)
    refused = explain_start_failure(discord.ConnectionClosed(Socket(), shard_id=None), settings)
    assert refused == explain_start_failure(discord.LoginFailure(), settings)
    Socket.close_code = 4013
    message, code = explain_start_failure(
        discord.ConnectionClosed(Socket(), shard_id=None), settings
    ) or ("", 0)
    assert message.startswith("Discord closed the gateway connection (close code 4013")
    assert code == 1


def test_gateway_reconnects_are_logged_in_one_line_unless_debug(caplog):
    entry._silence_voice_warnings()
    logger = logging.getLogger("discord.client")
    root = logging.getLogger()
    level = root.level
    try:
        for root_level in (logging.INFO, logging.DEBUG):
            root.setLevel(root_level)
            caplog.clear()
            try:
                raise aiohttp.ClientConnectorDNSError(
                    aiohttp.client_reqrep.ConnectionKey(
                        "gateway.discord.gg", 443, True, True, None, None, None
                    ),
                    socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
                )
            except aiohttp.ClientError:
                logger.exception("Attempting a reconnect in %.2fs", 1.5)
            (record,) = caplog.records
            if root_level == logging.INFO:
                assert (record.levelname, record.exc_info) == ("WARNING", None)
                assert record.getMessage() == (
                    "the connection to Discord dropped (the name gateway.discord.gg can't be "
                    "resolved (DNS: Name or service not known)); reconnecting in 1.50s"
                )
            else:
                assert record.levelname == "ERROR" and record.exc_info is not None
    finally:
        root.setLevel(level)
