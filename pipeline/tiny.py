"""Tiny random-weight pipelines, built offline and loaded with ``from_pretrained`` like any model.

They run the real loading and sampling code of diffusers in well under a second per image on a
CPU; their images are coloured noise. ``tiny:sd`` is a StableDiffusionPipeline, ``tiny:ldm`` an
LDMTextToImagePipeline shaped like CompVis/ldm-text2im-large-256. ``tiny:shapes`` is different:
trained weights that ship with the code (see ``pipeline.shapes``), and it draws what it is asked.
``tiny:upscaler`` is a random-weight 4x LDMSuperResolutionPipeline; ``tiny:shapes-x4`` the same
shape trained on shapes pictures (see ``pipeline.shapes_x4``), shipped like ``tiny:shapes``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pipeline.bpe import bytes_to_unicode

TINY_MODELS = ("shapes", "sd", "ldm", "upscaler", "shapes-x4")
# Bump when the recipe changes so stale caches are rebuilt instead of silently reused.
_RECIPE_VERSION = 1
_MAX_TOKENS = 77


def default_cache_dir() -> Path:
    """Where built tiny models are kept: ``$EASEL_CACHE_DIR`` or ``~/.cache/easel``."""
    env = os.environ.get("EASEL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "easel"


# Built-ins trained and committed with the code: their package, and what to call them.
_TRAINED = {
    "shapes": ("pipeline.shapes", "the shapes model"),
    "shapes-x4": ("pipeline.shapes_x4", "the shapes upscaler"),
}


def tiny_model_path(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of tiny model ``name``, building a random-weight one on first use."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_MODELS)}")
    if name in _TRAINED:
        # The trained built-ins ship their weights in the package; the others are built here.
        # Imported here, by name (not importlib): the import graph test sees them.
        from pipeline.shapes import model as shapes
        from pipeline.shapes_x4 import model as shapes_x4

        package, what = _TRAINED[name]
        weights = {"shapes": shapes.WEIGHTS_DIR, "shapes-x4": shapes_x4.WEIGHTS_DIR}[name]
        if not (weights / "model_index.json").is_file():
            raise FileNotFoundError(
                f"{what}'s weights are missing from {weights}; "
                f"run `python -m {package}.train` to make them"
            )
        return weights
    root = (cache_dir or default_cache_dir()) / "tiny"
    target = root / f"{name}-v{_RECIPE_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a crash or a concurrent build never leaves a
    # half-written model that later loads.
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        _BUILDERS[name]().save_pretrained(work)
        try:
            work.rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _tokenizer():
    """A CLIP tokenizer over single bytes: any text tokenizes, one token per character."""
    from transformers import CLIPTokenizer

    alphabet = list(bytes_to_unicode().values())
    vocab = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)}, merges=[], model_max_length=_MAX_TOKENS
    )


def _unet(cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def _vae():
    from diffusers import AutoencoderKL

    # Four levels give the 8x scale factor of real models, so sizes behave the same.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def build_tiny_sd():
    """A StableDiffusionPipeline with random weights and SD 1.x's scheduler settings."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=_MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    # PNDM has no clip_sample; registering it keeps other samplers built from this config unclipped.
    scheduler.register_to_config(clip_sample=False)
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_unet(32),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_ldm():
    """An LDMTextToImagePipeline (LDMBert text encoder, DDIM) with random weights."""
    import torch
    from diffusers import DDIMScheduler, LDMTextToImagePipeline
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
        LDMBertConfig,
        LDMBertModel,
    )

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    bert = LDMBertModel(
        LDMBertConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=_MAX_TOKENS,
            encoder_layers=2,
            encoder_ffn_dim=37,
            encoder_attention_heads=2,
            head_dim=16,
            d_model=32,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    return LDMTextToImagePipeline(
        vqvae=_vae(), bert=bert, tokenizer=tokenizer, unet=_unet(32), scheduler=scheduler
    )


def build_tiny_upscaler():
    """An LDMSuperResolutionPipeline (4x, like CompVis/ldm-super-resolution-4x-openimages) with
    random weights: the low-resolution picture is concatenated to 3-channel latents at its own
    size, and a VQ autoencoder with two downsamplings decodes them 4x larger."""
    import torch
    from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, UNet2DModel, VQModel

    torch.manual_seed(0)
    vqvae = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 16, 32),
        layers_per_block=1,
        latent_channels=3,
        num_vq_embeddings=64,
        norm_num_groups=8,
        sample_size=256,
    )
    unet = UNet2DModel(
        sample_size=64,
        in_channels=6,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    return LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler)


_BUILDERS = {"sd": build_tiny_sd, "ldm": build_tiny_ldm, "upscaler": build_tiny_upscaler}
