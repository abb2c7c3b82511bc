"""Attention over all tokens for token-level caches (ToCa, RAS): cached keys and values for the tokens not run.

When `Stack.compute_tokens` runs only some image tokens through the blocks, their attention would see just
each other (and the text tokens). `all_token_attention` swaps every block's self-attention processor for
one of ours for the duration of the call (and always puts the originals back):

- recording (every image token runs): the processor computes exactly what the diffusers processor computes
  (the same operations, so the output is bit for bit the same) and keeps the image tokens' keys and values
  as the attention uses them (after the q/k norms and the rotary embedding);
- partial (some image tokens run): the selected tokens (and the text tokens) compute fresh queries, keys and
  values; their keys and values overwrite their slots in the recorded ones (in place), and the
  queries attend to the keys and values of all tokens. Exact when the other tokens' keys and values did
  not change since they were recorded; positions are fixed per token, so rotary keys stay valid.

Per self-attention module the cache is two tensors, the keys and the values of the whole sequence (text and
image tokens, as the attention uses them), in the processor's own layout (Flux: batch, tokens, heads,
head_dim; SD3 / DiT: batch, heads, tokens, head_dim); the text entries are rewritten on every step.
Supported: diffusers `FluxAttnProcessor` (Flux double- and single-stream blocks), `JointAttnProcessor2_0`
(SD3 joint blocks) and `AttnProcessor2_0` self-attention (DiT, PixArt; cross-attention modules are left
alone, their keys are text tokens).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import (
    FluxAttnProcessor,
    _get_qkv_projections,
    apply_rotary_emb,
    dispatch_attention_fn,
)
from torch import nn

ATTENTION_NAMES = ("attn", "attn1", "attn2")  # where diffusers blocks keep their attention modules


class _Slot:
    """The cached keys and values of one attention module (the whole sequence: text and image tokens) for the
    rows of this call."""

    def __init__(self, tokens: torch.Tensor | None, text: int, keys: torch.Tensor | None, values: torch.Tensor | None):
        self.tokens = tokens  # the image tokens that run (None: all of them, recording)
        self.text = text  # text tokens in front of the image tokens of a single-stream sequence
        self.keys, self.values = keys, values

    def merge(
        self, key: torch.Tensor, value: torch.Tensor, start: int, length: int, dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of all tokens, given those of the tokens that run, whose image tokens are the
        `length` entries from `start` along `dim`. Records them, or writes them into the cache and returns it.

        The cache keeps the whole sequence in the attention's own layout, so a partial step writes only its
        fresh entries (the text tokens and the selected image tokens) in place and attends to the cache as it
        is: concatenating the whole sequence anew per module and step cost ~4% of a ToCa run on shapes-flux."""
        if self.tokens is None:
            self.keys, self.values = key, value
            return key, value
        after = key.shape[dim] - start - length
        for cache, fresh in ((self.keys, key), (self.values, value)):  # in place: the caller's cache, updated anyway
            cache.narrow(dim, 0, start).copy_(fresh.narrow(dim, 0, start))
            cache.narrow(dim, cache.shape[dim] - after, after).copy_(fresh.narrow(dim, start + length, after))
            cache.index_copy_(dim, start + self.tokens, fresh.narrow(dim, start, length))
        return self.keys, self.values


class _FluxProcessor:
    """diffusers' FluxAttnProcessor (diffusers 0.3x-0.4x), with the image tokens' keys and values cached."""

    def __init__(self, original: FluxAttnProcessor, slot: _Slot):
        self.original, self.slot = original, slot

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise ValueError("token-level cache policies do not support attention masks")
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        # the sequence is [text; image]: text from encoder_hidden_states (double-stream) or the first slot.text
        text = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else self.slot.text
        key, value = self.slot.merge(key, value, text, key.shape[1] - text, dim=1)
        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=None,
            backend=self.original._attention_backend,
            parallel_config=self.original._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


def _heads(attn, t: torch.Tensor, batch: int, head_dim: int) -> torch.Tensor:
    return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)


def _image_qkv(attn, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The queries, keys and values of `hidden_states` as (batch, heads, tokens, head_dim), after the q/k norms,
    and head_dim: the first steps of diffusers' JointAttnProcessor2_0 and AttnProcessor2_0."""
    batch_size = hidden_states.shape[0]
    query = attn.to_q(hidden_states)
    key = attn.to_k(hidden_states)
    value = attn.to_v(hidden_states)
    inner_dim = key.shape[-1]
    head_dim = inner_dim // attn.heads
    query = _heads(attn, query, batch_size, head_dim)
    key = _heads(attn, key, batch_size, head_dim)
    value = _heads(attn, value, batch_size, head_dim)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value, head_dim


class _JointProcessor:
    """diffusers' JointAttnProcessor2_0 (SD3), with the image tokens' keys and values cached."""

    def __init__(self, original: JointAttnProcessor2_0, slot: _Slot):
        self.original, self.slot = original, slot

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if attention_mask is not None:
            raise ValueError("token-level cache policies do not support attention masks")
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value, head_dim = _image_qkv(attn, hidden_states)
        if encoder_hidden_states is not None:
            encoder_query = _heads(attn, attn.add_q_proj(encoder_hidden_states), batch_size, head_dim)
            encoder_key = _heads(attn, attn.add_k_proj(encoder_hidden_states), batch_size, head_dim)
            encoder_value = _heads(attn, attn.add_v_proj(encoder_hidden_states), batch_size, head_dim)
            if attn.norm_added_q is not None:
                encoder_query = attn.norm_added_q(encoder_query)
            if attn.norm_added_k is not None:
                encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([query, encoder_query], dim=2)
            key = torch.cat([key, encoder_key], dim=2)
            value = torch.cat([value, encoder_value], dim=2)
        key, value = self.slot.merge(key, value, 0, residual.shape[1], dim=2)  # the sequence is [image; text]
        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]],
                hidden_states[:, residual.shape[1] :],
            )
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class _SelfProcessor:
    """diffusers' AttnProcessor2_0 for self-attention over the image tokens (DiT, PixArt), keys/values cached."""

    def __init__(self, original: AttnProcessor2_0, slot: _Slot):
        self.original, self.slot = original, slot

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attention_mask is not None or encoder_hidden_states is not None or hidden_states.ndim != 3:
            raise ValueError(
                "token-level cache policies support AttnProcessor2_0 only as self-attention over (batch, tokens, "
                "channels) without a mask"
            )
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("token-level cache policies do not support attention with a spatial or group norm")
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value, head_dim = _image_qkv(attn, hidden_states)
        key, value = self.slot.merge(key, value, 0, key.shape[2], dim=2)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


PROCESSORS = {
    FluxAttnProcessor: _FluxProcessor,
    JointAttnProcessor2_0: _JointProcessor,
    AttnProcessor2_0: _SelfProcessor,
}


def self_attention_modules(block: nn.Module, model: str) -> list[nn.Module]:
    """The block's attention modules whose keys include image tokens (cross-attention to text is left out)."""
    found = []
    for name in ATTENTION_NAMES:
        attn = getattr(block, name, None)
        if attn is None or not hasattr(attn, "processor") or getattr(attn, "is_cross_attention", False):
            continue
        if type(attn.processor) not in PROCESSORS:
            raise ValueError(
                f"token-level cache policies support the attention processors of diffusers Flux / SD3 / DiT "
                f"({', '.join(p.__name__ for p in PROCESSORS)}); {model}'s {type(block).__name__}.{name} uses "
                f"{type(attn.processor).__name__}"
            )
        found.append(attn)
    if not found:
        raise ValueError(
            f"token-level cache policies need the blocks' attention modules (attributes {ATTENTION_NAMES}); "
            f"{model}'s {type(block).__name__} has none"
        )
    return found


@contextmanager
def all_token_attention(
    blocks: Sequence[nn.Module], kv: list, tokens: torch.Tensor | None, text: int, model: str
) -> Iterator[None]:
    """While inside, the blocks' self-attention sees the keys and values of all image tokens.

    `tokens` None: every image token runs; the processors record each module's keys and values into `kv`
    (two tensors per module, keys then values, in execution order; `kv` is replaced on a normal exit).
    Otherwise `kv` holds those tensors for the rows that run; the selected `tokens` (image-token indices)
    update their slots (in place) and attend to all of them. `text` is the number of text tokens that a
    single-stream block puts in front of the image tokens."""
    modules = [attn for block in blocks for attn in self_attention_modules(block, model)]
    if tokens is not None and len(kv) != 2 * len(modules):
        raise ValueError(
            f"the key/value cache holds {len(kv)} tensors for {len(modules)} attention modules (keys and values "
            "each); record it with every token selected first"
        )
    cached = [(None, None)] * len(modules) if tokens is None else list(zip(kv[0::2], kv[1::2], strict=True))
    slots = [_Slot(tokens, text, keys, values) for keys, values in cached]
    swapped = []
    try:
        for attn, slot in zip(modules, slots, strict=True):
            original = attn.processor
            attn.set_processor(PROCESSORS[type(original)](original, slot))
            swapped.append((attn, original))
        yield
    finally:
        for attn, original in reversed(swapped):
            attn.set_processor(original)
    if any(slot.keys is None for slot in slots):
        raise RuntimeError(f"an attention module of {model} was not called; its keys and values were not recorded")
    kv[:] = [t for slot in slots for t in (slot.keys, slot.values)]
