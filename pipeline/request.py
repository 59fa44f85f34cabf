"""The request that flows unchanged from the slash command to the engine and the store."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pipeline.messages import N_, Message

MAX_SEED = 2**32 - 1


# diffusers runs classifier-free guidance only for a guidance scale above 1 in
# StableDiffusionPipeline and its kin (``do_classifier_free_guidance`` is ``guidance_scale > 1``):
# any scale up to 1 draws exactly what 1 draws. LDMTextToImagePipeline guides at every scale but
# exactly 1 (0.5 mixes the conditional and unconditional predictions half and half).
GUIDES_BELOW_ONE = frozenset({"LDMTextToImagePipeline"})


def random_seed() -> int:
    """A fresh seed in the range users can type back in (0..2**32-1)."""
    return secrets.randbelow(MAX_SEED + 1)


def guidance_is_off(guidance: float, pipeline_class: str | None = None) -> bool:
    """Whether ``pipeline_class`` runs no classifier-free guidance at scale ``guidance``.

    Every pipeline skips it at exactly 1. Below 1 it depends on the pipeline; an unknown one
    (``None``) is not claimed to skip it.
    """
    if guidance == 1:
        return True
    if pipeline_class is None or pipeline_class in GUIDES_BELOW_ONE:
        return False
    return guidance < 1


def guidance_label(guidance: float, pipeline_class: str | None = None) -> str:
    """The guidance as it acts, for people: ``6``, ``1 (off)``, ``0.5 (off)`` on SD models
    (a ``Message``, translated where it is shown)."""
    text = f"{guidance:g}"
    if guidance_is_off(guidance, pipeline_class):
        return Message(N_("{guidance} (off)"), guidance=text)
    return text


@dataclass(frozen=True)
class DrawRequest:
    """Everything that decides the pixels of a drawing.

    ``None`` means "the loaded model's default"; ``Engine.resolve`` fills every such field in, and
    the resolved request is what gets stored and shown, so any image can be drawn again.
    Image ``i`` of a request uses seed ``seed + i``.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int = 50
    guidance: float = 6.0
    eta: float = 0.0
    sampler: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    count: int = 1
    model: str | None = None
    # A1111's variation seed: the starting noise of image i is the spherical interpolation of
    # the noise of seed + i and of variation_seed + i, this far towards the latter (0: the
    # picture of the seed alone, 1: the picture of the variation seed).
    variation_seed: int | None = None
    variation_strength: float = 0.0
    # "draw" (text to image); "upscale": ``init_image`` (a stored PNG drawn with the settings
    # above) made larger by the engine's upscaler, with ``seed`` for the upscaler's noise;
    # "img2img": drawn from ``init_image`` (a result or an upload) with the settings above.
    task: str = "draw"
    init_image: str | None = None
    # "img2img": how much of ``init_image`` is redrawn (A1111's denoising strength), 0-1.
    strength: float | None = None

    def seeds(self) -> list[int]:
        """The seed of each image: ``seed``, ``seed + 1``, ..."""
        if self.seed is None:
            raise ValueError("the request has no seed yet: resolve it first")
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    @property
    def varied(self) -> bool:
        """Whether the starting noise mixes in a variation seed."""
        return self.variation_seed is not None and self.variation_strength > 0

    def variation_seeds(self) -> list[int] | None:
        """The variation seed of each image, or None when the request is not a variation."""
        if self.variation_seed is None:
            return None
        return [(self.variation_seed + i) % (MAX_SEED + 1) for i in range(self.count)]

    def with_seed(self, seed: int) -> DrawRequest:
        return replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrawRequest:
        names = {f.name for f in cls.__dataclass_fields__.values()}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class DrawResult:
    """What a run produced: the images and the fully resolved settings that made them."""

    request: DrawRequest
    images: list[Any] = field(repr=False)  # PIL images, one per seed
    seeds: list[int]
    duration_s: float
    notes: tuple[str, ...] = ()  # things the user should know, e.g. a truncated prompt
    nsfw: tuple[bool, ...] = ()  # per image, where the model has a safety checker
