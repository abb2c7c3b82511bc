"""Learn2PD's filter (Bao et al. 2025, "Learning to Parallel"): a tiny MLP that predicts whether a masked
position's current argmax is already its final token.

It reads a few numbers per position (`stretto.pipelines.text.learned.position_features`: confidence, margin,
entropy, rank, place in the block, step, ...) and returns one logit per position. It is trained by
`stretto train unmask-filter` on decoding traces of a shipped model and knows nothing of the model itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class UnmaskFilterConfig:
    n_features: int = 10
    hidden: int = 32
    eot_id: int = 2  # the end-of-text id of the model whose traces it learned (a feature asks "argmax is eot?")

    def __post_init__(self):
        for name in ("n_features", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"UnmaskFilterConfig.{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


class UnmaskFilter(nn.Module):
    """Features (..., n_features) -> logit (...) that the position's current argmax is final."""

    kind = "unmask-filter"

    def __init__(self, config: UnmaskFilterConfig):
        super().__init__()
        self.config = config
        n, h = config.n_features, config.hidden
        self.net = nn.Sequential(nn.Linear(n, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)
