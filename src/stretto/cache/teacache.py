"""TeaCache: "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model" (Liu et al., CVPR 2025).

The timestep-modulated input of block 0 changes between steps roughly as much as the stack's output does,
and it is available before any block runs. Per row, its relative L1 change mean|m - m_prev| / mean|m_prev|
against the previous call of the same branch is rescaled by a per-model polynomial (`coefficients`, fitted
offline by `stretto calibrate cache teacache`, see stretto.tune.calibrate) into an estimate of the output residual's
change, and accumulated over consecutive reused steps. While the accumulator stays below `threshold` the
whole stack's residual cached on the last computed step is added to the input; otherwise the stack is
computed and the accumulator reset. `warmup` early steps, the final step (`final`) and rows without stored
state always compute. Decisions are per row; `joint=true` takes one for the whole call from the batch's mean
change, as `dbcache:...,joint=true` does: with CFG in one batch both branches then compute or reuse together
(per row, on shapes-flux 46 of 50 steps compute a part of the rows, each a gather, a scatter and a smaller
batch).

Without coefficients the raw relative L1 change is accumulated (the identity polynomial). A negative
rescaled value (the polynomial extrapolated outside the range it was fitted on) counts as zero, so
threshold 0 always computes.

The modulated input (`modulated_input`) is what the block's adaptive norm produces: diffusers Flux double
blocks and SD3 blocks `norm1(hidden_states, emb=temb)`, Flux single blocks `norm(hidden_states, emb=temb)`,
DiT-style blocks (AdaLayerNormZero with its own timestep / class-label embedding) `norm1(hidden_states,
timestep, class_labels)`. Any other block (Wan, stretto's own models, ...) falls back to the raw image-token
input of the stack; calibrate the coefficients for it in the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from diffusers.models.normalization import AdaLayerNormZero, AdaLayerNormZeroSingle, SD35AdaLayerNormZeroX
from torch import nn

from stretto.cache.hidden import Hidden
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack


def modulated_input(block: nn.Module, hidden_states: torch.Tensor, extras: dict) -> torch.Tensor:
    """The timestep-modulated input of `block` (TeaCache's signal), or `hidden_states` for unknown blocks."""
    temb = extras.get("temb")
    norm = getattr(block, "norm1", None)
    if isinstance(norm, (AdaLayerNormZero, SD35AdaLayerNormZeroX)) and temb is not None:  # Flux double, SD3
        return norm(hidden_states, emb=temb)[0]
    if isinstance(norm, AdaLayerNormZero) and norm.emb is not None and extras.get("timestep") is not None:  # DiT
        return norm(hidden_states, extras["timestep"], extras.get("class_labels"), hidden_dtype=hidden_states.dtype)[0]
    if isinstance(getattr(block, "norm", None), AdaLayerNormZeroSingle) and temb is not None:  # Flux single
        return block.norm(hidden_states, emb=temb)[0]
    return hidden_states


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, mean|a - b| / mean|b| (inf or NaN where b is all zeros)."""
    return (a - b).abs().flatten(1).mean(1) / b.abs().flatten(1).mean(1)


def parse_coefficients(text: str) -> list[float]:
    """'c_k/.../c_0' (highest power first) as floats; raises ValueError naming the field for anything else."""
    try:
        values = [float(c) for c in text.split("/")] if text.strip() else []
    except ValueError:
        values = None
    if values is None or not all(math.isfinite(c) for c in values):
        raise ValueError(
            "TeaCache.coefficients must be finite numbers separated by '/', highest power first as in "
            f"numpy.polyval (e.g. '2.5/-0.3/0.01'), or empty for the raw relative L1 change; got {text!r}"
        )
    return values


def polyval(coefficients: list[float], x: torch.Tensor) -> torch.Tensor:
    """numpy.polyval on a tensor (Horner's rule); no coefficients is the identity."""
    if not coefficients:
        return x
    y = torch.zeros_like(x)
    for c in coefficients:
        y = y * x + c
    return y


@register
@dataclass
class TeaCache(CachePolicy):
    """Reuse the stack residual while the accumulated, rescaled change of block 0's modulated input is small."""

    name = "teacache"
    threshold: float = bounded(0.2, 0.0, 100.0, "recompute when the accumulated rescaled change reaches this")
    coefficients: str = field(
        default="",
        metadata={"doc": "rescaling polynomial 'c_k/.../c_0', highest power first; empty: raw relative L1"},
    )
    warmup: int = bounded(1, 0, 10_000, "full steps at the start")
    final: bool = bounded(True, 0, 1, "always compute the final step")
    joint: bool = bounded(False, 0, 1, "one decision for all rows, from the batch's mean change (as DBCache's)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.coefficients, str):
            raise ValueError(f"TeaCache.coefficients must be text like '2.5/-0.3/0.01', got {self.coefficients!r}")
        self._coefficients = parse_coefficients(self.coefficients)

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        state = call.state
        m = modulated_input(stack.blocks[0], stack.main(h), stack.extras)
        prev = state.get("modulated")
        if prev is None:
            compute = torch.ones_like(call.fresh)
            acc = torch.zeros_like(call.sigma)
        else:
            pair = (m.reshape(1, -1), prev.reshape(1, -1)) if self.joint else (m, prev)  # joint: the batch as one row
            change = polyval(self._coefficients, relative_l1(*pair).float()).clamp(min=0)  # NaN stays NaN
            change = change.expand_as(call.sigma)
            acc = state["acc"] + change
            compute = ~(acc < self.threshold) | (call.index < self.warmup) | call.fresh  # NaN: compute
            if self.final:
                compute |= call.final
            if self.joint:
                compute = compute.any().expand_as(compute)
        out = stack.compute_or_reuse(h, 0, stack.num_blocks, compute, state, "residual")
        state["acc"] = torch.where(compute, torch.zeros_like(acc), acc)
        state["modulated"] = m
        return out
