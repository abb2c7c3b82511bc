"""The main job: a prompt x seed grid from the shipped model; full compute vs the fast settings and the student."""

from __future__ import annotations

import statistics

import torch
from tqdm import tqdm

from stretto.bench.report import print_table
from stretto.checkpoints import load, shipped_models
from stretto.eval.classifier import prompt_accuracy
from stretto.eval.metrics import psnr_db
from stretto.images import save_images
from stretto.pipelines.image import DEFAULT_SAMPLER, DEFAULT_SHIFT, DEFAULT_STEPS, generate

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
# and caches features between them (the fastest cache within the targets of benchmarks/results/cache.json);
# "distilled" is the shipped flow-map student, the best few-step student in benchmarks/results/distill.json.
SETTINGS = {
    "full compute": ("euler", 50, 1.0, None),
    "cheaper steps": ("euler", 50, 1.0, DEMO_CACHE),
    "stretto fast": (DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_SHIFT, None),
    "fewest steps": ("dpm++2m", 4, 3.0, None),
    "distilled": ("flowmap", 2, None, None),  # the shipped flow-map student of the model, at 2 steps
}
STUDENT = "shapes-flux-flowmap"


def run_demo(
    model: str = "shapes-flux",
    device: str | torch.device = "cpu",
    out: str = "stretto-demo.png",
    seeds: int = 4,
) -> dict:
    """Generate the demo grid with the fast default; print every setting against full compute, speed and quality.

    Timing is honest on a shared CPU: every setting is warmed up first (the first calls pay one-off costs),
    then the settings run in rounds, one round per seed, each setting right after full compute on the same
    prompts; a row's speedup is the median over rounds of full-compute time / its time.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    net = load(model, device=device, kind="shapes-flux")
    classifier = load("shapes-classifier", device=device, kind="shapes-classifier")
    settings = dict(SETTINGS)
    student = _student_of(model, device)
    if student is None:
        del settings["distilled"]

    def run(name: str, prompts: list[str], seed_list) -> object:
        sampler, steps, shift, cache = settings[name]
        if name == "distilled":
            return generate(student, prompts, steps=steps, seeds=seed_list)
        return generate(net, prompts, steps=steps, sampler=sampler, shift=shift, seeds=seed_list, cache=cache)

    for name in settings:  # warm-up
        run(name, DEMO_PROMPTS[:1], 0)
    runs = {name: [] for name in settings}
    for seed in tqdm(range(seeds), desc="demo rounds", unit="round", leave=False):
        for name in settings:
            runs[name].append(run(name, DEMO_PROMPTS, [seed] * len(DEMO_PROMPTS)))
    prompts = [p for p in DEMO_PROMPTS for _ in range(seeds)]  # prompt-major: rows are prompts, columns seeds
    images = {name: torch.stack([r.images for r in rs], dim=1).flatten(0, 1) for name, rs in runs.items()}
    path = save_images(
        images["stretto fast"],
        out,
        rows=len(DEMO_PROMPTS),
        row_labels=DEMO_PROMPTS,
        col_labels=[f"seed {s}" for s in range(seeds)],
    )
    print(f"{len(prompts)} images ({len(DEMO_PROMPTS)} prompts x {seeds} seeds), grid of the fast setting: {path}")
    full_times = [r.stats.wall_s for r in runs["full compute"]]
    summary, rows = {}, []
    for name, (sampler, steps, shift, cache) in settings.items():
        times = [r.stats.wall_s for r in runs[name]]
        first = runs[name][0].stats
        reference = name == "full compute"
        compute = first.cache.compute_fraction if first.cache else 1.0
        summary[name] = {
            "sampler": sampler,
            "steps": steps,
            "shift": shift,
            "cache": cache,
            "model_calls": first.model_calls,
            "compute_fraction": compute,
            "wall_s": statistics.median(times),  # per round of len(DEMO_PROMPTS) images
            # what the counted work predicts: full compute's block evaluations / this row's, counting both CFG
            # branches of a teacher call (a distilled student runs one branch: guidance is baked in)
            "speedup_ideal": 2
            * runs["full compute"][0].stats.model_calls
            / (first.model_calls * compute * (1 if name == "distilled" else 2)),
            "speedup": statistics.median(f / t for f, t in zip(full_times, times, strict=True)),
            "psnr_db": None if reference else psnr_db(images[name], images["full compute"]),
            "prompt_acc": prompt_accuracy(classifier, images[name], prompts),
        }
        rows.append({"setting": name, **summary[name]})
    print_table(rows, TABLE)
    busy = [r["setting"] for r in rows if r["speedup"] > 1.25 * r["speedup_ideal"]]
    if busy:  # other processes slowed the long full-compute runs more than the short ones
        print(f"note: {', '.join(busy)} measured over 1.25x the counted ideal: the machine was busy; rerun when idle")
    print(
        f"speedup: median over {seeds} rounds of full-compute time / the row's time (rows interleaved in each "
        "round); round s: median time of one round; ideal: full compute's block evaluations / the row's"
    )
    return summary


TABLE = [
    ("setting", "setting", "<14"), ("sampler", "sampler", "<9"), ("steps", "steps", ">5"),
    ("shift", lambda r: "-" if r["shift"] is None else f"{r['shift']:g}", ">5"),
    ("cache", lambda r: r["cache"] or "-", "<25"), ("calls", "model_calls", ">5"),
    ("blocks %", lambda r: f"{r['compute_fraction']:.0%}", ">8"), ("round s", "wall_s", ">7.2f"),
    ("ideal", lambda r: f"{r['speedup_ideal']:.1f}x", ">6"), ("speedup", lambda r: f"{r['speedup']:.1f}x", ">7"),
    ("PSNR vs full", lambda r: "ref" if r["psnr_db"] is None else f"{r['psnr_db']:.1f} dB", ">12"),
    ("prompt acc", "prompt_acc", ">10.2f"),
]  # fmt: skip


def _student_of(model: str, device):
    """The shipped flow-map student when the demo runs the shipped teacher it was distilled from, else None."""
    if model != "shapes-flux" or STUDENT not in shipped_models():
        return None
    return load(STUDENT, device=device, kind="shapes-flux")
