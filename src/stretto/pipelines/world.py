"""Streaming a block-causal world model: few-step denoise a block, hand its frames out, commit it to the KV cache.

The driver (CausVid / Self Forcing inference):
1. start from the prompt block (ground-truth frames), committed to the cache at t = 0;
2. for every next block, take its actions, start from fresh noise and run `steps` timesteps: predict x0, and
   (if not the last step) re-noise x0 to the next level with fresh noise;
3. yield the block's frames, then run the block once more at t = 0 with `write=True` (the commit), so the cache
   holds clean K/V, exactly what the model saw as context in training. `StreamSettings.context_noise` c > 0
   commits the block re-noised to level c instead (Self Forcing's inference `context_noise`; SkyReels-V2's
   `addnoise_condition` = 1000 c): the past is held a little less literally, which softens error accumulation
   for a model trained with noisy context.

Modes (how the past is supplied):
- `kv`: one KVCache holding every frame of the stream (capacity fixed up front);
- `kv-rolling`: a KVCache of `sink_frames + window` frames; when full, the oldest non-sink block is evicted.
  The model positions cached frames by slot, so positions never exceed the cache size: the stream runs forever;
- `recompute`: no cache; every model call re-runs the clean context frames (all of them, or the same sinks +
  window as kv-rolling) together with the block being denoised.
The KV cache is allocated within `StreamSettings.kv_budget_mib` (default 1,024 MiB): a stream whose cache
would need more fails before anything is allocated, with the size asked and how to raise the limit.
`denoise_block` is shared with Self Forcing training, which runs this very loop with gradients on one step.

How a block is denoised: Self Forcing's few-step re-noising (`steps`, `shift`), or a diffusers scheduler's own
steps (`StreamSettings.scheduler`, e.g. SkyReels-V2's UniPC; a fresh copy per block, since multistep solvers keep
a history). Prompts may switch mid-stream (CausVid's dynamic prompting): the new text's cross-attention K/V are
computed once, the video's KV cache is kept.

Feature caching inside the stream (`StreamSettings.feature_cache`, any `stretto.cache` policy): each block's steps
are one denoising loop (`stretto.cache.next_loop`, keyed on the steps' noise levels, so a policy's state starts
afresh per block unless it reuses across blocks, like `crossblock`: the previous block's same step). Only the
denoising calls may reuse or forecast blocks; the commit pass runs every block (`stretto.cache.bypass`), because
its K/V of every layer are what all later frames attend to: a skipped block would leave its layer's slot stale.

Several processes (`StreamSettings.parallel="ulysses"`, under torchrun after `stretto.parallel.init()`): Ulysses
sequence parallelism for the world model; each rank holds a slice of every call's tokens and n_head / world heads of
the KV cache, and yields the same frames (`stretto.pipelines.world_parallel`).

The driver runs any model with the small `StreamModel` interface: stretto's `WorldDiT` (pixels, steered by one
action per frame: `stream`, `stream_world`) and `CausalWan`, a Self-Forcing / CausVid checkpoint on diffusers'
Wan (latents, conditioned on a text prompt whose cross-attention K/V are computed once:
`stretto.pipelines.video`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from stretto import cache as feature_cache
from stretto.data.world import STAY, parse_actions, prompt_block
from stretto.models.kv_cache import DEFAULT_BUDGET_BYTES, MIB, KVCache
from stretto.parallel import UlyssesShard
from stretto.pipelines.world_memory import MEMORIES, world_memory
from stretto.pipelines.world_parallel import check_ulysses

MODES = ("recompute", "kv", "kv-rolling")
DEFAULT_STEPS = 4
DEFAULT_SHIFT = 3.0
DEFAULT_WINDOW = 8  # frames kept besides the sinks (kv-rolling, and recompute when windowed)
DEFAULT_SINKS = 1  # the prompt frame stays in the cache forever
DEFAULT_KV_BUDGET_MIB = DEFAULT_BUDGET_BYTES // MIB
KV_BUDGET_HINT = {
    "kv": "raise it with --kv-budget-mib (StreamSettings.kv_budget_mib), or use mode kv-rolling",
    "kv-rolling": "raise it with --kv-budget-mib (StreamSettings.kv_budget_mib), or use a smaller window",
}


def few_step_timesteps(steps: int, shift: float = DEFAULT_SHIFT) -> list[float]:
    """Noise levels 1, (steps-1)/steps, ..., 1/steps, shifted towards noise (SD3 shift; Self Forcing uses 5)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    levels = [1 - i / steps for i in range(steps)]
    return [shift * t / (1 + (shift - 1) * t) for t in levels]


def model_steps(model: Any) -> int:
    """The denoising steps per block a model samples with: a Self Forcing student's own, else DEFAULT_STEPS."""
    return getattr(getattr(model, "config", None), "sampling_steps", None) or DEFAULT_STEPS


def denoise_block(
    call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    timesteps: list[float],
    grad_step: int | None = None,
    clamp: float | None = 1.0,
    x0_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Few-step sampling of one block. noise (steps, B, F, C, H, W); call(x_t, t) -> velocity. Returns x0.

    grad_step: Self Forcing training. Steps before it run without gradients; its x0 (with gradients) is the
    block's output and the later steps are skipped. None: every step, no gradients kept by this function.
    clamp: x0 is clipped to [-clamp, clamp] (pixels live in [-1, 1]); None for unbounded latents.
    x0_hook: applied to every x0 prediction (a memory imposing the pixels it remembers, `world_memory`).
    """
    last = len(timesteps) - 1 if grad_step is None else grad_step
    x = noise[0]
    for i, t in enumerate(timesteps[: last + 1]):
        with torch.set_grad_enabled(torch.is_grad_enabled() and i == grad_step):
            x0 = x - t * call(x, torch.full(x.shape[:2], t, device=x.device))
            if clamp is not None:
                x0 = x0.clamp(-clamp, clamp)
            if x0_hook is not None:
                x0 = x0_hook(x0)
        if i < last:
            t_next = timesteps[i + 1]
            x = (1 - t_next) * x0 + t_next * noise[i + 1]
    return x0


def scheduler_block(
    call: Callable[..., torch.Tensor], noise: torch.Tensor, scheduler: Any, flow_map: bool = False
) -> torch.Tensor:
    """One block through a diffusers flow-prediction scheduler's steps (its timesteps already set). Returns x0.

    A fresh copy per block: SkyReels-V2's diffusion forcing gives every frame its own solver state.
    flow_map: the model predicts the mean velocity from t to the next level r (AnyFlow's flow map; the call
    gets r, the scheduler steps z_r = z_t - (sigma_t - sigma_r) u).
    """
    scheduler = copy.deepcopy(scheduler)
    x = noise[0]
    scale = scheduler.config.num_train_timesteps

    def level(value) -> torch.Tensor:  # float64: the models scale it by 1000 and embed it, as their pipelines do
        return torch.full(x.shape[:2], float(value), dtype=torch.float64, device=x.device)

    for i, t in enumerate(scheduler.timesteps):
        target = {"r": level(scheduler.sigmas[i + 1])} if flow_map else {}
        v = call(x, level(float(t) / scale), **target)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x


class StreamModel(Protocol):
    """What the driver asks of a block-causal video model; `WorldDiT` and `CausalWan` implement it.

    `model(frames, t, cond, kv_cache=, start=, write=)` predicts the flow velocity of frames (B, T, C, H, W) at
    noise levels t (B, T): block-causal over T with no cache, else sitting at cache slots [start, ...).
    `condition(c)` turns a block's conditioning into what the calls take (run once per distinct c);
    `context_condition(past, cond)` is the conditioning of a recompute call: the past frames', as (block
    condition, index in its block) pairs, then the current block's. A flow-map model (`flow_map = True`,
    AnyFlow-FAR) also takes `r=`, the target time per frame. A model whose `new_cache` returns something other
    than a KVCache (AnyFlow-FAR's re-encoded context) places each block in it itself (`start` is 0). Under
    `StreamSettings.parallel` the calls and `new_cache` also take `shard=` (a `stretto.parallel.UlyssesShard`).
    """

    frames_per_block: int
    frame_shape: tuple[int, int, int]
    x0_clamp: float | None

    def __call__(self, frames: torch.Tensor, t: torch.Tensor, cond: Any, **cache) -> torch.Tensor: ...
    def cache_slots(self, frames: int) -> int: ...
    def new_cache(self, batch: int, frames: int, sink_frames: int = 0, **budget) -> KVCache: ...
    def condition(self, cond: Any) -> Any: ...
    def context_condition(self, past: list[tuple[Any, int]], cond: Any) -> Any: ...
    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


@dataclass
class StreamSettings:
    mode: str = "kv-rolling"
    steps: int | None = None  # denoising steps per block; None: the model's own (`model_steps`)
    shift: float = DEFAULT_SHIFT
    window: int | None = DEFAULT_WINDOW  # frames besides the sinks; None: the whole stream (kv, recompute)
    sinks: int = DEFAULT_SINKS
    # noise level in [0, 1) the finished blocks are committed at (0: clean, as Self Forcing trains); the noise has
    # its own generator (seed + 1), so the blocks' own draws are those of a clean-context stream
    context_noise: float = 0.0
    max_frames: int | None = None  # kv only: capacity of the full cache, in frames (None: the stream's `frames`)
    kv_budget_mib: float = DEFAULT_KV_BUDGET_MIB  # kv modes: the most KV cache memory allocated, in MiB
    # a diffusers scheduler whose `steps` timesteps denoise each block (its own shift); None: Self Forcing's
    # few-step re-noising at `steps` and `shift`
    scheduler: Any = None
    # a feature-cache policy run on the denoising calls (a `--cache` string such as "fora:interval=2" or
    # "crossblock:first=1", or a stretto.cache policy; "none" runs the mechanism computing everything); the
    # commit pass always computes every block. None: no feature cache
    feature_cache: Any = None
    # memory beyond the window: "pose" (`world_memory.PoseMemory`: what was drawn, by camera pose from the
    # actions, imposed when the camera comes back; action-steered world models only). None: the window alone
    memory: str | None = None
    # several processes (torchrun, stretto.parallel.init()): "ulysses" splits every call's tokens over the ranks
    # and the KV cache's heads (world-dit only; stretto.pipelines.world_parallel). None: this process alone
    parallel: str | None = None

    def cache_policy(self) -> feature_cache.CachePolicy | None:
        """`feature_cache` as a policy (None: no feature cache); a bad spec fails naming the field."""
        if self.feature_cache is None:
            return None
        try:
            return feature_cache.parse_policy(self.feature_cache)
        except ValueError as err:
            raise ValueError(f"StreamSettings.feature_cache: {err}") from None

    def check(self, model: StreamModel) -> None:
        fpb = model.frames_per_block
        if self.scheduler is not None and not all(
            hasattr(self.scheduler, a) for a in ("set_timesteps", "step", "config")
        ):
            raise ValueError(
                f"StreamSettings.scheduler must be a diffusers scheduler, got {type(self.scheduler).__name__}"
            )
        budget = self.kv_budget_mib
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
            raise ValueError(f"StreamSettings.kv_budget_mib must be a number of MiB > 0, got {budget!r}")
        if self.mode not in MODES:
            raise ValueError(f"unknown stream mode {self.mode!r}; modes: {', '.join(MODES)}")
        c = self.context_noise
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c < 1:
            raise ValueError(f"StreamSettings.context_noise must be a noise level in [0, 1), got {c!r}")
        if self.mode == "kv-rolling" and self.window is None:
            raise ValueError("mode kv-rolling needs a window (frames kept besides the sinks)")
        if self.window is not None:
            if self.window < fpb:
                raise ValueError(f"window {self.window} is smaller than a block ({fpb} frame(s) per block)")
            if not 0 <= self.sinks <= self.window:
                raise ValueError(f"sink count {self.sinks} must be in [0, window={self.window}]")
            for name in ("window", "sinks"):  # whole temporal patches of the model
                try:
                    model.cache_slots(getattr(self, name))
                except ValueError as err:
                    raise ValueError(f"StreamSettings.{name}={getattr(self, name)}: {err}") from None
        if self.mode == "kv" and self.max_frames is None:
            raise ValueError("mode kv needs max_frames or a stream length (the full cache is allocated up front)")
        policy = self.cache_policy()
        if policy is not None and policy.unet:
            raise ValueError(f"StreamSettings.feature_cache: {policy.name} runs on UNets, not a stream's block stack")
        if self.memory is not None:
            if self.memory not in MEMORIES:
                raise ValueError(f"unknown memory {self.memory!r}; memories: {', '.join(MEMORIES)} (or none)")
            kind = getattr(model, "kind", type(model).__name__)
            if kind != "world-dit":
                raise ValueError(f"memory {self.memory!r} follows the camera through the actions of an action-steered "
                                 f"world model (world-dit), not a {kind!r}")  # fmt: skip
            if self.scheduler is not None:
                raise ValueError(f"memory {self.memory!r} imposes pixels on the few-step sampler's x0: no scheduler")
        if self.parallel is not None:
            check_ulysses(model, self.parallel, self.mode, policy)


@dataclass
class StreamFrame:
    """One generated frame: pixels (B, C, H, W) in [-1, 1] (or latents), its index, the block's latency.

    kv_bytes: the KV cache this process allocated; comm_bytes: what its collectives moved so far (parallel only).
    """

    index: int
    pixels: torch.Tensor
    latency_s: float
    kv_bytes: int
    comm_bytes: int = 0


class StreamContext:
    """The past, as the model sees it: a KVCache (kv modes) or the clean frames themselves (recompute).

    shard: Ulysses, this rank's part of every model call and of the cache (`StreamSettings.parallel`).
    """

    def __init__(self, model: StreamModel, batch: int, settings: StreamSettings, shard: UlyssesShard | None = None,
                 seed: int = 0):  # fmt: skip
        self.model, self.settings = model, settings
        self.context_gen = torch.Generator(device="cpu").manual_seed(seed + 1)  # context_noise's draws
        self.shard = {} if shard is None else {"shard": shard}  # passed to every model call and to new_cache
        self.cache: KVCache | None = None
        self.frames: list[torch.Tensor] = []  # recompute: committed frames (B, C, H, W) and their conditions
        self.conditions: list[tuple[Any, int]] = []  # (the block's condition, the frame's index in its block)
        budget = {"budget_bytes": int(settings.kv_budget_mib * MIB), "budget_hint": KV_BUDGET_HINT.get(settings.mode),
                  **self.shard}  # fmt: skip
        if settings.mode == "kv":
            self.cache = model.new_cache(batch, settings.max_frames, **budget)
        elif settings.mode == "kv-rolling":
            self.cache = model.new_cache(batch, settings.sinks + settings.window, settings.sinks, **budget)

    @property
    def kv_bytes(self) -> int:
        """Bytes of K/V buffers allocated (0 for recompute, which keeps frames, not K/V)."""
        return self.cache.nbytes if self.cache is not None else 0

    def start(self, n_frames: int) -> int:
        """The cache slot of the next block (kv-rolling makes room first)."""
        slots = self.model.cache_slots(n_frames)
        if not isinstance(self.cache, KVCache):  # a context the model re-encodes (AnyFlow-FAR): it places blocks
            return 0
        if self.settings.mode == "kv-rolling":
            return self.cache.make_room(slots)
        start = self.cache.length
        if start + slots > self.cache.capacity:
            raise ValueError(f"the kv cache holds {self.settings.max_frames} frames; the stream went past it")
        return start

    def caller(self, cond: Any, n_frames: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """call(x_t, t) -> velocity of the next block of n_frames under condition cond, given the past."""
        model = self.model
        if self.cache is not None:
            start = self.start(n_frames)
            return lambda x, t, **target: model(x, t, cond, kv_cache=self.cache, start=start, **self.shard, **target)
        ctx, past = self._recompute_context()
        n = len(past)
        if n == 0:
            return lambda x, t, **target: model(x, t, cond, **self.shard, **target)
        joint = model.context_condition(past, cond)

        level = self.settings.context_noise

        def call(x, t, **target):  # target: a flow map's r, like t per frame, the context's level for the context
            frames = torch.cat([ctx, x], dim=1)
            clean = {k: torch.cat([v.new_full((x.shape[0], n), level), v], dim=1) for k, v in target.items()}
            times = torch.cat([t.new_full((x.shape[0], n), level), t], dim=1)
            return model(frames, times, joint, **self.shard, **clean)[:, n:]

        return call

    def _recompute_context(self) -> tuple[torch.Tensor, list[tuple[Any, int]]]:
        frames, conditions = self.frames, self.conditions
        s = self.settings
        if s.window is not None and len(frames) > s.sinks + s.window:
            keep = list(range(s.sinks)) + list(range(len(frames) - s.window, len(frames)))
            frames, conditions = [frames[i] for i in keep], [conditions[i] for i in keep]
        if not frames:
            return torch.empty(0), []
        return torch.stack(frames, dim=1), conditions

    @torch.no_grad()
    def commit(self, frames: torch.Tensor, cond: Any) -> None:
        """Add a finished block (B, F, C, H, W) to the past: its clean K/V (kv modes) or the frames; re-noised to
        `context_noise` first when that is > 0."""
        level = self.settings.context_noise
        if level > 0:
            noise = torch.randn(frames.shape, generator=self.context_gen).to(frames.device, frames.dtype)
            frames = (1 - level) * frames + level * noise
        if self.cache is not None:
            start = self.start(frames.shape[1])
            t0 = torch.full(frames.shape[:2], float(level), device=frames.device)
            with feature_cache.bypass(self.model):  # every block computed: the cache gets every layer's clean K/V
                self.model(frames, t0, cond, kv_cache=self.cache, start=start, write=True, **self.shard)
        else:
            self.frames.extend(frames.unbind(1))
            self.conditions.extend((cond, i) for i in range(frames.shape[1]))

    def release(self) -> None:
        self.cache = None
        self.frames, self.conditions = [], []


def block_frames(model: StreamModel, given_first: bool = False) -> Iterator[int]:
    """Frames of each block the driver generates, endless: `frames_per_block`, except that a model's first block
    may be shorter (`first_block_frames`: AnyFlow-FAR's released streams start with a one-frame chunk, since Wan's
    VAE encodes the first frame alone); a given first block takes that place, and every generated block is whole."""
    fpb = model.frames_per_block
    if not given_first:
        yield getattr(model, "first_block_frames", fpb)
    while True:
        yield fpb


def frames_in_whole_blocks(model: StreamModel, frames: int, given_first: bool = False) -> int:
    """The frames of the fewest generated blocks that hold `frames` frames."""
    total = 0
    for n in block_frames(model, given_first):
        if total >= frames:
            return total
        total += n
    raise AssertionError("block_frames is endless")


def block_actions(actions: Iterable[int], frames_per_block: int) -> Iterator[list[int]]:
    """Group an action stream into blocks; a short last block is padded with the last action."""
    chunk: list[int] = []
    for a in actions:
        chunk.append(int(a))
        if len(chunk) == frames_per_block:
            yield chunk
            chunk = []
    if chunk:
        yield chunk + [chunk[-1]] * (frames_per_block - len(chunk))


@torch.no_grad()
def stream_blocks(
    model: StreamModel,
    conditions: Iterable[Any],
    settings: StreamSettings | None = None,
    *,
    first_block: torch.Tensor | None = None,
    first_condition: Any = None,
    batch: int = 1,
    seed: int = 0,
    frames: int | None = None,
) -> Iterator[StreamFrame]:
    """The driver (CausVid / Self Forcing inference): one block per item of `conditions`, frames yielded one by one.

    first_block (B, F, C, H, W): given frames committed before anything is generated (with first_condition);
    None: the first block is generated from an empty past, `batch` rows of `model.frame_shape`. A condition is
    prepared by `model.condition` once for as long as the same object repeats. frames: stop after this many
    generated frames. Closing the generator frees the cache.
    """
    settings = settings or StreamSettings()
    if settings.steps is None:
        settings = replace(settings, steps=model_steps(model))
    given = first_block is not None
    if settings.mode == "kv" and settings.max_frames is None and frames is not None and frames >= 1:
        settings = replace(settings, max_frames=(first_block.shape[1] if given else 0)
                           + frames_in_whole_blocks(model, frames, given))  # fmt: skip
    settings.check(model)
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if first_block is not None:
        first = next(block_frames(model))
        if first_block.shape[1] != first:
            raise ValueError(f"the prompt must be one block of {first} frame(s), got {first_block.shape[1]}")
        batch, device, dtype = first_block.shape[0], first_block.device, first_block.dtype
        frame_shape = tuple(first_block.shape[2:])
    else:
        p = next(model.parameters())
        device, dtype, frame_shape = p.device, p.dtype, tuple(model.frame_shape)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    timesteps = few_step_timesteps(settings.steps, settings.shift)
    scheduler = None
    if settings.scheduler is not None:
        scheduler = copy.deepcopy(settings.scheduler)  # the caller's scheduler is left as it was
        scheduler.set_timesteps(settings.steps, device=device)
    policy = settings.cache_policy()
    levels = timesteps if scheduler is None else [float(t) / scheduler.config.num_train_timesteps
                                                  for t in scheduler.timesteps]  # fmt: skip
    shard = UlyssesShard() if settings.parallel is not None else None
    context = StreamContext(model, batch, settings, shard, seed)
    raw, prepared, own_cache = None, None, False
    try:
        if policy is not None:
            feature_cache.apply(model, policy)  # removed with the stream, like the KV cache
            own_cache = True
        cached = feature_cache.get_handle(model) is not None  # this stream's policy, or one the caller applied
        feature_cache.reset(model, levels)  # a stream is one generation: its cached state starts fresh
        memory = world_memory() if settings.memory == "pose" else None
        if memory is not None and first_block is None:
            raise ValueError("memory 'pose' places frames relative to the prompt: give the stream a first block")
        if first_block is not None:
            raw, prepared = first_condition, model.condition(first_condition)
            context.commit(first_block, prepared)
            if memory is not None:
                memory.begin(first_block)
        produced = 0
        for cond, n_block in zip(conditions, block_frames(model, given), strict=False):  # sizes: endless
            if prepared is None or cond is not raw:  # e.g. a prompt's cross-attention K/V: once, not per block
                raw, prepared = cond, model.condition(cond)
            began = time.perf_counter()
            noise = torch.randn((len(timesteps), batch, n_block, *frame_shape), generator=gen).to(device, dtype)
            call = context.caller(prepared, n_block)
            if cached:  # one denoising loop per block, its calls keyed on their noise level
                feature_cache.next_loop(model, levels, records=not own_cache)  # an endless stream keeps none
                call = keyed(model, call)
            if scheduler is None:
                hook = None if memory is None else memory.guide(raw)
                block = denoise_block(call, noise, timesteps, clamp=model.x0_clamp, x0_hook=hook)
                if memory is not None:
                    memory.write(block)
            else:
                block = scheduler_block(call, noise, scheduler, flow_map=getattr(model, "flow_map", False))
            latency = time.perf_counter() - began
            for i in range(n_block):
                yield StreamFrame(produced, block[:, i], latency, context.kv_bytes, 0 if shard is None else shard.bytes)
                produced += 1
                if frames is not None and produced >= frames:
                    return
            context.commit(block, prepared)
    finally:
        context.release()  # also on Ctrl-C or generator.close(): the cache goes with the stream
        if own_cache:
            feature_cache.remove(model)


def keyed(model: StreamModel, call: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`call` with each model call keyed for the feature cache on its noise level t (per frame; a row's noisiest
    frame keys it), in the driver's [0, 1], whatever the model's own timestep scale."""

    def call_at(x: torch.Tensor, t: torch.Tensor, **target) -> torch.Tensor:
        with feature_cache.step(model, t):
            return call(x, t, **target)

    return call_at


def stream(
    model: StreamModel,
    prompt: torch.Tensor,
    prompt_actions: torch.Tensor,
    actions: Iterable[int],
    settings: StreamSettings | None = None,
    *,
    seed: int = 0,
    frames: int | None = None,
) -> Iterator[StreamFrame]:
    """Yield generated frames of an action-steered model one by one, each as soon as its block is denoised.

    prompt (B, F, C, H, W): the first block (ground truth), prompt_actions (B, F). actions: one action index
    per frame, the same for every row; may be an endless iterator (interactive use). frames: stop after this
    many generated frames. Closing the generator frees the cache.
    """
    fpb, (b, device) = model.frames_per_block, (prompt.shape[0], prompt.device)
    blocks = (torch.tensor(chunk, device=device).expand(b, fpb) for chunk in block_actions(actions, fpb))
    return stream_blocks(
        model, blocks, settings, first_block=prompt, first_condition=prompt_actions, seed=seed, frames=frames
    )


def stream_world(
    model: StreamModel,
    actions: str | Iterable[int],
    world: int = 1_000_000,
    seed: int = 0,
    frames: int | None = None,
    **settings,
) -> Iterator[StreamFrame]:
    """Stream a world model steered by `actions` ("RRUL..." or action indices; may be an endless iterator).

    The prompt is the simulator's first view of map `world`. Yields `StreamFrame`s (pixels (1, 3, H, W) in
    [-1, 1], index, latency) as soon as each block is denoised; `settings` are those of `StreamSettings`
    (mode, steps, window, sinks, ...). Closing the generator frees its cache.
    """
    if isinstance(actions, str):
        actions = parse_actions(actions)
    fpb = model.config.frames_per_block
    device = next(model.parameters()).device
    prompt, prompt_actions, _ = prompt_block([world], [STAY] * fpb, fpb)
    return stream(
        model,
        prompt.to(device),
        prompt_actions.to(device),
        actions,
        StreamSettings(**settings),
        seed=seed,
        frames=frames,
    )
