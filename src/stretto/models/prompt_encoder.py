"""A small word-level prompt encoder, trained together with the image model (it stands in for T5/CLIP)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PromptEncoderConfig:
    vocab: list[str]
    max_words: int = 8
    width: int = 64
    layers: int = 1
    heads: int = 4


class PromptEncoder(nn.Module):
    """Words -> (token states for cross/joint attention, pooled vector for modulation).

    Id 0 is padding; the empty prompt (all padding) is the learned "null" prompt that
    classifier-free guidance uses as its unconditional branch.
    """

    def __init__(self, config: PromptEncoderConfig):
        super().__init__()
        self.config = config
        self.word_to_id = {w: i + 1 for i, w in enumerate(config.vocab)}
        self.embed = nn.Embedding(len(config.vocab) + 1, config.width)
        self.position = nn.Parameter(torch.zeros(config.max_words, config.width))
        layer = nn.TransformerEncoderLayer(
            config.width,
            config.heads,
            dim_feedforward=4 * config.width,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.width)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Prompts (already checked against the vocabulary) -> padded ids (B, max_words)."""
        ids = torch.zeros(len(prompts), self.config.max_words, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt.lower().split()
            ids[row, : len(words)] = torch.tensor([self.word_to_id[w] for w in words], dtype=torch.long)
        return ids

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(ids) + self.position
        h = self.norm(self.encoder(h))
        return h, h.mean(dim=1)
