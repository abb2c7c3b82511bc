"""A published diffusion LM hosted on its transformers class, behind the call interface of stretto's `TextLM`.

`PublishedLM(host, config, tokenizer)` wraps a transformers `*ForCausalLM` (`hf_families` says which) and takes
the same call as `TextLM`: `model(ids, positions, blocks, kv_cache=..., start=..., write=..., gen_start=...,
probe_layer=...)` -> logits, so every decoding rule, cache mode and refresh option runs on it unchanged. What
stretto adds sits at this one boundary: the 4D bool attention mask (full for LLaDA / Dream, block-causal for
Fast-dLLM v2 / SDAR, padding keys off), the generation's `KVCache` passed as transformers' `Cache`
(`hf_cache.SlotCache`), the logit shift of the families adapted from AR LMs, and an attention function that
is SDPA everywhere except at a probed layer, where the explicit softmax also reports the attention mass
(Elastic-Cache's probe), with SparseD's per-head mask when a pattern is passed. The architecture is the
transformers class's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from stretto.models.hf_cache import SlotCache
from stretto.models.kv_attention import Probe, call_slots, slot_mask
from stretto.models.kv_cache import KVCache
from stretto.models.sparse_attention import SparsePattern

ATTENTION = "stretto_probe"


def probed_attention(
    module, query, key, value, attention_mask, stretto_probe: Probe | None = None, stretto_sparse=None, **kwargs
):
    """transformers attention: SDPA, or at the probed layer the explicit softmax, recording its mass per key.

    stretto_sparse: (SparsePattern, query slots, cached?): SparseD narrows the mask per head (`sparse_attention`).
    """
    if stretto_sparse is not None:
        sparse, q_slots, cached = stretto_sparse
        k_slots = torch.arange(key.shape[2], device=key.device) if cached else q_slots
        groups = query.shape[1] // key.shape[1]  # grouped-query attention: the pattern is per query head
        keys = key.repeat_interleave(groups, dim=1)
        sparse.select(module.layer_idx, query, keys, attention_mask, q_slots, k_slots, module.scaling)
        attention_mask = sparse.restrict(module.layer_idx, attention_mask, query, q_slots, k_slots)
    if stretto_probe is None or module.layer_idx != stretto_probe.layer:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each K/V head serves `groups` query heads
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    att = (query @ key.transpose(-1, -2)) * module.scaling
    att = att.masked_fill(~attention_mask, float("-inf")).softmax(-1)
    stretto_probe.attention = att.mean(dim=(1, 2))
    return (att @ value).transpose(1, 2).contiguous(), att


AttentionInterface.register(ATTENTION, probed_attention)


@dataclass
class PublishedLMConfig:
    """What the text pipeline reads of a published model, taken from its config.json."""

    family: str
    vocab_size: int
    n_layer: int
    max_len: int
    mask_id: int
    pad_id: int
    eot_id: int
    block_size: int = 0  # 0: bidirectional; > 0: block-causal with this block length

    def __post_init__(self):
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask token id {self.mask_id} is outside the vocabulary [0, {self.vocab_size})")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad token id {self.pad_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.block_size < 0:
            raise ValueError(f"block size must be >= 0, got {self.block_size}")

    def to_dict(self) -> dict:
        return asdict(self)


class PublishedLM(nn.Module):
    """A transformers `*ForCausalLM` run as a masked diffusion LM through stretto's mask and KV cache."""

    def __init__(self, host: nn.Module, config: PublishedLMConfig, tokenizer, logit_shift: bool):
        super().__init__()
        self.host, self.config, self.tokenizer, self.logit_shift = host, config, tokenizer, logit_shift
        self.kind = "block-lm" if config.block_size else "masked-lm"
        host.set_attn_implementation(ATTENTION)

    @property
    def block_causal(self) -> bool:
        return self.config.block_size > 0

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        blocks: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        start: int | torch.Tensor = 0,
        write: bool = True,
        attn_mask: torch.Tensor | None = None,
        gen_start: int = 0,
        slots: torch.Tensor | None = None,
        probe_layer: int | None = None,
        sparse: SparsePattern | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Probe]:
        """ids (B, T) at slots [start, start + T) -> logits (B, T, vocab), or (logits, Probe); as `TextLM`.

        Padding is a pad id before gen_start (left-padded prompts): LLaDA's pad is its end-of-text, which the
        answer region holds as a real token. With logit_shift the logits at slot i are the host's at i - 1 (slot
        0 keeps its own); the caller runs one slot earlier to score the first slot of a range.
        Continuous batching: start may be a tensor (B,) of per-row starts (blocks then (B, T)) and kv_cache
        `KVCache.rows(...)`. sparse: SparseD's pattern of the generation; None: dense attention.
        attn_mask: an explicit (B, 1, T, T) bool mask (block-diffusion training's [clean ; noisy] pass) used instead
        of the one built here. slots: taken for `TextLM`'s call and unused, a RoPE-only host reads only positions.
        """
        if probe_layer is not None and not 0 <= probe_layer < self.config.n_layer:
            raise ValueError(f"probe_layer must be in [0, {self.config.n_layer}), got {probe_layer}")
        b, t = ids.shape
        # (T,), or (B, T) when each row starts at its own slot (continuous batching)
        slots = torch.arange(t, device=ids.device) + (start[:, None] if isinstance(start, torch.Tensor) else start)
        if positions is None:
            positions = slots.expand(b, t)
        if blocks is None:
            blocks = torch.zeros(t, dtype=torch.long, device=ids.device)
        valid = (ids != self.config.pad_id) | (slots >= gen_start).expand(b, t)
        if kv_cache is None:
            k_valid, k_blocks = valid, blocks
        elif write:
            kv_cache.write_meta(start, positions, valid, blocks)
            _, k_valid, k_blocks = kv_cache.meta()
        else:
            _, k_valid, k_blocks = kv_cache.meta(start, positions, valid, blocks)
        probe = None if probe_layer is None else Probe(probe_layer, start)
        q_slots = None if sparse is None else call_slots(start, t, 0, False, ids.device)[0]
        extra = {} if sparse is None else {"stretto_sparse": (sparse, q_slots, kv_cache is not None)}
        if attn_mask is None:
            attn_mask = slot_mask(blocks, k_blocks, k_valid, self.block_causal)
        logits = self.host(
            input_ids=ids,
            attention_mask=attn_mask,
            position_ids=positions,
            past_key_values=None if kv_cache is None else SlotCache(kv_cache, start, write, probe),
            use_cache=False,
            stretto_probe=probe,
            **extra,
        ).logits
        if self.logit_shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits if probe is None else (logits, probe)

    def new_cache(self, batch: int, capacity: int, **kwargs) -> KVCache:
        """A KVCache shaped for the host (K/V heads, head width); the cache manager allocates it."""
        c = self.host.config
        heads = c.num_key_value_heads or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        p = next(self.host.parameters())
        return KVCache(c.num_hidden_layers, batch, heads, head_dim, capacity, dtype=p.dtype, device=p.device, **kwargs)
