"""How results look on Discord: the settings embed, PNG attachments that fit the upload limit."""

from __future__ import annotations

import io
from dataclasses import dataclass

import discord
from PIL import Image

from bot.i18n import _, localize
from bot.text import plain
from pipeline.pngmeta import PARAMETERS_KEY, png_bytes, read_parameters
from pipeline.request import DrawRequest, guidance_label
from pipeline.samplers import SAMPLERS, sampler_label

EMBED_COLOUR = discord.Colour(0x5B8DEF)
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's default per-file limit


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis; whole text stays in the database."""
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def result_embed(
    request: DrawRequest,
    job_id: int,
    *,
    requester: str,
    eta_applies: bool,
    notes: tuple[str, ...] = (),
    parent_job_id: int | None = None,
    pipeline_class: str | None = None,
    kind: str = "draw",
    upscaled: tuple[int, str] | None = None,
) -> discord.Embed:
    """The settings that made the picture, with the exact field names users look for, in the
    current locale (the caller picks it: the server's for a public post).

    Guidance is shown as it acts on ``pipeline_class`` (the engine's): "1 (off)", and on SD
    models "0.5 (off)" too, since diffusers runs no classifier-free guidance there up to 1.
    ``notes`` may be ``Message``s: they are translated here.
    """
    # User text, shown literally: no masked links or markdown under the bot's name.
    embed = discord.Embed(description=plain(shorten(request.prompt, 1000)), colour=EMBED_COLOUR)
    if request.negative_prompt:
        embed.add_field(
            name=_("Negative prompt"),
            value=plain(shorten(request.negative_prompt, 400)),
            inline=False,
        )
    seeds = request.seeds()
    # Seeds are numbers people copy back: written plainly, never grouped.
    embed.add_field(name=_("Seed"), value=", ".join(map(str, seeds)))
    embed.add_field(name=_("Steps"), value=str(request.steps))
    embed.add_field(
        name=_("Guidance"), value=localize(guidance_label(request.guidance, pipeline_class))
    )
    if eta_applies and request.sampler in SAMPLERS and SAMPLERS[request.sampler].uses_eta:
        embed.add_field(name=_("Eta"), value=f"{request.eta:g}")
    embed.add_field(name=_("Sampler"), value=sampler_label(request.sampler))
    if upscaled is not None and request.width and request.height:
        factor, upscaler = upscaled
        embed.add_field(
            name=_("Size"),
            value=_(
                "{width}x{height} ({factor}x {source_width}x{source_height})",
                width=request.width * factor,
                height=request.height * factor,
                factor=factor,
                source_width=request.width,
                source_height=request.height,
            ),
        )
        embed.add_field(name=_("Upscaler"), value=shorten(upscaler, 200))
    else:
        embed.add_field(name=_("Size"), value=f"{request.width}x{request.height}")
    embed.add_field(name=_("Model"), value=shorten(str(request.model), 200))
    if request.task == "img2img" and request.strength is not None:
        embed.add_field(name=_("Strength"), value=f"{request.strength:g}")
        if not parent_job_id:
            embed.add_field(name=_("Started from"), value=_("a picture they attached"))
    variations = request.variation_seeds()
    if variations is not None and request.variation_strength > 0:
        strength = f"{request.variation_strength:g}"
        embed.add_field(
            name=_("Variation"),
            value=_(
                "seed {seeds} at {strength}",
                seeds=", ".join(map(str, variations)),
                strength=strength,
            ),
        )
    embed.add_field(
        name="\u200b", value=credit(requester, parent_job_id=parent_job_id, kind=kind), inline=False
    )
    for note in notes[:3]:
        embed.add_field(name=_("Note"), value=shorten(localize(note), 1000), inline=False)
    embed.set_footer(text=_("Job #{job}", job=job_id))
    return embed


def credit(requester: str, *, parent_job_id: int | None, kind: str) -> str:
    """Who asked for a result, and what it was made from: "Requested by @alice"."""
    if not parent_job_id:
        return _("Requested by {requester}", requester=requester)
    if kind == "vary":
        return _("Variation of job #{job} by {requester}", job=parent_job_id, requester=requester)
    if kind == "upscale":
        return _("Upscaled from job #{job} by {requester}", job=parent_job_id, requester=requester)
    if kind == "remix":
        return _("Remix of job #{job} by {requester}", job=parent_job_id, requester=requester)
    return _("Rerolled from job #{job} by {requester}", job=parent_job_id, requester=requester)


@dataclass(frozen=True)
class Upload:
    """One PNG ready to attach, and whether it had to be shrunk to fit."""

    filename: str
    data: bytes
    scaled: bool = False

    def file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename)


def fit_upload(data: bytes, limit: int, filename: str) -> Upload | None:
    """The PNG as is if it fits ``limit`` bytes, else re-encoded or scaled down (settings kept).

    Returns None when even a small version does not fit.
    """
    if len(data) <= limit:
        return Upload(filename, data)
    parameters = read_parameters(data) or ""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    smaller = _png(image, parameters, optimize=True)
    while len(smaller) > limit:
        width, height = image.size
        if min(width, height) <= 64:
            return None
        # Area scales with the square of the side: aim straight for the limit, with a margin.
        factor = max(0.5, min(0.9, (limit / len(smaller)) ** 0.5 * 0.95))
        image = image.resize((max(1, int(width * factor)), max(1, int(height * factor))))
        smaller = _png(image, parameters, optimize=True)
    return Upload(filename, smaller, scaled=True)


def _png(image: Image.Image, parameters: str, *, optimize: bool) -> bytes:
    if not optimize:
        return png_bytes(image, parameters)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, optimize=True)
    return buffer.getvalue()
