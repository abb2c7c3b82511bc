"""Text-to-image generation: prompts -> guided denoiser -> sampler -> images, with counts and timing.

This is the only place that joins a model, classifier-free guidance and a sampler. The sampler sees
just `denoiser(x, sigma)`; the model sees just `(x, sigma, prompt states)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from stretto import cache as feature_cache
from stretto.cache import CacheSummary
from stretto.data.shapes import IMAGE_SIZE, PromptError, check_vocabulary
from stretto.eval.timing import BlockCounter, measure
from stretto.parallel import AllGather
from stretto.pipelines.cfg_parallel import cfg_parallel_denoiser, check_policy, prepare_parallel
from stretto.sampling import TimeShiftedDenoiser, flow_sigmas, get_sampler
from stretto.sampling.few_step import sample_flow_map, sample_x0_renoise

MAX_GUIDANCE = 20.0
DEFAULT_SAMPLER = "dpm++2m"
DEFAULT_STEPS = 8
DEFAULT_GUIDANCE = 3.0
DEFAULT_SHIFT = 1.0
STUDENT_METHODS = ("dmd2", "flowmap")  # the samplers of distilled students (`stretto distill`), named by method


@dataclass
class GenerationStats:
    """What a generation cost: model calls (each a batched CFG call), block evaluations, time, memory."""

    model_calls: int = 0
    sampler_nfe: int = 0
    block_evals: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    peak_mem_bytes: int = 0
    cache: CacheSummary | None = None  # computed / reused / forecast block evaluations per call and branch
    comm_bytes: int = 0  # bytes all-gathered on this rank (multi-process generation only)
    sampler: str = ""  # the sampler and step count used (a student's own when the model is a distilled student)
    steps: int = 0

    @property
    def total_block_evals(self) -> int:
        return sum(self.block_evals)


@dataclass
class Generation:
    images: torch.Tensor  # (N, 3, 32, 32) in [-1, 1], on the CPU
    stats: GenerationStats


def check_settings(steps: int, sampler: str, guidance: float, shift: float) -> None:
    """Raise ValueError naming the bad setting and its allowed range."""
    get_sampler(sampler)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"guidance must be in [0, {MAX_GUIDANCE:g}], got {guidance}")
    if not 0.0 < shift <= 100.0:
        raise ValueError(f"shift must be in (0, 100], got {shift}")


def check_prompts(prompts: Sequence[str], guidance: float) -> None:
    """Raise PromptError naming a prompt outside the vocabulary, or a blank one unless guidance is 0.

    An empty prompt is the model's unconditional prompt: asked for with guidance 0 it gives unconditional
    samples; with any other guidance it is almost always a mistake (a missing prompt), so it is refused.
    """
    for p in prompts:
        if not p.strip() and guidance != 0.0:
            raise PromptError(
                f"prompt {p!r} is {'blank' if p else 'empty'}; for unconditional samples pass an empty prompt "
                "with guidance=0 (the CLI: stretto generate --unconditional)"
            )
        check_vocabulary(p)


def initial_noise(seeds: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """One noise image per seed, drawn on the CPU so the same seed gives the same image on any device."""
    noise = [torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device)


def guided_denoiser(model, prompts: Sequence[str], guidance: float, stats: GenerationStats) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022) with both branches in one batched call.

    guidance 1 runs the conditional branch only; 0 the unconditional (empty-prompt) branch only.
    """
    cond = model.encode_prompts(list(prompts))
    null = model.encode_prompts([""] * len(prompts))
    both = type(cond).cat([cond, null])

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        stats.model_calls += 1
        if guidance == 1.0:
            with feature_cache.step(model, sigma, branches=("cond",)):
                return model(x, sigma, cond)
        if guidance == 0.0:
            with feature_cache.step(model, sigma, branches=("uncond",)):
                return model(x, sigma, null)
        with feature_cache.step(model, sigma, branches=("cond", "uncond")):
            v_cond, v_uncond = model(torch.cat([x, x]), sigma, both).chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    return denoiser


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[str],
    *,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    shift: float = DEFAULT_SHIFT,
    seeds: Sequence[int] | int = 0,
    sigmas: torch.Tensor | None = None,
    time_shift: bool = False,
    cache: feature_cache.CachePolicy | str | None = None,
    parallel: str | None = None,
) -> Generation:
    """Generate one image per prompt. `seeds` is one seed per prompt, or a first seed (prompt i gets seed + i).

    steps / sampler / guidance default to 8 DPM-Solver++(2M) steps at guidance 3; a distilled student (see
    `stretto distill`) samples with its own method at its own steps and the guidance baked into it.

    `sigmas` overrides the (steps, shift) schedule with an explicit one (e.g. a searched schedule).
    `time_shift` evaluates the network at a variance-matched sigma (the Time-Shift Sampler idea).
    `cache` is a feature-cache policy or a `--cache` string such as "taylor:order=2,interval=3", applied
    for this call only (a cache already applied with stretto.cache.apply is used as well).
    Unconditional samples: an empty prompt with guidance=0 (an empty prompt with any other guidance is an error).
    `parallel="cfg"` splits the CFG branches over the 2 processes of a started group, `"ulysses"` the tokens
    over all of them (see cfg_parallel.py; it shards the model for good); every rank gets the whole images.
    """
    prompts = list(prompts)
    student = getattr(getattr(model, "config", None), "student", None)
    if student is not None:
        return _generate_student(model, student, prompts, steps, sampler, guidance, seeds, cache, parallel)
    steps = DEFAULT_STEPS if steps is None else steps
    sampler = DEFAULT_SAMPLER if sampler is None else sampler
    guidance = DEFAULT_GUIDANCE if guidance is None else guidance
    check_prompts(prompts, guidance)
    check_settings(steps, sampler, guidance, shift)
    if isinstance(cache, str):
        cache = feature_cache.parse_policy(cache)
    if parallel is not None:
        check_policy(model, parallel, cache)  # before Ulysses shards the model
        prepare_parallel(model, parallel, guidance)
    seeds = _seed_list(seeds, prompts)
    device = next(model.parameters()).device
    if sigmas is None:
        sigmas = flow_sigmas(steps, shift=shift)
    sigmas = sigmas.to(device)

    stats = GenerationStats(sampler=sampler, steps=steps)
    sample = get_sampler(sampler)
    with feature_cache.applied(model, cache), BlockCounter(model.blocks) as counter, measure(device) as timing:
        feature_cache.reset(model, None if time_shift else sigmas)  # a time-shifted model sees other sigmas
        gather = AllGather() if parallel == "cfg" else None
        if gather is None:
            denoiser = guided_denoiser(model, prompts, guidance, stats)
        else:
            denoiser = cfg_parallel_denoiser(model, prompts, guidance, stats, gather)
        if time_shift:
            denoiser = TimeShiftedDenoiser(denoiser)
        images = sample(denoiser, initial_noise(seeds, device), sigmas)
        if feature_cache.get_handle(model) is not None:
            stats.cache = feature_cache.summary(model)
    stats.comm_bytes = 0 if gather is None else gather.bytes
    return _finish(images, stats, counter, timing)


def _finish(images: torch.Tensor, stats: GenerationStats, counter: BlockCounter, timing) -> Generation:
    """The generation's images (clamped, on the CPU) with its counts and time filled in."""
    stats.sampler_nfe = stats.model_calls
    reused = stats.cache.reused_calls if stats.cache is not None else None
    counts = counter.counts
    stats.block_evals = counts if reused is None else [c - r for c, r in zip(counts, reused, strict=True)]
    stats.wall_s = timing.seconds
    stats.peak_mem_bytes = timing.peak_bytes
    return Generation(images.clamp(-1, 1).cpu(), stats)


def _seed_list(seeds: Sequence[int] | int, prompts: list[str]) -> list[int]:
    seeds = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts; pass one seed per prompt or an int")
    return seeds


def student_steps(student: dict) -> list[int] | None:
    """The step counts a student supports: divisors of its grid for DMD2, None (any) for a flow map."""
    if student["method"] == "flowmap":
        return None
    n = len(student["sigmas"])
    return [k for k in range(1, n + 1) if n % k == 0]


def student_sigmas(student: dict, steps: int) -> torch.Tensor:
    """The sigmas a student visits in `steps` steps: every (n / steps)-th point of a DMD2 grid; a flow map's
    uniform grid from 1 to 0 (ending at 0, where the last jump lands)."""
    if student["method"] == "flowmap":
        return torch.linspace(1.0, 0.0, steps + 1)
    grid = student["sigmas"]
    return torch.tensor(grid[:: len(grid) // steps], dtype=torch.float32)


def _generate_student(model, student: dict, prompts, steps, sampler, guidance, seeds, cache, parallel) -> Generation:
    """A distilled student: one conditional call a step (guidance is baked in), its own sampler and grid."""
    method, baked = student["method"], float(student["guidance"])
    if sampler is not None and sampler != method:
        raise ValueError(f"this model is a distilled {method} student: it samples with {method!r}, not {sampler!r}")
    if guidance is not None and guidance != baked:
        raise ValueError(
            f"this {method} student has teacher guidance {baked:g} baked in; it cannot sample at guidance {guidance:g}"
        )
    supported = student_steps(student)
    steps = student["default_steps"] if steps is None else steps
    if not isinstance(steps, int) or steps < 1 or (supported is not None and steps not in supported):
        allowed = "any number of steps (>= 1)" if supported is None else ", ".join(map(str, supported)) + " steps"
        raise ValueError(f"this {method} student samples in {allowed}, not {steps!r}")
    if parallel is not None:
        raise ValueError(f"a distilled student runs one conditional call a step; parallel={parallel!r} has no branches")
    check_prompts(prompts, baked)
    seeds = _seed_list(seeds, prompts)
    device = next(model.parameters()).device
    sigmas = student_sigmas(student, steps).to(device)
    if isinstance(cache, str):
        cache = feature_cache.parse_policy(cache)
    stats = GenerationStats(sampler=method, steps=steps)
    with feature_cache.applied(model, cache), BlockCounter(model.blocks) as counter, measure(device) as timing:
        feature_cache.reset(model, sigmas)
        cond = model.encode_prompts(prompts)
        x = initial_noise(seeds, device)

        def call(x: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor | None = None) -> torch.Tensor:
            stats.model_calls += 1
            with feature_cache.step(model, sigma, branches=("cond",)):
                return model(x, sigma, cond) if sigma_to is None else model(x, sigma, cond, sigma_to)

        if method == "flowmap":
            images = sample_flow_map(call, x, sigmas)
        else:
            # Renoising draws are seeded per image and step, so an image does not depend on its batch.
            noises = [initial_noise([s * 1_000_003 + 1 + i for s in seeds], device) for i in range(len(sigmas) - 1)]
            images = sample_x0_renoise(call, x, sigmas, noises)
        if feature_cache.get_handle(model) is not None:
            stats.cache = feature_cache.summary(model)
    return _finish(images, stats, counter, timing)
