"""Train the shapes model from procedural data: ``python -m pipeline.shapes.train``.

Phases: 1. draw the pictures, 2. train the autoencoder, 3. encode the pictures to latents,
4. train the UNet and text encoder together (with caption dropout, so guidance works),
5. export a ``StableDiffusionPipeline`` with ``save_pretrained``.

Every batch and every noise draw comes from a generator seeded by (seed, step), and checkpoints
hold the whole state, so a run stopped at any point and resumed gives the same weights as one
that never stopped.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shapes import data
from pipeline.shapes.model import (
    WEIGHTS_DIR,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
)
from pipeline.shapes.training import Budget, Ema, Phase, run_cli, save_pipeline, training_run


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    images: int = 24_000
    vae_steps: int = 1_600
    vae_batch: int = 16
    vae_lr: float = 2e-3
    unet_steps: int = 3_000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    # Share of captions replaced by "" so the model also learns the unconditional prediction.
    uncond: float = 0.1
    ema: float = 0.999
    # Min-SNR loss weighting (Hang et al. 2023): converges in far fewer steps.
    snr_gamma: float = 5.0
    checkpoint_every: int = 200
    threads: int = 2


def train(
    config: TrainConfig,
    out: Path = WEIGHTS_DIR,
    work: Path = Path(".cache/shapes-train"),
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) training and export the pipeline to ``out``; returns a summary.

    ``stop_after`` ends this run after that many steps, checkpointed, without exporting (None
    when it stopped early): the next call picks up where it left off.
    """
    import torch

    with training_run(config, work, stop_after, log) as budget:
        started = time.perf_counter()

        # 1. Pictures, drawn the same on every machine.
        log(f"drawing {config.images} pictures")
        picked = list(data.samples(config.seed, config.images))
        # Kept as bytes (300 MB for 24,000 pictures, not 1.2 GB of floats), scaled per batch. A
        # view of the HWC stack, as data.to_array gives: the strides pick the conv kernels, so the
        # bits of the trained weights depend on them.
        hwc = torch.from_numpy(np.stack([np.asarray(s.image) for s in picked]))
        pixels = hwc.permute(0, 3, 1, 2)
        attributes = [s.attributes for s in picked]

        # 2. Autoencoder.
        # Initial weights come from the global generator: seed it, or no two runs would agree.
        torch.manual_seed(config.seed)
        vae = build_vae()
        vae_loss = _train_vae(vae, pixels, config, work / "vae.pt", progress, budget)

        # 3. Latents, scaled to unit variance as SD's scaling_factor does.
        latents = _encode(vae, pixels)
        scaling = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scaling)
        latents = latents * scaling

        # 4. UNet and text encoder.
        tokenizer = build_tokenizer(data.vocabulary())
        torch.manual_seed(config.seed + 1)
        text_encoder = build_text_encoder(len(tokenizer))
        unet = build_unet()
        unet_loss = _train_unet(
            unet, text_encoder, tokenizer, latents, attributes, config, work / "unet.pt", progress,
            budget,
        )  # fmt: skip

        # 5. Export.
        summary = {
            "config": asdict(config),
            "vae_loss": vae_loss,
            "unet_loss": unet_loss,
            "scaling_factor": scaling,
            "seconds_this_run": round(time.perf_counter() - started, 1),
        }
        _export(vae, text_encoder, tokenizer, unet, out, summary)
        log(f"saved to {out} ({summary['seconds_this_run']} s)")
        return summary

    return None  # the budget stopped it: checkpointed, not exported


def _train_vae(
    vae: Any, pixels: Any, config: TrainConfig, ckpt: Path, progress: bool, budget: Budget
) -> float:
    """Train (or resume) the autoencoder; returns the running loss."""
    import torch

    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    phase = Phase(ckpt, {"model": vae}, optimizer, steps=config.vae_steps, lr=config.vae_lr,
                  warmup=config.warmup, checkpoint_every=config.checkpoint_every,
                  desc="autoencoder", progress=progress, budget=budget)  # fmt: skip
    vae.train()
    for step in phase:
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        index = torch.randint(0, len(pixels), (config.vae_batch,), generator=gen)
        x = _scaled(pixels[index])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=gen, dtype=posterior.mean.dtype
        )
        recon = vae.decode(z).sample
        loss = (recon - x).pow(2).mean() + (recon - x).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        phase.done(loss.item())
    vae.eval()
    return phase.loss


def _encode(vae: Any, pixels: Any) -> Any:
    import torch

    with torch.no_grad():
        chunks = pixels.split(256)
        return torch.cat([vae.encode(_scaled(chunk)).latent_dist.mean for chunk in chunks])


def _scaled(pixels: Any) -> Any:
    """Bytes to the [-1, 1] floats VAEs take, with the same arithmetic as ``data.to_array``."""
    return pixels.float() / 127.5 - 1.0


def _train_unet(
    unet: Any,
    text_encoder: Any,
    tokenizer: Any,
    latents: Any,
    attributes: Sequence[data.Attributes],
    config: TrainConfig,
    ckpt: Path,
    progress: bool,
    budget: Budget,
) -> float:
    """Train (or resume) the UNet and text encoder; returns the running loss."""
    import torch

    scheduler = build_scheduler()
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    # Min-SNR weights for a v-prediction target.
    weight = torch.clamp(snr, max=config.snr_gamma) / (snr + 1)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    ema = Ema([unet, text_encoder], config.ema)
    ema_unet, ema_text = ema.averages
    models = {"unet": unet, "text": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text}
    phase = Phase(ckpt, models, optimizer, steps=config.unet_steps, lr=config.lr,
                  warmup=config.warmup, checkpoint_every=config.checkpoint_every, desc="unet",
                  progress=progress, budget=budget)  # fmt: skip
    unet.train()
    text_encoder.train()
    for step in phase:
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 500_000 + step)
        rng = random.Random(config.seed * 1_000_003 + 500_000 + step)
        index = torch.randint(0, len(latents), (config.batch,), generator=gen)
        # A fresh phrasing each time a picture comes round, and some empty captions for guidance.
        captions = [
            "" if rng.random() < config.uncond else attributes[i].caption(rng.randrange(4))
            for i in index.tolist()
        ]
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, len(alphas), (config.batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v, the velocity
        loss = ((pred - target).pow(2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.update(step)
        phase.done(loss.item())
    # The exported model is the moving average.
    ema.load_into_models()
    unet.eval()
    text_encoder.eval()
    return phase.loss


def _export(
    vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, out: Path, summary: dict[str, Any]
) -> None:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        # Its default sampler: DPM++ 2M drew cleaner shapes than PNDM at 20 steps.
        scheduler=DPMSolverMultistepScheduler.from_config(build_scheduler().config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    save_pipeline(pipe, out, summary)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: train with the defaults (or the flags given) and export."""
    return run_cli(
        argv,
        prog="python -m pipeline.shapes.train",
        description="Train the built-in tiny:shapes model on procedural pictures. Resumes from "
        "the checkpoints in --work when stopped; delete that folder to start over.",
        out=WEIGHTS_DIR,
        work=Path(".cache/shapes-train"),
        config_type=TrainConfig,
        train=train,
    )


if __name__ == "__main__":
    sys.exit(main())
