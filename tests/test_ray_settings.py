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
        ("GPUS_PER_WORKER", "-1", "GPUS_PER_WORKER must be 0 (draw on CPUs), a share of one"),
        (
            "WORKER_TIMEOUT_S",
            "0",
            "WORKER_TIMEOUT_S must be a finite number of seconds, more than 0; got 0.",
        ),
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
        RayBackend(WorkerSpec.single("tiny:sd")).connect()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RAY_ADDRESS", "auto"),
        ("WORKERS", "3"),
        ("GPUS_PER_WORKER", "0"),
        ("WORKER_TIMEOUT_S", "60"),
    ],
)
def test_ray_settings_with_the_local_executor_are_refused(name, value, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=rf"^{name} only apply with EXECUTOR=ray; "):
        Settings.from_env(dotenv=None)
    monkeypatch.setenv("EXECUTOR", "ray")
    assert Settings.from_env(dotenv=None).executor == "ray"


def test_ray_settings_left_at_their_defaults_are_fine_with_the_local_executor():
    # As .env.example writes them: the defaults, spelled out.
    env = {"EXECUTOR": "local", "WORKERS": "1", "GPUS_PER_WORKER": "1", "WORKER_TIMEOUT_S": "300"}
    assert Settings.from_env(env, dotenv=None).executor == "local"
    with pytest.raises(SettingsError, match=r"^WORKERS, GPUS_PER_WORKER only apply with"):
        Settings(workers=2, gpus_per_worker=0.5)


@pytest.mark.parametrize("value", ["0.00001", "0.00009", "1.5", "inf", "nan"])
def test_a_gpu_share_ray_can_not_place_is_refused(value):
    with pytest.raises(
        SettingsError, match=r"^GPUS_PER_WORKER must be 0 \(draw on CPUs\), a share"
    ):
        Settings.from_env({"EXECUTOR": "ray", "GPUS_PER_WORKER": value}, dotenv=None)


@pytest.mark.parametrize("value", ["0", "0.0001", "0.25", "1", "2", "8"])
def test_gpu_shares_ray_can_place_are_accepted(value):
    s = Settings.from_env({"EXECUTOR": "ray", "GPUS_PER_WORKER": value}, dotenv=None)
    assert s.gpus_per_worker == float(value)


@pytest.mark.parametrize("value", ["inf", "nan", "-5"])
def test_a_worker_timeout_that_is_not_a_finite_positive_number_is_refused(value):
    with pytest.raises(
        SettingsError,
        match=r"^WORKER_TIMEOUT_S must be a finite number of seconds, more than 0; got",
    ):
        Settings.from_env({"EXECUTOR": "ray", "WORKER_TIMEOUT_S": value}, dotenv=None)


def test_gpus_per_worker_0_loads_the_model_on_the_cpu_when_the_device_is_auto():
    on_cpu = RayBackend(WorkerSpec.single("tiny:sd"), gpus_per_worker=0)._worker_spec()
    assert on_cpu.device == "cpu"
    on_gpu = RayBackend(WorkerSpec.single("tiny:sd"), gpus_per_worker=0.5)._worker_spec()
    assert on_gpu.device == "auto"
    chosen = RayBackend(WorkerSpec.single("tiny:sd", device="cuda:1"), gpus_per_worker=0)
    assert chosen._worker_spec().device == "cuda:1"  # said outright: kept (and fails there)


@pytest.mark.parametrize("fault", [ValueError("bad resource"), KeyboardInterrupt()])
def test_a_failed_start_shuts_down_the_ray_it_started(fault, monkeypatch):
    ray = pytest.importorskip("ray")
    calls: list[str] = []
    state = {"up": False}

    def init(**kw) -> None:  # stands in for starting Ray, which then fails the start
        calls.append(f"init {kw['address']}")
        state["up"] = True

    def shutdown() -> None:
        calls.append("shutdown")
        state["up"] = False

    def cluster_resources() -> dict[str, float]:
        raise fault

    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    monkeypatch.setattr(ray, "cluster_resources", cluster_resources)
    backend = RayBackend(WorkerSpec.single("tiny:sd"), gpus_per_worker=0)
    with pytest.raises(type(fault)):
        backend.connect()
    # "local": a Ray of its own, not one that `ray start` runs on this machine.
    assert calls == ["init local", "shutdown"] and not backend._owns_ray


def test_a_worker_spec_names_its_default_model_and_refuses_one_it_does_not_load():
    from pipeline.models import ModelSpec

    two = (ModelSpec("shapes", "tiny:shapes"), ModelSpec("sd", "tiny:sd"))
    assert WorkerSpec(two).default_model == "shapes"  # none given: the first
    assert WorkerSpec(two, default_model="sd", max_resident=1).default_model == "sd"
    assert WorkerSpec.single("tiny:sd").models == (ModelSpec("tiny:sd", "tiny:sd"),)
    with pytest.raises(ValueError, match="the default model 'ldm' is not among shapes, sd"):
        WorkerSpec(two, default_model="ldm")
    with pytest.raises(TypeError, match=r"WorkerSpec\.single\('tiny:sd'\)"):
        WorkerSpec("tiny:sd")  # type: ignore[arg-type]  # the one-model form of before
