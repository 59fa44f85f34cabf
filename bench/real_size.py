"""What drawing costs at real size, without downloading weights.

A diffusion model's cost depends on its architecture, not its weights: SD 1.5 (UNet, VAE, CLIP
ViT-L/14 text encoder) and CompVis/ldm-text2im-large-256 (UNet, KL autoencoder, LDMBert) are built
from their published configs (``bench/configs``, no weight files) with seeded random weights, saved
to a temporary folder (Engine.load reads folders) and measured through Easel's engine and executor
and through plain diffusers calls: seconds per image, images per second, peak resident memory,
peak GPU memory on CUDA and model load time, with batching on (max_batch) and off.

Each configuration runs in a fresh process (forked from a server that has imported torch once), so
peaks don't mix. Prints a table and the checks against the targets of issue 19: executor overhead
under 3% against plain diffusers with batching off, batching at least 1.2x at 512 px on a GPU, peak
memory within 10% of plain diffusers. ``--quick`` keeps a run on a 2-core CPU to minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.cpu import configure_cpu_threads  # noqa: E402

# Before torch loads, here and in the fork server that imports this module: as the bot does.
CPU = configure_cpu_threads()

CONFIGS = Path(__file__).resolve().parent / "configs"
PROMPT = "a painting of a squirrel eating a banana"
NO_CUDA = "not run: no CUDA device"
# The targets of issue 19.
MAX_OVERHEAD = 0.03
MIN_BATCH_SPEEDUP = 1.2
MAX_MEMORY_RATIO = 1.10
IMAGES, STEPS = 4, 20
# What --quick measures on the CPU instead of 4 images x 20 steps: a real-size run on a 2-core
# CPU then takes minutes, not hours. Sizes stay real: they are what decides the cost per step.
# CUDA rows keep 4 x 20 (seconds on a GPU).
QUICK_IMAGES, QUICK_STEPS = 2, 2


@dataclass(frozen=True)
class Model:
    """One published model: where its configs are and how it is drawn."""

    key: str
    label: str
    configs: str  # folder under bench/configs
    size: int  # the side it was trained at, in pixels
    guidance: float


MODELS = {
    "sd": Model("sd", "SD 1.5", "stable-diffusion-v1-5", 512, 7.5),
    # 6 is the guidance of the diffusers tutorial that introduced this model.
    "ldm": Model("ldm", "LDM-256", "ldm-text2im-large-256", 256, 6.0),
}


# -- building from the published configs ---------------------------------------------------


def load_config(model: str, part: str, name: str = "config.json") -> dict[str, Any]:
    """A published config, without the keys starting with ``_`` (its source, class name)."""
    data = json.loads((CONFIGS / MODELS[model].configs / part / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _width(n: int, scale: float) -> int:
    """``n`` channels at ``scale``, a multiple of 8 (the published value at scale 1)."""
    return n if scale == 1 else max(8, round(n * scale / 8) * 8)


def _depth(n: int, scale: float) -> int:
    """How many text-encoder layers at ``scale``: fewer too, so reduced builds stay fast."""
    return n if scale == 1 else max(1, math.ceil(n * scale))


def _groups(groups: int, channels: Sequence[int]) -> int:
    """GroupNorm groups that divide every channel count (the published 32 at scale 1)."""
    return math.gcd(groups, *channels)


def unet_config(model: str, scale: float, cross_attention_dim: int) -> dict[str, Any]:
    """The UNet's config at ``scale``; it cross-attends to the text encoder's width."""
    cfg = load_config(model, "unet")
    channels = [_width(c, scale) for c in cfg["block_out_channels"]]
    return cfg | {
        "block_out_channels": channels,
        "cross_attention_dim": cross_attention_dim,
        "norm_num_groups": _groups(cfg["norm_num_groups"], channels),
    }


def vae_config(model: str, scale: float) -> dict[str, Any]:
    """The autoencoder's config at ``scale``: same levels, so the same scale factor (8)."""
    part = "vae" if model == "sd" else "vqvae"
    cfg = load_config(model, part)
    channels = [_width(c, scale) for c in cfg["block_out_channels"]]
    return cfg | {
        "block_out_channels": channels,
        "norm_num_groups": _groups(cfg["norm_num_groups"], channels),
    }


def clip_config(scale: float) -> dict[str, Any]:
    """SD 1.5's CLIP text encoder at ``scale`` (the same 12 heads, the same vocabulary)."""
    cfg = load_config("sd", "text_encoder")
    heads = cfg["num_attention_heads"]
    hidden = (
        heads * _width(cfg["hidden_size"] // heads, scale) if scale != 1 else cfg["hidden_size"]
    )
    return cfg | {
        "hidden_size": hidden,
        "intermediate_size": _width(cfg["intermediate_size"], scale),
        "projection_dim": _width(cfg["projection_dim"], scale),
        "num_hidden_layers": _depth(cfg["num_hidden_layers"], scale),
    }


def bert_config(scale: float) -> dict[str, Any]:
    """LDM-256's LDMBert at ``scale`` (the same 8 heads, the same vocabulary)."""
    cfg = load_config("ldm", "bert")
    return cfg | {
        "d_model": _width(cfg["d_model"], scale),
        "head_dim": _width(cfg["head_dim"], scale),
        "encoder_ffn_dim": _width(cfg["encoder_ffn_dim"], scale),
        "encoder_layers": _depth(cfg["encoder_layers"], scale),
    }


def build_tokenizer(model: str) -> Any:
    """A tokenizer with the published one's special tokens, ids and length (77), offline.

    The real vocabularies can't be had without a download. As ``pipeline.tiny`` does, this one
    reads text byte by byte (CLIP's byte alphabet, one token per character); what a prompt costs
    depends on its padded length, which is the same, not on which ids it gets.
    """
    from transformers import CLIPTokenizer

    from pipeline.bpe import bytes_to_unicode

    spec = json.loads(
        (CONFIGS / MODELS[model].configs / "tokenizer" / "tokenizer.json").read_text()
    )
    alphabet = list(bytes_to_unicode().values())
    first = spec["first_byte_token_id"]
    vocab = {t: first + i for i, t in enumerate([*alphabet, *(c + "</w>" for c in alphabet)])}
    specials = {name: token for name, (token, _) in spec["special_tokens"].items()}
    vocab |= {token: i for token, i in spec["special_tokens"].values()}
    assert max(vocab.values()) < spec["vocab_size"]
    return CLIPTokenizer(
        vocab=vocab, merges=[], model_max_length=spec["model_max_length"], **specials
    )


def build_pipeline(model: str, *, width_scale: float = 1.0, seed: int = 0) -> Any:
    """SD 1.5 (``"sd"``) or LDM-256 (``"ldm"``) from the published configs, random fp32 weights.

    ``width_scale`` below 1 narrows every network (channels, text width) and makes the text
    encoders shallower, keeping the block types, the latent channels, the autoencoder's levels
    and the UNet's cross-attention to the text encoder's width: the builder of the tests.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        LDMTextToImagePipeline,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(model)
    scheduler_config = load_config(model, "scheduler", "scheduler_config.json")
    if model == "sd":
        from transformers import CLIPTextConfig, CLIPTextModel

        text = CLIPTextModel(CLIPTextConfig(**clip_config(width_scale)))
        unet = UNet2DConditionModel.from_config(
            unet_config("sd", width_scale, text.config.hidden_size)
        )
        return StableDiffusionPipeline(
            vae=AutoencoderKL.from_config(vae_config("sd", width_scale)),
            text_encoder=text,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=PNDMScheduler.from_config(scheduler_config),
            # Easel runs a model's safety checker after drawing; none here (see the README).
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if model == "ldm":
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
            LDMBertConfig,
            LDMBertModel,
        )

        bert = LDMBertModel(LDMBertConfig(**bert_config(width_scale)))
        return LDMTextToImagePipeline(
            vqvae=AutoencoderKL.from_config(vae_config("ldm", width_scale)),
            bert=bert,
            tokenizer=tokenizer,
            unet=UNet2DConditionModel.from_config(
                unet_config("ldm", width_scale, bert.config.d_model)
            ),
            scheduler=DDIMScheduler.from_config(scheduler_config),
        )
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


# -- one configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """Where and how the networks run."""

    device: str  # "cpu" or "cuda"
    dtype: str  # "fp32" or "fp16"
    compile: bool = False

    @property
    def label(self) -> str:
        return f"{self.device} {self.dtype}" + " compiled" * self.compile


@dataclass(frozen=True)
class Config:
    """One row of the table: a model, a setup, a path and a batch size."""

    model: str
    setup: Setup
    path: str  # "easel": Engine + Executor; "plain": DiffusionPipeline calls
    max_batch: int
    images: int
    steps: int
    size: int

    @property
    def work(self) -> str:
        return f"{self.images} x {self.steps}"

    @property
    def batching(self) -> str:
        return f"on (max {self.max_batch})" if self.max_batch > 1 else "off"


@dataclass
class Measurement:
    """What one configuration measured; ``skipped`` says why it was not run."""

    seconds: float = math.nan  # drawing all images, after the warm-up
    # CPU time of the whole process (all threads) over the same span: steadier than the wall
    # clock on a CPU that other people's jobs share.
    cpu_s: float = math.nan
    load_s: float = math.nan
    rss_mb: float = math.nan  # resident high-water mark of the process
    gpu_mb: float = math.nan  # torch.cuda.max_memory_allocated, CUDA only
    skipped: str | None = None
    error: str | None = None


def peak_rss_mb() -> float:
    """The resident high-water mark of this process (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    # kB on Linux; bytes on macOS, where there is no /proc.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 1024)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+), for configurations sharing a process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _dtype(setup: Setup) -> Any:
    import torch

    return torch.float16 if setup.dtype == "fp16" else torch.float32


def _jobs(config: Config, *, steps: int, size: int, count: int) -> list[Any]:
    from pipeline.request import DrawRequest

    guidance = MODELS[config.model].guidance
    return [
        DrawRequest(
            f"{PROMPT}, number {i}", steps=steps, guidance=guidance, seed=i, width=size, height=size
        )
        for i in range(count)
    ]


def _warm_up_jobs(config: Config) -> list[Any]:
    """What runs before the clock starts. On CUDA, or with a compiled UNet, the same shapes
    as the measured run (kernels are picked, or compiled, per shape); on the CPU one small
    picture, which pays the first-call costs without doubling a run that takes minutes."""
    if config.setup.device == "cuda" or config.setup.compile:
        return _jobs(config, steps=2, size=config.size, count=config.images)
    return _jobs(config, steps=2, size=64, count=1)


def _load(config: Config, folder: str) -> tuple[Any, Any]:
    """(engine or None, pipeline), loaded from ``folder`` as each path would."""
    import torch
    from diffusers import DiffusionPipeline

    from pipeline.engine import Engine

    setup = config.setup
    dtype = _dtype(setup)
    if config.path == "easel":
        if (dtype == torch.float16) == (setup.device == "cuda"):
            engine = Engine.load(folder, device=setup.device)
        else:
            # Engine.load picks fp16 on CUDA and fp32 elsewhere; another precision is asked for
            # here, so load as it does and hand the pipeline to the Engine.
            pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(setup.device)
            engine = Engine(pipe, folder, device=setup.device)
        return engine, engine.pipe
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(setup.device)
    pipe.set_progress_bar_config(disable=True)
    return None, pipe


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) now."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


async def _through_executor(engine: Any, config: Config) -> tuple[float, float]:
    """(wall, CPU) seconds for the executor to draw the jobs (one per user, as members ask)."""
    from pipeline.executor import Executor

    outcomes: list[Any] = []
    # One job per member, each under the per-member cap; the queue holds them all.
    executor = Executor(engine, max_batch=config.max_batch, max_queue=max(50, config.images))
    executor.start()
    try:
        for user, r in enumerate(_warm_up_jobs(config)):
            executor.submit(r, user_id=user, on_done=outcomes.append)
        await executor.wait_idle()
        jobs = _jobs(config, steps=config.steps, size=config.size, count=config.images)
        started = _clock()
        for user, r in enumerate(jobs):
            # A progress callback, as the bot's: the executor reports steps to it on the loop.
            executor.submit(r, user_id=user, on_progress=lambda s, n: None, on_done=outcomes.append)
        await executor.wait_idle()
        elapsed = _since(started)
    finally:
        executor.close()
    failed = [o for o in outcomes if o.status != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not draw: {failed[0].error!r}")
    sizes = {im.size for o in outcomes[-config.images :] for im in o.result.images}
    assert sizes == {(config.size, config.size)}, sizes
    return elapsed


def _plain_calls(pipe: Any, config: Config, jobs: list[Any], batch: int) -> None:
    """Draw ``jobs`` with plain pipeline calls, ``batch`` prompts per call."""
    import torch

    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in chunk]
        one = len(chunk) == 1  # a plain call for one picture passes one prompt, one generator
        images = pipe(
            prompt=chunk[0].prompt if one else [r.prompt for r in chunk],
            height=chunk[0].height,
            width=chunk[0].width,
            num_inference_steps=chunk[0].steps,
            guidance_scale=chunk[0].guidance,
            generator=generators[0] if one else generators,
        ).images
        assert len(images) == len(chunk) and images[0].size == (chunk[0].width, chunk[0].height)


def _plain(pipe: Any, config: Config) -> tuple[float, float]:
    """(wall, CPU) seconds for plain calls to draw the jobs, on a thread of their own like the
    executor's (a thread that computes gets its own OpenMP team: warm-up and run share it)."""
    box: list[tuple[float, float]] = []

    def work() -> None:
        _plain_calls(pipe, config, _warm_up_jobs(config), config.max_batch)
        jobs = _jobs(config, steps=config.steps, size=config.size, count=config.images)
        started = _clock()
        _plain_calls(pipe, config, jobs, config.max_batch)
        box.append(_since(started))

    thread = threading.Thread(target=work, name="plain")
    thread.start()
    thread.join()
    if not box:
        raise RuntimeError("the plain calls failed (see the traceback above)")
    return box[0]


def measure(config: Config, folder: str) -> Measurement:
    """Load the model in ``folder`` and time one configuration, in this process."""
    import gc

    import torch

    from pipeline.engine import quiet_library_logs

    quiet_library_logs(download_progress=False)
    # Random weights can overflow to NaN in the decoder; numpy then warns while casting.
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")
    setup = config.setup
    if setup.device == "cuda" and not torch.cuda.is_available():
        return Measurement(skipped=NO_CUDA)
    gc.collect()
    shared = not reset_peak_rss()
    cuda = setup.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    engine, pipe = _load(config, folder)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - started
    if setup.compile:
        pipe.unet = torch.compile(pipe.unet)
    if engine is not None:
        seconds, cpu_s = asyncio.run(_through_executor(engine, config))
    else:
        seconds, cpu_s = _plain(pipe, config)
    result = Measurement(
        seconds=seconds,
        cpu_s=cpu_s,
        load_s=load_s,
        rss_mb=peak_rss_mb(),
        gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan,
    )
    if shared:
        result.error = "peak RSS shared with earlier configurations (no /proc/self/clear_refs)"
    del engine, pipe
    gc.collect()
    return result


def measure_fields(config: Config, folder: str) -> dict[str, Any]:
    """``measure`` as plain fields, for the trip back from a measuring process."""
    return asdict(measure(config, folder))


def build_folder(model: str, width_scale: float, dtype: str, parent: str) -> str:
    """Build the model and save it, in ``dtype``, to a new folder under ``parent``."""
    import torch

    from pipeline.engine import quiet_library_logs

    quiet_library_logs(download_progress=False)  # no bar for writing the shards
    pipe = build_pipeline(model, width_scale=width_scale)
    if dtype == "fp16":
        pipe.to(torch_dtype=torch.float16)
    folder = tempfile.mkdtemp(prefix=f"{model}-{dtype}-", dir=parent)
    pipe.save_pretrained(folder)
    return folder


def probe() -> dict[str, Any]:
    """What the measuring processes see: CUDA, versions, torch's threads."""
    import diffusers
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }


# -- running configurations in fresh processes ------------------------------------------------

# What the fork server imports: this script first (it sets torch's threads before torch loads),
# then the code every configuration runs, so that "load s" times loading the model, not
# importing Python modules (a bot imports them once, at start).
PRELOAD = [
    "__main__",
    "torch",
    "accelerate",
    "safetensors.torch",
    "diffusers",
    "diffusers.pipelines.pipeline_utils",
    "diffusers.pipelines.auto_pipeline",
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
    "diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion",
    "transformers.models.clip.modeling_clip",
    "transformers.models.clip.tokenization_clip",
    "pipeline.engine",
    "pipeline.executor",
]


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Runner:
    """Runs functions in fresh processes forked from a server that imported torch once.

    Every configuration gets a process of its own, so no peak (RSS, GPU) mixes with another's,
    and none pays the ~10 s of importing torch and diffusers again. ``isolate=False`` runs in
    this process instead (the tests: fast, peaks reset with /proc/self/clear_refs).
    """

    def __init__(self, isolate: bool) -> None:
        self.isolate = isolate
        self._ctx: Any = None
        if isolate:
            method = (
                "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            )
            self._ctx = multiprocessing.get_context(method)
            if method == "forkserver":
                # The server imports this script first (it sets torch's threads before torch
                # loads), then what every configuration needs.
                self._ctx.set_forkserver_preload(PRELOAD)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self.isolate:
            return fn(*args)
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_child, args=(send, fn, args))
        process.start()
        send.close()
        try:
            status, value = receive.recv()
        except EOFError:
            process.join()
            raise RuntimeError(
                f"the measuring process died (exit code {process.exitcode})"
            ) from None
        process.join()
        if status == "error":
            raise RuntimeError(f"in the measuring process:\n{value}")
        return value


# -- the table ------------------------------------------------------------------------------


@dataclass
class Row:
    config: Config
    result: Measurement = field(default_factory=Measurement)

    @property
    def s_per_image(self) -> float:
        return self.result.seconds / self.config.images

    @property
    def images_per_s(self) -> float:
        return self.config.images / self.result.seconds


COLUMNS = (
    "model",
    "setup",
    "path",
    "batching",
    "images x steps",
    "s/image",
    "images/s",
    "CPU s/image",
    "peak RSS MB",
    "peak GPU MB",
    "load s",
)


def _num(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (it reads as text and pastes into the README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        c, m = row.config, row.result
        label = MODELS[c.model].label + f" {c.size} px"
        head = [label, c.setup.label, c.path, c.batching, c.work]
        if m.skipped or (m.error and math.isnan(m.seconds)):
            why = m.skipped or "failed (see above)"
            cells = [*head, why, *[""] * (len(COLUMNS) - len(head) - 1)]
        else:
            cells = [
                *head,
                _num(row.s_per_image, 2),
                _num(row.images_per_s, 3),
                _num(m.cpu_s / c.images, 2),
                _num(m.rss_mb, 0),
                _num(m.gpu_mb, 0),
                _num(m.load_s, 1),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _find(rows: Sequence[Row], path: str, batched: bool) -> Row | None:
    for row in rows:
        if row.config.path == path and (row.config.max_batch > 1) == batched:
            return row
    return None


def _ran(row: Row | None) -> bool:
    return row is not None and not row.result.skipped and not math.isnan(row.result.seconds)


def checks(rows: Sequence[Row]) -> list[tuple[str, bool | None]]:
    """Each target's verdict per model and setup: (line, passed; None where it doesn't apply)."""
    out: list[tuple[str, bool | None]] = []
    groups: dict[tuple[str, Setup], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.config.model, row.config.setup), []).append(row)
    for (model, setup), group in groups.items():
        where = f"{MODELS[model].label}, {setup.label}"
        if all(r.result.skipped for r in group):
            out.append((f"{where}: checks {group[0].result.skipped}", None))
            continue
        easel_off, plain_off = _find(group, "easel", False), _find(group, "plain", False)
        easel_on = _find(group, "easel", True)
        if _ran(easel_off) and _ran(plain_off):
            assert easel_off is not None and plain_off is not None
            overhead = easel_off.result.seconds / plain_off.result.seconds - 1
            ok = overhead < MAX_OVERHEAD
            out.append((
                f"{where}: executor overhead, batching off: {overhead:+.1%} against plain "
                f"diffusers (target under {MAX_OVERHEAD:.0%}): {'PASS' if ok else 'FAIL'}",
                ok,
            ))  # fmt: skip
            cpu = easel_off.result.cpu_s / plain_off.result.cpu_s - 1
            out.append((
                f"{where}: the same in CPU time (steadier where other jobs share the CPU): "
                f"{cpu:+.1%}",
                None,
            ))  # fmt: skip
        if _ran(easel_off) and _ran(easel_on):
            assert easel_off is not None and easel_on is not None
            speedup = easel_off.result.seconds / easel_on.result.seconds
            size = easel_on.config.size
            if setup.device == "cuda" and size >= 512:
                ok = speedup >= MIN_BATCH_SPEEDUP
                verdict: str = "PASS" if ok else "FAIL"
                passed: bool | None = ok
            else:
                why = "on a GPU at 512 px" if setup.device == "cuda" else "for GPUs"
                verdict, passed = f"measured only: the target is {why}", None
            out.append((
                f"{where}: batching {easel_on.config.batching}: {speedup:.2f}x the images/s "
                f"of batching off at {size} px (target at least {MIN_BATCH_SPEEDUP}x): {verdict}",
                passed,
            ))  # fmt: skip
        for batched in (False, True):
            easel, plain = _find(group, "easel", batched), _find(group, "plain", batched)
            if not (_ran(easel) and _ran(plain)):
                continue
            assert easel is not None and plain is not None
            kinds = [("RSS", easel.result.rss_mb, plain.result.rss_mb)]
            if setup.device == "cuda":
                kinds.append(("GPU", easel.result.gpu_mb, plain.result.gpu_mb))
            for kind, mine, theirs in kinds:
                ratio = mine / theirs
                ok = ratio <= MAX_MEMORY_RATIO
                out.append((
                    f"{where}: peak {kind} memory, batching {easel.config.batching}: "
                    f"{mine:.0f} MB, {ratio - 1:+.1%} against plain diffusers' {theirs:.0f} MB "
                    f"(target within {MAX_MEMORY_RATIO - 1:.0%}): {'PASS' if ok else 'FAIL'}",
                    ok,
                ))  # fmt: skip
    return out


# -- the command line -----------------------------------------------------------------------


def _devices(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in devices if d not in ("cpu", "cuda")]
    if bad or not devices:
        raise argparse.ArgumentTypeError(f"devices are cpu and cuda, comma-separated; got {text!r}")
    return devices


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--device",
        type=_devices,
        default=["cpu", "cuda"],
        help="cpu, cuda or cpu,cuda (default): rows on a device that is not here say so",
    )
    parser.add_argument(
        "--dtype", choices=("fp32", "fp16"), help="default: fp16 on CUDA, fp32 on the CPU"
    )
    parser.add_argument(
        "--compile",
        type=_devices,
        nargs="?",
        const=["cpu", "cuda"],
        default=[],
        help="also measure with torch.compile'd UNets, on these devices (bare: all)",
    )
    parser.add_argument("--steps", type=int, help="denoising steps (default 20)")
    parser.add_argument("--images", type=int, help="pictures per configuration (default 4)")
    parser.add_argument("--max-batch", type=int, default=4, help="batching on: images per call")
    parser.add_argument("--sd-size", type=int, default=MODELS["sd"].size)
    parser.add_argument("--ldm-size", type=int, default=MODELS["ldm"].size)
    parser.add_argument("--only", choices=tuple(MODELS), help="measure one model")
    parser.add_argument(
        "--width-scale",
        type=float,
        default=1.0,
        help="narrow every network by this factor (the tests' reduced build; 1: real size)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CPU rows: {QUICK_IMAGES} images x {QUICK_STEPS} steps (real sizes), minutes on a "
        "small CPU; CUDA rows keep the defaults",
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run every configuration in this process (fast; peaks only approximately apart)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if not 0 < args.width_scale <= 1:
        parser.error("--width-scale must be above 0 and at most 1")
    return args


def plan(args: argparse.Namespace) -> list[Config]:
    """Every row, in the order measured: per model and setup, easel then plain, batching on
    then off."""
    setups = []
    for device in args.device:
        dtype = args.dtype or ("fp16" if device == "cuda" else "fp32")
        setups.append(Setup(device, dtype))
        if device in args.compile:
            setups.append(Setup(device, dtype, compile=True))
    models = [args.only] if args.only else list(MODELS)
    sizes = {"sd": args.sd_size, "ldm": args.ldm_size}
    quick = {"cpu": args.quick, "cuda": False}
    return [
        Config(
            model,
            setup,
            path,
            batch,
            args.images or (QUICK_IMAGES if quick[setup.device] else IMAGES),
            args.steps or (QUICK_STEPS if quick[setup.device] else STEPS),
            sizes[model],
        )
        for model in models
        for setup in setups
        for path in ("easel", "plain")
        for batch in (args.max_batch, 1)
    ]


def _machine(info: dict[str, Any]) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB memory"
    except (ValueError, OSError, AttributeError):
        memory = ""
    gpu = info["cuda"] or "no GPU"
    return (
        f"{cpu}, {CPU.cpus} CPUs ({CPU.cores} cores){memory}, {gpu}; torch {info['torch']} "
        f"({info['threads']} threads), diffusers {info['diffusers']}, "
        f"transformers {info['transformers']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configs = plan(args)
    runner = Runner(isolate=not args.same_process)
    info = runner.call(probe)
    print(f"machine: {_machine(info)}")
    reduced = "" if args.width_scale == 1 else f", networks narrowed to x{args.width_scale:g}"
    quick = (
        f"; --quick: the CPU rows draw {QUICK_IMAGES} images x {QUICK_STEPS} steps instead of "
        f"{IMAGES} x {STEPS}"
        if args.quick
        else ""
    )
    print(f"random weights{reduced}{quick}", flush=True)
    rows = [Row(c) for c in configs]
    scratch = tempfile.mkdtemp(prefix="easel-real-size-")
    try:
        folders: dict[tuple[str, str], str] = {}
        for n, row in enumerate(rows):
            c = row.config
            if c.setup.device == "cuda" and not info["cuda"]:
                row.result = Measurement(skipped=NO_CUDA)
                continue
            key = (c.model, c.setup.dtype)
            if key not in folders:
                started = time.perf_counter()
                folders[key] = runner.call(
                    build_folder, c.model, args.width_scale, c.setup.dtype, scratch
                )
                print(
                    f"built {MODELS[c.model].label} ({c.setup.dtype}) in "
                    f"{time.perf_counter() - started:.0f}s",
                    flush=True,
                )
            try:
                row.result = Measurement(**runner.call(measure_fields, c, folders[key]))
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                row.result = Measurement(error=str(exc))
            m = row.result
            print(
                f"  {MODELS[c.model].label} {c.setup.label} {c.path} batching {c.batching}: "
                f"{m.seconds:.1f}s for {c.images} images, peak RSS {m.rss_mb:.0f} MB",
                flush=True,
            )
            if m.error and not math.isnan(m.seconds):
                print(f"  note: {m.error}")
            # The last row of a model and precision: its folder goes (models are GBs).
            if all(r.config.model != c.model or r.config.setup.dtype != c.setup.dtype
                   for r in rows[n + 1 :]):  # fmt: skip
                shutil.rmtree(folders.pop(key), ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(table(rows))
    print()
    verdicts = checks(rows)
    for line, _ in verdicts:
        print(line)
    failed = [line for line, ok in verdicts if ok is False]
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
