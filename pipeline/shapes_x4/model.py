"""The 4x upscaler's parts: an ``LDMSuperResolutionPipeline`` shaped like CompVis' one, but small.

As in ``CompVis/ldm-super-resolution-4x-openimages``, a VQ autoencoder with a 4x scale and 3
latent channels works at the low-resolution size (a 64 px picture gives 64x64 latents, decoded to
256 px), and a ``UNet2DModel`` reads the latents with the low-resolution picture concatenated
(6 channels in, 3 out). ``from_pretrained`` loads it like any model and its ``__call__`` is
diffusers' own.

Every part starts as the trivial map and learns only what it adds (``init_copy_paths``): the
encoder as a 4x4 box average, the UNet as "the latent is the low-resolution picture", the decoder
as nearest-neighbour upsampling. Small networks trained for minutes on a CPU reproduce a flat
colour to a level or two at best, while bicubic gets flat areas exactly; a copy path kept out of
training keeps them exact, and the trained weights spend themselves on the edges.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Where the trained weights are committed; ``tiny:shapes-x4`` names this folder.
WEIGHTS_DIR = Path(__file__).with_name("weights")
SCALE = 4
LATENT_CHANNELS = 3
# As many codes as CompVis' model: a latent is quantized to one of them before decoding, and a
# flat colour comes back within about a level of what it was.
CODEBOOK_SIZE = 8192

# The copy paths' constants. A group norm takes away a channel's mean and scale; a group of
# [x, -x, A, -A] has mean 0 and a spread set by A, so x comes through times a constant (off by
# under 2e-4 of x for |x| <= 1). BIAS keeps SiLU in its linear part (off by under 1e-5).
_A = 64.0
_BIAS = 16.0


def build_vqvae(codebook_size: int = CODEBOOK_SIZE) -> Any:
    """A ``VQModel`` with a 4x scale; its decoder's spatial norms see the latent at every level."""
    from diffusers import VQModel

    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        # Spatial norms (MoVQ) need multiples of 32 channels.
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        num_vq_embeddings=codebook_size,
        vq_embed_dim=LATENT_CHANNELS,
        norm_num_groups=8,
        # The spatial norm hands the latent to the decoder's output layer: the copy path.
        norm_type="spatial",
        # Edges are local; attention over 4096 positions would only cost time.
        mid_block_add_attention=False,
        sample_size=256,
        # The pipeline decodes the UNet's latents as they are; nothing is rescaled.
        scaling_factor=1.0,
    )


def build_unet() -> Any:
    """A ``UNet2DModel`` taking the latents and the low-resolution picture (6 channels in)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=64,
        in_channels=2 * LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
        # Groups of 4 channels at the top level, so the copy path gets a group per colour.
        norm_num_groups=8,
        add_attention=False,
    )


def build_scheduler() -> Any:
    """DDIM predicting the clean latent, from DDPM's linear schedule.

    Predicting the latent itself (not the noise) lets the UNet start as a copy of the
    low-resolution picture. ``steps_offset=1`` with ``set_alpha_to_one`` makes the last step's
    prediction the output, so a flat colour comes out as precise as the network makes it.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,
        prediction_type="sample",
    )


class Pins:
    """Parameter entries held at their initial values: their gradients are zeroed each step."""

    def __init__(self) -> None:
        self._masks: dict[Any, Any] = {}

    def add(self, param: Any, index: Any) -> None:
        import torch

        mask = self._masks.get(param)
        if mask is None:
            mask = self._masks[param] = torch.zeros_like(param, dtype=torch.bool)
        mask[index] = True

    def zero_grads(self) -> None:
        """Call after ``backward``; with no weight decay, Adam then leaves the entries alone."""
        for param, mask in self._masks.items():
            if param.grad is not None:
                param.grad[mask] = 0

    def count(self) -> int:
        return sum(int(mask.sum()) for mask in self._masks.values())


def _rows(conv: Any, rows: Iterable[int], pins: Pins) -> None:
    """Zero whole output rows of a layer (weight and bias) and pin them."""
    for k in rows:
        conv.weight.data[k] = 0
        pins.add(conv.weight, k)
        if conv.bias is not None:
            conv.bias.data[k] = 0
            pins.add(conv.bias, k)


def _scale_free(conv: Any, scale: float) -> None:
    """Shrink a layer's initial weights, so its learned part starts small."""
    conv.weight.data.mul_(scale)
    if conv.bias is not None:
        conv.bias.data.zero_()


def _copy_out(norm: Any, conv_out: Any, group: int, pins: Pins, gain: float, scale: float) -> None:
    """GroupNorm -> SiLU -> conv_out: colour c's [x, -x, A, -A] group comes out as gain * x."""
    import math

    group_size = norm.num_channels // norm.num_groups
    # The group's spread: channels x, -x, A, -A and zeros, so about A * sqrt(4 / group_size) / 2.
    spread = _A * math.sqrt(2.0 / group_size)
    designated = range(group * LATENT_CHANNELS)
    _scale_free(conv_out, scale)
    for k in designated:
        norm.weight.data[k] = 0
        norm.bias.data[k] = 0
        pins.add(norm.weight, k)
        pins.add(norm.bias, k)
    for c in range(LATENT_CHANNELS):
        norm.weight.data[group * c] = spread
        norm.bias.data[group * c] = _BIAS
    conv_out.weight.data[:, : group * LATENT_CHANNELS] = 0
    centre = conv_out.kernel_size[0] // 2
    for c in range(LATENT_CHANNELS):
        conv_out.weight.data[c, group * c, centre, centre] = gain
    conv_out.bias.data[:] = -gain * _BIAS
    pins.add(conv_out.weight, (slice(None), slice(0, group * LATENT_CHANNELS)))
    pins.add(conv_out.bias, slice(None))


def _signed_copy(conv: Any, source: int, first: int, pins: Pins, group: int) -> None:
    """``conv`` writes [x, -x, A, -A] of its input channel ``source + c`` at ``first + group*c``."""
    centre = conv.kernel_size[0] // 2
    for c in range(LATENT_CHANNELS):
        base = first + group * c
        _rows(conv, range(base, base + group), pins)
        conv.weight.data[base, source + c, centre, centre] = 1.0
        conv.weight.data[base + 1, source + c, centre, centre] = -1.0
        conv.bias.data[base + 2] = _A
        conv.bias.data[base + 3] = -_A


def _select(conv: Any, mapping: dict[int, int | None], pins: Pins) -> None:
    """A 1x1 layer whose output row k is exactly input channel ``mapping[k]`` (or 0 if None)."""
    _rows(conv, mapping, pins)
    for k, source in mapping.items():
        if source is not None:
            conv.weight.data[k, source, 0, 0] = 1.0


def init_encoder(vqvae: Any, pins: Pins, gain: float = 1.0, scale: float = 0.0) -> None:
    """The encoder starts as ``gain`` times a 4x4 box average of the picture."""
    enc = vqvae.encoder
    n = LATENT_CHANNELS * 4  # [x, -x, A, -A] per colour, 4 apart at the 32-channel levels
    _signed_copy(enc.conv_in, 0, 0, pins, 4)
    for block in enc.down_blocks:
        for resnet in block.resnets:
            if resnet.conv_shortcut is None:
                _rows(resnet.conv2, range(n), pins)
        for down in block.downsamplers or ():
            # A stride-2 3x3 convolution with taps only on its top-left 2x2: a 2x2 average.
            _rows(down.conv, range(n), pins)
            for k in range(n):
                down.conv.weight.data[k, k, :2, :2] = 0.25
    # The last level has 64 channels in groups of 8: colour c moves to channels 8c..8c+3, and
    # 8c+4..8c+7 stay 0 so nothing else joins its group.
    last = enc.down_blocks[-1].resnets[0]
    wide = {8 * c + j: (4 * c + j if j < 4 else None) for c in range(3) for j in range(8)}
    _select(last.conv_shortcut, wide, pins)
    _rows(last.conv2, wide, pins)
    for resnet in enc.mid_block.resnets:
        _rows(resnet.conv2, wide, pins)
    _copy_out(enc.conv_norm_out, enc.conv_out, 8, pins, gain, scale)
    _select(vqvae.quant_conv, {c: c for c in range(LATENT_CHANNELS)}, pins)


def init_decoder(vqvae: Any, pins: Pins, gain: float = 1.0, scale: float = 0.3) -> None:
    """The decoder starts as nearest-neighbour upsampling of the latent divided by ``gain``."""
    dec = vqvae.decoder
    norm = dec.conv_norm_out  # a SpatialNorm: GroupNorm(f) * conv_y(latent) + conv_b(latent)
    c = LATENT_CHANNELS
    _rows(norm.conv_y, range(c), pins)
    _rows(norm.conv_b, range(c), pins)
    for k in range(c):
        norm.conv_b.weight.data[k, k, 0, 0] = 1.0 / gain
        norm.conv_b.bias.data[k] = _BIAS
    _scale_free(dec.conv_out, scale)
    centre = dec.conv_out.kernel_size[0] // 2
    dec.conv_out.weight.data[:, :c] = 0
    for k in range(c):
        dec.conv_out.weight.data[k, k, centre, centre] = 1.0
    dec.conv_out.bias.data[:] = -_BIAS
    pins.add(dec.conv_out.weight, (slice(None), slice(0, c)))
    pins.add(dec.conv_out.bias, slice(None))


def init_unet(unet: Any, pins: Pins, gain: float = 1.0, scale: float = 0.0) -> None:
    """The UNet starts predicting ``gain`` times the low-resolution picture as the latent."""
    n = LATENT_CHANNELS * 4
    # Input channels 0-2 are the noisy latent, 3-5 the low-resolution picture.
    _signed_copy(unet.conv_in, LATENT_CHANNELS, 0, pins, 4)
    for resnet in unet.down_blocks[0].resnets:
        _rows(resnet.conv2, range(n), pins)
    top = unet.up_blocks[-1]
    for resnet in top.resnets:
        # Each takes [hidden, skip]; the first reads the copy from the skip (the top down block's
        # output), the next from the hidden state the first wrote.
        width = resnet.conv_shortcut.in_channels
        skip = width - unet.config.block_out_channels[0] if resnet is top.resnets[0] else 0
        _select(resnet.conv_shortcut, {k: skip + k for k in range(n)}, pins)
        _rows(resnet.conv2, range(n), pins)
    _copy_out(unet.conv_norm_out, unet.conv_out, 4, pins, gain, scale)


def init_copy_paths(vqvae: Any, unet: Any, gain: float = 1.0) -> Pins:
    """Start every part as its trivial map; returns the entries to keep out of training."""
    pins = Pins()
    init_encoder(vqvae, pins, gain)
    init_decoder(vqvae, pins, gain)
    init_unet(unet, pins, gain)
    return pins
