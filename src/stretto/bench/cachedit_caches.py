"""cache-dit's caches (PyPI `cache-dit`, the `[compare]` extra) on a stretto model's diffusers Flux transformer.

stretto's benchmark runs them on the same model, sampler, prompts and seeds as its own policies. How they
are attached, and why:
- A `BlockAdapter` over the transformer with `ForwardPattern.Pattern_1` (Flux blocks take `hidden_states,
  encoder_hidden_states` and return them as `(encoder, hidden)`). As cache-dit's own Flux adapter does by
  default, the double- and single-stream blocks form one stack (the single-stream list is left empty while
  the stack runs), so DBCache's first-n / last-m blocks count over all blocks, as stretto's `dbcache` does.
- No pipeline is given, so cache-dit keeps one persistent context per transformer. It starts a new
  generation only when a call comes past `num_inference_steps`, so the first call of the next generation
  would reuse the old state: `generate` refreshes the context before every generation.
- stretto's pipeline runs both CFG branches in one batched call; cache-dit gets that call as one step
  (`enable_separate_cfg=False`), so it takes one cache decision per call for all rows and both branches.
- Steps count model calls: the steps computation masks assume one call per sampler step (Euler, DPM++(2M)).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

import stretto
from stretto.pipelines.image import Generation

CACHES = ("dbcache", "dbcache+taylorseer", "stepmask", "stepmask+taylorseer")
CALIBRATOR_KEYS = ("taylorseer_order",)  # params that configure TaylorSeer, not DBCache
MASK_KEYS = ("mask_policy", "compute_every")  # params that build `steps_computation_mask`
INSTALL_HINT = "pip install 'stretto[compare]' (cache-dit)"


def available() -> bool:
    """Whether cache-dit is installed."""
    return importlib.util.find_spec("cache_dit") is not None


def settings(steps: int) -> list[tuple[str, dict]]:
    """cache-dit's DBCache, DBCache + TaylorSeer and step masks at 3-4 settings each (its own field names).

    DBCache here is F1B0 (decide from the first block, no corrector blocks), the setting cache-dit pairs with
    TaylorSeer; one F1B1 row shows the corrector. Step masks: cache-dit's predefined policies, and a mask
    computing every k-th step after the warm-up, with the masked steps always cached ("static")."""
    db = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "max_warmup_steps": 4}  # what varies comes first
    out = [("dbcache", {"residual_diff_threshold": t, **db}) for t in (0.1, 0.2, 0.4)]
    out += [("dbcache", {"residual_diff_threshold": 0.2, **db, "Bn_compute_blocks": 1})]
    out += [
        ("dbcache+taylorseer", {"residual_diff_threshold": t, "taylorseer_order": 1, **db}) for t in (0.1, 0.2, 0.4)
    ]
    static = {**db, "steps_computation_policy": "static"}
    if steps >= 8 or steps in (4, 6):  # the step counts cache-dit's predefined masks cover
        out += [("stepmask", {"mask_policy": p, **static}) for p in ("slow", "medium", "fast")]
    out += [("stepmask+taylorseer", {"compute_every": k, "taylorseer_order": 1, **static}) for k in (3, 4, 6, 10)]
    return out


def steps_mask(params: dict, steps: int) -> list[int] | None:
    """The `steps_computation_mask` the params ask for: 1 computes the step, 0 caches it."""
    import cache_dit

    if "mask_policy" in params:
        return cache_dit.steps_mask(total_steps=steps, mask_policy=params["mask_policy"])
    if "compute_every" in params:
        k, warmup = int(params["compute_every"]), int(params.get("max_warmup_steps", 0))
        if k < 1:
            raise ValueError(f"compute_every must be >= 1, got {k}")
        bins = -(-max(steps - warmup, 0) // k)  # after the warm-up: cache k - 1 steps, compute one, repeated
        mask = cache_dit.steps_mask(
            compute_bins=[max(warmup, 1)] + [1] * bins, cache_bins=[k - 1] * bins, total_steps=steps
        )
        mask[-1] = 1  # the final step computes, as in cache-dit's predefined masks
        return mask
    return None


def make_configs(name: str, params: dict, steps: int):
    """cache-dit's (DBCacheConfig, TaylorSeerCalibratorConfig or None) for cache `name` with `params`."""
    from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

    if name not in (*CACHES, "none"):
        raise ValueError(f"unknown cache-dit cache {name!r}; choose one of {', '.join(CACHES)}")
    if ("taylorseer" in name) != ("taylorseer_order" in params):
        raise ValueError(f"cache-dit cache {name!r}: give taylorseer_order exactly when the name has +taylorseer")
    if name.startswith("stepmask") != any(k in params for k in MASK_KEYS):
        raise ValueError(f"cache-dit cache {name!r}: give one of {MASK_KEYS} exactly for a stepmask cache")
    fields = {k: v for k, v in params.items() if k not in CALIBRATOR_KEYS + MASK_KEYS}
    if name == "none":  # every step computes: the adapter's own path with nothing cached
        fields = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.0,
                  "max_warmup_steps": steps, **fields}  # fmt: skip
    config = DBCacheConfig(num_inference_steps=steps, enable_separate_cfg=False, **fields)
    config.steps_computation_mask = steps_mask(params, steps)
    calibrator = None
    if "taylorseer_order" in params:
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=int(params["taylorseer_order"]))
    return config, calibrator


def block_adapter(transformer: nn.Module):
    """A cache-dit `BlockAdapter` over a diffusers Flux transformer: all blocks as one `Pattern_1` stack."""
    from cache_dit import BlockAdapter, ForwardPattern

    if not hasattr(transformer, "single_transformer_blocks"):
        raise ValueError(f"the cache-dit engine supports diffusers Flux transformers, not {type(transformer).__name__}")
    blocks = nn.ModuleList([*transformer.transformer_blocks, *transformer.single_transformer_blocks])
    return BlockAdapter(
        transformer=transformer,
        blocks=blocks,
        blocks_name="transformer_blocks",
        dummy_blocks_names=["single_transformer_blocks"],  # empty while the stack above runs them all
        forward_pattern=ForwardPattern.Pattern_1,
        check_forward_pattern=True,
    )


@contextmanager
def applied(net, name: str, params: dict | None, steps: int) -> Iterator[None]:
    """cache-dit's cache `name` on `net.transformer` for the `with` block, then removed."""
    import cache_dit

    config, calibrator = make_configs(name, dict(params or {}), steps)
    with quiet_cache_dit():
        adapter = block_adapter(net.transformer)
        cache_dit.enable_cache(adapter, cache_config=config, calibrator_config=calibrator)
    try:
        yield
    finally:
        with quiet_cache_dit():
            cache_dit.disable_cache(adapter)


def generate(net, prompts: Sequence[str], *, steps: int, sampler: str, guidance: float, seeds) -> Generation:
    """`stretto.generate` (no stretto cache) with cache-dit's context refreshed first: a fresh generation."""
    import cache_dit

    with quiet_cache_dit():
        cache_dit.refresh_context(net.transformer)
        return stretto.generate(net, prompts, steps=steps, sampler=sampler, guidance=guidance, seeds=seeds)


@torch.no_grad()
def generate_with(net, prompts: Sequence[str], name: str, params: dict | None, **kw) -> Generation:
    """One generation with cache-dit's cache `name` applied for it."""
    with applied(net, name, params, kw["steps"]):
        return generate(net, prompts, **kw)


@contextmanager
def quiet_cache_dit() -> Iterator[None]:
    """cache-dit logs its configs and statistics at info level on every call; keep its warnings and errors."""
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("cache_dit")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
