"""The diffusers engine: load a model, say what it can do, refuse what it can't, draw reproducibly.

Only one thread may use an ``Engine`` at a time (diffusers pipelines are not thread-safe); the
executor guarantees that.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.errors import ModelLoadError, UnsupportedOption
from pipeline.messages import N_, Message
from pipeline.request import MAX_SEED, DrawRequest, DrawResult, random_seed
from pipeline.samplers import SAMPLERS, Sampler, sampler_for_scheduler, samplers_for_pipeline
from pipeline.tiny import TINY_MODELS, tiny_model_path
from pipeline.upscale import Upscaler

log = logging.getLogger(__name__)

StepHook = Callable[[int, int], None]

DEFAULT_MODEL = "CompVis/ldm-text2im-large-256"
MAX_STEPS = 150
MAX_COUNT = 4
MIN_SIDE = 64
MAX_SIDE = 2048
SIZE_MULTIPLE = 8
# What /draw suggests for a model that doesn't bring examples of its own.
DEFAULT_EXAMPLE_PROMPTS = ("a painting of a squirrel eating a banana",)


@dataclass(frozen=True)
class Capabilities:
    """What the loaded model can honour; the bot validates and builds menus from this."""

    model: str
    pipeline_class: str
    negative_prompt: bool
    eta: bool
    guidance: bool
    default_width: int
    default_height: int
    min_side: int
    max_side: int
    size_multiple: int
    samplers: tuple[str, ...]
    default_sampler: str
    max_prompt_tokens: int
    max_steps: int = MAX_STEPS
    max_count: int = MAX_COUNT
    # Prompts this model draws well, best first: the shapes model's are in its own words.
    example_prompts: tuple[str, ...] = DEFAULT_EXAMPLE_PROMPTS
    # Whether the model has an image-to-image form (Remix, /draw image:); LDM has none.
    image_input: bool = False

    def side_problem(self, name: str, side: int) -> Message | None:
        """Why ``side`` pixels can't be a width or height (``name``, a ``Message`` such as
        "Width", opens the message), or None."""
        m = self.size_multiple
        if side % m:
            lower = side - side % m
            return Message(
                N_(
                    "{name} must be a multiple of {multiple}; try {lower} or {upper} instead "
                    "of {side}."
                ),
                name=name,
                multiple=m,
                lower=lower,
                upper=lower + m,
                side=side,
            )
        if not self.min_side <= side <= self.max_side:
            return Message(
                N_(
                    "{name} must be between {min} and {max} pixels for {model} (it draws best "
                    "at {width}x{height}); got {side}."
                ),
                name=name,
                min=self.min_side,
                max=self.max_side,
                model=self.model,
                width=self.default_width,
                height=self.default_height,
                side=side,
            )
        return None


class Engine:
    """One loaded diffusers text-to-image pipeline and everything needed to run it exactly."""

    def __init__(
        self,
        pipe: Any,
        model: str,
        *,
        device: str = "cpu",
        name: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        """``model``: where it was loaded from (a MODEL value); ``name``: what people call it
        (a MODELS name), which requests, the store and the pictures' settings carry. Without
        one the source is the name, as with a single MODEL."""
        self.pipe = pipe
        self.source = model
        self.model = name or model
        self.device = device
        self.cache_dir = cache_dir
        # A1111's "Model hash" (the first 10 hex digits of the checkpoint file's SHA-256),
        # where there is one file to hash; None for folders, hub ids and built-ins.
        self.model_hash: str | None = None
        # Where the weights are: "device" (ready to draw), "cpu" (moved out of the GPU's memory
        # to come back quickly) or "unloaded" (read from disk again when next needed).
        self.placement = "device"
        # Every run builds its scheduler afresh from this one, so a sampler picked for one
        # request can never leak into the next.
        self._base_scheduler = pipe.scheduler
        # validate() runs on the event loop while the worker thread encodes prompts; a fast
        # tokenizer shared between threads fails with "Already borrowed", so count on a copy.
        self._counting_tokenizer = copy.deepcopy(pipe.tokenizer)
        pipe.set_progress_bar_config(disable=True)
        self.capabilities = self._inspect()
        # The second pipeline for upscale jobs, loaded on its first job (None: none configured).
        self.upscaler: Upscaler | None = None
        # The image-to-image form of ``pipe``, made on first use; it shares pipe's weights.
        self._img2img: Any = None

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "auto",
        cache_dir: Path | None = None,
        name: str | None = None,
    ) -> Engine:
        """Load ``model``: a hub id, a local diffusers folder, a single-file checkpoint
        (``.safetensors`` / ``.ckpt``), or a built-in ``tiny:shapes|sd|ldm``; ``name``: what
        to call it (default: ``model``).

        ``device="auto"`` picks CUDA (fp16) when available, else the CPU (fp32). Every way it
        can fail raises ``ModelLoadError`` with a message saying what to do.
        """
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        pipe = _load_text_to_image(model, device=device, cache_dir=cache_dir)
        engine = cls(pipe, model, device=device, name=name, cache_dir=cache_dir)
        engine.model_hash = checkpoint_hash(model, cache_dir=cache_dir)
        return engine

    # -- memory: several models take turns on one device ---------------------------------

    @property
    def ready(self) -> bool:
        """Whether the weights are on the device, so drawing starts without loading."""
        return self.placement == "device"

    def weight_bytes(self) -> int:
        """The size of the loaded weights (0 when unloaded)."""
        if self.pipe is None:
            return 0
        total = 0
        for component in getattr(self.pipe, "components", {}).values():
            parameters = getattr(component, "parameters", None)
            if callable(parameters):
                total += sum(p.numel() * p.element_size() for p in parameters())
        return total

    def evict(self, *, keep_in_cpu_memory: bool) -> None:
        """Free the device's memory for another model: move the weights to CPU memory
        (``keep_in_cpu_memory``, for a GPU: faster to bring back than reading the disk), or
        drop them (read again from the disk when next needed). Capabilities, the tokenizer and
        validation stay, so requests for this model are still checked and queued."""
        if self.placement != "device":
            return
        if not (keep_in_cpu_memory and self.device != "cpu"):
            self.unload()
            return
        self._img2img = None  # shares the weights; made again on first use
        self.pipe.to("cpu")
        self.placement = "cpu"
        release_memory()

    def unload(self) -> None:
        """Drop the weights wherever they are (on the device, waiting in CPU memory, or half
        loaded)."""
        self._img2img = self.pipe = self._base_scheduler = None
        self.placement = "unloaded"
        release_memory()

    def bring_back(self) -> None:
        """Make the weights ready on the device again (from CPU memory, or from the disk)."""
        if self.placement == "device":
            return
        try:
            if self.placement == "unloaded":
                self.pipe = _load_text_to_image(
                    self.source, device=self.device, cache_dir=self.cache_dir
                )
                self.pipe.set_progress_bar_config(disable=True)
                self._base_scheduler = self.pipe.scheduler
            else:
                self.pipe.to(self.device)
        except BaseException:
            # Half moved or half loaded (out of memory midway, say): drop it all, or its parts
            # on the device would hold memory that no eviction knows about.
            self.unload()
            raise
        self.placement = "device"

    # -- capabilities --------------------------------------------------------------------

    def _inspect(self) -> Capabilities:
        pipe = self.pipe
        params = inspect.signature(type(pipe).__call__).parameters
        scale = _vae_scale_factor(pipe)
        sample_size = pipe.unet.config.sample_size
        if isinstance(sample_size, int):
            default_h = default_w = sample_size * scale
        else:
            default_h, default_w = (s * scale for s in sample_size)
        supported = samplers_for_pipeline(type(pipe))
        own = sampler_for_scheduler(self._base_scheduler)
        default = own if own in supported else supported[0]
        return Capabilities(
            model=self.model,
            pipeline_class=type(pipe).__name__,
            negative_prompt="negative_prompt" in params,
            eta="eta" in params,
            guidance="guidance_scale" in params,
            default_width=default_w,
            default_height=default_h,
            min_side=MIN_SIDE,
            max_side=min(MAX_SIDE, 2 * max(default_w, default_h)),
            size_multiple=SIZE_MULTIPLE,
            samplers=tuple(s.id for s in supported),
            default_sampler=default.id,
            max_prompt_tokens=int(self._counting_tokenizer.model_max_length),
            example_prompts=example_prompts(self.source, getattr(pipe, "name_or_path", None)),
            image_input=_has_image_to_image(pipe),
        )

    def prompt_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes, start and end markers included."""
        return len(self._counting_tokenizer(text, truncation=False).input_ids)

    # -- validation ----------------------------------------------------------------------

    def resolve(self, request: DrawRequest) -> DrawRequest:
        """Fill every "model default" field in, so the request says exactly what will run."""
        caps = self.capabilities
        if request.task == "upscale":
            # The settings are the source picture's, resolved when it was drawn.
            seed = random_seed() if request.seed is None else request.seed
            return replace(request, seed=seed, model=request.model or self.model, count=1)
        if request.task == "img2img" and request.width is None and request.init_image:
            size = _picture_size(request.init_image)
            if size is not None:
                request = replace(request, width=size[0], height=size[1])
        return replace(
            request,
            sampler=request.sampler or caps.default_sampler,
            seed=random_seed() if request.seed is None else request.seed,
            # A strength with no variation seed asks for a random one (kept, so it redraws).
            variation_seed=random_seed()
            if request.variation_seed is None and request.variation_strength > 0
            else request.variation_seed,
            width=request.width or caps.default_width,
            height=request.height or caps.default_height,
            model=self.model,
        )

    def attach_upscaler(self, name: str, *, steps: int, cache_dir: Path | None = None) -> None:
        """Give this engine the 4x upscaler ``name`` (loaded on its first job); "none": none."""
        if name.strip().lower() == "none":
            return
        self.upscaler = Upscaler(
            name, device=self.device, steps=steps, cache_dir=cache_dir, loader=load_pipeline
        )

    def validate(self, request: DrawRequest) -> list[str]:
        """Raise ``UnsupportedOption`` for anything the model can't honour; return notes.

        Notes are things the user should know that don't stop the run (a truncated prompt).
        """
        caps = self.capabilities
        r = self.resolve(request)
        if r.task == "upscale":
            if self.upscaler is None:
                raise UnsupportedOption(N_("This bot has no upscaler set up (UPSCALER)."))
            self.upscaler.check(r)
            return []
        if r.task == "img2img":
            self._check_image_input(r)
        elif r.task != "draw" or r.strength is not None:
            raise UnsupportedOption(
                N_("A strength only applies when drawing from a picture: attach one with image.")
            )
        if not r.prompt.strip():
            raise UnsupportedOption(N_("The prompt is empty: describe what you'd like drawn."))
        if request.model not in (None, self.model):
            raise UnsupportedOption(
                N_("This bot has {model} loaded, not {asked}; leave the model out."),
                model=self.model,
                asked=request.model,
            )
        if not 1 <= r.steps <= caps.max_steps:
            raise UnsupportedOption(
                N_("Steps must be between 1 and {limit}; got {steps}."),
                limit=caps.max_steps,
                steps=r.steps,
            )
        if not 1 <= r.count <= caps.max_count:
            raise UnsupportedOption(
                N_("You can ask for 1 to {limit} images at once; got {count}."),
                limit=caps.max_count,
                count=r.count,
            )
        if r.seed is None or not 0 <= r.seed <= MAX_SEED:
            raise UnsupportedOption(N_("The seed must be between 0 and {max}."), max=MAX_SEED)
        self._check_size(r.width or 0, r.height or 0)
        self._check_sampler(r.sampler or "")
        if not 0 <= r.guidance <= 30:
            raise UnsupportedOption(
                N_("Guidance must be between 0 and 30; got {guidance}."),
                guidance=f"{r.guidance:g}",
            )
        if not caps.guidance and r.guidance != 1:
            raise UnsupportedOption(
                N_("{model} takes no guidance scale; leave guidance out."), model=self.model
            )
        if r.negative_prompt.strip():
            if not caps.negative_prompt:
                raise UnsupportedOption(
                    N_(
                        "{model} ({pipeline}) can't use a negative prompt; remove it and "
                        "describe what you want instead."
                    ),
                    model=self.model,
                    pipeline=caps.pipeline_class,
                )
            if r.guidance <= 1:
                raise UnsupportedOption(
                    N_(
                        "A negative prompt only has an effect with guidance above 1; raise the "
                        "guidance or drop the negative prompt."
                    )
                )
        if not 0 <= r.variation_strength <= 1:
            raise UnsupportedOption(
                N_("The variation strength must be between 0 and 1; got {strength}."),
                strength=f"{r.variation_strength:g}",
            )
        if r.variation_seed is not None and not 0 <= r.variation_seed <= MAX_SEED:
            raise UnsupportedOption(
                N_("The variation seed must be between 0 and {max}."), max=MAX_SEED
            )
        if not 0 <= r.eta <= 1:
            raise UnsupportedOption(N_("Eta must be between 0 and 1; got {eta}."), eta=f"{r.eta:g}")
        if r.eta and not (caps.eta and SAMPLERS[r.sampler or ""].uses_eta):
            raise UnsupportedOption(
                N_(
                    "Eta only changes images drawn with the DDIM sampler; pick sampler DDIM or "
                    "leave eta at 0."
                )
            )
        return [*self._size_notes(r.width or 0, r.height or 0), *self._prompt_notes(r)]

    def _check_image_input(self, r: DrawRequest) -> None:
        caps = self.capabilities
        if not caps.image_input:
            raise UnsupportedOption(
                N_(
                    "{model} ({pipeline}) can't start from a picture. The V buttons under a "
                    "result make variations of it instead."
                ),
                model=self.model,
                pipeline=caps.pipeline_class,
            )
        if r.strength is None or not 0 < r.strength <= 1:
            raise UnsupportedOption(N_("The strength must be above 0 and at most 1, like 0.6."))
        if int(r.steps * r.strength) < 1:
            raise UnsupportedOption(
                N_(
                    "{steps} steps at strength {strength} redraw nothing; raise the steps or "
                    "the strength."
                ),
                steps=r.steps,
                strength=f"{r.strength:g}",
            )
        if not r.init_image or not Path(r.init_image).is_file():
            raise UnsupportedOption(N_("The picture to start from is no longer stored."))
        if r.variation_seed is not None:
            raise UnsupportedOption(N_("A variation seed can't be used with a starting picture."))

    def _image_to_image(self) -> Any:
        """The image-to-image pipeline over the loaded weights (no second copy in memory)."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def _check_size(self, width: int, height: int) -> None:
        for name, side in ((Message(N_("Width")), width), (Message(N_("Height")), height)):
            problem = self.capabilities.side_problem(name, side)
            if problem:
                raise UnsupportedOption(problem)

    def _check_sampler(self, sampler_id: str) -> None:
        caps = self.capabilities
        if sampler_id in caps.samplers:
            return
        names = ", ".join(SAMPLERS[s].label for s in caps.samplers)
        if sampler_id in SAMPLERS:
            sampler = SAMPLERS[sampler_id]
            why = (
                Message(
                    N_("{pipeline} does not scale its inputs for sigma-based samplers"),
                    pipeline=caps.pipeline_class,
                )
                if sampler.sigma_based and sampler.available()
                else Message(N_("the package {package} is not installed"), package=sampler.requires)
            )
            raise UnsupportedOption(
                N_("{sampler} can't be used with {model}: {why}. Try one of: {names}."),
                sampler=sampler.label,
                model=self.model,
                why=why,
                names=names,
            )
        raise UnsupportedOption(
            N_("Unknown sampler {sampler}. Try one of: {names}."),
            sampler=repr(sampler_id),
            names=names,
        )

    def _size_notes(self, width: int, height: int) -> list[str]:
        caps = self.capabilities
        trained = (caps.default_width, caps.default_height)
        if (width, height) == trained:
            return []
        return [
            Message(
                N_(
                    "{model} was trained at {trained_width}x{trained_height}; at "
                    "{width}x{height} its pictures often come out stretched or repeated, and "
                    "usually look worse."
                ),
                model=self.model,
                trained_width=trained[0],
                trained_height=trained[1],
                width=width,
                height=height,
            )
        ]

    def _prompt_notes(self, r: DrawRequest) -> list[str]:
        limit = self.capabilities.max_prompt_tokens
        notes: list[str] = []
        for message, text in (
            (
                N_(
                    "Your prompt is {n} tokens long and the model reads only the first "
                    "{limit}; the end of it will be ignored."
                ),
                r.prompt,
            ),
            (
                N_(
                    "Your negative prompt is {n} tokens long and the model reads only the "
                    "first {limit}; the end of it will be ignored."
                ),
                r.negative_prompt,
            ),
        ):
            if text and (n := self.prompt_tokens(text)) > limit:
                notes.append(Message(message, n=n, limit=limit))
        return notes

    # -- running -------------------------------------------------------------------------

    def run(self, request: DrawRequest, on_step: StepHook | None = None) -> DrawResult:
        """Draw one request; see ``run_batch``."""
        return self.run_batch([request], on_step)[0]

    def run_batch(
        self, requests: Sequence[DrawRequest], on_step: StepHook | None = None
    ) -> list[DrawResult]:
        """Draw several compatible requests in one pipeline call, one generator per image.

        Each request's images equal what it would get alone. ``on_step(step, total)`` is called
        after every denoising step; an exception raised from it cancels the run, propagates, and
        leaves the engine ready for the next run.
        """
        import torch

        # 1. Check inputs.
        if not requests:
            return []
        notes = [tuple(self.validate(r)) for r in requests]
        resolved = [self.resolve(r) for r in requests]
        first = resolved[0]
        if first.task == "upscale":
            assert self.upscaler is not None  # validate() said so
            return [self.upscaler.run(r, _StepReporter.factory(on_step)) for r in resolved]
        if not self.ready:
            raise RuntimeError(f"model {self.model} is not loaded: bring it back first")
        for r in resolved[1:]:
            if batch_key(r) != batch_key(first):
                raise ValueError("requests in one batch must share model, sampler, steps and size")
        caps = self.capabilities

        # 2. Build generators: one CPU generator per image, so bits don't depend on the device
        # or on what else is in the batch.
        seeds = [s for r in resolved for s in r.seeds()]
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        prompts = [r.prompt for r in resolved for _ in range(r.count)]

        # 3. Set the sampler.
        sampler = SAMPLERS[first.sampler or caps.default_sampler]
        scheduler = self._make_scheduler(sampler, seeds, generators)

        # 4. Run.
        pipe = self.pipe
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "height": first.height,
            "width": first.width,
            "num_inference_steps": first.steps,
            "generator": generators,
            "output_type": "pil",
        }
        if first.task == "img2img":
            from PIL import Image

            pipe = self._image_to_image()
            with Image.open(first.init_image or "") as opened:
                picture = opened.convert("RGB")
            size = (first.width or picture.width, first.height or picture.height)
            if picture.size != size:  # the size asked for is the size drawn and recorded
                picture = picture.resize(size, Image.Resampling.LANCZOS)
            kwargs |= {"image": [picture] * len(prompts), "strength": first.strength}
            del kwargs["height"], kwargs["width"]  # the picture's own size
        if caps.guidance:
            kwargs["guidance_scale"] = first.guidance
        if caps.eta:
            kwargs["eta"] = first.eta
        if caps.negative_prompt:
            kwargs["negative_prompt"] = [
                r.negative_prompt for r in resolved for _ in range(r.count)
            ]
        if any(r.variation_seed is not None for r in resolved):
            kwargs["latents"] = self._initial_noise(resolved, generators)
        started = time.perf_counter()
        pipe.scheduler = scheduler
        pipe.progress_bar = _StepReporter.factory(on_step)
        # The pipeline's own safety checker blacks out what it flags; the checker runs after
        # instead, so flagged pictures keep their pixels and the caller decides where they may go.
        checker = getattr(pipe, "safety_checker", None)
        if checker is not None:
            pipe.safety_checker = None
        try:
            with torch.inference_mode():
                out = pipe(**kwargs)
        finally:
            pipe.scheduler = self._base_scheduler
            del pipe.progress_bar  # back to the class's method
            if checker is not None:
                pipe.safety_checker = checker
        images = list(out.images)
        flagged = self._check_safety(images) if checker is not None else [False] * len(images)
        elapsed = time.perf_counter() - started

        # 5. Collect, splitting the batch back into requests.
        results, start = [], 0
        total_images = len(images)
        for r, n in zip(resolved, notes, strict=True):
            end = start + r.count
            results.append(
                DrawResult(
                    request=r,
                    images=images[start:end],
                    seeds=r.seeds(),
                    duration_s=elapsed * r.count / total_images,
                    notes=n,
                    nsfw=tuple(bool(f) for f in flagged[start:end]),
                )
            )
            start = end
        return results

    def _initial_noise(self, requests: Sequence[DrawRequest], generators: list[Any]) -> Any:
        """The starting latents, made as the pipeline makes them (same shape, dtype and draws
        from each image's generator, so its later draws are unchanged), with each varied
        image's noise slerped towards its variation seed's."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        first = requests[0]
        pipe = self.pipe
        # LDMTextToImagePipeline sizes its latents by 8 whatever its autoencoder does.
        factor = 8 if type(pipe).__name__ == "LDMTextToImagePipeline" else _vae_scale_factor(pipe)
        assert first.width is not None and first.height is not None  # resolved
        shape = (1, pipe.unet.config.in_channels, first.height // factor, first.width // factor)
        encoder = getattr(pipe, "text_encoder", None) or getattr(pipe, "bert", None) or pipe.unet
        dtype, device = encoder.dtype, pipe._execution_device
        noises, k = [], 0
        for r in requests:
            variations = r.variation_seeds()
            for i in range(r.count):
                noise = randn_tensor(shape, generator=generators[k], device=device, dtype=dtype)
                if variations is not None and r.variation_strength > 0:
                    other_gen = torch.Generator("cpu").manual_seed(variations[i])
                    other = randn_tensor(shape, generator=other_gen, device=device, dtype=dtype)
                    noise = slerp(r.variation_strength, noise, other)
                noises.append(noise)
                k += 1
        return torch.cat(noises)

    def _check_safety(self, images: list[Any]) -> list[bool]:
        """The model's safety checker's verdict per image, leaving the images untouched."""
        import numpy as np
        import torch

        pixels = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
        with torch.inference_mode():
            # It blacks out flagged entries of the array it is given: a copy, not the images.
            _, flags = self.pipe.run_safety_checker(pixels, self.pipe.device, self.pipe.dtype)
        return [bool(f) for f in (flags or [False] * len(images))]

    def _make_scheduler(self, sampler: Sampler, seeds: list[int], generators: list[Any]) -> Any:
        config = self._base_scheduler.config
        overrides: dict[str, Any] = {}
        if sampler.id == "dpmpp_sde":
            # Its Brownian-tree noise ignores generators; one seed per image keeps it exact.
            overrides["noise_sampler_seed"] = list(seeds)
        scheduler = sampler.build(config, **overrides)
        if "generator" in inspect.signature(scheduler.step).parameters:
            # Some pipelines (LDM) never pass the generator to step(), so stochastic samplers
            # would draw their step noise from the global RNG. The pipeline's own argument,
            # where it passes one, still wins.
            scheduler.step = functools.partial(scheduler.step, generator=generators)
        return scheduler


def _picture_size(path: str) -> tuple[int, int] | None:
    """The width and height of a stored picture (its header only); None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except OSError:
        return None


def load_pipeline(model: str, *, device: str, cache_dir: Path | None = None) -> Any:
    """Any diffusers pipeline by name (hub id, folder, single-file checkpoint, ``tiny:...``),
    in fp16 on CUDA and fp32 elsewhere, not yet moved to ``device``. Every way it can fail
    raises ``ModelLoadError`` saying what to do."""
    import torch
    from diffusers import DiffusionPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    source = _resolve_source(model, cache_dir)
    log.info("loading model %s from %s on %s (%s)", model, source, device, dtype)
    try:
        if Path(source).is_dir():
            return DiffusionPipeline.from_pretrained(source, torch_dtype=dtype)
        if Path(source).is_file():
            return _from_single_file(Path(source), dtype)
        return _from_hub(source, dtype)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load model {model!r}: {exc}") from exc


def _load_text_to_image(model: str, *, device: str, cache_dir: Path | None) -> Any:
    """``load_pipeline`` for drawing: refuses what is not text to image, moves to ``device``."""
    pipe = load_pipeline(model, device=device, cache_dir=cache_dir)
    if not hasattr(pipe, "unet") or not hasattr(pipe, "tokenizer"):
        raise ModelLoadError(
            f"{model!r} is a {type(pipe).__name__}, not a text-to-image pipeline with a UNet."
        )
    pipe.to(device)
    return pipe


def checkpoint_hash(model: str, *, cache_dir: Path | None = None) -> str | None:
    """A1111's model hash ("AutoV2": the first 10 hex digits of the file's SHA-256) of a
    single-file checkpoint; None for anything else (a folder, a hub id, a built-in).

    Reading gigabytes at every start would slow each one (and each Ray worker's) by seconds,
    so the hash is kept in ``cache_dir`` (default: the tiny models' cache), keyed by the file's
    path, size and modification time: a changed file is hashed again."""
    import hashlib
    import json

    from pipeline.tiny import default_cache_dir

    path = Path(model).expanduser()
    if model.startswith("tiny:") or not path.is_file():
        return None
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    store = (cache_dir or default_cache_dir()) / "checkpoint-hashes.json"
    try:
        known: dict[str, str] = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    known[key] = digest.hexdigest()[:10]
    try:  # a cache that can't be written only costs the next start the reading again
        store.parent.mkdir(parents=True, exist_ok=True)
        temporary = store.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known, indent=0))
        temporary.replace(store)
    except OSError:
        log.debug("could not keep the checkpoint hash in %s", store, exc_info=True)
    return known[key]


def release_memory() -> None:
    """Give memory back (the GPU's cache too): after a failed batch, or a model given way."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _has_image_to_image(pipe: Any) -> bool:
    """Whether diffusers has an image-to-image pipeline for ``pipe``'s class (SD: yes)."""
    from diffusers.pipelines.auto_pipeline import (
        AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    )

    kind = type(pipe)
    names = [name for name, cls in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.items() if cls is kind]
    return any(name in AUTO_IMAGE2IMAGE_PIPELINES_MAPPING for name in names)


def slerp(t: float, low: Any, high: Any) -> Any:
    """Spherical interpolation between two noise tensors, as A1111's variation seed does it
    (falls back to a straight line when they are nearly parallel)."""
    import torch

    low_f, high_f = low.float(), high.float()
    low_n = low_f / torch.linalg.vector_norm(low_f)
    high_n = high_f / torch.linalg.vector_norm(high_f)
    dot = (low_n * high_n).sum().clamp(-1.0, 1.0)
    if dot.abs() > 0.9995:
        mixed = (1 - t) * low_f + t * high_f
    else:
        omega = torch.acos(dot)
        so = torch.sin(omega)
        mixed = (torch.sin((1 - t) * omega) / so) * low_f + (torch.sin(t * omega) / so) * high_f
    return mixed.to(low.dtype)


def example_prompts(model: str, source: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """Prompts to suggest for ``model`` (a MODEL value; ``source``: where it was loaded from).

    Needs no loaded model, so ``python -m bot sync`` describes /draw as a running bot does. The
    shapes model knows only its own words; anything else gets the classic example.
    """
    if model == "tiny:shapes" or _is_shapes_folder(source or model):
        return _shapes_examples()
    return DEFAULT_EXAMPLE_PROMPTS


@functools.cache
def _shapes_examples() -> tuple[str, ...]:
    """Captions in the shapes model's own phrasings, of combinations it was trained on.

    All in the centre: the model ignores the place (see the README).
    """
    from pipeline.shapes.data import HELD_OUT, Attributes

    chosen = [
        (Attributes("circle", "red", "white", "large", "centre"), 0),
        (Attributes("star", "yellow", "blue", "large", "centre"), 1),
        (Attributes("ring", "green", "black", "small", "centre"), 0),
        (Attributes("square", "purple", "orange", "large", "centre"), 3),
    ]
    return tuple(a.caption(phrasing) for a, phrasing in chosen if a not in HELD_OUT)


def _is_shapes_folder(path: str | os.PathLike[str]) -> bool:
    from pipeline.shapes.model import WEIGHTS_DIR

    try:
        return Path(path).resolve() == WEIGHTS_DIR.resolve()
    except (OSError, ValueError):
        return False


def batch_key(r: DrawRequest) -> tuple[Any, ...]:
    """Requests with equal keys can share one pipeline call."""
    if r.task == "upscale":
        return (r.task, r.init_image, r.seed)  # one picture per call
    if r.task == "img2img":  # the same starting picture and strength can share a call
        return (r.task, r.init_image, r.strength, *batch_key(replace(r, task="draw")))
    return (
        r.model,
        r.sampler,
        r.steps,
        r.width,
        r.height,
        float(r.guidance),
        float(r.eta),
        bool(r.negative_prompt.strip()),
    )


class _StepReporter:
    """Stands in for ``pipeline.progress_bar`` to report each step, for SD and LDM alike.

    SD uses it as a context manager with ``update()``; LDM iterates over it.
    """

    def __init__(
        self, on_step: StepHook | None, iterable: Iterable[Any] | None, total: int
    ) -> None:
        self.on_step = on_step
        self.iterable = iterable
        self.total = total
        self.done = 0

    @classmethod
    def factory(cls, on_step: StepHook | None) -> Callable[..., _StepReporter]:
        def progress_bar(iterable: Iterable[Any] | None = None, total: int | None = None):
            if iterable is not None:
                iterable = list(iterable)
                total = len(iterable)
            return cls(on_step, iterable, total or 0)

        return progress_bar

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.on_step is not None:
            self.on_step(self.done, self.total)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update()

    def __enter__(self) -> _StepReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _vae_scale_factor(pipe: Any) -> int:
    if getattr(pipe, "vae_scale_factor", None):
        return int(pipe.vae_scale_factor)
    vae = getattr(pipe, "vae", None) or getattr(pipe, "vqvae", None)
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8


# -- loading helpers ---------------------------------------------------------------------

# File endings of single-file checkpoints, the form most model pages offer.
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Single-file checkpoints Easel draws with: diffusers' model type -> (pipeline class, name).
_SINGLE_FILE_KINDS = {
    "v1": ("StableDiffusionPipeline", "Stable Diffusion 1.x"),
    "v2": ("StableDiffusionPipeline", "Stable Diffusion 2.x"),
    "xl_base": ("StableDiffusionXLPipeline", "Stable Diffusion XL"),
}
_MODEL_CHOICES = (
    "MODEL takes a hub id (like CompVis/ldm-text2im-large-256), a folder holding a diffusers "
    "pipeline (one with model_index.json), a single-file checkpoint (.safetensors or .ckpt), "
    "or a built-in model such as tiny:shapes"
)
_OR_LOCAL = (
    "or set MODEL to a local diffusers folder or checkpoint file, or to the built-in offline "
    "model tiny:shapes"
)


def _resolve_source(model: str, cache_dir: Path | None) -> str:
    """What ``Engine.load`` reads: a folder, a checkpoint file, or a hub id.

    A local path that can't be a model is refused here, with the reason and the fix.
    """
    if model.startswith("tiny:"):
        name = model.removeprefix("tiny:")
        if name not in TINY_MODELS:
            choices = ", ".join(f"tiny:{n}" for n in TINY_MODELS)
            raise ModelLoadError(f"Unknown built-in model {model!r}; choose one of {choices}.")
        try:
            return str(tiny_model_path(name, cache_dir))
        except FileNotFoundError as exc:
            raise ModelLoadError(f"The built-in model {model} can't be loaded: {exc}.") from exc
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(_folder_problem(model, path))
        return str(path)
    if path.is_file():
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            return str(path)
        if path.name == "model_index.json":
            raise ModelLoadError(
                f"{model} is the index of a diffusers pipeline: set MODEL to its folder, "
                f"{path.parent}."
            )
        raise ModelLoadError(f"The file {model} is not a model. {_MODEL_CHOICES}.")
    is_checkpoint = path.suffix.lower() in CHECKPOINT_SUFFIXES
    if is_checkpoint or model.startswith((".", "/", "~")) or model.count("/") > 1:
        what = "checkpoint file" if is_checkpoint else "model folder"
        raise ModelLoadError(f"The {what} {model} does not exist{_where(path)}.")
    return model


def _where(path: Path) -> str:
    """Where a missing path was looked for, and what in its folder might have been meant."""
    notes = []
    if not path.is_absolute():
        notes.append(f"looked for {path.absolute()}")
    folder = path.absolute().parent
    try:
        near = sorted(
            p.name
            for p in folder.iterdir()
            if p.suffix.lower() in CHECKPOINT_SUFFIXES or (p / "model_index.json").is_file()
        )
    except OSError:
        near = []
    if near:
        notes.append(f"{folder} holds {', '.join(near[:3])}")
    return f" ({'; '.join(notes)})" if notes else ""


def _folder_problem(model: str, path: Path) -> str:
    """Why the folder ``path`` is not a diffusers pipeline, and what MODEL should be instead."""
    head = f"The folder {model} has no model_index.json: it is not a diffusers pipeline."
    try:
        files = sorted(p for p in path.iterdir() if p.is_file())
        nested = sorted(
            p.parent for p in (*path.glob("*/model_index.json"), *path.glob("*/*/model_index.json"))
        )
    except OSError:
        return f"{head} {_MODEL_CHOICES}."
    checkpoints = [p for p in files if p.suffix.lower() in CHECKPOINT_SUFFIXES]
    if (path / "config.json").is_file() and checkpoints:
        return (
            f"{head} It holds one part of a pipeline (config.json and its weights): set MODEL "
            "to the folder above it, the one with model_index.json."
        )
    if nested:
        return f"{head} A pipeline is in {nested[0]}: set MODEL to that folder."
    if checkpoints:
        names = ", ".join(p.name for p in checkpoints[:3])
        return (
            f"{head} It holds the checkpoint file(s) {names}: set MODEL to the file itself, "
            f"MODEL={checkpoints[0]}."
        )
    return f"{head} {_MODEL_CHOICES}."


def _from_single_file(path: Path, dtype: Any) -> Any:
    """Load a single-file checkpoint with diffusers' ``from_single_file``.

    diffusers builds the pipeline around the checkpoint from the configuration of the model it
    belongs to: a few small files from a hub repo, cached after the first time. When they are
    not cached and the hub can't be reached, the message says so and what to do instead.
    """
    import diffusers
    from diffusers.loaders.single_file_utils import (
        DIFFUSERS_DEFAULT_PIPELINE_PATHS,
        infer_diffusers_model_type,
        load_single_file_checkpoint,
    )

    try:
        checkpoint = load_single_file_checkpoint(str(path))
        kind = infer_diffusers_model_type(checkpoint)
        keys = list(checkpoint)
    except Exception as exc:  # safetensors, pickle and torch each raise their own kinds
        raise ModelLoadError(
            f"{path} can't be read as a checkpoint ({_short(exc)}); is the file complete?"
        ) from exc
    del checkpoint
    if kind == "v1" and not any(k.startswith("model.diffusion_model.") for k in keys):
        # diffusers calls anything it does not recognise "v1"; a real one has a UNet.
        raise ModelLoadError(f"{path} {_not_a_whole_model(keys)}")
    if kind not in _SINGLE_FILE_KINDS:
        raise ModelLoadError(
            f"{path} is not a text-to-image checkpoint Easel can draw with (diffusers reads it "
            f"as {kind!r}); single files of Stable Diffusion 1.x, 2.x and XL work. For other "
            "models set MODEL to a diffusers folder or a hub id."
        )
    class_name, label = _SINGLE_FILE_KINDS[kind]
    config_repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]
    cached = _config_cached(config_repo)
    if not cached:
        problem = _hub_problem(config_repo)
        if problem:
            raise ModelLoadError(
                f"{path} is a single-file {label} checkpoint. Loading it needs the configuration "
                f"of {label} (a few small files from the hub repo {config_repo}), which is not in "
                f"the local Hugging Face cache, and {problem}. Run Easel once where the hub can "
                "be reached (the files are cached for later runs), or set MODEL to a diffusers "
                "folder (one with model_index.json)."
            )
        log.info("fetching the configuration of %s (%s) from the hub", label, config_repo)
    try:
        pipeline_cls = getattr(diffusers, class_name)
        return pipeline_cls.from_single_file(str(path), torch_dtype=dtype, local_files_only=cached)
    except Exception as exc:
        raise ModelLoadError(
            f"Could not load {path} as a {label} checkpoint: {_short(exc)}"
        ) from exc


def _not_a_whole_model(keys: list[str]) -> str:
    """What a checkpoint without a Stable Diffusion UNet is, as the end of a sentence."""
    lowered = [k.lower() for k in keys]
    if any("lora" in k for k in lowered):
        return (
            "is a LoRA (it adjusts a base model), not a whole model, and Easel does not apply "
            "LoRAs: set MODEL to a whole checkpoint, a diffusers folder or a hub id."
        )
    if any(k.startswith(("string_to_param", "emb_params")) for k in lowered):
        return (
            "is a textual-inversion embedding, not a whole model: set MODEL to a whole "
            "checkpoint, a diffusers folder or a hub id."
        )
    if lowered and all(
        k.startswith(("encoder.", "decoder.", "quant_conv", "post_quant")) for k in lowered
    ):
        return (
            "is a VAE on its own, not a whole model: set MODEL to a whole checkpoint, a diffusers "
            "folder or a hub id."
        )
    return (
        f"holds no Stable Diffusion UNet (none of its {len(keys)} tensors is named "
        "model.diffusion_model.*), so it is not a whole Stable Diffusion checkpoint. "
        f"{_MODEL_CHOICES}."
    )


def _config_cached(repo_id: str) -> bool:
    """Whether the configuration files of hub repo ``repo_id`` are in the local cache."""
    from huggingface_hub import snapshot_download

    try:
        # The same files diffusers' from_single_file fetches.
        snapshot_download(
            repo_id,
            allow_patterns=["**/*.json", "*.json", "*.txt", "**/*.txt", "**/*.model"],
            local_files_only=True,
        )
    except Exception:  # LocalEntryNotFoundError, or a cache it can't read
        return False
    return True


def _from_hub(model_id: str, dtype: Any) -> Any:
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError as exc:
        raise ModelLoadError(
            f"MODEL={model_id} is not a folder or file here, and not a hub id ({exc}). "
            f"{_MODEL_CHOICES}."
        ) from exc
    try:
        return DiffusionPipeline.from_pretrained(model_id, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError):
        pass  # not cached (or only partly): download it if the hub can be reached
    problem = _hub_problem(model_id)
    if problem:
        raise ModelLoadError(
            f"The model {model_id} is not in the local Hugging Face cache and {problem}. "
            f"Download it where the hub can be reached, {_OR_LOCAL}."
        )
    log.info(
        "downloading %s from %s: the first time can take a while (several GB for real models)",
        model_id,
        constants.ENDPOINT,
    )
    try:
        return DiffusionPipeline.from_pretrained(model_id, torch_dtype=dtype)
    except (OSError, ValueError):
        raise  # Engine.load words these
    except Exception as exc:  # the download broke off: httpx errors are not OSErrors
        raise ModelLoadError(
            f"Downloading {model_id} from {constants.ENDPOINT} failed ({_short(exc)}); run "
            "again to resume (finished files are kept)."
        ) from exc


def _hub_problem(repo_id: str, timeout: float = 10.0) -> str | None:
    """Why ``repo_id`` can't be downloaded now (the end of a sentence), or None if it can.

    It asks huggingface_hub itself for the repo's info, so HF_ENDPOINT, HF_TOKEN and proxies
    (HTTPS_PROXY, ...) count exactly as they will for the download.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set, so nothing is downloaded (unset it to download)"
    endpoint = constants.ENDPOINT
    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except GatedRepoError:
        return (
            f"it is gated on {endpoint}: accept its terms on its page there and set HF_TOKEN "
            "to a token of that account"
        )
    except RepositoryNotFoundError:
        return f"{endpoint} has no model {repo_id} (a private one needs HF_TOKEN)"
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "with an error"
        return f"the hub at {endpoint} answered HTTP {status}"
    except Exception as exc:  # the network: httpx's errors, OSError, OfflineModeIsEnabled
        return (
            f"the hub at {endpoint} can't be reached ({_short(exc)}; check the connection, "
            "HF_ENDPOINT and HTTPS_PROXY)"
        )
    return None


def _short(exc: BaseException) -> str:
    """An exception's first line, for a one-line message."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def quiet_library_logs(*, download_progress: bool | None = None) -> None:
    """Silence diffusers/transformers chatter (deprecations, per-step and per-part bars) for the
    CLI and the bot, but keep huggingface_hub's download progress bars when stderr is a
    terminal: a first download is several GB. ``download_progress`` overrides that choice;
    HF_HUB_DISABLE_PROGRESS_BARS=1 still wins.
    """
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="Should have tb<=t1")
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    with warnings.catch_warnings():  # it warns when HF_HUB_DISABLE_PROGRESS_BARS=0 wins
        warnings.simplefilter("ignore")
        # This also switches huggingface_hub's download bars off; they are decided below.
        transformers_logging.disable_progress_bar()
        if download_progress is None:
            download_progress = sys.stderr.isatty()
        if download_progress:
            enable_progress_bars()
        else:
            disable_progress_bars()
