"""One image generation over the processes of a group: CFG-parallel, or Ulysses sequence parallel.

CFG-parallel (as in xDiT): the conditional branch on rank 0, the unconditional on rank 1, joined every step.

Each rank runs the model on its branch's rows only and all-gathers the velocities; both ranks then form
the same guided velocity and take the same sampler step, so the state never drifts apart and nothing but
one (N, 3, 32, 32) velocity per rank crosses the wire per model call.

Feature caches: the mechanism keeps policy state per CFG branch (cache/branch_state.py) and every per-row
policy (fora, taylor, teacache, firstblock, dbcache, magcache, ...) decides each row from that row's own
state. A batched single-process call already lets a cond row skip while its uncond row computes, so rank 0
makes exactly the single-process decisions of the cond rows and rank 1 those of the uncond rows: the ranks
may decide differently, by design, and the image stays the single-process one. Forcing one decision for
both (an all-reduce) would change the image. Token-subset policies (toca, ras) pick one token subset from
all rows of a call, so split branches would pick different subsets than one process does: they are refused.

Ulysses (stretto.parallel.ulysses): every rank runs the whole batched CFG call on its slice of the tokens.
A policy that reads the hidden states (teacache, firstblock, ...) would then decide from a different slice
on each rank, so only policies that decide from the step index alone (fora, taylor) run under Ulysses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from stretto import cache as feature_cache
from stretto.parallel import AllGather, enable_ulysses, rank, world_size

PARALLEL_MODES = ("cfg", "ulysses")
BRANCHES = ("cond", "uncond")  # rank i runs BRANCHES[i]
ONE_SUBSET_POLICIES = ("toca", "ras")  # choose one token subset across all rows of a call (cache/toca.py)


def prepare_parallel(model, parallel: str, guidance: float) -> None:
    """Raise ValueError naming a bad mode, world size or guidance; for Ulysses, shard the model's transformer."""
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL_MODES)} (or None), got {parallel!r}")
    if parallel == "ulysses":
        if world_size() < 2:
            raise ValueError(f"parallel 'ulysses' needs 2 or more processes, got world size {world_size()}")
        enable_ulysses(getattr(model, "transformer", model))
        return
    if world_size() != 2:
        raise ValueError(
            f"parallel 'cfg' runs the two CFG branches on 2 processes, got world size {world_size()} "
            "(torchrun --nproc-per-node 2, after stretto.parallel.init())"
        )
    if guidance in (0.0, 1.0):
        raise ValueError(f"parallel 'cfg' needs both CFG branches: guidance must not be 0 or 1, got {guidance}")


def check_policy(model, parallel: str, policy: feature_cache.CachePolicy | None) -> None:
    """Raise ValueError if `policy` (or the cache applied to `model`) cannot give the single-process image."""
    if policy is None:
        policy = getattr(feature_cache.get_handle(model), "policy", None)
    name = getattr(policy, "name", None)
    if parallel == "ulysses" and name is not None and not type(policy).step_only:
        raise ValueError(
            f"cache {name!r} decides from hidden states, which parallel 'ulysses' splits across ranks; "
            f"use one of {', '.join(feature_cache.step_only_policies())}"
        )
    if parallel == "cfg" and name in ONE_SUBSET_POLICIES:
        allowed = sorted(set(feature_cache.POLICIES) - set(ONE_SUBSET_POLICIES))
        raise ValueError(
            f"cache {name!r} picks one token subset across both CFG branches and cannot run with parallel 'cfg'; "
            f"use one of {', '.join(allowed)}"
        )


def cfg_parallel_denoiser(model, prompts: Sequence[str], guidance: float, stats, gather: AllGather) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022) with this rank's branch computed and the other gathered."""
    branch = BRANCHES[rank()]
    states = model.encode_prompts(list(prompts) if branch == "cond" else [""] * len(prompts))

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        stats.model_calls += 1
        with feature_cache.step(model, sigma, branches=(branch,)):
            v = model(x, sigma, states)
        v_cond, v_uncond = gather(v)
        return v_uncond + guidance * (v_cond - v_uncond)

    return denoiser
