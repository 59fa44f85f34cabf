"""The engine on real (tiny, random-weight) diffusers pipelines, offline."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, EulerAncestralDiscreteScheduler
from PIL import Image

from pipeline.engine import Engine
from pipeline.errors import ModelLoadError, UnsupportedOption
from pipeline.request import DrawRequest, guidance_is_off
from pipeline.tiny import tiny_model_path
from tests.imagecheck import BATCH_MAX_LEVEL, assert_close_images, assert_same_images

PROMPT = "A painting of a squirrel eating a banana"


def pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def assert_same(a, b) -> None:
    """Byte-identical: both drawn in the same batch composition, on this machine."""
    assert a.size == b.size
    assert_same_images(a, b)


def assert_close(a, b) -> None:
    """Drawn in batches of different sizes: within the README's bound (tests/imagecheck.py)."""
    assert a.size == b.size
    assert_close_images(a, b)


@pytest.fixture(params=["sd", "ldm"])
def engine(request, sd_engine, ldm_engine) -> Engine:
    return {"sd": sd_engine, "ldm": ldm_engine}[request.param]


def test_tiny_models_load_through_from_pretrained(model_cache):
    for name, cls in (("sd", "StableDiffusionPipeline"), ("ldm", "LDMTextToImagePipeline")):
        folder = tiny_model_path(name, model_cache)
        assert (folder / "model_index.json").is_file()
        pipe = DiffusionPipeline.from_pretrained(folder)
        assert type(pipe).__name__ == cls


def test_capabilities_follow_the_pipeline(sd_engine, ldm_engine):
    sd, ldm = sd_engine.capabilities, ldm_engine.capabilities
    assert sd.negative_prompt and not ldm.negative_prompt
    assert sd.eta and ldm.eta and sd.guidance and ldm.guidance
    assert (sd.default_width, sd.default_height) == (64, 64)
    assert sd.max_prompt_tokens == ldm.max_prompt_tokens == 77
    assert set(sd.samplers) == {
        "ddim",
        "pndm",
        "ddpm",
        "euler",
        "euler_a",
        "heun",
        "lms",
        "dpmpp_2m",
        "dpmpp_2m_karras",
        "dpmpp_sde",
        "unipc",
    }
    # LDM never scales its inputs by sigma: only the samplers that need no scaling are offered.
    assert set(ldm.samplers) == {"ddim", "pndm", "ddpm", "dpmpp_2m", "dpmpp_2m_karras", "unipc"}
    assert sd.default_sampler == "pndm" and ldm.default_sampler == "ddim"


def test_same_seed_same_pixels_for_every_sampler(engine):
    for sampler in engine.capabilities.samplers:
        eta = 0.3 if sampler == "ddim" else 0.0
        request = DrawRequest(PROMPT, steps=4, sampler=sampler, seed=11, eta=eta, guidance=6)
        first = engine.run(request)
        again = engine.run(request)
        other_seed = engine.run(request.with_seed(12))
        assert_same(first.images[0], again.images[0])
        assert not np.array_equal(pixels(first.images[0]), pixels(other_seed.images[0])), sampler


def test_ldm_with_eta_is_reproducible_despite_the_global_rng(ldm_engine):
    request = DrawRequest(PROMPT, steps=10, eta=0.3, guidance=6, seed=7, sampler="ddim")
    first = ldm_engine.run(request)
    torch.manual_seed(12345)  # the LDM pipeline would draw its step noise from here
    again = ldm_engine.run(request)
    assert_same(first.images[0], again.images[0])


def test_image_i_equals_single_run_with_seed_plus_i(engine):
    sampler = "dpmpp_sde" if "dpmpp_sde" in engine.capabilities.samplers else "ddpm"
    request = DrawRequest(PROMPT, steps=5, seed=100, count=3, sampler=sampler, guidance=5)
    batch = engine.run(request)
    assert batch.seeds == [100, 101, 102]
    for i, image in enumerate(batch.images):
        solo = engine.run(DrawRequest(PROMPT, steps=5, seed=100 + i, sampler=sampler, guidance=5))
        assert_close(image, solo.images[0])


def test_the_batch_bound_tells_a_rounding_difference_from_another_picture(sd_engine):
    request = DrawRequest(PROMPT, steps=4, seed=30, count=2, sampler="euler_a", guidance=6)
    first, second = sd_engine.run(request).images
    with pytest.raises(AssertionError):
        assert_close(first, second)  # the next seed is another picture, not a rounding error
    rgb = pixels(first)
    one_pixel_off = rgb.copy()
    step = BATCH_MAX_LEVEL + 1
    one_pixel_off[5, 5, 0] += step if rgb[5, 5, 0] < 128 else -step
    with pytest.raises(AssertionError):
        assert_close(first, Image.fromarray(one_pixel_off.astype(np.uint8)))
    many_pixels_off = rgb.copy()
    many_pixels_off[::4] = np.where(rgb[::4] < 128, rgb[::4] + 1, rgb[::4] - 1)
    with pytest.raises(AssertionError):
        assert_close(first, Image.fromarray(many_pixels_off.astype(np.uint8)))


def test_batch_of_different_prompts_matches_solo_runs(sd_engine):
    a = DrawRequest("a red fox", steps=5, seed=1, sampler="euler_a", guidance=7)
    b = DrawRequest("a blue whale", steps=5, seed=2, sampler="euler_a", guidance=7, count=2)
    ra, rb = sd_engine.run_batch([a, b])
    assert len(ra.images) == 1 and len(rb.images) == 2
    assert_close(ra.images[0], sd_engine.run(a).images[0])
    assert_close(rb.images[1], sd_engine.run(b).images[1])


def test_ldm_ddim_equals_plain_diffusers_call(ldm_engine, model_cache):
    plain = DiffusionPipeline.from_pretrained(tiny_model_path("ldm", model_cache))
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        [PROMPT],
        num_inference_steps=12,
        guidance_scale=6,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    ours = ldm_engine.run(DrawRequest(PROMPT, steps=12, guidance=6, seed=3, sampler="ddim"))
    assert_same(ours.images[0], expected)


def test_sd_euler_a_with_negative_prompt_equals_plain_diffusers_call(sd_engine, model_cache):
    plain = DiffusionPipeline.from_pretrained(tiny_model_path("sd", model_cache))
    plain.set_progress_bar_config(disable=True)
    plain.scheduler = EulerAncestralDiscreteScheduler.from_config(plain.scheduler.config)
    expected = plain(
        PROMPT,
        negative_prompt="blurry",
        num_inference_steps=8,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(42),
    ).images[0]
    request = DrawRequest(
        PROMPT, negative_prompt="blurry", steps=8, guidance=7.5, seed=42, sampler="euler_a"
    )
    assert_same(sd_engine.run(request).images[0], expected)
    without = sd_engine.run(DrawRequest(PROMPT, steps=8, guidance=7.5, seed=42, sampler="euler_a"))
    assert not np.array_equal(pixels(without.images[0]), pixels(expected))


def test_guidance_is_off_exactly_where_diffusers_draws_what_1_draws(sd_engine, ldm_engine):
    # SD runs classifier-free guidance only above 1; LDM at every scale but 1. The label the
    # embed and the PNG show ("0.5 (off)") must say what the pixels do.
    for engine in (sd_engine, ldm_engine):
        caps = engine.capabilities
        base = DrawRequest(PROMPT, steps=4, seed=8, sampler="ddim", guidance=1)
        unguided = pixels(engine.run(base).images[0])
        for guidance in (0.0, 0.5, 1.0, 1.5, 6.0):
            image = pixels(engine.run(replace(base, guidance=guidance)).images[0])
            same = bool(np.array_equal(image, unguided))
            assert guidance_is_off(guidance, caps.pipeline_class) == same, (
                caps.pipeline_class,
                guidance,
            )
    assert guidance_is_off(0.5, "StableDiffusionPipeline")
    assert not guidance_is_off(0.5, "LDMTextToImagePipeline")


def test_result_carries_effective_settings(sd_engine):
    result = sd_engine.run(DrawRequest(PROMPT, steps=3))
    r = result.request
    assert r.sampler == "pndm" and r.model == "tiny:sd"
    assert (r.width, r.height) == (64, 64)
    assert r.seed is not None and result.seeds == [r.seed]
    assert result.images[0].size == (64, 64)
    again = sd_engine.run(r)  # the effective settings redraw the same image
    assert_same(result.images[0], again.images[0])


def test_non_square_size(sd_engine):
    result = sd_engine.run(DrawRequest(PROMPT, steps=2, width=128, height=64, seed=1))
    assert result.images[0].size == (128, 64)


@pytest.mark.parametrize(
    ("engine_name", "changes", "message"),
    [
        ("ldm", {"negative_prompt": "blurry"}, "can't use a negative prompt"),
        ("sd", {"negative_prompt": "blurry", "guidance": 1.0}, "guidance above 1"),
        ("sd", {"width": 100}, "multiple of 8; try 96 or 104"),
        ("sd", {"height": 4096}, "between 64 and 128"),
        ("sd", {"width": 32}, "between 64 and 128"),
        ("ldm", {"sampler": "euler_a"}, "Euler a can't be used with tiny:ldm"),
        ("sd", {"sampler": "k_magic"}, "Unknown sampler"),
        ("sd", {"steps": 0}, "Steps must be between 1 and 150"),
        ("sd", {"steps": 151}, "Steps must be between 1 and 150"),
        ("sd", {"count": 5}, "1 to 4 images"),
        ("sd", {"count": 0}, "1 to 4 images"),
        ("sd", {"prompt": "   "}, "prompt is empty"),
        ("sd", {"eta": 0.5, "sampler": "euler"}, "Eta only changes images drawn with the DDIM"),
        ("sd", {"eta": 1.5, "sampler": "ddim"}, "Eta must be between 0 and 1"),
        ("sd", {"guidance": 31.0}, "Guidance must be between 0 and 30"),
        ("sd", {"seed": -1}, "seed must be between 0 and 4294967295"),
        ("sd", {"seed": 2**32}, "seed must be between 0 and 4294967295"),
        ("sd", {"model": "other/model"}, "has tiny:sd loaded"),
    ],
)
def test_bad_options_are_refused_with_a_message(
    engine_name, changes, message, sd_engine, ldm_engine
):
    engine = {"sd": sd_engine, "ldm": ldm_engine}[engine_name]
    request = DrawRequest(**{"prompt": PROMPT, "steps": 2, **changes})
    with pytest.raises(UnsupportedOption, match=message):
        engine.validate(request)
    with pytest.raises(UnsupportedOption):
        engine.run(request)  # run checks too: nothing unsupported is ever silently ignored


def test_long_prompt_is_reported_as_truncated(sd_engine):
    assert sd_engine.validate(DrawRequest(PROMPT)) == []
    notes = sd_engine.validate(DrawRequest("a squirrel " * 30))
    assert len(notes) == 1 and "reads only the first 77" in notes[0]
    result = sd_engine.run(DrawRequest("a squirrel " * 30, steps=1))
    assert result.notes == tuple(notes)


def test_step_hook_is_called_once_per_step(engine):
    calls: list[tuple[int, int]] = []
    engine.run(
        DrawRequest(PROMPT, steps=7, sampler="ddim"), on_step=lambda s, t: calls.append((s, t))
    )
    assert calls == [(i, 7) for i in range(1, 8)]


def test_cancel_midway_leaves_the_engine_reusable(engine):
    request = DrawRequest(PROMPT, steps=10, seed=5, sampler="ddpm", guidance=4)
    reference = engine.run(request)

    class Stop(Exception):
        pass

    def stop_at_4(step: int, total: int) -> None:
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        engine.run(DrawRequest(PROMPT, steps=10, seed=9, sampler="unipc"), on_step=stop_at_4)
    after = engine.run(request)
    assert_same(after.images[0], reference.images[0])


def test_sampler_never_leaks_into_the_next_request(sd_engine):
    default = DrawRequest(PROMPT, steps=4, seed=21)
    before = sd_engine.run(default)
    sd_engine.run(DrawRequest(PROMPT, steps=4, seed=21, sampler="euler_a"))
    after = sd_engine.run(default)
    assert after.request.sampler == "pndm"
    assert_same(before.images[0], after.images[0])
    assert type(sd_engine.pipe.scheduler).__name__ == "PNDMScheduler"


def test_uncached_hub_model_fails_fast_with_a_clear_message(model_cache):
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        Engine.load("CompVis/ldm-text2im-large-256", device="cpu", cache_dir=model_cache)
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize(
    ("model", "message"),
    [("tiny:nope", "Unknown built-in model"), ("./no/such/folder", "does not exist")],
)
def test_bad_model_names_are_explained(model, message, model_cache):
    with pytest.raises(ModelLoadError, match=message):
        Engine.load(model, device="cpu", cache_dir=model_cache)


def test_folder_without_model_index_is_refused(tmp_path, model_cache):
    with pytest.raises(ModelLoadError, match=r"no model_index\.json"):
        Engine.load(str(tmp_path), device="cpu", cache_dir=model_cache)


@pytest.fixture(scope="module")
def checked_engine(model_cache, tmp_path_factory) -> Engine:
    """tiny:sd with diffusers' real StableDiffusionSafetyChecker, random weights (the released
    checker can't be downloaded here); its thresholds are set by each test to flag or pass."""
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    base = StableDiffusionPipeline.from_pretrained(tiny_model_path("sd", model_cache))
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    checked = StableDiffusionPipeline(
        **{
            k: base.components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
        },
        safety_checker=StableDiffusionSafetyChecker(config),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
    )
    folder = tmp_path_factory.mktemp("checked-sd")
    checked.save_pretrained(folder)
    return Engine.load(str(folder), device="cpu")


def _set_threshold(engine: Engine, flag_everything: bool) -> None:
    checker = engine.pipe.safety_checker
    value = -10.0 if flag_everything else 10.0
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(value)
        checker.special_care_embeds_weights.fill_(value)


def test_flagged_images_keep_their_pixels_and_are_reported(checked_engine, sd_engine):
    request = DrawRequest("a red fox", steps=4, seed=5, count=2)
    _set_threshold(checked_engine, flag_everything=True)
    flagged = checked_engine.run(request)
    _set_threshold(checked_engine, flag_everything=False)
    passed = checked_engine.run(request)
    assert flagged.nsfw == (True, True) and passed.nsfw == (False, False)
    # diffusers would have blacked them out; the engine leaves that call to the bot.
    plain = sd_engine.run(request)
    for a, b, c in zip(flagged.images, passed.images, plain.images, strict=True):
        assert pixels(a).std() > 1
        assert_same(a, b)
        assert_same(a, c)
    assert checked_engine.pipe.safety_checker is not None  # put back after the run
