"""Train the 4x shapes upscaler: ``python -m pipeline.shapes_x4.train``.

Phases: 1. draw the pictures (256 px truths, 64 px inputs), 2. train the VQ autoencoder on crops,
its codebook set by k-means part-way and then used, 3. encode pictures to latents, 4. train the
UNet to draw a latent from the low-resolution picture, 5. export an
``LDMSuperResolutionPipeline`` with ``save_pretrained``.

Every batch, crop and noise draw comes from a generator seeded by (seed, step), and checkpoints
hold the whole state, so a run stopped at any point and resumed gives the same weights as one
that never stopped. The defaults took 10 min 15 s on the 2-core development machine (the
limit is 15), 20 minutes of CPU time on 2 threads; the run is the same bits each time.
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

from pipeline.shapes.training import Budget, Ema, Phase, run_cli, save_pipeline, training_run
from pipeline.shapes_x4 import data
from pipeline.shapes_x4.model import (
    CODEBOOK_SIZE,
    SCALE,
    WEIGHTS_DIR,
    Pins,
    build_scheduler,
    build_unet,
    build_vqvae,
    init_copy_paths,
)

# The time the issue allows for a full run on 2 CPU cores.
TIME_LIMIT_S = 15 * 60


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    images: int = 2_000
    # Autoencoder: crops of the 256 px truths (64 px, so 16x16 latents).
    ae_steps: int = 700
    ae_batch: int = 16
    ae_crop: int = 64
    ae_lr: float = 2e-3
    # The last steps decode quantized latents, with the k-means codebook, so the decoder learns
    # the codes it will be given.
    ae_quantized_steps: int = 150
    # How hard the latent is pulled to the low-resolution picture: it may carry a little more
    # (where an edge lies inside a pixel), but the UNet has to draw whatever it carries.
    latent_weight: float = 0.1
    codebook: int = CODEBOOK_SIZE
    # K-means over the latents of kmeans_crops crops, spread by kmeans_spread levels.
    kmeans_crops: int = 2_048
    kmeans_points: int = 65_536
    kmeans_spread: float = 6.0
    kmeans_iters: int = 8
    # UNet: 32x32 crops of latents and inputs, from the first unet_images pictures.
    unet_images: int = 800
    unet_steps: int = 500
    batch: int = 32
    crop: int = 32
    lr: float = 1e-3
    warmup: int = 50
    ema: float = 0.99
    # Share of crops centred on an edge: flat areas are most of a picture and already exact.
    edge_share: float = 0.75
    checkpoint_every: int = 100
    threads: int = 2


class _Pictures:
    """The training pictures as bytes, and where their edges are (for crops that teach)."""

    def __init__(self, config: TrainConfig) -> None:
        import torch

        pairs = [data.training_pair(config.seed, i) for i in range(config.images)]
        self.high = torch.from_numpy(np.stack([np.asarray(h) for _, h in pairs])).permute(
            0, 3, 1, 2
        )
        self.low = torch.from_numpy(np.stack([np.asarray(lo) for lo, _ in pairs])).permute(
            0, 3, 1, 2
        )
        # A low-resolution pixel is on an edge when it differs from a 4-neighbour.
        low = self.low.float()
        centre = low[:, :, 1:-1, 1:-1]
        neighbours = (low[:, :, 1:-1, :-2], low[:, :, 1:-1, 2:], low[:, :, :-2, 1:-1],
                      low[:, :, 2:, 1:-1])  # fmt: skip
        diff = torch.stack([centre - n for n in neighbours])
        self.edge_mask = torch.zeros(low.shape[0], low.shape[2], low.shape[3], dtype=torch.bool)
        self.edge_mask[:, 1:-1, 1:-1] = diff.abs().amax(dim=(0, 2)) > 8
        self.edges = [torch.nonzero(e) for e in self.edge_mask]

    def crop_high(self, indices: list[int], corners: list[tuple[int, int]], crop: int) -> Any:
        """The 256 px truths under low-resolution crops at ``corners``, as bytes."""
        import torch

        return torch.stack([self.high[i, :, SCALE * y : SCALE * (y + crop),
                                      SCALE * x : SCALE * (x + crop)]
                            for i, (y, x) in zip(indices, corners, strict=True)])  # fmt: skip

    def crop_low(self, indices: list[int], corners: list[tuple[int, int]], crop: int) -> Any:
        """Low-resolution crops at ``corners``, as bytes."""
        import torch

        return torch.stack([self.low[i, :, y : y + crop, x : x + crop]
                            for i, (y, x) in zip(indices, corners, strict=True)])  # fmt: skip

    def corners(
        self, indices: list[int], crop: int, edge_share: float, rng: random.Random
    ) -> list[tuple[int, int]]:
        """Top-left corners (low-resolution pixels) of ``crop``-pixel crops, most on an edge."""
        side = self.low.shape[-1]
        out = []
        for i in indices:
            edge = self.edges[i]
            if len(edge) and rng.random() < edge_share:
                y, x = edge[rng.randrange(len(edge))].tolist()
                y = min(max(y - crop // 2, 0), side - crop)
                x = min(max(x - crop // 2, 0), side - crop)
            else:
                y, x = rng.randrange(side - crop + 1), rng.randrange(side - crop + 1)
            out.append((y, x))
        return out


def _scaled(pixels: Any) -> Any:
    """Bytes to [-1, 1], as the pipeline's own preprocessing scales a picture."""
    return pixels.float() / 127.5 - 1.0


def train(
    config: TrainConfig,
    out: Path = WEIGHTS_DIR,
    work: Path = Path(".cache/shapes-x4-train"),
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
        started, cpu_started = time.perf_counter(), time.process_time()

        # 1. Pictures, drawn the same on every machine.
        log(f"drawing {config.images} pictures at {data.HIGH} px")
        pictures = _Pictures(config)

        # Initial weights come from the global generator: seed it, or no two runs would agree.
        torch.manual_seed(config.seed)
        vqvae, unet = build_vqvae(config.codebook), build_unet()
        pins = init_copy_paths(vqvae, unet)

        # 2. Autoencoder.
        ae_loss = _train_autoencoder(vqvae, pins, pictures, config, work / "vqvae.pt", progress,
                                     budget)  # fmt: skip

        # 3. Latents of the UNet's pictures, before quantization (the pipeline quantizes them).
        with torch.no_grad():
            chunks = _scaled(pictures.high[: config.unet_images]).split(16)
            latents = torch.cat([vqvae.encode(chunk).latents for chunk in chunks])

        # 4. UNet.
        unet_loss = _train_unet(unet, pins, latents, pictures, config, work / "unet.pt", progress,
                                budget)  # fmt: skip

        # 5. Export.
        seconds = round(time.perf_counter() - started, 1)
        # On a shared machine the wall time counts other processes' work too; CPU time spread over
        # the threads is what the run would take with the cores to itself.
        cpu = round(time.process_time() - cpu_started, 1)
        summary = {
            "config": asdict(config),
            "autoencoder_loss": ae_loss,
            "unet_loss": unet_loss,
            "seconds_this_run": seconds,
            "cpu_seconds_this_run": cpu,
            "torch_threads": config.threads,
        }
        _export(vqvae, unet, out, summary)
        log(
            f"saved to {out}; this run took {seconds:.0f} s wall, {cpu:.0f} s CPU on "
            f"{config.threads} threads (a full run must stay under {TIME_LIMIT_S} s on 2 cores)"
        )
        return summary

    return None  # the budget stopped it: checkpointed, not exported


def _codebook(vqvae: Any, pictures: _Pictures, config: TrainConfig) -> Any:
    """K-means codes of the encoder's latents over many pictures' crops, half of them on edges.

    Each picture has its own jittered colours, so the latents of a few thousand pictures are a
    few thousand points per colour, and k-means would sit its codes on those exact colours. A
    small random spread around each point lets the codes fill the colours in between, which is
    where a new picture's colours fall.
    """
    import torch

    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 900_000)
    rng = random.Random(config.seed * 1_000_003 + 900_000)
    crop = config.ae_crop // SCALE
    index = torch.randint(0, config.images, (config.kmeans_crops,), generator=gen).tolist()
    corners = pictures.corners(index, crop, config.edge_share, rng)
    with torch.no_grad():
        z = torch.cat([
            vqvae.encode(_scaled(pictures.crop_high(index[i : i + 64], corners[i : i + 64],
                                                    crop))).latents
            for i in range(0, len(index), 64)
        ])  # fmt: skip
    edge = torch.stack([pictures.edge_mask[i, y : y + crop, x : x + crop]
                        for i, (y, x) in zip(index, corners, strict=True)]).reshape(-1)  # fmt: skip
    points = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    half = config.kmeans_points // 2
    on, off = torch.nonzero(edge)[:, 0], torch.nonzero(~edge)[:, 0]
    rest = config.kmeans_points - half
    pick = torch.cat([on[torch.randint(0, len(on), (half,), generator=gen)],
                      off[torch.randint(0, len(off), (rest,), generator=gen)]])  # fmt: skip
    spread = config.kmeans_spread / 127.5
    points = points[pick] + (torch.rand(len(pick), points.shape[1], generator=gen) - 0.5) * spread
    codes = points[torch.randperm(len(points), generator=gen)[: config.codebook]].clone()
    for _ in range(config.kmeans_iters):
        nearest = torch.cat([torch.cdist(part, codes).argmin(dim=1) for part in points.split(8192)])
        sums = torch.zeros_like(codes).index_add_(0, nearest, points)
        counts = torch.bincount(nearest, minlength=len(codes)).unsqueeze(1)
        # An unused code keeps its place rather than collapsing onto 0.
        codes = torch.where(counts > 0, sums / counts.clamp(min=1), codes)
    return codes


def _train_autoencoder(
    vqvae: Any,
    pins: Pins,
    pictures: _Pictures,
    config: TrainConfig,
    ckpt: Path,
    progress: bool,
    budget: Budget,
) -> float:
    """Train (or resume) the VQ autoencoder; returns the running loss."""
    import torch

    # The codebook is set by k-means, never by gradients.
    params = [p for name, p in vqvae.named_parameters() if not name.startswith("quantize.")]
    # No weight decay: it would pull the pinned copy paths away from their values.
    optimizer = torch.optim.AdamW(params, lr=config.ae_lr, weight_decay=0.0)
    switch = config.ae_steps - config.ae_quantized_steps
    phase = Phase(ckpt, {"model": vqvae}, optimizer, steps=config.ae_steps, lr=config.ae_lr,
                  warmup=config.warmup, checkpoint_every=config.checkpoint_every,
                  checkpoint_at=(switch,), desc="autoencoder", progress=progress,
                  budget=budget)  # fmt: skip
    vqvae.train()
    crop = config.ae_crop // SCALE
    for step in phase:
        if step == switch:
            vqvae.quantize.embedding.weight.data.copy_(_codebook(vqvae, pictures, config))
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        rng = random.Random(config.seed * 1_000_003 + step)
        index = torch.randint(0, config.images, (config.ae_batch,), generator=gen).tolist()
        corners = pictures.corners(index, crop, config.edge_share, rng)
        high = _scaled(pictures.crop_high(index, corners, crop))
        low = _scaled(pictures.crop_low(index, corners, crop))
        z = vqvae.encode(high).latents
        if step >= switch:
            decoded = vqvae.decode(z).sample  # quantized, gradients straight through
        else:
            decoded = vqvae.decode(z, force_not_quantize=True).sample
        loss = (
            (decoded - high).abs().mean()
            + (decoded - high).pow(2).mean()
            + config.latent_weight * (z - low).pow(2).mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        pins.zero_grads()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        phase.done(loss.item())
    if phase.step == switch == config.ae_steps:  # no quantized steps asked for: codes still needed
        vqvae.quantize.embedding.weight.data.copy_(_codebook(vqvae, pictures, config))
    vqvae.eval()
    return phase.loss


def _train_unet(
    unet: Any,
    pins: Pins,
    latents: Any,
    pictures: _Pictures,
    config: TrainConfig,
    ckpt: Path,
    progress: bool,
    budget: Budget,
) -> float:
    """Train (or resume) the UNet; returns the running loss."""
    import torch

    alphas = build_scheduler().alphas_cumprod
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    ema = Ema([unet], config.ema)
    phase = Phase(ckpt, {"unet": unet, "ema": ema.averages[0]}, optimizer, steps=config.unet_steps,
                  lr=config.lr, warmup=config.warmup, checkpoint_every=config.checkpoint_every,
                  desc="unet", progress=progress, budget=budget)  # fmt: skip
    unet.train()
    crop = config.crop
    for step in phase:
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 500_000 + step)
        rng = random.Random(config.seed * 1_000_003 + 500_000 + step)
        index = torch.randint(0, len(latents), (config.batch,), generator=gen).tolist()
        corners = pictures.corners(index, crop, config.edge_share, rng)
        x0 = torch.stack([latents[i, :, y : y + crop, x : x + crop]
                          for i, (y, x) in zip(index, corners, strict=True)])  # fmt: skip
        low = _scaled(pictures.crop_low(index, corners, crop))
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, len(alphas), (config.batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # The scheduler predicts the clean latent ("sample"): the loss is on it directly.
        pred = unet(torch.cat([noisy, low], dim=1), t).sample
        loss = (pred - x0).pow(2).mean() + (pred - x0).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        pins.zero_grads()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.update(step)
        phase.done(loss.item())
    # The exported UNet is the moving average; pinned entries are the same in both.
    ema.load_into_models()
    unet.eval()
    return phase.loss


def _export(vqvae: Any, unet: Any, out: Path, summary: dict[str, Any]) -> None:
    from diffusers import LDMSuperResolutionPipeline

    pipe: Any = LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=build_scheduler())
    save_pipeline(pipe, out, summary)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: train with the defaults (or the flags given) and export."""
    return run_cli(
        argv,
        prog="python -m pipeline.shapes_x4.train",
        description="Train the built-in tiny:shapes-x4 upscaler on procedural pictures. Resumes "
        "from the checkpoints in --work when stopped; delete that folder to start over.",
        out=WEIGHTS_DIR,
        work=Path(".cache/shapes-x4-train"),
        config_type=TrainConfig,
        train=train,
    )


if __name__ == "__main__":
    sys.exit(main())
