"""Upscaling with a diffusion model: the picture of a finished job, made 4x larger.

The upscaler is a second pipeline, loaded on first use on the executor's thread and kept while
the bot runs. Two families work, told apart by their class:

- ``LDMSuperResolutionPipeline`` (``CompVis/ldm-super-resolution-4x-openimages``, the same LDM
  family as the default model, and the offline ``tiny:shapes-x4`` / ``tiny:upscaler``): the
  low-resolution picture is concatenated to the latents; no prompt.
- ``StableDiffusionUpscalePipeline`` (``stabilityai/stable-diffusion-x4-upscaler``): guided by
  the picture's prompt and negative prompt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import ModelLoadError, UnsupportedOption
from pipeline.messages import N_
from pipeline.request import DrawRequest, DrawResult

log = logging.getLogger(__name__)

DEFAULT_UPSCALER = "CompVis/ldm-super-resolution-4x-openimages"
DEFAULT_UPSCALE_STEPS = 20
# The largest picture an upscale may start from: 4x of it is the most Discord's preview and a
# single GPU call handle sensibly.
MAX_SOURCE_SIDE = 512
_KINDS = {
    "LDMSuperResolutionPipeline": "ldm",
    "StableDiffusionUpscalePipeline": "sd",
}


class Upscaler:
    """An upscaling pipeline by name, loaded when first needed."""

    def __init__(
        self,
        model: str = DEFAULT_UPSCALER,
        *,
        device: str = "cpu",
        steps: int = DEFAULT_UPSCALE_STEPS,
        cache_dir: Path | None = None,
        loader: Callable[..., Any] | None = None,
    ) -> None:
        """``loader(model, device=..., cache_dir=...)`` loads a pipeline by name
        (``pipeline.engine.load_pipeline``, handed in so this module needs no engine)."""
        self.model = model
        self.loader = loader
        self.device = device
        self.steps = steps
        self.cache_dir = cache_dir
        self.factor = 4
        self.pipe: Any = None
        # Why loading failed, once it has: later upscales are refused at once with it instead
        # of holding the queue up with another attempt (a restart tries again).
        self.failed: str | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.pipe is not None

    def load(self) -> Any:
        """The pipeline, loading it the first time (on the executor's thread: it may take long)."""
        with self._lock:
            if self.failed is not None:
                raise ModelLoadError(self.failed)
            if self.pipe is None:
                try:
                    self.pipe = self._load()
                except ModelLoadError as exc:
                    self.failed = exc.text  # a Message: shown later in each member's language
                    raise
            return self.pipe

    def _load(self) -> Any:
        if self.loader is None:
            raise ModelLoadError("no way to load the upscaler was given")
        log.info("loading upscaler %s on %s", self.model, self.device)
        pipe = self.loader(self.model, device=self.device, cache_dir=self.cache_dir)
        kind = _KINDS.get(type(pipe).__name__)
        if kind is None:
            raise ModelLoadError(
                N_(
                    "The upscaler {model} is a {pipeline}; Easel upscales with an "
                    "LDMSuperResolutionPipeline or a StableDiffusionUpscalePipeline."
                ),
                model=repr(self.model),
                pipeline=type(pipe).__name__,
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def check(self, request: DrawRequest) -> tuple[int, int]:
        """Raise ``UnsupportedOption`` unless ``request``'s source picture can be upscaled;
        returns its size."""
        from PIL import Image

        if self.failed is not None:
            raise UnsupportedOption(N_("Upscaling is not available: {reason}"), reason=self.failed)
        path = request.init_image
        if not path or not Path(path).is_file():
            raise UnsupportedOption(
                N_(
                    "The picture to upscale is no longer stored (it was deleted), so it can't "
                    "be upscaled."
                )
            )
        try:
            with Image.open(path) as image:
                size = image.size
        except OSError as exc:
            raise UnsupportedOption(N_("The picture to upscale can't be read.")) from exc
        if max(size) > MAX_SOURCE_SIDE:
            raise UnsupportedOption(
                N_("That picture is {width}x{height}; Easel upscales pictures up to {max}x{max}."),
                width=size[0],
                height=size[1],
                max=MAX_SOURCE_SIDE,
            )
        return size

    def run(self, request: DrawRequest, reporter: Any) -> DrawResult:
        """Upscale ``request.init_image`` with the request's seed; ``reporter`` is the engine's
        progress-bar factory (it reports steps and stops the run when asked)."""
        import torch
        from PIL import Image

        self.check(request)
        pipe = self.load()
        seed = request.seed or 0
        with Image.open(request.init_image or "") as opened:
            source = opened.convert("RGB")
        width, height = source.size
        # The LDM upscaler cuts sides down to multiples of 32: pad (repeating the edge) and
        # crop the result, so nothing is squashed.
        padded = _pad_to(source, 32)
        generator = torch.Generator("cpu").manual_seed(seed)
        kwargs: dict[str, Any] = {
            "image": padded,
            "num_inference_steps": self.steps,
            "generator": generator,
            "output_type": "pil",
        }
        if _KINDS[type(pipe).__name__] == "sd":
            kwargs |= {"prompt": request.prompt, "negative_prompt": request.negative_prompt or None}
        started = time.perf_counter()
        if reporter is not None:
            pipe.progress_bar = reporter
        try:
            with torch.inference_mode():
                image = pipe(**kwargs).images[0]
            f = self.factor
            image = image.crop((0, 0, width * f, height * f))
        finally:
            if reporter is not None:
                del pipe.progress_bar  # back to the class's method
        return DrawResult(
            request=request,
            images=[image],
            seeds=[seed],
            duration_s=time.perf_counter() - started,
            notes=(),
        )


def _pad_to(image: Any, multiple: int) -> Any:
    """``image`` grown to sides that are multiples of ``multiple`` by repeating its edges."""
    import numpy as np
    from PIL import Image

    width, height = image.size
    right, bottom = -width % multiple, -height % multiple
    if not right and not bottom:
        return image
    pixels = np.pad(np.asarray(image), ((0, bottom), (0, right), (0, 0)), mode="edge")
    return Image.fromarray(pixels)
