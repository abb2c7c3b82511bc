"""DMD2's GAN discriminator: a small classifier head on the fake-score network's features (DMD2 sec. 4.2).

The head reads the token states a hooked block of the fake-score network produces (its "bottleneck"; for the
shapes Flux the image stream after the last double-stream block), pools them over tokens and gives one logit.
Its gradient trains the head and, through the features, the fake-score backbone; the generator's GAN term
flows back through the same features to the generator's samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class FeatureTap:
    """Keeps the last output of `module`, reduced by `pick` to a (B, tokens, width) tensor."""

    def __init__(self, module: nn.Module, pick: Callable[[object], torch.Tensor]):
        self.features: torch.Tensor | None = None
        self._pick = pick
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.features = self._pick(output)

    def take(self) -> torch.Tensor:
        if self.features is None:
            raise RuntimeError("the tapped block has not run since the last take()")
        features, self.features = self.features, None
        return features

    def remove(self) -> None:
        self._handle.remove()


class GanHead(nn.Module):
    """Token states (B, N, width) -> one real/fake logit per sample."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.mean(dim=1)).squeeze(-1)
