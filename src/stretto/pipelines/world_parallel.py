"""One world stream over the processes of a group: Ulysses sequence parallelism (`StreamSettings.parallel`).

Every rank runs the same driver: the same seed gives the same noise, and the model returns the whole velocity on
every rank (`WorldDiT(..., shard=)` slices the tokens, exchanges them around attention and gathers the output), so
every rank takes the same steps and yields the same frames. Each rank's KV cache holds n_head / world heads: KV
memory per rank shrinks with the world size.

Tokens are not padded: every model call's tokens must divide by the world size (a block's, or a frame's in
recompute mode, where the context grows frame by frame). Feature caches: each rank keeps its own slice's cached
features; a policy deciding from the step alone (`CachePolicy.step_only`) makes the same decision on every rank, so
the ranks skip the same blocks (and their all-to-alls). One reading the hidden states would decide from a
different slice on each rank and is refused.
"""

from __future__ import annotations

from typing import Any

from stretto import cache as feature_cache
from stretto.parallel import world_size

PARALLEL_MODES = ("ulysses",)


def check_ulysses(model: Any, parallel: str, mode: str, policy: feature_cache.CachePolicy | None) -> None:
    """Raise ValueError (one line: what, the bad value, what is allowed) if `model` cannot stream under `parallel`."""
    if parallel not in PARALLEL_MODES:
        modes = ", ".join(PARALLEL_MODES)
        raise ValueError(f"StreamSettings.parallel must be one of {modes} (or None), got {parallel!r}")
    kind = getattr(model, "kind", type(model).__name__)
    if kind != "world-dit":
        raise ValueError(f"parallel {parallel!r} splits the tokens of stretto's world model (world-dit), "
                         f"not a {kind!r}")  # fmt: skip
    world = world_size()
    if world < 2:
        raise ValueError(
            f"parallel {parallel!r} needs 2 or more processes, got world size {world}: launch with torchrun "
            "--nproc-per-node 2 and call stretto.parallel.init() (the CLI does: stream --parallel ulysses)"
        )
    c = model.config
    if c.n_head % world:
        raise ValueError(f"parallel {parallel!r} splits the attention heads over the ranks: n_head={c.n_head} must "
                         f"divide by the world size, got {world}")  # fmt: skip
    frames, what = (1, "frame") if mode == "recompute" else (c.frames_per_block, "block")
    tokens = frames * c.tokens_per_frame
    if tokens % world:
        raise ValueError(f"parallel {parallel!r} splits the {tokens} tokens of a {what} over the ranks without "
                         f"padding: they must divide by the world size, got {world}")  # fmt: skip
    if policy is None:
        policy = getattr(feature_cache.get_handle(model), "policy", None)
    name = getattr(policy, "name", None)
    if name is not None and not type(policy).step_only:
        raise ValueError(
            f"cache {name!r} decides from hidden states, which parallel {parallel!r} splits across ranks; "
            f"use one of {', '.join(feature_cache.step_only_policies())}"
        )
