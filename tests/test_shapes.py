"""The shapes model: its procedural data, its classifier, the shipped weights, and the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.engine import Engine
from pipeline.request import DrawRequest
from pipeline.shapes import data
from pipeline.shapes.classifier import Classifier
from pipeline.shapes.model import WEIGHTS_DIR, build_tokenizer
from pipeline.shapes.train import TrainConfig, train
from tests.imagecheck import assert_close_images


@pytest.fixture(scope="module")
def shapes_engine() -> Engine:
    return Engine.load("tiny:shapes", device="cpu")


# -- data ---------------------------------------------------------------------------------


def test_samples_are_the_same_pictures_and_captions_every_time():
    first = [data.sample(7, i) for i in range(20)]
    again = [data.sample(7, i) for i in range(20)]
    assert [s.caption for s in first] == [s.caption for s in again]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(first, again, strict=True))
    other = [data.sample(8, i) for i in range(20)]
    assert [s.caption for s in first] != [s.caption for s in other]


def test_caption_names_its_attributes_and_pixels_show_the_colours():
    for s in data.samples(3, 200):
        a = s.attributes
        words = s.caption.replace(",", " ").split()
        assert {a.shape, a.colour, a.background, a.size} <= set(words)
        pixels = np.asarray(s.image, dtype=float).reshape(-1, 3)
        # The corner is always background; the shape's colour is the most common other colour.
        corner = np.asarray(s.image, dtype=float)[0, 0]
        assert np.abs(corner - data.COLOURS[a.background]).max() <= 13
        far = np.abs(pixels - corner).max(axis=1) > 40
        assert far.any(), s.caption
        seen = pixels[far].mean(axis=0)
        assert np.abs(seen - data.COLOURS[a.colour]).max() < 40, s.caption


def test_held_out_combinations_never_appear_in_training_data():
    assert len(data.HELD_OUT) == 64
    assert not any(s.attributes in data.HELD_OUT for s in data.samples(0, 3000))
    assert len({c for c, _ in data.held_out_captions()}) == 64


def test_tokenizer_gives_each_caption_word_one_token_and_still_reads_any_text():
    tokenizer = build_tokenizer(data.vocabulary())
    for word in data.vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a purple zebra", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == "a purple zebra"


def test_classifier_reads_real_pictures_back_correctly():
    classifier = Classifier.train()
    real = list(data.samples(4242, 300, exclude_held_out=False))
    accuracy = classifier.accuracy([s.image for s in real], [s.attributes for s in real])
    assert min(accuracy.values()) >= 0.98, accuracy


# -- the shipped model ----------------------------------------------------------------------


def test_shipped_weights_load_offline_like_any_diffusers_model():
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(WEIGHTS_DIR)
    assert isinstance(pipe, StableDiffusionPipeline)
    image = pipe("a large red circle in the centre, white background", num_inference_steps=5,
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.size == (64, 64)


def test_shapes_model_supports_every_sd_sampler_and_negative_prompt(shapes_engine, sd_engine):
    caps = shapes_engine.capabilities
    assert caps.samplers == sd_engine.capabilities.samplers
    assert caps.negative_prompt and caps.guidance
    assert (caps.default_width, caps.default_height) == (64, 64)


def test_same_seed_same_pixels(shapes_engine):
    request = DrawRequest("a small blue star on the left, yellow background", steps=8, seed=3)
    first = shapes_engine.run(request).images[0]
    again = shapes_engine.run(request).images[0]
    assert first.tobytes() == again.tobytes()


def test_a_picture_drawn_beside_other_jobs_is_the_one_drawn_alone_within_the_bound(
    shapes_engine,
):
    # The executor batches different users' jobs; 20 steps and the default sampler, as the
    # preview draws.
    prompts = ["a large red circle in the centre, white background",
               "a small blue star on the left, yellow background",
               "a large green ring at the top, black background"]  # fmt: skip
    requests = [DrawRequest(p, steps=20, guidance=6, seed=40 + i) for i, p in enumerate(prompts)]
    batched = shapes_engine.run_batch(requests)
    for request, result in zip(requests, batched, strict=True):
        alone = shapes_engine.run(request).images[0]
        assert_close_images(result.images[0], alone)
    with pytest.raises(AssertionError):  # and a neighbour's picture is not "the same"
        assert_close_images(batched[0].images[0], batched[1].images[0])


def _redness(image) -> float:
    rgb = np.asarray(image, dtype=float)
    return float((rgb[..., 0] - (rgb[..., 1] + rgb[..., 2]) / 2).mean())


def test_a_red_prompt_draws_redder_pictures_than_a_blue_one(shapes_engine):
    def draw(colour: str) -> list[float]:
        prompt = f"a large {colour} circle in the centre, white background"
        result = shapes_engine.run(DrawRequest(prompt, steps=12, guidance=6, seed=11, count=4))
        return [_redness(im) for im in result.images]

    red, blue = draw("red"), draw("blue")
    # Seed for seed, not just on average: the prompt decides the colour, not the noise.
    assert all(r > b + 10 for r, b in zip(red, blue, strict=True)), (red, blue)


# -- the trainer ----------------------------------------------------------------------------


_TINY = TrainConfig(images=8, vae_steps=3, vae_batch=4, unet_steps=3, batch=4,
                    checkpoint_every=1, warmup=2)  # fmt: skip


def _tiny_run(out, work, stop_after=None):
    return train(_TINY, out, work, progress=False, log=lambda _: None, stop_after=stop_after)


def test_training_three_steps_exports_a_pipeline_that_draws(tmp_path):
    out = tmp_path / "model"
    assert _tiny_run(out, tmp_path / "work") is not None
    engine = Engine.load(str(out), device="cpu")
    result = engine.run(DrawRequest("a small red star on the left, blue background", steps=3,
                                    seed=1))  # fmt: skip
    assert result.images[0].size == (64, 64)
    assert (out / "training.json").is_file()


def test_stopped_and_resumed_training_gives_the_same_weights_as_an_unbroken_run(tmp_path):
    from safetensors.torch import load_file

    straight = tmp_path / "straight"
    _tiny_run(straight, tmp_path / "work-straight")
    resumed, work = tmp_path / "resumed", tmp_path / "work-resumed"
    assert _tiny_run(resumed, work, stop_after=2) is None  # inside the autoencoder phase
    assert _tiny_run(resumed, work, stop_after=3) is None  # across into the UNet phase
    assert not resumed.exists()
    # 2 steps are left of 6: only a run that picks up the checkpoints can finish with them.
    assert _tiny_run(resumed, work, stop_after=2) is not None
    for part in (
        "unet/diffusion_pytorch_model",
        "vae/diffusion_pytorch_model",
        "text_encoder/model",
    ):
        a = load_file(straight / f"{part}.safetensors")
        b = load_file(resumed / f"{part}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_every_sampler_follows_the_prompt(shapes_engine):
    # v-prediction and the linear schedule travel in the scheduler config: a sampler that ignored
    # them would draw mud, not a red shape on blue.
    for sampler in shapes_engine.capabilities.samplers:
        prompt = "a large red square in the centre, blue background"
        request = DrawRequest(prompt, steps=20, guidance=6, seed=2, sampler=sampler)
        rgb = np.asarray(shapes_engine.run(request).images[0], dtype=float)
        centre, corner = rgb[24:40, 24:40].mean(axis=(0, 1)), rgb[:6, :6].mean(axis=(0, 1))
        assert centre[0] > centre[2] + 60, (sampler, centre)
        assert corner[2] > corner[0] + 60, (sampler, corner)
