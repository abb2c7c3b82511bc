"""The cache attached to a diffusers UNet (UNet2DModel, UNet2DConditionModel): DeepCache and Faster Diffusion.

A UNet has no chain of same-shaped blocks but down blocks, a mid block and up blocks joined by skip
connections, so it gets its own small mechanism. The policy (a UNetPolicy) says how many outermost down and up
blocks always run (`kept_levels`); every other block (the mid block always) gets an instance-level `forward`
that, on a step the policy does not run fully, returns what the block returned on the branch's last full step
(nothing is computed) and otherwise runs the block's own forward and keeps its output. DeepCache keeps the
outer levels on both sides; Faster Diffusion keeps no down block and every up block, and then conv_in's output
(the first skip feature) is reused too, as part of the encoder. The UNet's own loop still runs (so its
skip-connection bookkeeping is untouched); the blocks that always run then receive the stored features. State
is kept per CFG branch (branch_state.py) and steps are keyed like the transformer mechanism's (step_context.py);
one decision per model call. `detach` deletes the instance attributes: the model is exactly as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from stretto.cache.accounting import CacheSummary, StepRecord
from stretto.cache.branch_state import BranchStates
from stretto.cache.families import UNETS
from stretto.cache.none import NoCache
from stretto.cache.policy import POLICIES, CachePolicy, UNetPolicy
from stretto.cache.step_context import StepContext, check_scale, sigma_schedule, step_index

# ControlNet / T2I-adapter residuals are added to the reused blocks' outputs: reusing those would drop them
REFUSED_ARGS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)


def is_unet(model: nn.Module) -> bool:
    """A diffusers UNet the UNet mechanism runs."""
    return any(c.__name__ in UNETS for c in type(model).__mro__)


def held_unet(model: nn.Module) -> nn.Module | None:
    """The diffusers UNet a model wraps as its `unet` attribute (stretto's shapes-unet), if any."""
    inner = getattr(model, "unet", None)
    return inner if isinstance(inner, nn.Module) and is_unet(inner) else None


class UNetHandle:
    """The cache attached to one UNet: the policy, the reused blocks' swapped forwards, per-branch state, records."""

    def __init__(self, model: nn.Module, policy: CachePolicy, unet: nn.Module | None = None):
        """`model` is what the caller applied the cache to: the UNet itself, or a model holding it as `unet`."""
        self.model, self.owner = model, unet if unet is not None else model
        model = self.owner
        name = type(model).__name__
        if not isinstance(policy, (UNetPolicy, NoCache)):
            allowed = ", ".join(sorted(n for n, cls in POLICIES.items() if cls.unet))
            raise ValueError(f"{name} is a UNet: its cache policies are {allowed} and none, got {policy.name!r}")
        self.policy = policy
        down, up, mid = list(model.down_blocks), list(model.up_blocks), model.mid_block
        self.blocks = down + ([mid] if mid is not None else []) + up
        self.num_blocks = len(self.blocks)
        # the modules whose output a step that is not full reuses: the blocks between the kept outer levels, and
        # conv_in when the first down block is reused (its output is otherwise only the last up block's skip)
        self.stored: list[nn.Module] = []
        if isinstance(policy, UNetPolicy):
            kept_down, kept_up = policy.kept_levels(len(down), len(up), name)
            self.stored = down[kept_down:] + ([mid] if mid is not None else []) + up[: len(up) - kept_up]
        self.reusable = len(self.stored)  # block evaluations a step that is not full saves (conv_in is no block)
        if self.stored and self.stored[0] is down[0]:
            self.stored.insert(0, model.conv_in)
        self.signature = inspect.signature(model.forward)
        self.context: StepContext | None = None
        self.pipeline = None  # set by apply() on a pipeline
        self.holders: list = []
        self.group: list = [self]
        self.reset()

    # -- attach / detach
    def attach(self) -> None:
        """Swap the reusable blocks' forwards and hook the UNet's forward."""
        for i, block in enumerate(self.stored):
            block.__dict__["forward"] = self._forward_of(i, block, block.forward)
        self._hooks = [
            self.owner.register_forward_pre_hook(self._enter, with_kwargs=True),
            self.owner.register_forward_hook(self._leave, always_call=True),
        ]

    def detach(self) -> None:
        """Undo attach (and the pipeline wrapper): the model is exactly as before."""
        if self.pipeline is not None:
            self.pipeline.detach()
        for hook in self._hooks:
            hook.remove()
        for block in self.stored:
            block.__dict__.pop("forward", None)

    def _forward_of(self, i: int, block: nn.Module, original):
        position = next((k for k, b in enumerate(self.blocks) if b is block), None)  # None: conv_in

        def forward(*args, **kwargs):
            if self.mode == "reuse":
                if position is not None:
                    self.reused_calls[position] += 1
                return self.state[i]
            out = original(*args, **kwargs)
            if self.mode == "record":
                self.state[i] = out
            return out

        return forward

    # -- state
    def reset(self, sigmas: torch.Tensor | Sequence[float] | None = None) -> None:
        """Forget all cached state and records; `sigmas` is the generation's schedule in the model's timestep scale."""
        self.calls = 0
        self.records: list[StepRecord] = []
        self.reused_calls = [0] * self.num_blocks
        self.reset_state(None if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float32))

    def reset_state(self, keys: torch.Tensor | None = None, evaluated: bool = False, stale: bool = False) -> None:
        """Start a new denoising loop: forget the cached features, keep the records (see CacheHandle.reset_state)."""
        self.states = BranchStates()
        self.steps: dict[str, int] = {}
        self.schedule = None if keys is None else sigma_schedule(keys, keep_zero=evaluated)
        self.mode = "off"  # outside a forward: blocks run as usual
        self._started = False
        self.policy.reset()

    # -- one model call
    def _enter(self, module, args, kwargs) -> None:
        bound = self.signature.bind(*args, **kwargs).arguments
        for name in REFUSED_ARGS:
            if bound.get(name) is not None:
                raise ValueError(f"the feature cache cannot run {type(module).__name__} with {name}= (ControlNet)")
        sample = bound["sample"]
        batch = sample.shape[0]
        ctx = self.context or StepContext(sigma=None, branches=("cond",))
        branches = tuple(ctx.branches)
        if batch % len(branches):
            raise ValueError(f"batch of {batch} rows cannot be split into the branches {branches}")
        chunk = batch // len(branches)
        given = bound.get("timestep") if ctx.sigma is None else ctx.sigma
        sigma = torch.as_tensor(given, dtype=torch.float32).to(sample.device).flatten()
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
        if self.schedule is not None and not self._started:
            self._started = True
            check_scale(self.schedule, sigma, type(module).__name__)
        index, _ = step_index(sigma, ctx, self.schedule, self.steps, branches, chunk)
        state, fresh = self.states.gather(branches, chunk)
        full = isinstance(self.policy, NoCache) or any(fresh) or len(state) < len(self.stored)
        full = full or any(self.policy.full(i) for i in set(index.tolist()))
        self.mode = "record" if full else "reuse"
        self.state = {} if full else state
        self._call = (branches, chunk, sigma.reshape(len(branches), chunk)[:, 0].tolist(), full)

    def _leave(self, module, args, output) -> None:
        if self.mode == "off":
            return
        branches, chunk, sigmas, full = self._call
        if full and len(self.state) == len(self.stored):
            self.states.store(branches, self.state, chunk)
        for b in branches:
            self.steps[b] = self.steps.get(b, 0) + 1
        reused = 0 if full else self.reusable
        for b, s in zip(branches, sigmas, strict=True):
            self.records.append(StepRecord(self.calls, b, s, self.num_blocks - reused, reused, 0))
        self.calls += 1
        self.mode, self.state = "off", {}

    def summary(self) -> CacheSummary:
        """Blocks computed / reused per call and branch (a UNet block is one down, mid or up block)."""
        return CacheSummary(self.policy.describe(), self.num_blocks, list(self.records), list(self.reused_calls))

    def schedule_keys(self, timesteps: torch.Tensor) -> torch.Tensor:
        """UNet pipelines pass the scheduler's timesteps as they are."""
        return timesteps
