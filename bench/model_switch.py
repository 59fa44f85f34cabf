"""What switching between models costs at real size: loading, evicting, bringing back, drawing.

The bot can serve several models (``MODELS``) and keeps ``MAX_RESIDENT_MODELS`` of them ready on
the device (``pipeline.models.ModelSet``); the one least recently used gives way to the next one
needed. The design claim measured here: on a GPU an evicted model is kept in CPU memory, because
moving it back is faster than reading it from the disk; on a CPU device eviction drops the weights
(they are in CPU memory already) and bringing the model back reads the disk.

SD 1.5 and LDM-256 are built at real size from their published configs with random weights by
``bench/real_size.py`` (its builder, saved to a temporary folder), then measured through Easel as
the bot uses it, each part in a fresh process so that memory peaks don't mix:

* per model, ``Engine``: a cold load (``Engine.load`` of the folder); ``evict(keep_in_cpu_memory=
  False)`` and ``bring_back()`` from the disk, with the files in the page cache and out of it;
  ``evict(keep_in_cpu_memory=True)`` and ``bring_back()`` (from CPU memory on CUDA). On the CPU,
  loading maps the saved files into memory instead of reading them (the tensors are backed by
  the files' pages), so each load there is followed by a row reading every weight once: what
  the first drawing after it would otherwise pay, timed apart;
* both models in one ``ModelSet`` with ``max_resident=1``: ``ModelSet.load``, a drawing with the
  model ready, ``ensure`` of the other model (a switch), its first drawing after the switch, one
  with it ready, the switch back and the first drawing after that.

Every row gives the seconds (wall clock and the process's CPU time), where the weights are
after (``Engine.placement``), resident memory after the step and its peak during it (what keeping
evicted weights in CPU memory costs), GPU memory on CUDA and ``Engine.weight_bytes()``. A computed
conclusion follows the table. ``--quick`` keeps a run on a 2-core CPU to minutes: the CPU
drawings take fewer steps; sizes stay real.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The builder, the process runner and the memory probes come from real_size.py, which also
# configures torch's CPU threads before torch loads (as the bot does).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_size
from real_size import MODELS, NO_CUDA, PROMPT, Runner, peak_rss_mb, reset_peak_rss

# The names the two models go by in the ModelSet, as in MODELS=sd15=...,ldm=...
NAMES = {"sd": "sd15", "ldm": "ldm"}
# SD 1.5 is the model the design claim is about (it is the one people run); LDM-256 is the other
# model of the switch, and its own rows are measured too.
MAIN_MODEL = "sd"
STEPS = 20
# What --quick draws on the CPU: a real-size SD 1.5 step takes tens of seconds on a 2-core CPU,
# and the rows here are about loading, which does not depend on the steps.
QUICK_STEPS = 1
NO_PAGE_CACHE_DROP = "not run: the page cache cannot be dropped here"
# What the switching process draws first, untimed: it pays the process's first-call costs so
# that the "ready" drawing after it is a fair baseline.
WARM_UP_SIZE, WARM_UP_STEPS = 64, 1


@dataclass
class Step:
    """One row of the table: one thing done to a model, and what it cost."""

    setup: str  # "cpu fp32" or "cuda fp16"
    model: str  # the label of the model the step is about
    step: str  # what was done, in words
    key: str = ""  # what the conclusion looks the row up by
    seconds: float = math.nan
    # CPU time of the whole process (all threads) over the step: steadier than the wall clock
    # where other jobs share the CPU, but blind to waiting for the disk.
    cpu_s: float = math.nan
    placement: str = ""  # where the weights are after the step
    rss_mb: float = math.nan  # resident memory of the process after the step
    peak_rss_mb: float = math.nan  # its high-water mark during the step
    gpu_mb: float = math.nan  # torch.cuda.memory_allocated after the step (CUDA only)
    peak_gpu_mb: float = math.nan  # torch.cuda.max_memory_allocated during the step
    weights_mb: float = math.nan  # Engine.weight_bytes() of the model after the step
    skipped: str | None = None
    note: str = ""


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB; NaN where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def drop_page_cache(folder: str) -> bool:
    """Ask the kernel to forget the cached pages of ``folder``'s files, so the next read comes
    from the disk, as after days of uptime or under memory pressure. False where it can't be
    asked (no ``posix_fadvise``: not Linux)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return False
    for path in Path(folder).rglob("*"):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # pages not yet written out (the folder was just saved) can't be dropped
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


class Recorder:
    """Times steps in this process and notes the memory around each one."""

    def __init__(self, setup: str, device: str) -> None:
        import torch

        self.setup = setup
        self.cuda = device == "cuda"
        self.rows: list[Step] = []
        self._torch = torch
        # Without /proc/self/clear_refs the peaks add up from the start of the process.
        self.peaks_apart = True

    def _sync(self) -> None:
        if self.cuda:
            self._torch.cuda.synchronize()

    def step(
        self,
        key: str,
        model: str,
        label: str,
        action: Callable[[], Any],
        *,
        placement: Callable[[Any], str],
        weights: Callable[[Any], int],
    ) -> Any:
        """Run ``action`` as one timed row; return what it returned. ``placement`` and
        ``weights`` are read after it, from what it returned (a freshly loaded engine, say)."""
        self.peaks_apart = reset_peak_rss() and self.peaks_apart
        if self.cuda:
            self._torch.cuda.reset_peak_memory_stats()
        self._sync()
        started, cpu_started = time.perf_counter(), time.process_time()
        out = action()
        self._sync()
        seconds = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        row = Step(
            self.setup,
            model,
            label,
            key=key,
            seconds=seconds,
            cpu_s=cpu_s,
            placement=placement(out),
            rss_mb=rss_mb(),
            peak_rss_mb=peak_rss_mb(),
            weights_mb=weights(out) / 2**20,
        )
        if self.cuda:
            row.gpu_mb = self._torch.cuda.memory_allocated() / 2**20
            row.peak_gpu_mb = self._torch.cuda.max_memory_allocated() / 2**20
        self.rows.append(row)
        return out

    def skip(self, key: str, model: str, label: str, why: str) -> None:
        self.rows.append(Step(self.setup, model, label, key=key, skipped=why))

    def fields(self) -> list[dict[str, Any]]:
        """The rows as plain fields, for the trip back from a measuring process."""
        if not self.peaks_apart:
            for row in self.rows:
                row.note = "peak RSS since the process started (no /proc/self/clear_refs)"
        return [asdict(row) for row in self.rows]


def _quiet() -> None:
    from pipeline.engine import quiet_library_logs

    quiet_library_logs(download_progress=False)
    # Random weights can overflow to NaN in the decoder; numpy then warns while casting.
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")


def setup_label(device: str) -> str:
    """How Engine.load runs on ``device``: fp16 on CUDA, fp32 on the CPU."""
    return f"{device} {'fp16' if device == 'cuda' else 'fp32'}"


# -- one model: evict and bring back -------------------------------------------------------


def read_every_weight(engine: Any) -> None:
    """Read one value in every memory page of every weight of ``engine``, as its first drawing
    would.

    On the CPU, Engine.load maps the saved safetensors files into memory (the tensors are backed
    by the files' pages) rather than reading them: loading returns in a fraction of a second, and
    the disk, or the page cache, is read page by page when a weight is first used. This pays that
    read where it can be timed apart from the drawing.
    """
    import torch

    page = 4096
    with torch.inference_mode():
        for component in engine.pipe.components.values():
            parameters = getattr(component, "parameters", None)
            if not callable(parameters):
                continue
            for p in parameters():
                flat = p.detach().reshape(-1)
                flat[:: max(1, page // p.element_size())].sum().item()


def evict_cycle(model: str, device: str, folder: str) -> list[dict[str, Any]]:
    """Load ``model``'s ``folder`` with ``Engine.load``, then evict it and bring it back each
    way, in this process; the rows as plain fields.

    On the CPU each load is followed by a row reading every weight once (the weights are mapped,
    not read, by the load: see ``read_every_weight``); on CUDA the load copies them to the GPU,
    which reads them, so there is no such row.
    """
    import torch

    from pipeline.engine import Engine

    _quiet()
    label = MODELS[model].label
    rec = Recorder(setup_label(device), device)
    if device == "cuda" and not torch.cuda.is_available():
        rec.skip("all", label, "every step", NO_CUDA)
        return rec.fields()
    engine: Engine = rec.step(
        "load",
        label,
        "cold load: Engine.load of the saved folder",
        lambda: Engine.load(folder, device=device, name=NAMES[model]),
        placement=lambda loaded: loaded.placement,
        weights=lambda loaded: loaded.weight_bytes(),
    )

    def where(_: Any) -> str:
        return engine.placement

    def size(_: Any) -> int:
        return engine.weight_bytes()

    def then_read(key: str, how: str) -> None:
        if device == "cpu":
            rec.step(f"read_{key}", label, f"+ first read of every weight{how}",
                     lambda: read_every_weight(engine), placement=where, weights=size)  # fmt: skip

    then_read("load", "")
    rec.step(
        "evict_drop",
        label,
        "evict(keep_in_cpu_memory=False)",
        lambda: engine.evict(keep_in_cpu_memory=False),
        placement=where,
        weights=size,
    )
    rec.step(
        "back_disk",
        label,
        "bring_back() from disk, files in the page cache",
        engine.bring_back,
        placement=where,
        weights=size,
    )
    then_read("back_disk", "")
    engine.evict(keep_in_cpu_memory=False)
    if drop_page_cache(folder):
        rec.step(
            "back_disk_cold",
            label,
            "bring_back() from disk, files dropped from the page cache",
            engine.bring_back,
            placement=where,
            weights=size,
        )
        then_read("back_disk_cold", " (from the disk)")
    else:
        rec.skip("back_disk_cold", label, "bring_back() from disk, out of the page cache",
                 NO_PAGE_CACHE_DROP)  # fmt: skip
        engine.bring_back()
    rec.step(
        "evict_cpu",
        label,
        "evict(keep_in_cpu_memory=True)",
        lambda: engine.evict(keep_in_cpu_memory=True),
        placement=where,
        weights=size,
    )
    # On a CPU device evict(keep_in_cpu_memory=True) drops the weights like False does (they are
    # in CPU memory already: there is nowhere cheaper to keep them); the row says which it was.
    kept = engine.placement == "cpu"
    key = "back_cpu" if kept else "back_after_keep"
    rec.step(
        key,
        label,
        "bring_back() from CPU memory"
        if kept
        else f"bring_back() from disk (keep_in_cpu_memory=True left it {engine.placement})",
        engine.bring_back,
        placement=where,
        weights=size,
    )
    then_read(key, "")
    return rec.fields()


# -- two models in a ModelSet: switching --------------------------------------------------


@dataclass(frozen=True)
class Drawing:
    """What each measured drawing of the switching process is."""

    steps: int
    sizes: dict[str, int]  # per model key


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _request(model: str, steps: int, size: int) -> Any:
    from pipeline.request import DrawRequest

    return DrawRequest(
        PROMPT,
        steps=steps,
        guidance=MODELS[model].guidance,
        seed=1,
        width=size,
        height=size,
        model=NAMES[model],
    )


def _placements(models: Any) -> str:
    """Where each model of a ModelSet is, as "sd15: device, ldm: unloaded"."""
    return ", ".join(f"{n}: {models.placement(n)}" for n in models.names)


def _weight_bytes(models: Any) -> int:
    """The weights a ModelSet holds in memory, device and CPU together."""
    return sum(models.engine(n).weight_bytes() for n in models.names)


def switch_cycle(device: str, folders: dict[str, str], drawing: Drawing) -> list[dict[str, Any]]:
    """Both models in a ``ModelSet`` keeping one ready (``max_resident=1``), SD 1.5 the default:
    load, draw, switch to LDM-256 and back, drawing after each switch, in this process.

    The switch there finds LDM-256's files in the page cache (they were just read); before the
    switch back, SD 1.5's files are dropped from it, so that its first drawing after a switch
    on the CPU reads the disk (on CUDA it comes back from CPU memory, where there is room).
    """
    import torch

    from pipeline.models import ModelSet, ModelSpec

    _quiet()
    rec = Recorder(setup_label(device), device)
    both = " + ".join(MODELS[m].label for m in folders)
    if device == "cuda" and not torch.cuda.is_available():
        rec.skip("all", both, "every step", NO_CUDA)
        return rec.fields()
    a, b = MAIN_MODEL, next(m for m in folders if m != MAIN_MODEL)
    specs = [ModelSpec(NAMES[m], folders[m]) for m in folders]
    models: ModelSet = rec.step(
        "set_load",
        both,
        f"ModelSet.load, max_resident=1, default {NAMES[a]}",
        lambda: ModelSet.load(specs, default=NAMES[a], device=device, max_resident=1),
        placement=_placements,
        weights=_weight_bytes,
    )

    def step(key: str, model: str, label: str, action: Callable[[], Any]) -> None:
        rec.step(key, MODELS[model].label, label, action,
                 placement=lambda _: _placements(models),
                 weights=lambda _: _weight_bytes(models))  # fmt: skip

    def draw(model: str) -> Callable[[], Any]:
        # Through ModelSet.run_batch, as the executor draws: it brings the model in if needed.
        request = _request(model, drawing.steps, drawing.sizes[model])
        return lambda: models.run_batch([request])

    models.run_batch([_request(a, WARM_UP_STEPS, WARM_UP_SIZE)])
    work = f"1 image, {_steps(drawing.steps)}"
    step("draw_ready_a", a, f"drawing, {NAMES[a]} ready ({work})", draw(a))
    step("switch_ab", b, f"switch: ensure({NAMES[b]!r}), files in the page cache",
         lambda: models.ensure(NAMES[b]))  # fmt: skip
    step("draw_first_b", b, f"first drawing after the switch ({work})", draw(b))
    step("draw_ready_b", b, f"drawing, {NAMES[b]} ready ({work})", draw(b))
    dropped = drop_page_cache(folders[a])
    cache = "files dropped from the page cache" if dropped else "files in the page cache"
    step("switch_ba", a, f"switch back: ensure({NAMES[a]!r}), {cache}",
         lambda: models.ensure(NAMES[a]))  # fmt: skip
    step("draw_first_a", a, f"first drawing after the switch back ({work})", draw(a))
    return rec.fields()


# -- the table and what it says -----------------------------------------------------------

COLUMNS = (
    "setup",
    "model",
    "step",
    "s",
    "CPU s",
    "placement after",
    "RSS MB after",
    "peak RSS MB",
    "GPU MB after",
    "peak GPU MB",
    "weights MB",
)


def _num(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def table(rows: Sequence[Step]) -> str:
    """The rows as a Markdown table (it reads as text and pastes into the README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        head = [r.setup, r.model, r.step]
        if r.skipped:
            cells = [*head, r.skipped, *[""] * (len(COLUMNS) - len(head) - 1)]
        else:
            cells = [
                *head,
                _num(r.seconds, 2),
                _num(r.cpu_s, 2),
                r.placement,
                _num(r.rss_mb, 0),
                _num(r.peak_rss_mb, 0),
                _num(r.gpu_mb, 0),
                _num(r.peak_gpu_mb, 0),
                _num(r.weights_mb, 0),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _get(rows: Sequence[Step], setup: str, model: str, key: str) -> Step | None:
    for r in rows:
        ran = not r.skipped and not math.isnan(r.seconds)
        if ran and (r.setup, r.model, r.key) == (setup, model, key):
            return r
    return None


def _faster(fast: float, slow: float) -> str:
    """How ``fast`` seconds compare with ``slow`` ones: N.Nx faster (or slower)."""
    return f"{slow / fast:.1f}x faster" if fast <= slow else f"{fast / slow:.1f}x slower"


def _until_ready(rows: Sequence[Step], setup: str, model: str, key: str) -> float | None:
    """Seconds of row ``key`` plus its first read of the weights, where it has one (the CPU)."""
    row = _get(rows, setup, model, key)
    if row is None:
        return None
    read = _get(rows, setup, model, f"read_{key}")
    return row.seconds + (read.seconds if read else 0.0)


def conclusion(rows: Sequence[Step]) -> str:
    """One line, computed from the rows: how bringing back from CPU memory compares with the
    disk on CUDA, or, where no CUDA rows ran, what coming back and a switch cost on the CPU."""
    label = MODELS[MAIN_MODEL].label
    gpu = setup_label("cuda")
    cpu_back, disk_back = _get(rows, gpu, label, "back_cpu"), _get(rows, gpu, label, "back_disk")
    if cpu_back and disk_back:
        dropped = _get(rows, gpu, label, "back_disk_cold")
        evicted = _get(rows, gpu, label, "evict_cpu")
        out = (
            f"on CUDA, bringing {label} back from CPU memory took {cpu_back.seconds:.2f} s, "
            f"{_faster(cpu_back.seconds, disk_back.seconds)} than from disk "
            f"({disk_back.seconds:.2f} s with the files in the page cache"
        )
        if dropped:
            out += f", {dropped.seconds:.2f} s out of it"
        out += ")"
        if evicted:
            out += (
                f"; each model kept in CPU memory holds {evicted.weights_mb:.0f} MB of it "
                f"(resident memory {evicted.rss_mb:.0f} MB after evicting one)"
            )
        return out
    out = f"bringing {label} back from CPU memory against disk: not measured here: no CUDA device"
    cpu = setup_label("cpu")
    warm = _until_ready(rows, cpu, label, "back_disk")
    cold = _until_ready(rows, cpu, label, "back_disk_cold")
    if warm is not None:
        out += (
            f"; on the CPU, where eviction drops the weights, {label} was ready again in "
            f"{warm:.1f} s with its files in the page cache (bring_back and the first read "
            "of its mapped weights)"
        )
        if cold is not None:
            out += f", {cold:.1f} s with them out of it"
    switch = _get(rows, cpu, label, "switch_ba")
    first, ready = _get(rows, cpu, label, "draw_first_a"), _get(rows, cpu, label, "draw_ready_a")
    if switch and first and ready:
        extra = first.seconds - ready.seconds
        out += (
            f"; a switch back to it took {switch.seconds:.1f} s (ensure) and its first drawing "
            f"after it {first.seconds:.1f} s against {ready.seconds:.1f} s with it ready "
            f"({extra:+.1f} s; CPU time {first.cpu_s:.1f} s against {ready.cpu_s:.1f} s)"
        )
        # What reading the weights costs, measured apart. A larger difference between two
        # drawings of the same picture is within what drawings vary by on a CPU that other
        # jobs share (repeated drawings here varied by seconds), so the rows of the switch
        # and of the first read are the cleaner measure of what the switch costs.
        from_disk = "dropped" in switch.step
        read = _get(rows, cpu, label, "read_back_disk_cold" if from_disk else "read_back_disk")
        if read is not None and abs(extra) > 2 * read.seconds + 1.0:
            out += (
                f", more than reading its weights apart took ({read.seconds:.1f} s): drawings "
                "vary by that much where other jobs share the CPU, so the switch and first-read "
                "rows are the cleaner measure"
            )
    return out


def memory_summary(rows: Sequence[Step]) -> list[str]:
    """Per setup: the weights' size per model, the resident peak of the switching process
    (what an operator must have room for), and on CUDA the GPU's peak while ModelSet.load
    loads every model."""
    out = []
    for setup in dict.fromkeys(r.setup for r in rows):
        mine = [r for r in rows if r.setup == setup and not r.skipped]
        loads = {r.model: r for r in mine if r.key == "load"}
        switching = [
            r for r in mine if r.key == "set_load" or r.key.startswith(("switch_", "draw_"))
        ]
        if not switching:
            continue
        peak = max(r.peak_rss_mb for r in switching)
        line = f"{setup}: peak RSS of the switching process {peak:.0f} MB"
        if loads:
            line += (
                " (weights: "
                + ", ".join(f"{m} {r.weights_mb:.0f} MB" for m, r in loads.items())
                + ")"
            )
        set_load = next((r for r in switching if r.key == "set_load"), None)
        if set_load and not math.isnan(set_load.peak_gpu_mb):
            alone = ", ".join(f"{m} {r.peak_gpu_mb:.0f} MB" for m, r in loads.items())
            line += (
                f"; peak GPU memory while ModelSet.load loaded both: {set_load.peak_gpu_mb:.0f} MB "
                f"(one model's load alone: {alone})"
            )
        out.append(line)
    return out


# -- the command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--device",
        type=real_size._devices,
        default=["cpu", "cuda"],
        help="cpu, cuda or cpu,cuda (default): rows on a device that is not here say so",
    )
    parser.add_argument("--steps", type=int, help=f"steps per drawing (default {STEPS})")
    parser.add_argument("--sd-size", type=int, default=MODELS["sd"].size)
    parser.add_argument("--ldm-size", type=int, default=MODELS["ldm"].size)
    parser.add_argument(
        "--width-scale",
        type=float,
        default=1.0,
        help="narrow every network by this factor (the tests' reduced build; 1: real size)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CPU drawings: {_steps(QUICK_STEPS)} instead of {STEPS} (real sizes), minutes on "
        "a small CPU; CUDA keeps the default",
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run every part in this process (fast; peaks only approximately apart)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.width_scale <= 1:
        parser.error("--width-scale must be above 0 and at most 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runner = Runner(isolate=not args.same_process)
    info = runner.call(real_size.probe)
    print(f"machine: {real_size._machine(info)}")
    reduced = "" if args.width_scale == 1 else f", networks narrowed to x{args.width_scale:g}"
    print(f"random weights{reduced}", flush=True)
    sizes = {"sd": args.sd_size, "ldm": args.ldm_size}
    rows: list[Step] = []
    scratch = tempfile.mkdtemp(prefix="easel-model-switch-")
    try:
        for device in args.device:
            setup = setup_label(device)
            if device == "cuda" and not info["cuda"]:
                both = " + ".join(MODELS[m].label for m in MODELS)
                for label in [*(MODELS[m].label for m in MODELS), both]:
                    rows.append(Step(setup, label, "every step", skipped=NO_CUDA))
                continue
            steps = args.steps or (QUICK_STEPS if args.quick and device == "cpu" else STEPS)
            print(
                f"{setup}: each drawing 1 image, {_steps(steps)}, at the model's size "
                f"({', '.join(f'{MODELS[m].label} {s} px' for m, s in sizes.items())}), after "
                f"one {WARM_UP_SIZE} px drawing of {MODELS[MAIN_MODEL].label} (not timed)",
                flush=True,
            )
            dtype = setup.split()[1]
            folders: dict[str, str] = {}
            for model in MODELS:
                started = time.perf_counter()
                folders[model] = runner.call(
                    real_size.build_folder, model, args.width_scale, dtype, scratch
                )
                print(
                    f"  built {MODELS[model].label} ({dtype}) in "
                    f"{time.perf_counter() - started:.0f} s",
                    flush=True,
                )
            parts: list[tuple[str, Callable[..., list[dict[str, Any]]], tuple[Any, ...]]] = [
                (MODELS[m].label, evict_cycle, (m, device, folders[m])) for m in MODELS
            ]
            parts.append(("switching", switch_cycle, (device, folders, Drawing(steps, sizes))))
            for name, fn, fn_args in parts:
                started = time.perf_counter()
                try:
                    got = [Step(**f) for f in runner.call(fn, *fn_args)]
                except RuntimeError as exc:
                    print(exc, file=sys.stderr)
                    got = [Step(setup, name, "every step", skipped="failed (see above)")]
                rows += got
                print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
            for folder in folders.values():  # GBs each: gone before the next setup's
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(table(rows))
    print()
    for line in memory_summary(rows):
        print(line)
    notes = dict.fromkeys(r.note for r in rows if r.note)
    for note in notes:
        print(f"note: {note}")
    print(f"conclusion: {conclusion(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
