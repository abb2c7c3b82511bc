"""The prompt's cross-attention K/V, computed once per prompt (CausVid's text cache), for Wan-family transformers.

Wan, SkyReels-V2 and AnyFlow-FAR project the text tokens to K/V in every block at every call, although the prompt
is fixed for a whole stream (or until a prompt switch). `encode_prompt_kv` runs the class's own text projection
and each block's `attn2` K/V once; `PromptCrossAttention`, set as `attn2`'s processor, reads them back. The
transformer's forward still embeds whatever text it is handed: it gets `PromptKV.placeholder`, one token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stretto.models.kv_cache import KVCache


@dataclass
class PromptKV:
    """Every layer's cross-attention K/V of one prompt batch (a KVCache of the text tokens)."""

    cache: KVCache
    placeholder: torch.Tensor  # (B, 1, text_dim): what the forward embeds and attn2 then ignores

    @property
    def batch(self) -> int:
        return self.cache.k.shape[1]


@torch.no_grad()
def encode_prompt_kv(transformer: nn.Module, prompt_embeds: torch.Tensor | PromptKV) -> PromptKV:
    """Text-encoder states (B, L, text_dim) -> each block's attn2 K/V, through the class's own projections
    (a PromptKV passes through: it is already encoded)."""
    if isinstance(prompt_embeds, PromptKV):
        return prompt_embeds
    text_dim = transformer.config.text_dim
    if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != text_dim:
        raise ValueError(f"prompt embeddings must be (batch, tokens, {text_dim}), got {tuple(prompt_embeds.shape)}")
    p = next(transformer.parameters())
    b, n = prompt_embeds.shape[:2]
    text = transformer.condition_embedder.text_embedder(prompt_embeds.to(p.dtype))
    first = transformer.blocks[0].attn2
    head_dim = first.to_k.out_features // first.heads
    cache = KVCache(len(transformer.blocks), b, first.heads, head_dim, n, dtype=p.dtype, device=p.device)
    for i, block in enumerate(transformer.blocks):
        attn = block.attn2
        k = attn.to_k(text)
        k = (k if attn.norm_k is None else attn.norm_k(k)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        v = attn.to_v(text).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        cache.write(i, 0, k, v)
    zeros = torch.zeros(b, n, dtype=torch.long, device=p.device)
    cache.write_meta(0, zeros, torch.ones_like(zeros, dtype=torch.bool), zeros[0])
    return PromptKV(cache, prompt_embeds[:, :1].to(p.dtype))


class PromptCrossAttention:
    """attn2 over K/V from `encode_prompt_kv`; `prompt_of()` names the PromptKV of the call in flight."""

    def __init__(self, prompt_of: Callable[[], PromptKV], layer: int):
        self.prompt_of, self.layer = prompt_of, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        k, v = self.prompt_of().cache.read(self.layer)
        q = attn.to_q(hidden_states)
        q = (q if attn.norm_q is None else attn.norm_q(q)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return attn.to_out[1](attn.to_out[0](y.transpose(1, 2).flatten(2).type_as(hidden_states)))
