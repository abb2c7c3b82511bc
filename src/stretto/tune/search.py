"""ECAD-style search for cache schedules: NSGA-II over steps x blocks compute/reuse masks.

"Evolutionary Caching to Accelerate Your Off-the-Shelf Diffusion Model" (Aggarwal et al., 2025) runs a
genetic algorithm (NSGA-II, Deb et al. 2002) over binary cache schedules, scores each on a few calibration
prompts, and keeps the Pareto front of quality vs compute. Here a genome is a `Schedule` mask (steps x
blocks, flattened step-major); its two objectives, both minimised, are the compute fraction (computed block
evaluations over all, from the cache summary) and 1 / PSNR against the full-compute images of the same
prompts and seeds. The first population holds informative masks (full compute, FORA-like every-N-steps,
first and last block always computed, a Delta-DiT-like split) and random ones; variation is pymoo's
two-point crossover (children take step ranges from either parent) and bit-flip mutation; the warm-up
steps are always computed (a repair). Every distinct mask is evaluated once; the returned front is the
non-dominated set of everything evaluated, which includes the full-compute reference. `run_schedule_search`
loads a model by name, records the search as JSON and a figure, and is what `stretto search cache` calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stretto.bench.report import describe_machine
from stretto.cache.schedule import Schedule, format_pattern
from stretto.eval.metrics import psnr_db
from stretto.pipelines.image import check_settings, generate
from stretto.tune.inputs import TUNING_GUIDANCE, TUNING_SAMPLER, TUNING_STEPS, load_inputs, record
from stretto.tune.plots import plot_schedule_search

MIN_POPULATION = 4
DEFAULT_POPULATION = 24
DEFAULT_GENERATIONS = 12
SEARCH_PROMPTS = 4
CALIBRATION_PROMPT_SEED = 4321  # evaluation_prompts' default seed (1234) is the benchmarks' prompt set
FORA_INTERVALS = (2, 3, 4, 6, 8)
FIRST_LAST_INTERVALS = (2, 3, 5)


@dataclass(eq=False)  # compared by identity: the mask is a tensor
class Candidate:
    """One evaluated schedule and its score against full compute."""

    mask: torch.Tensor  # (steps, blocks) bool: True computes
    compute_fraction: float
    psnr_db: float  # mean per-image PSNR vs full compute; inf for identical images
    mse: float
    origin: str  # "full compute", a seed mask's name, "random" or "generation N"

    @property
    def speedup_ideal(self) -> float:
        """1 / compute fraction: the speedup if blocks were all the cost."""
        return 1.0 / self.compute_fraction if self.compute_fraction > 0 else math.inf

    @property
    def pattern(self) -> str:
        """The mask as `Schedule` pattern text ("111/101/...")."""
        return format_pattern(self.mask)

    @property
    def spec(self) -> str:
        """The `--cache` string that runs this schedule."""
        return f"schedule:pattern={self.pattern}"

    def as_dict(self, with_mask: bool = True) -> dict:
        """JSON-ready; an infinite PSNR (identical images) is written as null."""
        row = {
            "compute_fraction": self.compute_fraction,
            "speedup_ideal": self.speedup_ideal,
            "psnr_db": self.psnr_db if math.isfinite(self.psnr_db) else None,
            "mse": self.mse,
            "origin": self.origin,
        }
        return {"mask": self.pattern, **row} if with_mask else row


@dataclass
class SearchResult:
    """The non-dominated front (by compute fraction, cheapest first) and every schedule evaluated."""

    front: list[Candidate]
    evaluated: list[Candidate]
    reference: Candidate  # the full-compute run every candidate is compared with (also on the front)
    model_runs: int = 0  # generations actually run (repeated masks are looked up)
    seconds: float = 0.0
    prompts: list[str] = field(default_factory=list)


def non_dominated(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Members no other candidate beats on both compute fraction and PSNR, cheapest first (ties: the first)."""
    order = sorted(range(len(candidates)), key=lambda i: (candidates[i].compute_fraction, -candidates[i].psnr_db, i))
    front, best = [], -math.inf
    for i in order:
        if candidates[i].psnr_db > best:
            front.append(candidates[i])
            best = candidates[i].psnr_db
    return front


def seed_masks(steps: int, blocks: int, warmup: int = 1) -> list[tuple[str, torch.Tensor]]:
    """Informative starting masks, most useful first: full compute, FORA-like, first+last block, Delta-DiT-like."""
    ones = torch.ones(steps, blocks, dtype=torch.bool)
    index = torch.arange(steps)

    def every(n: int) -> torch.Tensor:  # FORA's full steps: warm-up, every n-th after it, and the final step
        return (index < warmup) | ((index - warmup) % n == 0) | (index == steps - 1)

    fora = [(f"fora:interval={n}", every(n)[:, None].expand(steps, blocks).clone()) for n in FORA_INTERVALS]
    first_last = []
    if blocks >= 3:
        for n in FIRST_LAST_INTERVALS:
            m = every(n)[:, None].expand(steps, blocks).clone()
            m[:, 0] = m[:, -1] = True
            first_last.append((f"first+last, middle every {n}", m))
    delta = ones.clone()
    if blocks >= 2:  # rear half reused on odd steps early in sampling, front half late
        half, odd = blocks // 2, (index % 2 == 1) & (index >= warmup)
        delta[(index < steps // 2) & odd, half:] = False
        delta[(index >= steps // 2) & odd & (index < steps - 1), :half] = False
    others = first_last + [("delta-like, interval 2", delta)]
    named = [("full compute", ones)]  # FORA-like masks alternate with the others, so small populations get both
    for i in range(max(len(fora), len(others))):
        named += fora[i : i + 1] + others[i : i + 1]
    unique, seen = [], set()
    for name, m in named:
        key = m.numpy().tobytes()
        if key not in seen:
            seen.add(key)
            unique.append((name, m))
    return unique


def random_masks(n: int, steps: int, blocks: int, rng: np.random.Generator, warmup: int = 1) -> list[torch.Tensor]:
    """Random masks, each with its own density of computed blocks in [0.35, 0.9]; warm-up steps computed."""
    out = []
    for _ in range(n):
        m = torch.from_numpy(rng.random((steps, blocks)) < rng.uniform(0.35, 0.9))
        m[:warmup] = True
        out.append(m)
    return out


def _check_rounds(population: int, generations: int) -> None:
    if not isinstance(population, int) or isinstance(population, bool) or population < MIN_POPULATION:
        raise ValueError(f"population must be an integer >= {MIN_POPULATION}, got {population!r}")
    if not isinstance(generations, int) or isinstance(generations, bool) or generations < 0:
        raise ValueError(f"generations must be an integer >= 0, got {generations!r}")


def search_schedules(
    model,
    prompts: Sequence[str],
    steps: int,
    sampler: str,
    guidance: float,
    seeds: Sequence[int] | int,
    population: int,
    generations: int,
    *,
    seed: int = 0,
    warmup: int = 1,
    progress: bool = True,
    on_evaluated: Callable[[Candidate], None] | None = None,
) -> SearchResult:
    """NSGA-II over cache schedules of `model` (ECAD): the Pareto front of compute fraction vs PSNR.

    Each candidate generates `prompts` with `seeds` under a `Schedule` and is compared with the same
    generation at full compute. `population` masks per generation, `generations` rounds of offspring after
    the first population, so at most population * (generations + 1) generations are run.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.core.repair import Repair
    from pymoo.operators.crossover.pntx import TwoPointCrossover
    from pymoo.operators.mutation.bitflip import BitflipMutation
    from pymoo.optimize import minimize

    prompts = list(prompts)
    if not prompts:
        raise ValueError("the search needs at least one calibration prompt")
    check_settings(steps, sampler, guidance, 1.0)
    _check_rounds(population, generations)
    if not 0 <= warmup <= steps:
        raise ValueError(f"warmup must be in [0, {steps}] (the number of steps), got {warmup}")
    blocks = len(model.blocks)
    settings = {"steps": steps, "sampler": sampler, "guidance": guidance, "seeds": seeds}
    start = time.perf_counter()
    bar = tqdm(total=1 + population * (generations + 1), desc="search cache", unit="eval", disable=not progress)

    ones = torch.ones(steps, blocks, dtype=torch.bool)
    reference_images = generate(model, prompts, cache=Schedule.from_mask(ones), **settings).images
    reference = Candidate(ones, 1.0, math.inf, 0.0, "full compute")
    scores: dict[bytes, Candidate] = {ones.numpy().tobytes(): reference}
    evaluated, model_runs = [reference], 1
    bar.update()

    rng = np.random.default_rng(seed)
    seeded = seed_masks(steps, blocks, warmup)[: max(1, population - max(1, population // 4))]
    initial = [m for _, m in seeded] + random_masks(population - len(seeded), steps, blocks, rng, warmup)
    names = {m.numpy().tobytes(): name for name, m in seeded}
    round_ = 0  # 0: the first population, then one per generation of offspring

    def evaluate(mask: torch.Tensor) -> Candidate:
        nonlocal model_runs
        key = mask.numpy().tobytes()
        if key not in scores:
            result = generate(model, prompts, cache=Schedule.from_mask(mask), **settings)
            origin = names.get(key, "random") if round_ == 0 else f"generation {round_}"
            cand = Candidate(
                mask.clone(),
                result.stats.cache.compute_fraction,
                psnr_db(result.images, reference_images),
                float((result.images - reference_images).pow(2).mean()),
                origin,
            )
            scores[key] = cand
            evaluated.append(cand)
            model_runs += 1
            if on_evaluated is not None:
                on_evaluated(cand)
        cand = scores[key]
        bar.update()
        bar.set_postfix_str(f"compute {cand.compute_fraction:.2f}, PSNR {cand.psnr_db:.1f} dB")
        return cand

    class MaskProblem(Problem):
        """Two objectives of a flattened (steps x blocks) mask: compute fraction and 1 / PSNR."""

        def __init__(self):
            super().__init__(n_var=steps * blocks, n_obj=2, xl=0, xu=1, vtype=bool)

        def _evaluate(self, X, out, *args, **kwargs):
            nonlocal round_
            cands = [evaluate(torch.from_numpy(np.asarray(x, dtype=bool).reshape(steps, blocks))) for x in X]
            out["F"] = np.array([[c.compute_fraction, 1.0 / c.psnr_db if c.psnr_db > 0 else math.inf] for c in cands])
            round_ += 1

    class ProtectWarmup(Repair):
        """The warm-up steps always compute (step 0 would anyway: nothing is stored yet)."""

        def _do(self, problem, X, **kwargs):
            X = np.asarray(X, dtype=bool).copy()
            X[:, : warmup * blocks] = True
            return X

    algorithm = NSGA2(
        pop_size=population,
        sampling=np.stack([m.flatten().numpy() for m in initial]),
        crossover=TwoPointCrossover(),
        mutation=BitflipMutation(prob=1.0, prob_var=min(0.5, 2.0 / (steps * blocks))),
        repair=ProtectWarmup(),
        eliminate_duplicates=True,
    )
    try:
        minimize(MaskProblem(), algorithm, ("n_gen", generations + 1), seed=seed, verbose=False)
    finally:
        bar.close()
    return SearchResult(
        front=non_dominated(evaluated),
        evaluated=evaluated,
        reference=reference,
        model_runs=model_runs,
        seconds=time.perf_counter() - start,
        prompts=prompts,
    )


def run_schedule_search(
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    model: str = "shapes-flux",
    device: str | torch.device = "cpu",
    steps: int = TUNING_STEPS,
    sampler: str = TUNING_SAMPLER,
    guidance: float = TUNING_GUIDANCE,
    num_prompts: int = SEARCH_PROMPTS,
    population: int = DEFAULT_POPULATION,
    generations: int = DEFAULT_GENERATIONS,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Search cache schedules for the model named `model`; write JSON (and a plot) where given, return the dict.

    `seed` seeds the search and is the first noise seed (calibration prompt i gets seed + i).
    """
    _check_rounds(population, generations)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    net, prompts = load_inputs(model, device, num_prompts, steps, sampler, guidance, CALIBRATION_PROMPT_SEED)
    seeds = [seed + i for i in range(len(prompts))]
    found = search_schedules(
        net, prompts, steps, sampler, guidance, seeds, population, generations, seed=seed, progress=progress
    )
    result = {
        "method": "ecad-nsga2",
        "machine": describe_machine(device),
        "model": model,
        "sampler": sampler,
        "steps": steps,
        "guidance": guidance,
        "num_prompts": num_prompts,
        "prompts": prompts,
        "seeds": seeds,
        "population": population,
        "generations": generations,
        "search_seed": seed,
        "model_runs": found.model_runs,
        "wall_s": round(found.seconds, 1),
        "blocks": len(net.blocks),
        "objectives": "minimise compute fraction and 1/PSNR (dB, vs the full-compute images of the same prompts)",
        "reference": {"compute_fraction": 1.0, "psnr_db": None, "note": "full compute; PSNR null means identical"},
        "front": [c.as_dict() for c in found.front],
        "evaluated": [c.as_dict(with_mask=False) for c in found.evaluated],
        "command": (
            f"stretto search cache --model {model} --steps {steps} --sampler {sampler} --guidance {guidance} "
            f"--num-prompts {num_prompts} --population {population} --generations {generations} --seed {seed}"
        ),
    }
    return record(result, json_path, plot_path, plot_schedule_search)
