"""Cross-block residual reuse in a stream: a step may add the residual of the previous stream block's same step.

Builds on FORA (Selvaraju et al., 2024) and DeepCache (Ma, Fang, Wang, CVPR 2024): instead of running a range of
blocks, add their cached residual (output - input); those reuse it across the steps of one denoising loop. In a
block-autoregressive stream (CausVid, Self Forcing) every block of frames runs the same few steps at the same
noise levels, so a step also has a twin in the previous stream block: the step found by the same sigma. Here each
denoising step follows one letter of `plan`:
- `c`: compute every block;
- `x`: add the residual the same step had in the previous stream block (cross-block; the state carries from one
  denoising loop to the next, `across_loops`, and the driver starts each block with `stretto.cache.next_loop`);
- `w`: add the residual of this block's previous step (FORA, within the block; step 0 computes).
The first `first` blocks always run (DeepCache's shallow branch, DBCache's Fn); the residual covers the rest.
Where it departs from FORA / DeepCache: the reuse axis is the stream, not only the sampler; and the schedule is
per step rather than every N-th step, because in few-step re-noising (x_{i+1} = (1 - t_{i+1}) x0_i + t_{i+1} eps)
an error at step i reaches the frame scaled by (1 - t_{i+1}): the first step, at pure noise, tolerates a residual
several blocks old, the last step none (see benchmarks: `stretto bench stream --feature-cache`). `refresh` computes
an `x` step in one stream block of every N, so its residual is never more than N - 1 blocks old. Steps past the
plan compute. Decisions are for the whole batch (a stream's rows share their step). The commit pass (t = 0) is no
denoising step: the driver runs it with every block (`stretto.cache.bypass`), so the KV cache is never stale.
Measured on the shipped world models, 4 steps, kv-rolling (benchmarks/results/stream-feature-cache.json): the
default `xcwc` runs 1.25x the uncached frames/s and stays closer to the uncached frames than a stream with another
noise seed does; `xwwc` runs 1.6x within 0.8 dB of the uncached streams' PSNR against the simulator, but strays
further from the uncached frames than a reseeded stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stretto.cache.hidden import Hidden, add, sub
from stretto.cache.policy import CachePolicy, bounded, register
from stretto.cache.stack import Call, Stack

PLAN_HELP = (
    "one letter per denoising step: c compute, x the previous stream block's same step, w this block's previous step"
)


@register
@dataclass
class CrossBlock(CachePolicy):
    """Per denoising step: compute, reuse the previous stream block's same step (x), or this block's last step (w)."""

    name = "crossblock"
    step_only = True
    across_loops = True
    plan: str = field(default="xcwc", metadata={"doc": f"{PLAN_HELP}; steps past it compute"})
    first: int = bounded(0, 0, 10_000, "blocks always computed at the front")
    refresh: int = bounded(8, 1, 10_000, "compute an x step every N-th stream block (1: always)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.plan = self.plan.strip().lower()
        bad = sorted(set(self.plan) - set("cxw"))
        if not self.plan or bad:
            raise ValueError(f"CrossBlock.plan must be {PLAN_HELP}, e.g. 'xcwc'; got {self.plan!r}")

    def check_stack(self, num_blocks: int) -> None:
        if self.first >= num_blocks:
            raise ValueError(f"CrossBlock.first must be below the number of blocks ({num_blocks}), got {self.first}")

    def run(self, stack: Stack, h: Hidden, call: Call) -> Hidden:
        n, state = self.first, call.state
        index = int(call.index[0])  # one host sync a call; a stream's rows share their step
        mode = self.plan[index] if index < len(self.plan) and bool((call.index == index).all()) else "c"
        h1 = stack.compute(h, 0, n)
        reused = None
        if not bool(call.fresh.any()):
            if mode == "x" and state.get(f"x{index}") is not None:
                age = state[f"age{index}"]
                if int(age.max()) + 1 < self.refresh:
                    reused, state[f"age{index}"] = state[f"x{index}"], age + 1
            elif mode == "w" and index > 0 and state.get("last") is not None:
                reused = state["last"]  # every call stores its residual: this is the previous step's
        if reused is not None and all(s is None or s.shape == t.shape for s, t in zip(reused, h1, strict=True)):
            stack.count("reused", n, stack.num_blocks)
            state["last"] = reused
            return add(h1, reused)
        # fresh rows, nothing stored, or the stored residual has another shape (a recompute context grew)
        out = stack.compute(h1, n, stack.num_blocks)
        state["last"] = sub(out, h1)
        if mode == "x":
            state[f"x{index}"], state[f"age{index}"] = state["last"], torch.zeros_like(call.index)
        return out
