"""PNG files that carry their settings, in AUTOMATIC1111's ``parameters`` text chunk.

Every image tool that reads A1111 metadata (A1111 itself, ComfyUI, Civitai, ...) shows where an
image came from, and ``request_from_parameters`` turns it back into a request that redraws it.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from pipeline.request import MAX_SEED, DrawRequest, guidance_is_off
from pipeline.samplers import SAMPLERS, get_sampler, sampler_label

PARAMETERS_KEY = "parameters"
_NEGATIVE = "Negative prompt:"
# "Key: value" pairs; values with commas or quotes are JSON-quoted, as A1111 writes them.
_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def quote_value(value: str) -> str:
    """A settings value as A1111 writes it: JSON-quoted where it holds a comma, quote or newline."""
    return json.dumps(value, ensure_ascii=False) if re.search(r'[,"\n]', value) else value


_quote = quote_value  # the old name, for callers that still use it


def format_parameters(
    request: DrawRequest,
    seed: int | None = None,
    *,
    eta: bool = True,
    pipeline_class: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
    model_hash: str | None = None,
) -> str:
    """The ``parameters`` text for one image of ``request`` (``seed`` defaults to its first).

    ``CFG scale`` keeps the number asked for, so the text redraws the same picture; where that
    scale runs no classifier-free guidance on ``pipeline_class`` (see ``guidance_is_off``), a
    ``Guidance: off`` pair follows it. ``extra`` pairs go last (an upscale's ``Hires ...``).
    ``model_hash``: A1111's hash of the model's checkpoint file, where it has one.
    """
    r = request
    sampler = sampler_label(r.sampler)
    pairs = [
        ("Steps", str(r.steps)),
        ("Sampler", sampler),
        ("CFG scale", f"{r.guidance:g}"),
    ]
    if guidance_is_off(r.guidance, pipeline_class):
        pairs.append(("Guidance", "off"))
    pairs += [
        ("Seed", str(r.seed if seed is None else seed)),
        ("Size", f"{r.width}x{r.height}"),
    ]
    if model_hash:  # A1111's order: the hash, then the model's name
        pairs.append(("Model hash", model_hash))
    pairs.append(("Model", _quote(str(r.model))))
    if eta and r.sampler in SAMPLERS and SAMPLERS[r.sampler].uses_eta:
        pairs.append(("Eta", f"{r.eta:g}"))
    if r.task == "img2img" and r.strength is not None:
        pairs.append(("Denoising strength", f"{r.strength:g}"))
    if r.variation_seed is not None and r.variation_strength > 0:
        # A1111's keys; image i of a request uses variation seed + i as it uses seed + i.
        offset = 0 if seed is None or r.seed is None else (seed - r.seed) % (MAX_SEED + 1)
        pairs.append(("Variation seed", str((r.variation_seed + offset) % (MAX_SEED + 1))))
        pairs.append(("Variation seed strength", f"{r.variation_strength:g}"))
    pairs += [(key, _quote(value)) for key, value in extra]
    lines = [r.prompt]
    if r.negative_prompt:
        lines.append(f"{_NEGATIVE} {r.negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, Any]:
    """Split A1111 ``parameters`` text into prompt, negative prompt and the key-value settings."""
    lines = text.strip("\n").split("\n")
    settings: dict[str, str] = {}
    if len(lines) > 1 or (lines and len(_PAIR.findall(lines[-1])) >= 3):
        candidate = dict(_PAIR.findall(lines[-1]))
        if len(candidate) >= 3:
            settings = {k.strip(): _unquote(v.strip()) for k, v in candidate.items()}
            lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.startswith(_NEGATIVE):
            negative_lines = [line[len(_NEGATIVE) :].strip()]
        elif negative_lines is not None:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    return {
        "prompt": "\n".join(prompt_lines),
        "negative_prompt": "\n".join(negative_lines or []),
        "settings": settings,
    }


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return str(json.loads(value))
        except json.JSONDecodeError:
            return value
    return value


def request_from_parameters(text: str) -> DrawRequest:
    """The request that draws the image described by ``parameters`` text again."""
    parsed = parse_parameters(text)
    s = parsed["settings"]
    width = height = None
    if "Size" in s:
        w, _, h = s["Size"].partition("x")
        width, height = int(w), int(h)
    sampler = None
    if "Sampler" in s:
        try:
            sampler = get_sampler(s["Sampler"]).id
        except KeyError:
            raise ValueError(
                f"unknown sampler {s['Sampler']!r} in the image's parameters"
            ) from None
    return DrawRequest(
        prompt=parsed["prompt"],
        negative_prompt=parsed["negative_prompt"],
        steps=int(s.get("Steps", 50)),
        guidance=float(s.get("CFG scale", 6.0)),
        eta=float(s.get("Eta", 0.0)),
        sampler=sampler,
        seed=int(s["Seed"]) if "Seed" in s else None,
        width=width,
        height=height,
        model=s.get("Model"),
        strength=float(s["Denoising strength"]) if "Denoising strength" in s else None,
        variation_seed=int(s["Variation seed"]) if "Variation seed" in s else None,
        variation_strength=float(s.get("Variation seed strength", 0.0))
        if "Variation seed" in s
        else 0.0,
    )


def png_bytes(image: Any, parameters: str) -> bytes:
    """Encode a PIL image as PNG with the ``parameters`` chunk (deterministic bytes)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    # tEXt like A1111 writes; PIL switches to iTXt by itself when the text isn't Latin-1.
    info.add_text(PARAMETERS_KEY, parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Any, path: Path, parameters: str) -> Path:
    path.write_bytes(png_bytes(image, parameters))
    return path


def read_parameters(source: Path | bytes) -> str | None:
    """The ``parameters`` text of a PNG file or PNG bytes, if it has one."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im.load()
        value = im.text.get(PARAMETERS_KEY) if hasattr(im, "text") else None
    return value
