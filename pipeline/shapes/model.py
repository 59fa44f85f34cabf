"""The shapes model's parts: a word-level CLIP tokenizer and small SD-shaped networks.

The pipeline is a plain ``StableDiffusionPipeline``: ``from_pretrained`` loads it like any model
and every SD sampler, the negative prompt and guidance work unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.bpe import bytes_to_unicode

MAX_TOKENS = 77
# Where the trained weights are committed; ``tiny:shapes`` names this folder.
WEIGHTS_DIR = Path(__file__).with_name("weights")


def build_tokenizer(words: list[str]) -> Any:
    """A CLIP tokenizer with one token per word of ``words``; other text falls back to letters."""
    # A word's merges must outrank any merge that could split it differently; longer words
    # first settles nearly all of that, and a word that still splits is moved to the front.
    order = sorted(words, key=lambda w: (-len(w), w))
    for _ in range(len(order)):
        tokenizer = _bpe_tokenizer(order)
        split = [w for w in order if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
        if not split:
            return tokenizer
        order = split + [w for w in order if w not in split]
    raise ValueError(f"cannot give these words one token each: {', '.join(split)}")


def _bpe_tokenizer(words: list[str]) -> Any:
    from transformers import CLIPTokenizer

    alphabet = list(bytes_to_unicode().values())
    vocab = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    merges: list[tuple[str, str]] = []
    seen_vocab, seen_merges = set(vocab), set()
    for word in words:
        # Build each word left to right: ("r","e") -> "re", ("re","d</w>") -> "red</w>".
        piece = word[0]
        for i, char in enumerate(word[1:], start=1):
            right = char + "</w>" if i == len(word) - 1 else char
            if (piece, right) not in seen_merges:
                seen_merges.add((piece, right))
                merges.append((piece, right))
            piece += right
            if piece not in seen_vocab:
                seen_vocab.add(piece)
                vocab.append(piece)
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)},
        merges=merges,  # type: ignore[arg-type]  # tokenizers wants pairs; the stub says str
        model_max_length=MAX_TOKENS,
    )


def build_vae() -> Any:
    """An ``AutoencoderKL`` with a 4x scale: 64x64 pictures become 16x16x4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        # Flat shapes need no global attention to rebuild, and it would double training time.
        mid_block_add_attention=False,
    )


def build_text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )


def build_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        # Cross-attention only at 8x8 and 4x4: at 16x16 it doubled the cost of a training step.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
        # The caption, pooled, also joins the timestep embedding that every ResNet block sees:
        # colours and shape are global facts, and cross-attention alone learned them far slower.
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def build_scheduler() -> Any:
    """The noise schedule, with SD 1.x's default sampler (PNDM without the Runge-Kutta warm-up).

    Trained first with SD 1.x's schedule and noise prediction, the model took the background
    colour and the shape's place from the starting noise, not the prompt: SD's last step keeps
    sqrt(0.0047) = 7% of the picture, and predicting noise there costs nothing for a wrong
    background. In the spirit of Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample
    Steps are Flawed", who rescale to zero terminal SNR), DDPM's linear schedule keeps 0.7%, and
    v-prediction (as SD 2.x) makes the noisiest steps predict the picture itself, so the prompt
    has to decide it.
    """
    from diffusers import PNDMScheduler

    scheduler: Any = PNDMScheduler(
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
        prediction_type="v_prediction",
    )
    # Other samplers are built from this config; registering clip_sample keeps them unclipped.
    scheduler.register_to_config(clip_sample=False)
    return scheduler
