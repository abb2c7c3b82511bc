"""Cache modes and refresh policies for masked-diffusion decoding: when stale K/V is recomputed.

Cache specs are written "mode:key=value,...":
- "none": every step runs the whole canvas (LLaDA).
- "prefix": at a block start one full pass fills the cache; later steps run block + suffix against the cached
  prefix (Fast-dLLM, Wu et al. 2025).
- "dual": the same, but later steps run only the block, overwrite its slots and attend to the stale prefix and
  suffix (Fast-dLLM's DualCache).
- "block": block-causal models only: the prompt and every finished block are committed once with a clean pass,
  and steps run only the block. Exact (BD3-LM, Fast-dLLM v2). "block:fuse" writes a finished block's clean K/V
  in the first pass of the next block instead of a separate commit pass (one model call fewer per block;
  exact, since the finished block's queries see only itself and earlier blocks).
Options for prefix and dual:
- every=N: also a full refresh every N steps inside a block (periodic refresh).
- drift=b[,layer=l]: Elastic-Cache (Nguyen-Tri et al. 2025): a full refresh when the key of the most-attended
  settled token of the block drifted (1 - cosine to its previous value) by more than b at some layer >= l.
- delay: dKV-Cache's delayed caching (Ma et al. 2025) at block granularity: a block's K/V is cached on the
  step after it is finished (the next block start recomputes only the previous block onward, not the whole
  prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stretto.models.kv_cache import KVCache
from stretto.pipelines.text_rules import parse_options

CACHE_MODES = ("none", "prefix", "dual", "block")
MODES_FOR = {"masked-lm": ("none", "prefix", "dual"), "block-lm": ("none", "block")}
_OPTIONS = {"every": int, "drift": float, "layer": int, "delay": bool, "fuse": bool}


@dataclass
class CacheSpec:
    """A cache mode and its refresh options (see the module docstring)."""

    mode: str = "dual"
    every: int = 0
    drift: float = 0.0
    layer: int = 0
    delay: bool = False
    fuse: bool = False

    def __post_init__(self):
        if self.mode not in CACHE_MODES:
            raise ValueError(f"unknown cache {self.mode!r}; allowed: {list(CACHE_MODES)} (e.g. 'dual:every=4')")
        if self.every < 0:
            raise ValueError(f"cache option every must be >= 0 (0 = only at block starts), got {self.every}")
        if self.drift < 0 or self.drift > 2:
            raise ValueError(f"cache option drift must be in [0, 2] (0 = off), got {self.drift}")
        if self.layer < 0:
            raise ValueError(f"cache option layer must be >= 0, got {self.layer}")
        if self.mode in ("none", "block") and (self.every or self.drift or self.delay):
            raise ValueError(f"cache {self.mode!r} takes no refresh options (every, drift, delay apply to prefix/dual)")
        if self.fuse and self.mode != "block":
            raise ValueError(f"cache option fuse applies to the block cache only, not {self.mode!r}")

    def check_model(self, kind: str, n_layer: int) -> None:
        allowed = MODES_FOR.get(kind, CACHE_MODES)
        if self.mode not in allowed:
            raise ValueError(f"cache {self.mode!r} does not apply to a {kind}; allowed: {list(allowed)}")
        if self.layer >= n_layer:
            raise ValueError(f"cache option layer must be in [0, {n_layer}), got {self.layer}")

    def __str__(self) -> str:
        opts = [f"every={self.every}"] * bool(self.every) + [f"drift={self.drift:g}"] * bool(self.drift)
        opts += (
            [f"layer={self.layer}"] * bool(self.drift and self.layer) + ["delay"] * self.delay + ["fuse"] * self.fuse
        )
        return self.mode + (":" + ",".join(opts) if opts else "")


def parse_cache(spec) -> CacheSpec:
    if isinstance(spec, CacheSpec):
        return spec
    if spec is None:
        spec = "none"
    mode, _, opts = str(spec).partition(":")
    mode = mode.strip()
    if mode not in CACHE_MODES:
        raise ValueError(f"unknown cache {mode!r}; allowed: {list(CACHE_MODES)} (e.g. 'dual:every=4')")
    return CacheSpec(mode, **parse_options(opts, _OPTIONS, f"cache {mode!r}"))


class RefreshPolicy:
    """Decides, step by step inside a block, whether the cached K/V is recomputed by a full pass."""

    def __init__(self, spec: CacheSpec, n_layer: int):
        self.spec, self.n_layer = spec, n_layer
        self.hot: torch.Tensor | None = None  # per row: the most-attended settled slot of the last step

    def prepare(self, cache: KVCache) -> None:
        if self.spec.drift:
            cache.track_drift = True
            cache.attention_layer = self.n_layer - 1

    def start_block(self) -> None:
        self.hot = None

    def periodic(self, step: int) -> bool:
        """A full refresh at the block start, and every `every` steps if set."""
        return step == 0 or (self.spec.every > 0 and step % self.spec.every == 0)

    def drifted(self, cache: KVCache) -> bool:
        """Elastic-Cache's test, on the K/V this step just overwrote: did the last hot token move too far?"""
        if not self.spec.drift or self.hot is None:
            return False
        rows = torch.arange(self.hot.shape[0])
        worst = 0.0
        for layer in range(self.spec.layer, self.n_layer):
            start, drift = cache.drift[layer]
            worst = max(worst, float(drift[rows, self.hot - start].max()))
        return worst > self.spec.drift

    def observe(self, cache: KVCache, lo: int, hi: int, settled: torch.Tensor) -> None:
        """Remember the most-attended settled slot in [lo, hi) (settled: (B, hi - lo), final tokens)."""
        if not self.spec.drift or cache.attention is None:
            return
        mass = cache.attention[:, lo:hi].masked_fill(~settled, -1.0)
        hot = mass.argmax(dim=-1)
        self.hot = (hot + lo) if bool(settled.any(dim=-1).all()) else None
