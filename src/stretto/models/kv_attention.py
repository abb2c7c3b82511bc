"""The one KV-aware attention every model with a `KVCache` calls, RoPE, and the Elastic-Cache probe.

`kv_attention` runs the part of an attention layer that touches the cache: this call's K/V are used alone (no
cache), written into their slots and attended together with everything cached (`write=True`), or laid over
their slots for this call only (`write=False`). Keys are cached un-rotated, so RoPE is applied after the read,
from each slot's stored position. A `Probe` passed in is filled with what Elastic-Cache (Nguyen-Tri et al.
2025) tests: the drift of every key a write overwrites, and the attention mass over keys at one layer; the model
call returns it beside its output, so the cache itself holds no probe state. A `SparsePattern` passed in
(SparseD, `sparse_attention`) narrows the mask per head once its pattern is selected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from stretto.models.kv_cache import KVCache
from stretto.models.sparse_attention import SparsePattern


def rope_angles(positions: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """Rotation angles (..., dim/2) for integer positions (...) (RoFormer, Su et al. 2021), in float64."""
    inv_freq = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim)
    return positions.to(torch.float64)[..., None] * inv_freq


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the halves of the last dimension of x by the angles whose cos, sin are given (RoFormer)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@dataclass
class Probe:
    """What one probed model call reports for Elastic-Cache's refresh test (Nguyen-Tri et al. 2025).

    layer: the layer whose attention mass is recorded. start: the first slot the call wrote.
    drift[l]: (B, T) 1 - cosine (mean over heads) of each key layer l wrote to the key it overwrote.
    attention: (B, Tk) attention mass per key slot at `layer`, averaged over heads and queries.
    """

    layer: int
    start: int | torch.Tensor = 0  # a tensor (B,) of per-row starts under continuous batching
    drift: dict[int, torch.Tensor] = field(default_factory=dict)
    attention: torch.Tensor | None = None


def key_drift(cache: KVCache, layer: int, start: int | torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, T) drift of fresh keys k (B, H, T, D) from the keys held at [start, start + T) (0 for empty slots).

    start may be a tensor (B,) of per-row starts (continuous batching).
    """
    if isinstance(start, torch.Tensor):
        held = cache.read(layer)[0]
        slots = start[:, None] + torch.arange(k.shape[2], device=k.device)
        filled = slots < held.shape[2]
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        old = held[rows, :, slots.clamp(max=max(held.shape[2] - 1, 0))].transpose(1, 2) if held.shape[2] else k
        return (1 - F.cosine_similarity(old, k, dim=-1).mean(1)).masked_fill(~filled, 0.0)
    drift = torch.zeros(k.shape[0], k.shape[2], dtype=k.dtype, device=k.device)
    old = cache.read(layer)[0][:, :, start : start + k.shape[2]]
    n = old.shape[2]
    if n > 0:
        drift[:, :n] = 1 - F.cosine_similarity(old, k[:, :, :n], dim=-1).mean(1)
    return drift


def store_and_read(
    cache: KVCache,
    layer: int,
    start: int | torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    write: bool,
    probe: Probe | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write k, v (B, H, T, D) to slots [start, start + T) and read every slot, or lay them over for this read only.

    start: one slot for every row, or a tensor (B,) of per-row starts (continuous batching).
    """
    if not write:
        return cache.read(layer, start, k, v)
    if probe is not None:  # the drift of the keys this write overwrites, before they are gone
        probe.drift[layer] = key_drift(cache, layer, start, k)
    cache.write(layer, start, k, v)
    return cache.read(layer)


def slot_mask(
    q_blocks: torch.Tensor, k_blocks: torch.Tensor, k_valid: torch.Tensor, block_causal: bool
) -> torch.Tensor:
    """(B, 1, Tq, Tk) bool: valid keys; block-causal: only keys of the same or earlier blocks.

    q_blocks: the block of each query (Tq,), or (B, Tq) when rows sit at different slots (continuous batching).
    """
    mask = k_valid[:, None, None, :]
    if block_causal:
        q = q_blocks[None, None, :, None] if q_blocks.dim() == 1 else q_blocks[:, None, :, None]
        mask = mask & (k_blocks[None, None, None, :] <= q)
    return mask


def call_slots(
    start: int | torch.Tensor, t: int, tk: int, cached: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots (Tq,) of a call's queries and (Tk,) of the keys it attends: every cached slot, or its own tokens."""
    if isinstance(start, torch.Tensor):
        raise ValueError("sparse attention takes one start slot for every row, not per-row starts")
    q_slots = torch.arange(start, start + t, device=device)
    return q_slots, torch.arange(tk, device=device) if cached else q_slots


def kv_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rope_q: tuple[torch.Tensor, torch.Tensor],
    rope_k: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor | None,
    cache: KVCache | None,
    layer: int,
    start: int | torch.Tensor,
    write: bool,
    probe: Probe | None = None,
    sparse: SparsePattern | None = None,
) -> torch.Tensor:
    """Attention of q (B, H, T, D) over this call's un-rotated k, v and the cached slots; returns (B, H, T, D).

    The T tokens sit at cache slots [start, start + T). rope_q / rope_k: cos, sin for the queries and for every
    key attended (the cached slots' positions when a cache is given). mask: bool, True = may attend.
    sparse: SparseD's pattern of this generation, which narrows the mask (and is selected at its step).
    """
    k_all, v_all = (k, v) if cache is None else store_and_read(cache, layer, start, k, v, write, probe)
    q, k_all = apply_rope(q, *rope_q), apply_rope(k_all, *rope_k)
    if sparse is not None:
        q_slots, k_slots = call_slots(start, q.shape[2], k_all.shape[2], cache is not None, q.device)
        sparse.select(layer, q, k_all, mask, q_slots, k_slots)
        mask = sparse.restrict(layer, mask, q, q_slots, k_slots)
    if probe is not None and probe.layer == layer:  # SDPA does not expose its weights: the explicit softmax
        att = (q @ k_all.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        probe.attention = att.mean(dim=(1, 2))
        return att @ v_all
    return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
