"""The main job: a prompt x seed grid from the shipped model, and full compute vs the fast default, side by side."""

from __future__ import annotations

import torch

import stretto
from stretto.eval.classifier import prompt_accuracy
from stretto.eval.metrics import psnr_db
from stretto.images import save_images
from stretto.pipelines.image import DEFAULT_SAMPLER, DEFAULT_SHIFT, DEFAULT_STEPS

DEMO_CACHE = "taylor:order=1,interval=7"

DEMO_PROMPTS = [
    "a large red circle in the center",
    "a small blue square on the left",
    "a large yellow triangle at the top",
    "a small green circle at the bottom",
    "a red circle left of a blue square",
    "a white triangle above a purple circle",
    "a green square right of a yellow triangle",
    "a blue circle below a red triangle",
]
# (sampler, steps, shift, cache) per row. "fewest steps" is the fastest setting whose FID and prompt accuracy
# match the 100-step reference in benchmarks/results/samplers.json; "cheaper steps" keeps the 50 Euler steps
# and caches features between them (the fastest cache within the targets of benchmarks/results/cache.json).
SETTINGS = {
    "full compute": ("euler", 50, 1.0, None),
    "cheaper steps": ("euler", 50, 1.0, DEMO_CACHE),
    "stretto fast": (DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_SHIFT, None),
    "fewest steps": ("dpm++2m", 4, 3.0, None),
}


def run_demo(
    model: str = "shapes-flux",
    device: str | torch.device = "cpu",
    out: str = "stretto-demo.png",
    seeds: int = 4,
) -> dict:
    """Generate the demo grid with the fast default; print it against full compute and the fewest-step setting."""
    net = stretto.load(model, device=device)
    classifier = stretto.load("shapes-classifier", device=device)
    prompts = [p for p in DEMO_PROMPTS for _ in range(seeds)]
    seed_list = list(range(seeds)) * len(DEMO_PROMPTS)
    stretto.generate(net, prompts[:2], steps=1, seeds=seed_list[:2])  # warm-up: first calls pay one-off costs
    rows = {}
    for name, (sampler, steps, shift, cache) in SETTINGS.items():
        result = stretto.generate(net, prompts, steps=steps, sampler=sampler, shift=shift, seeds=seed_list, cache=cache)
        rows[name] = (sampler, steps, shift, cache, result)
    full = rows["full compute"][-1]
    path = save_images(
        rows["stretto fast"][-1].images,
        out,
        rows=len(DEMO_PROMPTS),
        row_labels=DEMO_PROMPTS,
        col_labels=[f"seed {s}" for s in range(seeds)],
    )

    print(f"{len(prompts)} images ({len(DEMO_PROMPTS)} prompts x {seeds} seeds), grid of the fast setting: {path}")
    header = (
        f"{'setting':<14} {'sampler':<9} {'steps':>5} {'shift':>5} {'cache':<25} {'calls':>5} {'blocks %':>8} "
        f"{'wall s':>7} {'speedup':>7} {'PSNR vs full':>12} {'prompt acc':>10}"
    )
    print(header)
    print("-" * len(header))
    summary = {}
    for name, (sampler, steps, shift, cache, result) in rows.items():
        speedup = full.stats.wall_s / result.stats.wall_s
        psnr = psnr_db(result.images, full.images)
        acc = prompt_accuracy(classifier, result.images, prompts)
        psnr_text = "ref" if result is full else f"{psnr:.1f} dB"
        computed = result.stats.cache.compute_fraction if result.stats.cache else 1.0
        print(
            f"{name:<14} {sampler:<9} {steps:>5} {shift:>5g} {cache or '-':<25} {result.stats.model_calls:>5} "
            f"{computed:>7.0%} {result.stats.wall_s:>7.2f} {speedup:>6.1f}x {psnr_text:>12} {acc:>10.2f}"
        )
        summary[name] = {
            "sampler": sampler,
            "steps": steps,
            "shift": shift,
            "cache": cache,
            "wall_s": result.stats.wall_s,
            "speedup": speedup,
            "psnr_db": None if result is full else psnr,
            "prompt_acc": acc,
        }
    return summary
