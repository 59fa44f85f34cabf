"""Torch's CPU threads (pipeline/cpu.py): configured before torch loads, by both entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cpu import CpuConfigError, plan_cpu_threads, usable_cpus

ROOT = Path(__file__).resolve().parent.parent
THREAD_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_THREADS")
CPUS = (4, 2)  # 4 usable CPUs on 2 physical cores


# -- the decision, without torch ----------------------------------------------------------


def test_default_is_one_thread_per_usable_core_with_sleeping_waiters():
    plan = plan_cpu_threads(environ={}, cpus=CPUS)
    assert (plan.threads, plan.source, plan.wait_policy) == (2, "usable cores", "PASSIVE")
    assert plan.env == {
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }


def test_the_built_in_tiny_models_get_one_thread_unless_told_otherwise():
    plan = plan_cpu_threads(environ={}, cpus=CPUS, model="tiny:shapes")
    assert (plan.threads, plan.source) == (1, "built-in tiny model")
    assert plan.env["OMP_NUM_THREADS"] == "1"
    plan = plan_cpu_threads(environ={"TORCH_THREADS": "2"}, cpus=CPUS, model="tiny:shapes")
    assert (plan.threads, plan.source) == (2, "TORCH_THREADS")
    assert plan_cpu_threads(environ={}, cpus=CPUS, model="CompVis/ldm").threads == 2


def test_torch_threads_wins_over_omp_num_threads_and_a_setting_over_both():
    env = {"TORCH_THREADS": "3", "OMP_NUM_THREADS": "7"}
    plan = plan_cpu_threads(environ=env, cpus=CPUS)
    assert (plan.threads, plan.source) == (3, "TORCH_THREADS")
    assert plan.env["OMP_NUM_THREADS"] == plan.env["MKL_NUM_THREADS"] == "3"
    plan = plan_cpu_threads(5, environ=env, cpus=CPUS)
    assert (plan.threads, plan.source, plan.env["OMP_NUM_THREADS"]) == (5, "setting", "5")


def test_what_the_user_set_for_openmp_is_kept():
    env = {"OMP_WAIT_POLICY": "active", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "1"}
    plan = plan_cpu_threads(environ=env, cpus=CPUS)
    assert (plan.threads, plan.source, plan.wait_policy) == (3, "OMP_NUM_THREADS", "active")
    assert plan.env == {}


def test_the_switch_leaves_torch_defaults():
    plan = plan_cpu_threads(4, environ={"EASEL_CPU_CONFIG": "0"}, cpus=CPUS)
    assert (plan.threads, plan.env) == (None, {})
    assert "torch's defaults" in plan.describe()


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_refused(bad):
    with pytest.raises(CpuConfigError, match="TORCH_THREADS must be a whole number"):
        plan_cpu_threads(environ={"TORCH_THREADS": bad}, cpus=CPUS)


def test_usable_cpus_counts_cores_once_and_obeys_a_cgroup_quota(tmp_path: Path):
    affinity = sorted(os.sched_getaffinity(0))
    topology = tmp_path / "cpu"
    for n in affinity:  # hyperthread pairs: cpu0+cpu1 on core 0, cpu2+cpu3 on core 1, ...
        top = topology / f"cpu{n}" / "topology"
        top.mkdir(parents=True)
        (top / "physical_package_id").write_text("0\n")
        (top / "core_id").write_text(f"{n // 2}\n")
    cores = len({n // 2 for n in affinity})
    no_quota = tmp_path / "none"
    assert usable_cpus(no_quota, topology) == (len(affinity), cores)
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert usable_cpus(quota, topology) == (len(affinity), cores)
    quota.write_text("50000 100000\n")  # half a CPU still gets one thread
    assert usable_cpus(quota, topology) == (1, 1)
    assert usable_cpus(no_quota, tmp_path / "missing") == (len(affinity), len(affinity))


# -- in real processes: before torch, in the worker thread, through both entry points -----

PROBE = """
import json, os, sys, threading, logging
logging.basicConfig(level=logging.WARNING)
from pipeline.cpu import configure_cpu_threads
if {late}:
    import torch
before = "torch" in sys.modules
plan = configure_cpu_threads({threads})
import torch
seen = {{}}
t = threading.Thread(target=lambda: seen.update(worker=torch.get_num_threads()))
t.start(); t.join()
print(json.dumps({{"torch_before": before, "main": torch.get_num_threads(), **seen,
    "late": plan.late, "policy": os.environ.get("OMP_WAIT_POLICY"), "describe": plan.describe()}}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.pop("EASEL_CPU_CONFIG", None)
    return {**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **extra}


def probe(*, late: bool = False, threads: int | None = None, cpu0: bool = False, **env: str):
    code = PROBE.format(late=late, threads=threads)
    preexec = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if cpu0 else None
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        preexec_fn=preexec,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def test_one_usable_cpu_means_one_thread_in_the_worker_thread_too():
    # Torch's own default would still be one thread per core of the machine.
    seen, _ = probe(cpu0=True)
    assert seen == {
        "torch_before": False,
        "main": 1,
        "worker": 1,
        "late": False,
        "policy": "PASSIVE",
        "describe": "torch CPU threads: 1 (usable cores), OMP_WAIT_POLICY=PASSIVE",
    }


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to differ from the default")
def test_torch_threads_reaches_torch_and_a_late_call_still_sets_the_count():
    # (Torch caps a thread count it reads from the environment at the machine's CPU count.)
    seen, _ = probe(TORCH_THREADS="1")
    assert (seen["main"], seen["worker"], seen["late"]) == (1, 1, False)
    seen, stderr = probe(late=True, threads=3)
    assert (seen["torch_before"], seen["main"], seen["worker"], seen["late"]) == (True, 3, 3, True)
    assert "OMP_WAIT_POLICY=PASSIVE did not apply" in stderr


# Runs an entry point as `python -m MODULE ARGS`, recording whether torch was loaded when the
# configuration ran, and what torch and the environment say at the end.
ENTRY = """
import json, os, runpy, sys
import pipeline.cpu as cpu
real, seen = cpu.configure_cpu_threads, {{}}
def spy(*args, **kwargs):
    seen["torch_before"] = "torch" in sys.modules
    return real(*args, **kwargs)
cpu.configure_cpu_threads = spy
sys.argv = ["-m"] + {args!r}
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    seen["exit"] = exc.code
torch = sys.modules.get("torch")
seen["threads"] = torch.get_num_threads() if torch else None
seen.update({{k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}})
print("ENTRY " + json.dumps(seen))
"""


def entry(module: str, args: list[str], cwd: Path, **env: str) -> dict[str, object]:
    code = ENTRY.format(module=module, args=args)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("ENTRY ")), None)
    assert line is not None, done.stdout + done.stderr
    return json.loads(line.removeprefix("ENTRY "))


def test_the_command_line_draws_configured(tmp_path: Path):
    args = ["draw", "a red circle", "--model", "tiny:shapes", "--steps", "2", "--seed", "1"]
    seen = entry("pipeline", [*args, "-o", str(tmp_path / "x.png")], tmp_path)
    assert seen == {
        "torch_before": False,
        "exit": 0,
        "threads": 1,
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
    }
    assert (tmp_path / "x.png").is_file()


def test_the_bot_configures_from_its_settings_before_torch(tmp_path: Path):
    # `python -m bot run` without a token stops after its settings, where the preview and
    # Discord modes start: TORCH_THREADS comes from .env like every setting (without it, the
    # default model would get one thread per core).
    (tmp_path / ".env").write_text("TORCH_THREADS=1\n")
    seen = entry("bot", ["run"], tmp_path, DISCORD_TOKEN="")
    assert seen.pop("threads") in (None, 1)  # 1 if anything loaded torch by then
    assert seen == {
        "torch_before": False,
        "exit": 2,
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
    }
    (tmp_path / ".env").write_text("TORCH_THREADS=0\n")
    done = subprocess.run(
        [sys.executable, "-m", "bot", "run"],
        cwd=tmp_path,
        env=clean_env(DISCORD_TOKEN=""),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "error: TORCH_THREADS must be a whole number of at least 1; got 0." in done.stderr
