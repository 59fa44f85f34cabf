"""Settings, upload fitting and log redaction: the bot's small parts, without Discord."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.app import RedactingFormatter, create_bot
from bot.render import fit_upload
from bot.settings import Settings, SettingsError
from pipeline.pngmeta import png_bytes, read_parameters


def test_settings_from_env_reads_every_field_and_explains_bad_values(tmp_path: Path):
    env = {
        "DISCORD_TOKEN": "abc",
        "MODEL": "tiny:ldm",
        "DB_PATH": str(tmp_path / "x.sqlite3"),
        "DATA_DIR": str(tmp_path / "d"),
        "MAX_QUEUED_PER_USER": "5",
        "DEFAULT_GUIDANCE": "7.5",
        "DEV_GUILD_ID": "123",
        "MAX_BATCH": "",
    }
    s = Settings.from_env(env)
    assert s.discord_token == "abc" and s.model == "tiny:ldm"
    assert s.db_path == tmp_path / "x.sqlite3" and s.max_queued_per_user == 5
    assert s.default_guidance == 7.5 and s.dev_guild_id == 123 and s.max_batch == 4
    assert "abc" not in repr(s)
    with pytest.raises(SettingsError, match="MAX_QUEUE must be a whole number; got 'lots'"):
        Settings.from_env({"MAX_QUEUE": "lots"})


def test_env_example_documents_every_setting():
    example = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    for name in Settings.__dataclass_fields__:
        assert f"{name.upper()}=" in example, name


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text("MODEL=tiny:ldm\nMAX_BATCH=2\n")
    monkeypatch.setenv("MAX_BATCH", "3")
    monkeypatch.delenv("MODEL", raising=False)
    s = Settings.from_env(dotenv=dotenv)
    assert s.model == "tiny:ldm" and s.max_batch == 3


def test_building_the_bot_does_no_io(tmp_path: Path):
    create_bot(Settings(model="tiny:sd", db_path=tmp_path / "x.sqlite3", data_dir=tmp_path / "d"))
    assert list(tmp_path.iterdir()) == []


def test_a_png_over_the_upload_limit_is_shrunk_and_keeps_its_settings():
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise), "a cat\nSteps: 4, Sampler: DDIM, Seed: 1")
    assert len(data) > 700_000
    upload = fit_upload(data, 200_000, "x.png")
    assert upload is not None and upload.scaled and len(upload.data) <= 200_000
    assert read_parameters(upload.data) == "a cat\nSteps: 4, Sampler: DDIM, Seed: 1"
    assert Image.open(io.BytesIO(upload.data)).size[0] < 512
    small = fit_upload(data, len(data), "x.png")
    assert small is not None and small.data == data and not small.scaled
    assert fit_upload(data, 100, "x.png") is None


def test_the_token_never_reaches_the_log():
    formatter = RedactingFormatter("%(message)s", "tok.en.secret")
    try:
        raise RuntimeError("login failed for tok.en.secret")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "using %s", ("tok.en.secret",), exc_info=True
        )
        import sys

        record.exc_info = sys.exc_info()
    text = formatter.format(record)
    assert "tok.en.secret" not in text and "RuntimeError: login failed for [redacted]" in text
