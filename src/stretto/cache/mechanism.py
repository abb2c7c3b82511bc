"""The cache attached to one model (`CacheHandle`) and the entry points stretto.cache re-exports.

`apply(model, policy)` takes over the model's block stack (block_list.py): the model's own loop over its
blocks makes one call, which lands in `CacheHandle._run`. That call works out each row's sigma and step
(step_context.py), gathers the rows' state per CFG branch (branch_state.py), lets the policy run the
`Stack` (stack.py), stores the state back and keeps the counts for `summary` (accounting.py). How the
blocks of a diffusers class are called is its table entry (families.py); a diffusers UNet gets its own
small mechanism instead (unet.py: DeepCache, Faster Diffusion). `apply(pipe, policy)` caches every denoiser of
the pipeline and wraps its call (pipeline_call.py): fresh state at every call, the step schedule from its
scheduler; the model's own diffusers cache hooks name the branch of each call (diffusers_bridge.py).

Every sigma the cache sees is a noise level in the model's own timestep scale (Flux 0..1, SD3 / DiT / Wan
0..1000; for a model whose time counts up, Lumina2 / Mochi, top - timestep): the model call's timestep
(keyword or positional), or what `step(...)` says; the schedule given to `reset` is in the same scale, and
a loop starting outside it fails instead of silently computing every block.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from stretto.cache.accounting import KINDS, CacheSummary, StepRecord
from stretto.cache.block_calls import BlockCalls
from stretto.cache.block_list import BlockLists, BlockListSwap
from stretto.cache.branch_state import BranchStates
from stretto.cache.diffusers_bridge import DiffusersBridge
from stretto.cache.hidden import Hidden
from stretto.cache.pipeline_call import PipelineCall
from stretto.cache.policy import CachePolicy, parse_policy
from stretto.cache.stack import Call, Stack
from stretto.cache.step_context import StepContext, check_scale, sigma_schedule, step_index
from stretto.cache.unet import UNetHandle, held_unet, is_unet


class CacheHandle:
    """The cache attached to one model: the policy, the swapped block lists, per-branch state and the records."""

    def __init__(self, model: nn.Module, policy: CachePolicy, blocks: BlockLists | None = None):
        self.model = model
        self.policy = policy
        self.swap = BlockListSwap(model, blocks, self._run)
        self.owner = self.swap.owner
        self.family = self.swap.family
        self.blocks = self.swap.blocks
        self.sizes = tuple(len(lst) for lst in self.swap.originals)
        if policy.unet:
            raise ValueError(
                f"{policy.name} runs on UNets (UNet2DModel, UNet2DConditionModel), not on {type(self.owner).__name__}"
            )
        policy.check_stack(len(self.blocks))
        self.signature = inspect.signature(self.blocks[0].forward)
        self.bridge = DiffusersBridge(self.owner, self)
        self.pipeline: PipelineCall | None = None  # set when applied to a pipeline
        self.holders: list = []  # the objects apply() marked with this handle
        self.group: list = [self]  # the handles of one pipeline's denoisers
        self.context: StepContext | None = None
        self.reset()

    # -- attach / detach
    def attach(self) -> None:
        """Swap the block lists in and bridge the model's diffusers cache hooks."""
        self.swap.attach()
        self.bridge.attach()

    def detach(self) -> None:
        """Undo attach: the model (and the pipeline) are exactly as before."""
        if self.pipeline is not None:
            self.pipeline.detach()
        self.bridge.detach()
        self.swap.detach()

    # -- state
    def reset(self, sigmas: torch.Tensor | Sequence[float] | None = None) -> None:
        """Forget all cached state and records. `sigmas`, the generation's schedule in the model's timestep scale,
        keys step indices on sigma."""
        self.calls = 0
        self.records: list[StepRecord] = []
        self._pending: list[tuple[int, tuple[str, ...], torch.Tensor, torch.Tensor]] = []
        keys = None if sigmas is None else self.family.noise_level(torch.as_tensor(sigmas, dtype=torch.float32))
        self.reset_state(keys)

    def reset_state(self, keys: torch.Tensor | None = None, evaluated: bool = False, stale: bool = False) -> None:
        """Start a new denoising loop: forget the cached state, keep the records. `keys` is its schedule as noise
        levels; `evaluated`: every entry is a model call (a scheduler's timesteps, 0 included); `stale`: drop the
        records at the next model call (a pipeline ended; the next call starts another generation)."""
        self.states = BranchStates()
        self.steps: dict[str, int] = {}  # model calls per branch (the step index when nothing else gives it)
        self.schedule = None if keys is None else sigma_schedule(keys, keep_zero=evaluated)
        self._started = False  # the loop's first call is checked against the schedule's scale
        self._stale = stale
        self.policy.reset()

    def next_loop(self, sigmas: torch.Tensor | Sequence[float] | None = None, records: bool = True) -> None:
        """Start the next denoising loop of the same generation (a stream's next block): restart the schedule, drop
        the cached state unless the policy carries it across loops (`across_loops`); `records=False` also drops
        the records (an endless stream whose counts nobody reads would keep one per call)."""
        keys = None if sigmas is None else self.family.noise_level(torch.as_tensor(sigmas, dtype=torch.float32))
        states = self.states
        self.reset_state(keys)
        if self.policy.across_loops:
            self.states = states
        if not records:
            self.calls, self.records, self._pending = 0, [], []

    # -- one model call
    def _run(self, args: tuple, kwargs: dict) -> torch.Tensor | Hidden:
        name = type(self.owner).__name__
        calls = BlockCalls(self.family, self.sizes, self.signature, args, kwargs, self.swap.module_outputs, name)
        h = calls.h
        main = next(t for t in reversed(h) if t is not None)
        batch, device = main.shape[0], main.device
        if self._stale:
            self.calls, self.records, self._pending, self._stale = 0, [], [], False
        ctx = self.context or StepContext(sigma=None, branches=("cond",))
        branches = tuple(ctx.branches)
        if batch % len(branches):
            raise ValueError(f"batch of {batch} rows cannot be split into the branches {branches}")
        chunk = batch // len(branches)
        sigma = self._sigma(ctx, batch, device)
        index, final = step_index(sigma, ctx, self.schedule, self.steps, branches, chunk)
        state, fresh = self.states.gather(branches, chunk)
        fresh = torch.tensor(fresh, device=device).repeat_interleave(chunk)
        counts = torch.zeros(batch, len(KINDS), device=device)
        stack = Stack(self.blocks, calls, batch, counts, fresh, name)
        out = self.policy.run(stack, h, Call(sigma=sigma, index=index, final=final, fresh=fresh, state=state))
        self.states.store(branches, state, chunk)
        for b in branches:
            self.steps[b] = self.steps.get(b, 0) + 1
        self._pending.append((self.calls, branches, sigma.reshape(len(branches), chunk)[:, 0], counts))
        self.calls += 1
        return out if len(out) > 1 else out[0]

    def _sigma(self, ctx: StepContext, batch: int, device: torch.device) -> torch.Tensor:
        """Each row's noise level for this call, checked against the schedule's scale."""
        given = self.swap.timestep if ctx.sigma is None else ctx.sigma
        if given is None:
            raise ValueError(
                f"the cache needs the step's sigma: pass {type(self.owner).__name__} its `{self.family.timestep}` or "
                "wrap the call in `with stretto.cache.step(model, sigma=..., branches=...)`"
            )
        sigma = self.family.noise_level(torch.as_tensor(given, dtype=torch.float32).to(device).flatten())
        if sigma.numel() == 1:
            sigma = sigma.expand(batch)
        elif sigma.numel() % batch == 0 and sigma.numel() > batch:
            sigma = sigma.reshape(batch, -1).amax(1)  # a timestep per frame: the row's noisiest frame keys it
        if sigma.numel() != batch:
            raise ValueError(f"sigma has {sigma.numel()} values for a batch of {batch} rows; give 1 or {batch}")
        if self.schedule is not None and not self._started:
            self._started = True  # one check (one host sync) per denoising loop
            check_scale(self.schedule, sigma, type(self.owner).__name__, self.family.timestep)
        return sigma

    def schedule_keys(self, timesteps: torch.Tensor) -> torch.Tensor:
        """A pipeline scheduler's timesteps as the noise levels the model will be called at (families.py)."""
        return self.family.schedule_keys(timesteps, getattr(self.owner, "config", None))

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


def get_handle(model: nn.Module) -> CacheHandle | UNetHandle | None:
    """The cache applied to `model`, or None."""
    return model.__dict__.get(ATTR)


def apply(model: nn.Module, policy: CachePolicy | str, blocks: BlockLists | None = None) -> CacheHandle | UNetHandle:
    """Attach `policy` to the block stack of `model` (a stretto model, a diffusers transformer or UNet, or a
    pipeline: then every denoiser it holds, e.g. both of Wan 2.2's experts, and a wrapper around its call)."""
    if isinstance(policy, str):
        policy = parse_policy(policy)
    if not isinstance(policy, CachePolicy):
        raise TypeError(f"policy must be a stretto.cache policy or a string like 'fora:interval=2', got {policy!r}")
    pipe = model if _is_pipeline(model) else None
    models = _denoisers(pipe) if pipe is not None else [model]
    for holder in (pipe, *models):
        if holder is not None and get_handle(holder) is not None:
            raise RuntimeError(
                f"a cache is already applied to this {type(holder).__name__}; call stretto.cache.remove() first"
            )
    # a fresh copy of the policy per denoiser: a policy may keep per-run data (MagCache's calibration)
    handles = [_attach(m, policy if i == 0 else copy.deepcopy(policy), blocks) for i, m in enumerate(models)]
    first = handles[0]
    if pipe is not None:
        first.pipeline = PipelineCall(pipe, handles)
        first.pipeline.attach()
    for handle in handles:
        handle.group = handles  # removed together; summary(pipe) reports them all
        # step() / summary() / remove() work on the pipeline, the model and the inner diffusers model alike
        marked = ((pipe,) if handle is first else ()) + (handle.model, handle.owner)
        handle.holders = [h for h in marked if h is not None]
        for holder in handle.holders:
            holder.__dict__[ATTR] = handle
    return first


def _attach(model: nn.Module, policy: CachePolicy, blocks: BlockLists | None) -> CacheHandle | UNetHandle:
    unet = model if is_unet(model) else held_unet(model)
    if unet is not None:
        if blocks is not None:
            raise ValueError(f"{type(unet).__name__} is a UNet: the cache runs its blocks itself; blocks= is not used")
        handle = UNetHandle(model, policy, unet)
    else:
        handle = CacheHandle(model, policy, blocks)
    handle.attach()
    return handle


def remove(model: nn.Module) -> None:
    """Detach the cache from `model` (or its pipeline, or any of its denoisers); all are exactly as before apply()."""
    handle = get_handle(model)
    if handle is None:
        raise RuntimeError(f"no cache is applied to this {type(model).__name__}; nothing to remove")
    for member in handle.group:
        member.detach()
        for holder in member.holders:
            holder.__dict__.pop(ATTR, None)


def reset(model: nn.Module, sigmas: torch.Tensor | Sequence[float] | None = None) -> None:
    """Start a new generation: drop all cached state (no-op without a cache). `sigmas` is its schedule."""
    handle = get_handle(model)
    if handle is not None:
        handle.reset(sigmas)


def next_loop(model: nn.Module, sigmas: torch.Tensor | Sequence[float] | None = None, records: bool = True) -> None:
    """Start the next denoising loop of the same generation, e.g. the next block of a stream (no-op without a
    cache): the state is dropped unless the policy carries it across loops (`CachePolicy.across_loops`); the
    records are kept unless `records=False`. `sigmas` is the loop's schedule, as for `reset`."""
    handle = get_handle(model)
    if handle is None:
        return
    if not isinstance(handle, CacheHandle):
        raise ValueError(f"next_loop runs on transformer block stacks, not on {type(handle.model).__name__}")
    handle.next_loop(sigmas, records)


@contextmanager
def bypass(model: nn.Module) -> Iterator[None]:
    """Inside the `with` block the model runs its own blocks: every block computed, the cache's state and records
    untouched (a stream's commit pass, which must write every layer's K/V). A no-op without a cache."""
    handle = get_handle(model)
    swap = getattr(handle, "swap", None)
    if swap is None:
        yield
        return
    previous, swap.bypass = swap.bypass, True
    try:
        yield
    finally:
        swap.bypass = previous


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
    if handle.pipeline is None or len(handle.group) == 1:
        return handle.summary()
    records, calls = [], 0  # the denoisers' records in turn (Wan 2.2: high-noise expert, then low-noise)
    for member in handle.group:
        part = member.summary().records
        records += [dataclasses.replace(r, call=r.call + calls) for r in part]
        calls += len({r.call for r in part})
    return CacheSummary(handle.policy.describe(), len(handle.blocks), records)


def _is_pipeline(obj) -> bool:
    """A diffusers pipeline (or anything pipeline-like): not a module, holding its denoiser as a component."""
    if isinstance(obj, nn.Module):
        return False
    return any(hasattr(obj, n) for n in DENOISERS) or isinstance(getattr(obj, "components", None), dict)


DENOISERS = ("transformer", "transformer_2", "unet")  # where diffusers pipelines keep their denoisers


def _denoisers(pipe) -> list[nn.Module]:
    models = [m for m in (getattr(pipe, n, None) for n in DENOISERS) if isinstance(m, nn.Module)]
    if not models:
        raise ValueError(f"{type(pipe).__name__} has no `transformer` or `unet` model; the cache has nothing to run")
    return models
