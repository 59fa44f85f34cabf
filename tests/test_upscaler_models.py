"""The offline upscalers: tiny:upscaler (random weights) and tiny:shapes-x4 (trained, shipped)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.shapes_x4 import data
from pipeline.shapes_x4.model import WEIGHTS_DIR
from pipeline.shapes_x4.train import TrainConfig, train
from pipeline.tiny import tiny_model_path

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["upscaler", "shapes-x4"])
def upscaler(request: pytest.FixtureRequest, model_cache: Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_model_path(request.param, model_cache))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def shapes_x4(model_cache: Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_model_path("shapes-x4", model_cache))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _upscale(pipe, image, seed: int, steps: int = 5):
    generator = torch.Generator().manual_seed(seed)
    return pipe(image, num_inference_steps=steps, generator=generator).images[0]


def test_loads_offline_as_an_ldm_upscaler_and_draws_4x_larger(upscaler):
    from diffusers import LDMSuperResolutionPipeline

    assert isinstance(upscaler, LDMSuperResolutionPipeline)
    low, _ = data.held_out_pairs(1)[0]
    assert _upscale(upscaler, low, seed=0).size == (256, 256)
    # Not square: each side 4x (the pipeline wants multiples of 32).
    assert _upscale(upscaler, low.crop((0, 0, 64, 32)), seed=0).size == (256, 128)


def test_same_seed_same_pixels(upscaler):
    low, _ = data.held_out_pairs(1)[0]
    first, again = _upscale(upscaler, low, seed=5), _upscale(upscaler, low, seed=5)
    assert first.tobytes() == again.tobytes()


def test_trained_upscaler_beats_bicubic_on_held_out_pictures(shapes_x4):
    # 8 held-out pictures, one seed each, drawn as one batch (one call, so the test stays quick).
    # Measured on the 2-core development machine (torch 2.13 CPU): model 38.93 dB, bicubic
    # 33.97 dB, a margin of 4.97 dB, every picture at least 3.4 dB better; SSIM 0.989 against
    # 0.980; the same at 5, 10 and 20 steps. 3 dB leaves room for other CPUs' rounding and is
    # still more than the 2 dB the issue asks for.
    pairs = data.held_out_pairs(8)
    lows = torch.from_numpy(np.stack([np.asarray(low) for low, _ in pairs]))
    lows = lows.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    generators = [torch.Generator().manual_seed(k) for k in range(len(pairs))]
    outs = shapes_x4(lows, num_inference_steps=5, generator=generators).images
    model = [data.psnr(out, high) for out, (_, high) in zip(outs, pairs, strict=True)]
    bicubic = [data.psnr(data.bicubic(low), high) for low, high in pairs]
    margin = float(np.mean(model) - np.mean(bicubic))
    assert margin >= 3.0, (model, bicubic)
    ssim_model = np.mean([data.ssim(out, high) for out, (_, high) in zip(outs, pairs, strict=True)])
    ssim_bicubic = np.mean([data.ssim(data.bicubic(low), high) for low, high in pairs])
    assert ssim_model > ssim_bicubic


def test_a_flat_colour_comes_back_the_same_colour(shapes_x4):
    from PIL import Image

    # Bicubic is exact on a flat colour; the copy paths keep the model within the codebook's
    # spacing (measured: 3 levels at most inside, the mean within 2.1). A picture with nothing
    # on it is not one it was trained on: the outermost pixels may be off by up to ~16 levels.
    colour = np.array([45, 88, 205])  # the shapes' blue, as jittered pictures have it
    flat = Image.new("RGB", (64, 64), tuple(int(c) for c in colour))
    out = np.asarray(_upscale(shapes_x4, flat, seed=1), dtype=float)
    assert np.abs(out[16:-16, 16:-16] - colour).max() <= 4
    assert np.abs(out.reshape(-1, 3).mean(axis=0) - colour).max() <= 3


def test_training_pictures_are_the_shapes_stream_drawn_at_256_px():
    from pipeline.shapes import data as shapes

    # The shapes stream never yields a held-out combination (tests/test_shapes.py checks it).
    low, high = data.training_pair(0, 3)
    assert high.tobytes() == shapes.sample(0, 3, size=256).image.tobytes()
    assert low.tobytes() == data.downscale(high).tobytes()
    assert (high.size, low.size) == ((256, 256), (64, 64))


def test_shipped_weights_are_small_and_packaged():
    size = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file())
    assert size < 10 * 2**20
    assert (WEIGHTS_DIR / "training.json").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = package_data["package-data"]["pipeline.shapes_x4"]
    shipped = {f for pattern in patterns for f in (ROOT / "pipeline/shapes_x4").glob(pattern)}
    weights = {f for f in WEIGHTS_DIR.rglob("*") if f.is_file()}
    assert weights <= shipped


# -- the trainer ----------------------------------------------------------------------------


_TINY = TrainConfig(images=6, ae_steps=3, ae_batch=2, ae_quantized_steps=1, codebook=16,
                    kmeans_crops=4, kmeans_points=64, kmeans_iters=2, unet_images=3,
                    unet_steps=3, batch=2, checkpoint_every=1, warmup=2)  # fmt: skip


def _tiny_run(out, work, stop_after=None):
    return train(_TINY, out, work, progress=False, log=lambda _: None, stop_after=stop_after)


def test_training_three_steps_exports_a_pipeline_that_upscales(tmp_path):
    from diffusers import DiffusionPipeline

    out = tmp_path / "model"
    assert _tiny_run(out, tmp_path / "work") is not None
    pipe = DiffusionPipeline.from_pretrained(out)
    low, _ = data.held_out_pairs(1)[0]
    assert _upscale(pipe, low, seed=0, steps=2).size == (256, 256)
    assert (out / "training.json").is_file()


def test_stopped_and_resumed_training_gives_the_same_weights_as_an_unbroken_run(tmp_path):
    from safetensors.torch import load_file

    straight = tmp_path / "straight"
    _tiny_run(straight, tmp_path / "work-straight")
    resumed, work = tmp_path / "resumed", tmp_path / "work-resumed"
    assert _tiny_run(resumed, work, stop_after=2) is None  # before the codebook is made
    assert _tiny_run(resumed, work, stop_after=2) is None  # across into the UNet phase
    assert not resumed.exists()
    assert _tiny_run(resumed, work, stop_after=2) is not None
    for part in ("unet/diffusion_pytorch_model", "vqvae/diffusion_pytorch_model"):
        a = load_file(straight / f"{part}.safetensors")
        b = load_file(resumed / f"{part}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
