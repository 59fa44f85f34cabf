"""Evicting a model and bringing it back, and switching models in a ModelSet, as
bench/model_switch.py measures them, on its real-size builder narrowed so CI stays fast.

The pictures drawn after a model came back are compared with those drawn before it left within
the README's bound (``tests.imagecheck``), never byte for byte: the weights are read again from
the disk, and nothing promises the same bits from a fresh load.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.engine import Engine
from pipeline.models import ModelSet, ModelSpec
from pipeline.request import DrawRequest
from tests.imagecheck import assert_close_images

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.125
SIZE = 64


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_model_switch", ROOT / "bench/model_switch.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


model_switch = _load_bench()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """SD 1.5 and LDM-256 at 1/8 width, saved as Engine.load reads them."""
    out = {}
    for model in ("sd", "ldm"):
        folder = tmp_path_factory.mktemp(f"model-switch-{model}")
        model_switch.real_size.build_pipeline(model, width_scale=SCALE).save_pretrained(folder)
        out[model] = str(folder)
    return out


def _request(model: str | None = None, seed: int = 3) -> DrawRequest:
    return DrawRequest("a red circle", steps=2, seed=seed, width=SIZE, height=SIZE, model=model)


def _picture(drawer: Engine | ModelSet, model: str | None = None) -> Any:
    return drawer.run_batch([_request(model)])[0].images[0]


def test_evicting_drops_the_weights_and_bringing_back_draws_the_same_picture(
    folders: dict[str, str],
) -> None:
    engine = Engine.load(folders["sd"], device="cpu", name="sd15")
    assert (engine.placement, engine.ready, engine.model) == ("device", True, "sd15")
    size = engine.weight_bytes()
    assert size > 0
    before = _picture(engine)

    engine.evict(keep_in_cpu_memory=False)
    assert (engine.placement, engine.ready) == ("unloaded", False)
    assert engine.pipe is None and engine.weight_bytes() == 0
    # Requests for it are still checked and resolved while it is away (they queue for it).
    assert engine.capabilities.default_width == 512
    assert engine.resolve(_request()).sampler is not None
    with pytest.raises(RuntimeError, match="not loaded"):
        engine.run(_request())
    engine.evict(keep_in_cpu_memory=False)  # twice: nothing more to do
    assert engine.placement == "unloaded"

    engine.bring_back()
    assert (engine.placement, engine.ready) == ("device", True)
    assert engine.weight_bytes() == size
    assert_close_images(before, _picture(engine))


def test_on_a_cpu_device_keeping_in_cpu_memory_drops_the_weights_too(
    folders: dict[str, str],
) -> None:
    # The weights are in CPU memory already: there is nowhere cheaper to keep them, so eviction
    # frees that memory and bringing back reads the disk (what the benchmark's CPU rows show).
    engine = Engine.load(folders["ldm"], device="cpu")
    before = _picture(engine)
    engine.evict(keep_in_cpu_memory=True)
    assert engine.placement == "unloaded" and engine.weight_bytes() == 0
    engine.bring_back()
    assert engine.placement == "device"
    assert_close_images(before, _picture(engine))


def test_the_gpu_path_keeps_the_weights_in_cpu_memory(folders: dict[str, str]) -> None:
    # A GPU's path without a GPU: the device is named "cpu:0", which evict() does not take for
    # the CPU, so the weights are moved to "cpu" and kept, and bring_back() moves them back.
    loaded = Engine.load(folders["sd"], device="cpu")
    engine = Engine(loaded.pipe, loaded.source, device="cpu:0", name="sd15")
    engine.pipe.to("cpu:0")
    before = _picture(engine)
    size = engine.weight_bytes()
    engine.evict(keep_in_cpu_memory=True)
    assert (engine.placement, engine.ready) == ("cpu", False)
    assert engine.pipe is not None and engine.weight_bytes() == size  # still held, in CPU memory
    with pytest.raises(RuntimeError, match="not loaded"):
        engine.run(_request())
    engine.bring_back()
    assert (engine.placement, engine.ready) == ("device", True)
    assert_close_images(before, _picture(engine))


def test_a_model_set_keeping_one_switches_and_draws_the_same_pictures(
    folders: dict[str, str],
) -> None:
    specs = [ModelSpec("sd15", folders["sd"]), ModelSpec("ldm", folders["ldm"])]
    models = ModelSet.load(specs, default="sd15", device="cpu", max_resident=1)
    # The default is loaded last, so it is the one left ready; the other gave way.
    assert models.resident() == ("sd15",)
    assert (models.placement("sd15"), models.placement("ldm")) == ("device", "unloaded")
    sd_before = _picture(models, "sd15")
    assert models.needs_loading(_request("ldm")) == "ldm"
    assert models.needs_loading(_request("sd15")) is None

    ldm_first = _picture(models, "ldm")  # run_batch brings it in, and sd15 gives way
    assert models.resident() == ("ldm",)
    assert (models.placement("sd15"), models.placement("ldm")) == ("unloaded", "device")
    assert_close_images(ldm_first, _picture(models, "ldm"))

    models.ensure("sd15")
    assert models.resident() == ("sd15",)
    assert (models.placement("sd15"), models.placement("ldm")) == ("device", "unloaded")
    assert_close_images(sd_before, _picture(models, "sd15"))


@pytest.fixture(scope="module")
def bench_output(folders: dict[str, str]) -> str:
    """What the benchmark prints, run once in this process on the reduced builds at 64 px."""
    built = {model: Path(folder) for model, folder in folders.items()}

    def copy_built(model: str, width_scale: float, dtype: str, parent: str) -> str:
        # The module's folders, copied: the benchmark deletes its own, and building twice is
        # what makes this slow, not what it tests.
        assert (width_scale, dtype) == (SCALE, "fp32")
        target = Path(parent) / f"{model}-{dtype}"
        shutil.copytree(built[model], target)
        return str(target)

    argv = ["--width-scale", str(SCALE), "--sd-size", str(SIZE), "--ldm-size", str(SIZE)]
    import torch

    # CUDA rows only where there is none (they say "not run"): on a GPU machine the CUDA build
    # would ask for fp16, which this test's copies of the CPU builds are not.
    devices = "cpu" if torch.cuda.is_available() else "cpu,cuda"
    argv += ["--steps", "1", "--same-process", "--device", devices]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(model_switch.real_size, "build_folder", copy_built)
        assert model_switch.main(argv) == 0
    return out.getvalue()


def _rows(out: str, setup: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith(f"| {setup} |")
    ]


def test_the_benchmark_prints_every_column_and_a_row_per_step(bench_output: str) -> None:
    header = next(line for line in bench_output.splitlines() if line.startswith("| setup |"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(model_switch.COLUMNS)
    rows = _rows(bench_output, "cpu fp32")
    assert len(rows) == 10 + 10 + 7  # each model's evict cycle, then the switches
    for cells in rows:
        # Seconds, CPU seconds: printed to 0.01 s, which a fast machine's step can round to 0.
        assert float(cells[3]) >= 0 and float(cells[4]) >= 0
        assert float(cells[6]) > 0 and float(cells[7]) > 0  # RSS after, peak RSS
        assert cells[8] == cells[9] == "-"  # no GPU memory on the CPU
        assert float(cells[10]) >= 0  # weights MB
    assert "cpu fp32: peak RSS of the switching process" in bench_output
    import torch

    if not torch.cuda.is_available():
        assert bench_output.count(model_switch.NO_CUDA) == 3  # per model, and the switches
        conclusion = bench_output.splitlines()[-1]
        assert conclusion.startswith("conclusion: ")
        assert "not measured here: no CUDA device" in conclusion
        assert "a switch back to it took" in conclusion and "with it ready" in conclusion


def test_the_benchmark_reports_each_steps_placement(bench_output: str) -> None:
    rows = _rows(bench_output, "cpu fp32")
    sd = [(cells[2], cells[5], float(cells[10])) for cells in rows[:10]]
    assert [cells[1] for cells in rows[:10]] == ["SD 1.5"] * 10
    # On the CPU every load is followed by the first read of the (mapped) weights.
    assert [(step.split(" (")[0], where) for step, where, _ in sd] == [
        ("cold load: Engine.load of the saved folder", "device"),
        ("+ first read of every weight", "device"),
        ("evict(keep_in_cpu_memory=False)", "unloaded"),
        ("bring_back() from disk, files in the page cache", "device"),
        ("+ first read of every weight", "device"),
        ("bring_back() from disk, files dropped from the page cache", "device"),
        ("+ first read of every weight", "device"),
        # A CPU device: keep_in_cpu_memory=True drops the weights too.
        ("evict(keep_in_cpu_memory=True)", "unloaded"),
        ("bring_back() from disk", "device"),
        ("+ first read of every weight", "device"),
    ]
    weights = [mb for _, _, mb in sd]
    assert weights[2] == weights[7] == 0 and weights[0] == weights[3] > 0

    ready, away = "sd15: device, ldm: unloaded", "sd15: unloaded, ldm: device"
    switches = [(cells[1], cells[5]) for cells in rows[20:]]
    assert switches == [
        ("SD 1.5 + LDM-256", ready),  # ModelSet.load: the default is left ready
        ("SD 1.5", ready),  # drawing with it ready
        ("LDM-256", away),  # the switch
        ("LDM-256", away),  # its first drawing
        ("LDM-256", away),  # a drawing with it ready
        ("SD 1.5", ready),  # the switch back
        ("SD 1.5", ready),  # its first drawing
    ]


def _step(key: str, seconds: float, **more: Any) -> Any:
    return model_switch.Step("cuda fp16", "SD 1.5", key, key=key, seconds=seconds, **more)


def test_the_conclusion_is_computed_from_the_cuda_rows() -> None:
    rows = [
        _step("back_disk", 5.0),
        _step("back_disk_cold", 9.0),
        _step("evict_cpu", 0.3, weights_mb=1640.0, rss_mb=3000.0),
        _step("back_cpu", 0.5),
    ]
    line = model_switch.conclusion(rows)
    assert "from CPU memory took 0.50 s, 10.0x faster than from disk (5.00 s" in line
    assert "9.00 s out of it" in line and "1640 MB" in line
    rows[-1] = _step("back_cpu", 10.0)
    assert "2.0x slower than from disk" in model_switch.conclusion(rows)


def test_on_the_cpu_the_conclusion_says_what_a_switch_costs_and_what_is_noise() -> None:
    def cpu(key: str, seconds: float, step: str = "", cpu_s: float = math.nan) -> Any:
        return model_switch.Step("cpu fp32", "SD 1.5", step or key, key=key, seconds=seconds,
                                 cpu_s=cpu_s)  # fmt: skip

    rows = [
        cpu("back_disk", 0.3),
        cpu("read_back_disk", 0.3),
        cpu("back_disk_cold", 1.9),
        cpu("read_back_disk_cold", 3.1),
        cpu("draw_ready_a", 65.0, cpu_s=120.0),
        cpu("switch_ba", 2.2, "switch back: ensure('sd15'), files dropped from the page cache"),
        cpu("draw_first_a", 69.0, cpu_s=121.0),
    ]
    line = model_switch.conclusion(rows)
    assert line.startswith("bringing SD 1.5 back from CPU memory against disk: not measured")
    assert "ready again in 0.6 s with its files in the page cache" in line
    assert "5.0 s with them out of it" in line
    assert "took 2.2 s (ensure) and its first drawing after it 69.0 s against 65.0 s" in line
    assert "+4.0 s" in line and "cleaner measure" not in line  # within what reading costs
    rows[-1] = cpu("draw_first_a", 95.0, cpu_s=121.0)
    assert "more than reading its weights apart took (3.1 s)" in model_switch.conclusion(rows)
