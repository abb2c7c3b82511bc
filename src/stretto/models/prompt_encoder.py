"""Prompt encoders for the shapes model: word ids -> (token states, pooled vector), trained with the image model.

Two encoders share one interface:
- `t5`: transformers' `T5EncoderModel` built from a small config (the encoder Flux pipelines use, scaled down);
  bidirectional attention with relative positions (`stretto train image --text-encoder t5`).
- `words`: a one-layer `nn.TransformerEncoder` over learned word + position embeddings (the shipped model's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ENCODERS = ("t5", "words")


@dataclass
class PromptEncoderConfig:
    vocab: list[str]
    max_words: int = 8
    width: int = 64
    layers: int = 1
    heads: int = 4
    encoder: str = "words"

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"prompt encoder {self.encoder!r} is not one of {', '.join(ENCODERS)}")


class PromptEncoder(nn.Module):
    """Words -> (token states for cross/joint attention, pooled vector for modulation).

    Id 0 is padding; the empty prompt (all padding) is the learned "null" prompt that
    classifier-free guidance uses as its unconditional branch.
    """

    def __init__(self, config: PromptEncoderConfig):
        super().__init__()
        self.config = config
        self.word_to_id = {w: i + 1 for i, w in enumerate(config.vocab)}
        if config.encoder == "t5":
            from transformers import T5Config, T5EncoderModel

            self.t5 = T5EncoderModel(
                T5Config(
                    vocab_size=len(config.vocab) + 1,
                    d_model=config.width,
                    d_kv=config.width // config.heads,
                    d_ff=4 * config.width,
                    num_layers=config.layers,
                    num_heads=config.heads,
                    relative_attention_num_buckets=8,
                    relative_attention_max_distance=config.max_words,
                    dropout_rate=0.0,
                    feed_forward_proj="gated-gelu",
                    pad_token_id=0,
                    decoder_start_token_id=0,
                )
            )
            return
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
        if self.config.encoder == "t5":
            # No attention mask: padding positions are ordinary tokens, so the all-padding null prompt is well defined.
            h = self.t5(input_ids=ids).last_hidden_state
        else:
            h = self.norm(self.encoder(self.embed(ids) + self.position))
        return h, h.mean(dim=1)
