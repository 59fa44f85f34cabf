"""EXECUTOR=ray's settings and start-up errors; none of these needs Ray installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bot.__main__ import main
from bot.settings import Settings, SettingsError
from pipeline.ray_backend import RayBackend, WorkerSpec, WorkersUnavailable


def test_ray_settings_are_read_from_the_environment():
    s = Settings.from_env(
        {
            "EXECUTOR": "Ray",
            "RAY_ADDRESS": "auto",
            "WORKERS": "3",
            "GPUS_PER_WORKER": "0.5",
            "WORKER_TIMEOUT_S": "90",
        },
        dotenv=None,
    )
    assert (s.executor, s.ray_address, s.workers, s.gpus_per_worker, s.worker_timeout_s) == (
        "ray",
        "auto",
        3,
        0.5,
        90.0,
    )
    assert Settings().executor == "local"  # the default: one thread in this process


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("EXECUTOR", "gpu", "EXECUTOR must be local or ray; got 'gpu'."),
        ("WORKERS", "0", "WORKERS must be at least 1; got 0."),
        ("WORKERS", "two", "WORKERS must be a whole number; got 'two'."),
        ("GPUS_PER_WORKER", "-1", "GPUS_PER_WORKER must be 0 (draw on CPUs) or more"),
        ("WORKER_TIMEOUT_S", "0", "WORKER_TIMEOUT_S must be more than 0 seconds; got 0."),
    ],
)
def test_a_bad_ray_setting_stops_the_start_with_one_line(
    name, value, message, monkeypatch, tmp_path: Path, capsys
):
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(dotenv=None)
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_executor_ray_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(WorkersUnavailable, match=r"pip install 'ray==2\.60\.0'"):
        RayBackend(WorkerSpec("tiny:sd")).connect()
