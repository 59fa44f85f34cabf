"""Train the shapes model from procedural data: ``python -m pipeline.shapes.train``.

Phases: 1. draw the pictures, 2. train the autoencoder, 3. encode the pictures to latents,
4. train the UNet and text encoder together (with caption dropout, so guidance works),
5. export a ``StableDiffusionPipeline`` with ``save_pretrained``.

Every batch and every noise draw comes from a generator seeded by (seed, step), and checkpoints
hold the whole state, so a run stopped at any point and resumed gives the same weights as one
that never stopped.
"""

from __future__ import annotations

import json
import math
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
from pipeline.shapes.training import Bar, Budget, lr_at, run_cli, save_atomic, save_pipeline


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

    # Training wants every core it is given; the caller's setting comes back afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, out, work, progress, log, stop_after)
    finally:
        torch.set_num_threads(threads)


def _train(
    config: TrainConfig,
    out: Path,
    work: Path,
    progress: bool,
    log: Callable[[str], None],
    stop_after: int | None,
) -> dict[str, Any] | None:
    import torch

    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config_file = work / "config.json"
    if config_file.exists() and json.loads(config_file.read_text()) != asdict(config):
        raise ValueError(
            f"{work} holds a run with other settings; delete it or pass another --work folder."
        )
    config_file.write_text(json.dumps(asdict(config), indent=1))

    # 1. Pictures, drawn the same on every machine.
    log(f"drawing {config.images} pictures")
    picked = list(data.samples(config.seed, config.images))
    # Kept as bytes (300 MB for 24,000 pictures, not 1.2 GB of floats), scaled per batch. A view
    # of the HWC stack, as data.to_array gives: the strides pick the conv kernels, so the bits of
    # the trained weights depend on them.
    hwc = torch.from_numpy(np.stack([np.asarray(s.image) for s in picked]))
    pixels = hwc.permute(0, 3, 1, 2)
    attributes = [s.attributes for s in picked]

    # 2. Autoencoder.
    budget = Budget(stop_after)
    # Initial weights come from the global generator: seed it, or no two runs would agree.
    torch.manual_seed(config.seed)
    vae = build_vae()
    vae_loss, finished = _train_vae(vae, pixels, config, work / "vae.pt", progress, budget)
    if not finished:
        log(f"stopped after {stop_after} steps; run again to resume")
        return None

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
    unet_loss, finished = _train_unet(
        unet, text_encoder, tokenizer, latents, attributes, config, work / "unet.pt", progress,
        budget,
    )  # fmt: skip
    if not finished:
        log(f"stopped after {stop_after} steps; run again to resume")
        return None

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


def _train_vae(
    vae: Any, pixels: Any, config: TrainConfig, ckpt: Path, progress: bool, budget: Budget
) -> tuple[float, bool]:
    """Train (or resume) the autoencoder; returns the running loss and whether it is done."""
    import torch

    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    step, loss_avg = 0, float("nan")
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, loss_avg = state["step"], state["loss"]
    vae.train()
    bar = Bar(config.vae_steps, step, "autoencoder", progress)
    while step < config.vae_steps and not budget.spent:
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        index = torch.randint(0, len(pixels), (config.vae_batch,), generator=gen)
        x = _scaled(pixels[index])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.vae_steps, config.vae_lr, config.warmup)
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
        step += 1
        value = loss.item()
        loss_avg = value if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * value
        bar.update(loss_avg)
        budget.take()
        if step % config.checkpoint_every == 0 or step == config.vae_steps or budget.spent:
            state = {"model": vae.state_dict(), "optimizer": optimizer.state_dict()}
            save_atomic({**state, "step": step, "loss": loss_avg}, ckpt)
    bar.close()
    vae.eval()
    return loss_avg, step >= config.vae_steps


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
) -> tuple[float, bool]:
    """Train (or resume) the UNet and text encoder; returns the running loss and whether done."""
    import copy

    import torch

    scheduler = build_scheduler()
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    # Min-SNR weights for a v-prediction target.
    weight = torch.clamp(snr, max=config.snr_gamma) / (snr + 1)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    step, loss_avg = 0, float("nan")
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
        optimizer.load_state_dict(state["optimizer"])
        step, loss_avg = state["step"], state["loss"]
    unet.train()
    text_encoder.train()
    pairs = list(zip([*ema_unet.parameters(), *ema_text.parameters()], params, strict=True))
    bar = Bar(config.unet_steps, step, "unet", progress)
    while step < config.unet_steps and not budget.spent:
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
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.unet_steps, config.lr, config.warmup)
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v, the velocity
        loss = ((pred - target).pow(2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(config.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema_p, p in pairs:
                ema_p.lerp_(p, 1 - decay)
        step += 1
        value = loss.item()
        loss_avg = value if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * value
        bar.update(loss_avg)
        budget.take()
        if step % config.checkpoint_every == 0 or step == config.unet_steps or budget.spent:
            state = {
                "unet": unet.state_dict(),
                "text": text_encoder.state_dict(),
                "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(),
                "optimizer": optimizer.state_dict(),
            }
            save_atomic({**state, "step": step, "loss": loss_avg}, ckpt)
    bar.close()
    # The exported model is the moving average: smoother and better than the last step's weights.
    unet.load_state_dict(ema_unet.state_dict())
    text_encoder.load_state_dict(ema_text.state_dict())
    unet.eval()
    text_encoder.eval()
    return loss_avg, step >= config.unet_steps


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
