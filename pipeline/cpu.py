"""Torch's CPU threading, configured once, before torch is first imported.

Torch's OpenMP threads spin while they wait for work. On a small or shared CPU they spin on cores
another process needs, and a drawing that takes 1.6 s on an idle 2-core machine took 11.6 s while
one other process kept one core busy. ``configure_cpu_threads()`` (called first thing by
``python -m bot`` and ``python -m pipeline``) makes waiting threads sleep (``OMP_WAIT_POLICY=
PASSIVE``) and sizes torch's thread pool: ``TORCH_THREADS`` if set, else one thread per physical
core this process may use, except one thread for the built-in tiny models (their operations are
too small to share; waking a sleeping helper for each one made them 2.5x slower).

The OpenMP runtime reads its environment once, when torch loads it: after ``import torch`` only
the thread count can still change. Pictures depend on torch's thread count (see DESIGN.md), so
the count is fixed once per process: later calls return the first configuration.
``EASEL_CPU_CONFIG=0`` leaves torch's own defaults (``bench/cpu_threads.py`` uses it to measure
the "before").
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

log = logging.getLogger(__name__)

SWITCH = "EASEL_CPU_CONFIG"
WAIT_POLICY = "PASSIVE"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CPU_TOPOLOGY = Path("/sys/devices/system/cpu")


class CpuConfigError(ValueError):
    """TORCH_THREADS (or the thread count given) is not a whole number of at least 1."""


@dataclass(frozen=True)
class CpuThreads:
    """How torch computes on the CPU in this process."""

    # Torch's intra-op threads; None when the configuration is off (torch's own default).
    threads: int | None
    # Where ``threads`` came from: "setting" (the argument), "TORCH_THREADS", "OMP_NUM_THREADS",
    # "built-in tiny model", "usable cores" or "off".
    source: str
    # The CPUs this process may use (affinity mask, capped by a cgroup CPU quota), and the
    # physical cores under them.
    cpus: int
    cores: int
    # OMP_WAIT_POLICY as OpenMP sees it (None: the runtime's default, threads spin a while).
    wait_policy: str | None
    # The environment variables this configuration set.
    env: dict[str, str] = field(default_factory=dict)
    # True when torch was imported before the configuration: only the thread count applied.
    late: bool = False

    def describe(self) -> str:
        if self.threads is None:
            return f"torch CPU threads: torch's defaults ({SWITCH}=0)"
        policy = self.wait_policy or "OpenMP's default"
        text = f"torch CPU threads: {self.threads} ({self.source}), OMP_WAIT_POLICY={policy}"
        return text + " (torch was imported first: set late)" * self.late


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX, topology: Path = CPU_TOPOLOGY) -> tuple[int, int]:
    """The CPUs this process may run on, and the physical cores they sit on.

    The CPUs are the affinity mask (``taskset``, container cpusets), capped by a cgroup v2 CPU
    quota (``docker --cpus``); hyperthread siblings count once in the cores.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    try:
        seen = set()
        for n in cpus:
            top = topology / f"cpu{n}" / "topology"
            package = (top / "physical_package_id").read_text().strip()
            seen.add((package, (top / "core_id").read_text().strip()))
        cores = len(seen)
    except OSError:
        cores = len(cpus)
    count = len(cpus)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            limit = max(1, int(quota) // int(period))
            count, cores = min(count, limit), min(cores, limit)
    except (OSError, ValueError):
        pass
    return max(1, count), max(1, min(cores, count))


def _whole(name: str, raw: str | int) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise CpuConfigError(f"{name} must be a whole number of at least 1; got {raw!r}.")
    return value


def overhead_bound(model: str | None) -> bool:
    """Whether ``model`` is one of the built-in tiny models, bound by Python overhead.

    Their operations are too small to share between threads: a second thread only adds the cost
    of waking it (2.5x slower on an idle 2-core VM with sleeping waiters), so they get one thread.
    """
    return model is not None and model.startswith("tiny:")


def plan_cpu_threads(
    threads: int | None = None,
    environ: Mapping[str, str] | None = None,
    cpus: tuple[int, int] | None = None,
    *,
    model: str | None = None,
) -> CpuThreads:
    """Decide the configuration without applying it.

    ``environ`` defaults to ``os.environ``; ``cpus`` to ``usable_cpus()``. The thread count:
    ``threads`` if given, else ``TORCH_THREADS``, else a user-set ``OMP_NUM_THREADS``, else 1
    for a built-in tiny ``model`` and one per physical core this process may use for any other.
    Raises CpuConfigError for a bad count.
    """
    env = os.environ if environ is None else environ
    n_cpus, n_cores = usable_cpus() if cpus is None else cpus
    if env.get(SWITCH, "").strip() == "0":
        policy = env.get("OMP_WAIT_POLICY", "").strip() or None
        return CpuThreads(None, "off", n_cpus, n_cores, policy)
    if threads is not None:
        count, source = _whole("TORCH_THREADS", threads), "setting"
    elif env.get("TORCH_THREADS", "").strip():
        count, source = _whole("TORCH_THREADS", env["TORCH_THREADS"]), "TORCH_THREADS"
    elif env.get("OMP_NUM_THREADS", "").strip():
        count, source = _whole("OMP_NUM_THREADS", env["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    elif overhead_bound(model):
        count, source = 1, "built-in tiny model"
    else:
        count, source = n_cores, "usable cores"
    changes: dict[str, str] = {}
    if not env.get("OMP_WAIT_POLICY", "").strip():
        changes["OMP_WAIT_POLICY"] = WAIT_POLICY
    # An explicit count wins over OMP_NUM_THREADS; otherwise fill in what the user left unset.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        explicit = source in ("setting", "TORCH_THREADS")
        if (explicit or not env.get(name, "").strip()) and env.get(name) != str(count):
            changes[name] = str(count)
    policy = changes.get("OMP_WAIT_POLICY") or env.get("OMP_WAIT_POLICY", "").strip()
    return CpuThreads(count, source, n_cpus, n_cores, policy, changes)


_configured: CpuThreads | None = None


def configure_cpu_threads(threads: int | None = None, *, model: str | None = None) -> CpuThreads:
    """Configure torch's CPU threads for this process; call it before anything imports torch.

    ``threads`` overrides ``TORCH_THREADS``; ``model`` (the one the process will draw with)
    picks the default, see ``plan_cpu_threads``. Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user
    set a policy, and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``. If torch is already imported,
    sets ``torch.set_num_threads`` and warns that the wait policy could not apply. Only the first
    call configures: later ones return its result (the thread count changes the pictures' bits).
    """
    global _configured
    if _configured is not None:
        if threads is not None and threads != _configured.threads:
            log.warning(
                "torch CPU threads already configured (%s); keeping it", _configured.describe()
            )
        return _configured
    plan = plan_cpu_threads(threads, model=model)
    if plan.threads is None:
        _configured = plan
        return plan
    os.environ.update(plan.env)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(plan.threads)
        missed = "OMP_WAIT_POLICY" in plan.env  # set now, but OpenMP read its environment
        policy = None if missed else plan.wait_policy
        plan = replace(plan, wait_policy=policy, late=True)
        if missed:
            log.warning(
                "torch was imported before its CPU threads were configured: %d threads, but "
                "OMP_WAIT_POLICY=%s did not apply (waiting threads still spin)",
                plan.threads,
                WAIT_POLICY,
            )
    _configured = plan
    log.debug("%s", plan.describe())
    return plan
