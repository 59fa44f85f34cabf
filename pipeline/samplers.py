"""The samplers users know by name, and how to build each from a pipeline's scheduler config."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampler:
    """One sampler: the id used in commands, the name users know, and how to build it."""

    id: str
    label: str
    scheduler_class: str
    extra: dict[str, Any] = field(default_factory=dict)
    # Samplers that need the pipeline to scale inputs by sigma (scale_model_input,
    # init_noise_sigma); pipelines that skip that step draw garbage with them.
    sigma_based: bool = False
    requires: str | None = None  # an optional package the scheduler imports
    uses_eta: bool = False

    def available(self) -> bool:
        """Whether the optional package this sampler needs is installed."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def build(self, config: Any, **overrides: Any) -> Any:
        """A fresh scheduler of this kind, configured like the pipeline's own."""
        import diffusers

        cls = getattr(diffusers, self.scheduler_class)
        return cls.from_config(config, **{**self.extra, **overrides})


SAMPLERS: dict[str, Sampler] = {
    s.id: s
    for s in (
        Sampler("ddim", "DDIM", "DDIMScheduler", uses_eta=True),
        # PLMS, as SD ships it: the Runge-Kutta warm-up breaks below 3 steps and doubles the work.
        Sampler("pndm", "PNDM", "PNDMScheduler", {"skip_prk_steps": True}),
        Sampler("ddpm", "DDPM", "DDPMScheduler"),
        Sampler("euler", "Euler", "EulerDiscreteScheduler", sigma_based=True),
        Sampler("euler_a", "Euler a", "EulerAncestralDiscreteScheduler", sigma_based=True),
        Sampler("heun", "Heun", "HeunDiscreteScheduler", sigma_based=True),
        Sampler("lms", "LMS", "LMSDiscreteScheduler", sigma_based=True, requires="scipy"),
        Sampler(
            "dpmpp_2m",
            "DPM++ 2M",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
        ),
        Sampler(
            "dpmpp_2m_karras",
            "DPM++ 2M Karras",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        ),
        Sampler(
            "dpmpp_sde",
            "DPM++ SDE",
            "DPMSolverSDEScheduler",
            sigma_based=True,
            requires="torchsde",
        ),
        Sampler("unipc", "UniPC", "UniPCMultistepScheduler"),
    )
}

_BY_LABEL = {s.label.casefold(): s for s in SAMPLERS.values()}


def get_sampler(key: str) -> Sampler:
    """Look a sampler up by id (``euler_a``) or by the name users know (``Euler a``)."""
    found = SAMPLERS.get(key) or _BY_LABEL.get(key.casefold())
    if found is None:
        raise KeyError(key)
    return found


def sampler_label(sampler_id: str | None) -> str:
    """The name users know for a sampler id; unknown ids are shown as they are."""
    found = SAMPLERS.get(sampler_id or "")
    return found.label if found else str(sampler_id)


def sampler_for_scheduler(scheduler: Any) -> Sampler | None:
    """The sampler id matching a loaded scheduler instance, if any (its default sampler)."""
    name = type(scheduler).__name__
    for s in SAMPLERS.values():
        if s.scheduler_class != name:
            continue
        if s.extra.get("use_karras_sigmas", False) == bool(
            getattr(scheduler.config, "use_karras_sigmas", False)
        ):
            return s
    return None


def samplers_for_pipeline(pipeline_cls: type) -> list[Sampler]:
    """The samplers a pipeline class runs correctly, in menu order.

    A pipeline that never calls ``scheduler.scale_model_input`` (LDM text-to-image) draws wrong
    images with sigma-based samplers, so those are left out for it.
    """
    scales = _scales_model_input(pipeline_cls)
    return [s for s in SAMPLERS.values() if s.available() and (scales or not s.sigma_based)]


def _scales_model_input(pipeline_cls: type) -> bool:
    import inspect

    try:
        source = inspect.getsource(pipeline_cls.__call__)
    except (OSError, TypeError):
        return False  # unknown code: offer only the samplers that are safe everywhere
    return "scale_model_input" in source
