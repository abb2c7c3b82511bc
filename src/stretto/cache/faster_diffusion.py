"""Faster Diffusion: "Faster Diffusion: Rethinking the Role of the Encoder for Diffusion Model Inference" (Li, Hu,
Khan, Li, Yang, Wang, Cheng, Yang, NeurIPS 2024), its encoder propagation.

In a UNet the encoder (down blocks and mid block) changes little from one step to the next, the decoder (up
blocks) a lot. At key steps the whole UNet runs and the encoder's outputs are stored: the skip features it hands
to the decoder (conv_in's output included, as in the paper's code) and the mid block's output. At the steps in
between the encoder is skipped and only the decoder runs, on the stored features and the step's own time
embedding. The default key steps are the paper's for Stable Diffusion, dense early: 0/1/2/3/5/10/15/25/35
(step 0 is the noisiest); `interval=N` gives the uniform schedule instead. The mechanism that swaps the
UNet's blocks is stretto.cache.unet, shared with DeepCache (which also skips the deep part, but keeps the
outermost level running; here no encoder block runs and every decoder block does).

Where it departs from the paper:
- No parallel decoding. The paper batches the decoder of a key step and the non-key steps after it into one
  call; here every step is its own model call in the sampler's own loop. The outputs are the same (a non-key
  step's decoder sees only the stored features and its own timestep), only not batched, so the time saved is
  the skipped encoder's.
- No prior noise injection (the paper adds 0.003 * z_T to the latent at every step with t < 500). It changes
  the sampler's latents, which a feature cache never touches: it belongs to the pipeline or sampler.
- Key steps are absolute step indices at any step count, as the paper's code uses its 50-step schedule for
  DDIM-50 and DPM-Solver++-20 alike; steps past the last key step reuse it. Its schedules for 75 and 100
  steps also run the last steps fully: give those with `keys=`.
- The encoder is skipped at non-key steps when a branch has stored features; a branch without any (step 0,
  a new CFG branch) runs the whole UNet whatever the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stretto.cache.policy import UNetPolicy, bounded, register

PAPER_KEYS = "0/1/2/3/5/10/15/25/35"  # Stable Diffusion, DDIM 50 steps (the paper's code: mode '50ls')
MAX_KEY = 100_000
KEYS_HELP = f"step indices (integers in [0, {MAX_KEY}]) separated by '/', e.g. '0/1/2/3/5/10'"


@register
@dataclass
class FasterDiffusion(UNetPolicy):
    """Run the UNet's encoder only at key steps; in between only its decoder, on the stored encoder features."""

    name = "fasterdiffusion"
    keys: str = field(
        default=PAPER_KEYS, metadata={"doc": "key step indices, '/' between them (the paper's: dense early)"}
    )
    interval: int = bounded(0, 0, 1000, "uniform: a key step every N-th step instead of `keys` (0: use keys)")
    warmup: int = bounded(0, 0, 1000, "key steps at the start, whatever the schedule")
    key_steps: frozenset[int] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        parts = [p.strip() for p in str(self.keys).split("/")]
        if not all(p.isascii() and p.isdigit() and int(p) <= MAX_KEY for p in parts):
            raise ValueError(f"FasterDiffusion.keys must be {KEYS_HELP}; got {self.keys!r}")
        steps = sorted({int(p) for p in parts})
        if self.interval and steps != [int(p) for p in PAPER_KEYS.split("/")]:
            raise ValueError(
                f"FasterDiffusion takes keys= (explicit key steps) or interval= (uniform), not both; "
                f"got keys={self.keys!r} and interval={self.interval}"
            )
        self.keys = "/".join(map(str, steps))
        self.key_steps = frozenset(steps)

    def kept_levels(self, down: int, up: int, model: str) -> tuple[int, int]:
        return 0, up  # no encoder block runs, every decoder block does

    def full(self, index: int) -> bool:
        if index < self.warmup:
            return True
        if self.interval:
            return (index - self.warmup) % self.interval == 0
        return index in self.key_steps
