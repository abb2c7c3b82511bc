"""What a text generation returns: the answers, what they cost, and the canvas they were read from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stretto.pipelines.text.model_calls import DecodeStats


@dataclass
class TextResult:
    """Generated texts (each cut at its first end-of-text) and what it cost."""

    texts: list[str]
    stats: DecodeStats
    seconds: float
    tokens: int  # generated tokens up to and including each row's end-of-text
    canvas: torch.Tensor = field(repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        return {
            **self.stats.to_dict(),
            "seconds": self.seconds,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
        }


def answer_tokens(gen: torch.Tensor, eot_id: int) -> int:
    """Tokens of the answers gen (B, L), each up to and including its first end-of-text (all L without one)."""
    eot = gen == eot_id
    return int(torch.where(eot.any(1), eot.float().argmax(1) + 1, gen.shape[1]).sum())
