"""A picture a member attaches to /draw: checked, read safely, and made ready to draw from.

Everything that can refuse it runs before anything is stored: the size Discord reports is checked
before downloading, the pixel count before decoding. A refusal says what to change.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass

import discord
from PIL import Image, ImageOps

from pipeline.engine import Capabilities
from pipeline.errors import EaselError
from pipeline.messages import N_, Message

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4_000_000
# Discord's CDN answers in well under a second; a refusal must still come within the 3 seconds
# Discord gives an interaction's first answer.
DOWNLOAD_TIMEOUT_S = 1.5
# What Pillow may decode from members: never EPS (Ghostscript) or other exotic readers.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


class BadUpload(EaselError):
    """The attached file can't be drawn from; the message says why and what to do."""


@dataclass(frozen=True)
class Upload:
    """A picture ready to draw from: PNG bytes at a size the model takes, and what was changed."""

    png: bytes
    width: int
    height: int
    notes: tuple[str, ...] = ()  # Messages, translated where they are shown


async def read_upload(
    attachment: discord.Attachment, caps: Capabilities, *, max_side: int, owner: int
) -> Upload:
    """Download, check and prepare ``attachment`` (sides up to ``max_side``: this server's
    limit); raises ``BadUpload``. ``owner`` is marked in the stored file, so two members'
    identical uploads are two files, each deleted with its own member's data."""
    if attachment.size > MAX_UPLOAD_BYTES:
        raise BadUpload(
            N_("That file is {size} MB; attach a picture of {max} MB or less."),
            size=f"{attachment.size / 1024 / 1024:.1f}",
            max=MAX_UPLOAD_BYTES // 1024 // 1024,
        )
    width, height = attachment.width, attachment.height
    if width and height and width * height > MAX_UPLOAD_PIXELS:
        raise _too_many_pixels(width, height)
    try:
        data = await asyncio.wait_for(attachment.read(), DOWNLOAD_TIMEOUT_S)
    except (TimeoutError, discord.HTTPException) as exc:
        raise BadUpload(
            N_("Discord didn't hand over that picture in time; please try again.")
        ) from exc
    return await asyncio.to_thread(prepare, data, caps, max_side=max_side, owner=owner)


def _too_many_pixels(width: int, height: int) -> BadUpload:
    return BadUpload(
        N_(
            "That picture is {width}x{height} ({megapixels} megapixels); attach one of at most "
            "{max} megapixels."
        ),
        width=width,
        height=height,
        megapixels=f"{width * height / 1e6:.1f}",
        max=f"{MAX_UPLOAD_PIXELS / 1e6:g}",
    )


def prepare(data: bytes, caps: Capabilities, *, max_side: int, owner: int) -> Upload:
    """Decode ``data`` and turn it into what the model draws from (runs off the event loop)."""
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=FORMATS)
    except (OSError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadUpload(
            N_("That file isn't a picture Easel can read; attach a PNG, JPEG, WebP or GIF.")
        ) from exc
    with opened:
        # Checked from the header, before the pixels are decoded.
        if opened.width * opened.height > MAX_UPLOAD_PIXELS:
            raise _too_many_pixels(opened.width, opened.height)
        if getattr(opened, "n_frames", 1) > 1:
            notes.append(Message(N_("Your picture is animated; its first frame was used.")))
            opened.seek(0)
        try:
            picture = ImageOps.exif_transpose(opened)  # a phone's photo the right way up
            picture.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise BadUpload(
                N_("That picture could not be decoded (the file may be damaged); attach another.")
            ) from exc
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        # Transparent parts become white, as they show on Discord's light theme.
        rgba = picture.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        picture = flat
    picture = picture.convert("RGB")
    largest = min(caps.max_side, max_side)
    width, height = fitted_size(picture.width, picture.height, caps, largest)
    if (width, height) != picture.size:
        notes.append(
            Message(
                N_(
                    "Your picture was resized from {old_width}x{old_height} to "
                    "{width}x{height}: sides must be multiples of {multiple}, from {min} to "
                    "{max} pixels here."
                ),
                old_width=picture.width,
                old_height=picture.height,
                width=width,
                height=height,
                multiple=caps.size_multiple,
                min=caps.min_side,
                max=largest,
            )
        )
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()  # the member's EXIF stays with them; only whose upload it is
    info.add_text("easel-uploaded-by", str(owner))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    return Upload(buffer.getvalue(), width, height, tuple(notes))


def fitted_size(width: int, height: int, caps: Capabilities, largest: int) -> tuple[int, int]:
    """The nearest size the model takes with sides up to ``largest``, keeping the aspect
    ratio as well as it can."""
    scale = min(1.0, largest / max(width, height))
    scale = max(scale, caps.min_side / min(width, height))
    step = caps.size_multiple

    def fit(side: int) -> int:
        rounded = round(side * scale / step) * step
        return max(caps.min_side, min(largest, rounded))

    return fit(width), fit(height)
