"""PNG files carry their settings in A1111's format, and the parser reads them back."""

from __future__ import annotations

from PIL import Image

from pipeline.pngmeta import (
    format_parameters,
    parse_parameters,
    png_bytes,
    read_parameters,
    request_from_parameters,
)
from pipeline.request import DrawRequest, guidance_label

REQUEST = DrawRequest(
    prompt="A painting of a squirrel eating a banana",
    negative_prompt="blurry, low quality",
    steps=50,
    guidance=6.0,
    eta=0.3,
    sampler="ddim",
    seed=7,
    width=256,
    height=256,
    model="CompVis/ldm-text2im-large-256",
)


def test_format_is_a1111s():
    text = format_parameters(REQUEST)
    assert text.splitlines() == [
        "A painting of a squirrel eating a banana",
        "Negative prompt: blurry, low quality",
        "Steps: 50, Sampler: DDIM, CFG scale: 6, Seed: 7, Size: 256x256, "
        "Model: CompVis/ldm-text2im-large-256, Eta: 0.3",
    ]


def test_eta_only_where_it_applies_and_no_empty_negative():
    text = format_parameters(DrawRequest("a cat", sampler="euler_a", seed=1, width=64, height=64))
    assert "Eta" not in text and "Negative prompt" not in text
    assert "Sampler: Euler a" in text


def test_round_trip_through_png_bytes():
    image = Image.new("RGB", (8, 8), "red")
    data = png_bytes(image, format_parameters(REQUEST, seed=9))
    back = request_from_parameters(read_parameters(data) or "")
    assert back == DrawRequest(**{**REQUEST.to_dict(), "seed": 9})


def test_round_trip_of_awkward_text():
    request = DrawRequest(
        prompt='multi\nline, with: colons and "quotes" 🐿️ 松鼠',
        negative_prompt="Negative prompt: inside\nand more",
        sampler="dpmpp_2m_karras",
        seed=4294967295,
        width=512,
        height=768,
        guidance=7.5,
        model="my,odd:model",
        steps=20,
    )
    data = png_bytes(Image.new("RGB", (4, 4)), format_parameters(request))
    assert request_from_parameters(read_parameters(data) or "") == request


def test_parser_reads_a1111_output():
    text = (
        "masterpiece, a castle\nNegative prompt: ugly\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 123, Size: 512x512, "
        'Model hash: abc, Model: v1-5, Lora hashes: "x: 1, y: 2"'
    )
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "masterpiece, a castle"
    assert parsed["negative_prompt"] == "ugly"
    assert parsed["settings"]["Lora hashes"] == "x: 1, y: 2"
    request = request_from_parameters(text)
    assert request.sampler == "dpmpp_2m_karras" and request.seed == 123


def test_guidance_is_labelled_as_it_acts():
    sd, ldm = "StableDiffusionPipeline", "LDMTextToImagePipeline"
    assert guidance_label(6) == guidance_label(6, sd) == "6"
    assert guidance_label(1) == guidance_label(1, sd) == guidance_label(1, ldm) == "1 (off)"
    # diffusers' SD runs no classifier-free guidance up to 1: 0.5 draws what 1 draws.
    assert guidance_label(0.5, sd) == "0.5 (off)" and guidance_label(0, sd) == "0 (off)"
    # LDM guides at 0.5 (half conditional, half unconditional); an unknown pipeline isn't claimed.
    assert guidance_label(0.5, ldm) == "0.5" and guidance_label(0.5) == "0.5"
    assert guidance_label(1.5, sd) == "1.5" and guidance_label(7.25, ldm) == "7.25"


def test_png_says_guidance_was_off_and_still_redraws_the_same_request():
    request = DrawRequest(**{**REQUEST.to_dict(), "negative_prompt": "", "guidance": 0.5})
    text = format_parameters(request, pipeline_class="StableDiffusionPipeline")
    assert "CFG scale: 0.5, Guidance: off, Seed: 7," in text
    assert parse_parameters(text)["settings"]["CFG scale"] == "0.5"  # A1111 reads a number
    assert request_from_parameters(text) == request
    assert "Guidance" not in format_parameters(REQUEST, pipeline_class="StableDiffusionPipeline")
    ldm = format_parameters(request, pipeline_class="LDMTextToImagePipeline")
    assert "CFG scale: 0.5, Seed" in ldm and "Guidance" not in ldm
    unguided = format_parameters(DrawRequest(**{**request.to_dict(), "guidance": 1.0}))
    assert "CFG scale: 1, Guidance: off," in unguided


def test_result_embed_shows_guidance_as_it_acts():
    from bot.render import result_embed

    def shown(guidance: float, pipeline_class: str | None) -> str:
        request = DrawRequest(**{**REQUEST.to_dict(), "guidance": guidance})
        embed = result_embed(
            request, 3, requester="<@1>", eta_applies=True, pipeline_class=pipeline_class
        )
        return {f.name: f.value for f in embed.fields}["Guidance"]

    assert shown(0.5, "StableDiffusionPipeline") == "0.5 (off)"
    assert shown(0.5, "LDMTextToImagePipeline") == "0.5"
    assert shown(1, None) == "1 (off)"
    assert shown(7.5, "StableDiffusionPipeline") == "7.5"
