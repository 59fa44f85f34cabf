"""The real-size benchmark's builder (bench/real_size.py), at a reduced width so CI stays fast.

The networks are narrowed (channels / 8, text encoders 2-4 layers deep) but keep the published
architecture's structure; the benchmark itself runs end to end on them at 64 px.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.engine import Engine
from pipeline.request import DrawRequest

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.125
# The side each model was trained at: its UNet's sample size times the autoencoder's 8.
MODEL_SIDES = {"sd": 512, "ldm": 256}


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_real_size", ROOT / "bench/real_size.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


real_size = _load_bench()


def published(model: str, part: str, name: str = "config.json") -> dict[str, Any]:
    folder = real_size.MODELS[model].configs
    return json.loads((ROOT / "bench/configs" / folder / part / name).read_text())


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both models at 1/8 width, saved as Engine.load reads them."""
    out = {}
    for model in ("sd", "ldm"):
        folder = tmp_path_factory.mktemp(f"real-size-{model}")
        real_size.build_pipeline(model, width_scale=SCALE).save_pretrained(folder)
        out[model] = folder
    return out


def test_at_full_width_the_configs_are_the_published_ones() -> None:
    sd_unet = real_size.unet_config("sd", 1.0, 768)
    assert sd_unet == real_size.load_config("sd", "unet")
    assert sd_unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert real_size.vae_config("sd", 1.0) == real_size.load_config("sd", "vae")
    clip = real_size.clip_config(1.0)
    assert (clip["hidden_size"], clip["num_hidden_layers"], clip["vocab_size"]) == (768, 12, 49408)
    ldm_unet = real_size.unet_config("ldm", 1.0, 1280)
    assert ldm_unet == real_size.load_config("ldm", "unet")
    assert real_size.vae_config("ldm", 1.0) == real_size.load_config("ldm", "vqvae")
    bert = real_size.bert_config(1.0)
    assert (bert["d_model"], bert["encoder_layers"], bert["vocab_size"]) == (1280, 32, 30522)
    # Every file says where it comes from.
    for path in (ROOT / "bench/configs").rglob("*.json"):
        assert json.loads(path.read_text())["_source"], path


@pytest.mark.parametrize(
    ("model", "unet_class", "vae_part", "text_part", "pipeline_class"),
    [
        ("sd", "UNet2DConditionModel", "vae", "text_encoder", "StableDiffusionPipeline"),
        ("ldm", "UNet2DConditionModel", "vqvae", "bert", "LDMTextToImagePipeline"),
    ],
)
def test_the_reduced_build_has_the_published_structure(
    folders: dict[str, Path],
    model: str,
    unet_class: str,
    vae_part: str,
    text_part: str,
    pipeline_class: str,
) -> None:
    engine = Engine.load(str(folders[model]), device="cpu")
    pipe = engine.pipe
    assert type(pipe).__name__ == pipeline_class
    unet, text = pipe.unet, getattr(pipe, text_part)
    vae = getattr(pipe, vae_part)
    want_unet, want_vae = published(model, "unet"), published(model, vae_part)
    assert type(unet).__name__ == unet_class == want_unet["_class_name"]
    assert list(unet.config.down_block_types) == want_unet["down_block_types"]
    assert list(unet.config.up_block_types) == want_unet["up_block_types"]
    assert unet.config.layers_per_block == want_unet["layers_per_block"]
    assert unet.config.attention_head_dim == want_unet["attention_head_dim"]
    assert unet.config.sample_size == want_unet["sample_size"]
    # Narrowed by 8, in the same proportions.
    assert list(unet.config.block_out_channels) == [c // 8 for c in want_unet["block_out_channels"]]
    # The UNet cross-attends to the text encoder's width (768 and 1280 at full width).
    width = text.config.hidden_size if model == "sd" else text.config.d_model
    assert unet.config.cross_attention_dim == width == want_unet["cross_attention_dim"] // 8
    # The same autoencoder levels and latents: pictures are 8x the latents for both (the LDM's
    # "vqvae" is the KL-f8 autoencoder of txt2img-1p4B, 32x32 latents at 256 px).
    assert type(vae).__name__ == want_vae["_class_name"] == "AutoencoderKL"
    assert list(vae.config.down_block_types) == want_vae["down_block_types"]
    assert vae.config.latent_channels == unet.config.in_channels == 4
    assert pipe.vae_scale_factor == 8
    assert engine.capabilities.default_width == MODEL_SIDES[model]
    # Full-size vocabularies (so the embedding tables weigh what they do), 77 tokens a prompt.
    want_text = published(model, text_part)
    assert text.config.vocab_size == want_text["vocab_size"]
    assert text.config.max_position_embeddings == 77
    assert engine.capabilities.max_prompt_tokens == 77
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and max(ids) < want_text["vocab_size"]


@pytest.mark.parametrize("model", ["sd", "ldm"])
def test_the_reduced_build_draws_through_the_engine(folders: dict[str, Path], model: str) -> None:
    engine = Engine.load(str(folders[model]), device="cpu")
    result = engine.run(DrawRequest("a red circle", steps=2, seed=3, width=64, height=96))
    assert [im.size for im in result.images] == [(64, 96)]


def test_the_benchmark_runs_end_to_end_and_prints_every_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--width-scale", str(SCALE), "--only", "ldm", "--ldm-size", "64", "--images", "2"]
    argv += ["--steps", "1", "--same-process", "--device", "cpu,cuda"]
    assert real_size.main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| model |"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(real_size.COLUMNS)
    rows = [line for line in out.splitlines() if line.startswith("| LDM-256 64 px | cpu")]
    assert len(rows) == 4  # easel and plain, batching on and off
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4] == "2 x 1"  # images x steps
        assert float(cells[5]) > 0 and float(cells[6]) > 0  # s/image, images/s
        assert float(cells[7]) > 0 and float(cells[8]) > 0  # CPU s/image, peak RSS
        # No GPU here; the load's seconds, printed to 0.1 s (a fast disk's can round to 0).
        assert cells[9] == "-" and float(cells[10]) >= 0
    assert {line.split("|")[3].strip() for line in rows} == {"easel", "plain"}
    assert "executor overhead, batching off" in out and "the same in CPU time" in out
    assert "the target is for GPUs" in out
    assert "peak RSS memory, batching on (max 4)" in out
    import torch

    if not torch.cuda.is_available():
        assert out.count(real_size.NO_CUDA) == 5  # four rows and the checks' line
