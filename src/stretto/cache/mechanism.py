"""The cache attached to one model (`CacheHandle`) and the entry points stretto.cache re-exports.

`apply(model, policy)` takes over the model's block stack (block_list.py): the model's own loop over its
blocks makes one call, which lands in `CacheHandle._run`. That call works out each row's sigma and step
(step_context.py), gathers the rows' state per CFG branch (branch_state.py), lets the policy run the
`Stack` (stack.py), stores the state back and keeps the counts for `summary` (accounting.py). On a
diffusers model the pipeline's own cache hooks name the branch of each call and reset the state at the
end of a pipeline call (diffusers_bridge.py), so `apply(pipe, policy)` works without touching the pipeline.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from stretto.cache.accounting import KINDS, CacheSummary, StepRecord
from stretto.cache.block_list import BlockLists, BlockListSwap
from stretto.cache.branch_state import BranchStates
from stretto.cache.diffusers_bridge import DiffusersBridge
from stretto.cache.hidden import Hidden
from stretto.cache.policy import CachePolicy, parse_policy
from stretto.cache.stack import Call, Stack, block_arguments, carried_args
from stretto.cache.step_context import StepContext, sigma_schedule, step_index


class CacheHandle:
    """The cache attached to one model: the policy, the swapped block lists, per-branch state and the records."""

    def __init__(self, model: nn.Module, policy: CachePolicy, blocks: BlockLists | None = None):
        self.model = model
        self.policy = policy
        self.swap = BlockListSwap(model, blocks, self._run)
        self.owner = self.swap.owner
        self.blocks = self.swap.blocks
        policy.check_stack(len(self.blocks))
        self.signature = inspect.signature(self.blocks[0].forward)
        self.carried = carried_args(self.signature)  # what a block hands to the next, in output order
        self.bridge = DiffusersBridge(self.owner, self)
        self.context: StepContext | None = None
        self.reset()

    # -- attach / detach
    def attach(self) -> None:
        """Swap the block lists in and bridge the model's diffusers cache hooks."""
        self.swap.attach()
        self.bridge.attach()

    def detach(self) -> None:
        """Undo attach: the model is exactly as before."""
        self.bridge.detach()
        self.swap.detach()

    # -- state
    def reset(self, sigmas: torch.Tensor | Sequence[float] | None = None) -> None:
        """Forget all cached state and records. `sigmas`, the generation's schedule, keys step indices on sigma."""
        self.states = BranchStates()
        self.steps: dict[str, int] = {}  # model calls per branch (the step index when nothing else gives it)
        self.calls = 0
        self.records: list[StepRecord] = []
        self._pending: list[tuple[int, tuple[str, ...], torch.Tensor, torch.Tensor]] = []
        self.schedule = None if sigmas is None else sigma_schedule(sigmas)
        self.policy.reset()

    # -- one model call
    def _run(self, args: tuple, kwargs: dict) -> torch.Tensor | Hidden:
        h, extras = block_arguments(self.signature, self.carried, args, kwargs)
        batch = h[-1].shape[0]
        device = h[-1].device
        ctx = self.context or StepContext(sigma=None, branches=("cond",))
        branches = tuple(ctx.branches)
        if batch % len(branches):
            raise ValueError(f"batch of {batch} rows cannot be split into the branches {branches}")
        chunk = batch // len(branches)
        sigma = self.swap.timestep if ctx.sigma is None else ctx.sigma
        if sigma is None:
            raise ValueError(
                "the cache needs the step's sigma: wrap the model call in "
                "`with stretto.cache.step(model, sigma=..., branches=...)` or pass `timestep` to the model"
            )
        sigma = torch.as_tensor(sigma, dtype=torch.float32).to(device).flatten()
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
        if sigma.numel() != batch:
            raise ValueError(f"sigma has {sigma.numel()} values for a batch of {batch} rows; give 1 or {batch}")
        index, final = step_index(sigma, ctx, self.schedule, self.steps, branches, chunk)
        state, fresh = self.states.gather(branches, chunk)
        fresh = torch.tensor(fresh, device=device).repeat_interleave(chunk)
        counts = torch.zeros(batch, len(KINDS), device=device)
        stack = Stack(self.blocks, self.carried, extras, batch, counts, fresh, type(self.owner).__name__)
        out = self.policy.run(stack, h, Call(sigma=sigma, index=index, final=final, fresh=fresh, state=state))
        self.states.store(branches, state, chunk)
        for b in branches:
            self.steps[b] = self.steps.get(b, 0) + 1
        self._pending.append((self.calls, branches, sigma.reshape(len(branches), chunk)[:, 0], counts))
        self.calls += 1
        return out if len(out) > 1 else out[0]

    def summary(self) -> CacheSummary:
        """Counts per call and branch; reading them syncs with the device once."""
        for call, branches, sigma, counts in self._pending:
            per_branch = counts.reshape(len(branches), -1, len(KINDS)).mean(1).tolist()
            for b, s, c in zip(branches, sigma.tolist(), per_branch, strict=True):
                self.records.append(StepRecord(call, b, s, *c))
        self._pending = []
        return CacheSummary(self.policy.describe(), len(self.blocks), list(self.records))


# public entry points (re-exported by stretto.cache)
ATTR = "_stretto_cache"


def get_handle(model: nn.Module) -> CacheHandle | None:
    """The cache applied to `model`, or None."""
    return model.__dict__.get(ATTR)


def apply(model: nn.Module, policy: CachePolicy | str, blocks: BlockLists | None = None) -> CacheHandle:
    """Attach `policy` to the block stack of `model` (a stretto model, a diffusers transformer, or a pipeline)."""
    model = getattr(model, "transformer", None) if _is_pipeline(model) else model
    if isinstance(policy, str):
        policy = parse_policy(policy)
    if not isinstance(policy, CachePolicy):
        raise TypeError(f"policy must be a stretto.cache policy or a string like 'fora:interval=2', got {policy!r}")
    if get_handle(model) is not None:
        raise RuntimeError(
            f"a cache is already applied to this {type(model).__name__}; call stretto.cache.remove() first"
        )
    handle = CacheHandle(model, policy, blocks)
    handle.attach()
    model.__dict__[ATTR] = handle
    handle.owner.__dict__[ATTR] = handle  # step() / remove() also work on the inner diffusers model
    return handle


def remove(model: nn.Module) -> None:
    """Detach the cache from `model`; the model is exactly as before apply()."""
    model = getattr(model, "transformer", None) if _is_pipeline(model) else model
    handle = get_handle(model)
    if handle is None:
        raise RuntimeError(f"no cache is applied to this {type(model).__name__}; nothing to remove")
    handle.detach()
    handle.model.__dict__.pop(ATTR, None)
    handle.owner.__dict__.pop(ATTR, None)


def reset(model: nn.Module, sigmas: torch.Tensor | Sequence[float] | None = None) -> None:
    """Start a new generation: drop all cached state (no-op without a cache). `sigmas` is its schedule."""
    handle = get_handle(model)
    if handle is not None:
        handle.reset(sigmas)


@contextmanager
def applied(
    model: nn.Module, policy: CachePolicy | str | None, blocks: BlockLists | None = None
) -> Iterator[CacheHandle | None]:
    """Apply `policy` (a policy, a '--cache' string, or None for no cache) for the `with` block, then remove it."""
    if policy is None:
        yield None
        return
    handle = apply(model, policy, blocks)
    try:
        yield handle
    finally:
        remove(model)


@contextmanager
def step(
    model: nn.Module,
    sigma: float | torch.Tensor | None,
    branches: Sequence[str] = ("cond",),
    index: int | None = None,
) -> Iterator[None]:
    """Declare the sigma of the model calls inside and which equal row chunks are which branch.

    A no-op when no cache is applied, so callers may always use it."""
    handle = get_handle(model)
    if handle is None:
        yield
        return
    if isinstance(branches, str) or not branches or len(set(branches)) != len(branches):
        raise ValueError(f"branches must be a non-empty sequence of distinct names, got {branches!r}")
    previous, handle.context = handle.context, StepContext(sigma, tuple(branches), index)
    try:
        yield
    finally:
        handle.context = previous


def summary(model: nn.Module) -> CacheSummary:
    """Computed / reused / forecast block evaluations per call and branch since the last reset."""
    handle = get_handle(model)
    if handle is None:
        raise RuntimeError(f"no cache is applied to this {type(model).__name__}")
    return handle.summary()


def _is_pipeline(obj) -> bool:
    return not isinstance(obj, nn.Module) and isinstance(getattr(obj, "transformer", None), nn.Module)
