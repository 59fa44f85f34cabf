"""A small CNN that reads a shapes picture back into its attributes, to score what a model draws.

It trains in seconds on fresh procedural pictures (held-out combinations included: it is the
measuring instrument, not the model under test), with noise and blur so that a drawn picture's
softer edges don't fool it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from pipeline.shapes import data

HEADS: dict[str, tuple[str, ...]] = {
    "shape": data.SHAPES,
    "colour": data.COLOUR_NAMES,
    "background": data.COLOUR_NAMES,
    "size": data.SIZES,
    "position": data.POSITIONS,
}


def _network() -> Any:
    from torch import nn

    def block(cin: int, cout: int) -> list[Any]:
        conv = nn.Conv2d(cin, cout, 3, padding=1)
        return [conv, nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 16),  # 32x32
        *block(16, 32),  # 16x16
        *block(32, 64),  # 8x8
        *block(64, 64),  # 4x4
        nn.Flatten(),
        nn.Linear(64 * 16, 128),
        nn.ReLU(),
        nn.Linear(128, sum(len(v) for v in HEADS.values())),
    )


def _labels(attrs: list[data.Attributes]) -> Any:
    import torch

    return torch.tensor(
        [[values.index(getattr(a, head)) for head, values in HEADS.items()] for a in attrs]
    )


@dataclass
class Classifier:
    network: Any

    @classmethod
    def train(cls, *, seed: int = 99, steps: int = 400, batch: int = 64) -> Classifier:
        """Train on ``steps * batch`` fresh pictures; takes seconds on a CPU."""
        import torch
        import torch.nn.functional as F

        torch.manual_seed(seed)
        network = _network()
        optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
        stream = data.samples(seed, steps * batch, exclude_held_out=False)
        network.train()
        for step in range(steps):
            chunk = [next(stream) for _ in range(batch)]
            x = _augment(torch.from_numpy(data.to_array([s.image for s in chunk])), step)
            logits = network(x)
            labels = _labels([s.attributes for s in chunk])
            parts = logits.split([len(v) for v in HEADS.values()], dim=1)
            loss = torch.stack(
                [F.cross_entropy(part, labels[:, k]) for k, part in enumerate(parts)]
            ).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        network.eval()
        return cls(network)

    def predict(self, images: list[Image.Image]) -> list[dict[str, str]]:
        """Each picture's attributes, as the classifier reads them."""
        import torch

        with torch.no_grad():
            logits = self.network(torch.from_numpy(data.to_array(images)))
        parts = logits.split([len(v) for v in HEADS.values()], dim=1)
        picks = [part.argmax(dim=1).tolist() for part in parts]
        return [
            {head: values[picks[k][i]] for k, (head, values) in enumerate(HEADS.items())}
            for i in range(len(images))
        ]

    def accuracy(self, images: list[Image.Image], attrs: list[data.Attributes]) -> dict[str, float]:
        """Share of pictures whose each attribute is read back as ``attrs`` says."""
        predicted = self.predict(images)
        return {
            head: sum(p[head] == getattr(a, head) for p, a in zip(predicted, attrs, strict=True))
            / len(attrs)
            for head in HEADS
        }


def _augment(x: Any, step: int) -> Any:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(step)
    # Blur half the batch a little, then add noise of varying strength.
    half = x.shape[0] // 2
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    x = torch.cat([F.conv2d(x[:half], kernel, padding=1, groups=3), x[half:]])
    strength = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * 0.15
    return x + strength * torch.randn(x.shape, generator=gen)
