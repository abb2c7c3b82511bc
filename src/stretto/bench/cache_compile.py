"""`stretto bench cache --compile`: torch.compile and a feature cache, alone and together, as wall-clock ratios.

The blocks are compiled (`stretto.cache.compile_blocks`; cache/compiled.py says why not the whole model) on a
copy of the model, so the eager and the compiled model sit side by side. Each repeat runs the four variants
back to back (eager full, eager cached, compiled full, compiled cached), in a rotating order so none always
runs first after another; every ratio is a median over repeats of times from the same repeat, so the drift
of a shared machine cancels. Compilation happens in a warm-up run per variant and is reported apart.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from tqdm import tqdm

import stretto
from stretto.bench.report import describe_machine, write_json
from stretto.cache import compile_blocks, parse_policy
from stretto.data.shapes import evaluation_prompts
from stretto.eval.metrics import psnr_db
from stretto.eval.timing import ComputeCounter
from stretto.pipelines.image import DEFAULT_GUIDANCE

VARIANTS = ("eager full", "eager cached", "compiled full", "compiled cached")


def run_compile_check(
    specs: list[str],
    json_path: str | Path | None = None,
    model: str = "shapes-flux",
    device: str | torch.device = "cpu",
    num_images: int = 16,
    sampler: str = "euler",
    steps: int = 50,
    repeats: int = 3,
    guidance: float = DEFAULT_GUIDANCE,
) -> dict:
    """Compile + cache vs compile alone vs cache alone, over eager full compute, for each `--cache` spec."""
    eager = stretto.load(model, device=device)
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled)
    prompts, seeds = evaluation_prompts(num_images), list(range(num_images))

    def timed(net, spec: str | None) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        images = stretto.generate(net, prompts, steps=steps, sampler=sampler, guidance=guidance, seeds=seeds,
                                  cache=spec).images  # fmt: skip
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, images

    counters.clear()
    nets = {"eager": eager, "compiled": compiled}
    rows = []
    for spec in tqdm(specs, desc="compile check"):
        parse_policy(spec)  # a bad spec fails before any compiling
        runs = {v: (nets[v.split()[0]], spec if v.endswith("cached") else None) for v in VARIANTS}
        warmup = {v: timed(*runs[v]) for v in VARIANTS}  # compiles (the first spec also compiles full compute)
        with ComputeCounter(eager.blocks) as full:
            timed(eager, None)
        with ComputeCounter(eager.blocks) as cached:
            timed(eager, spec)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(repeats):
            for v in VARIANTS[r % 4 :] + VARIANTS[: r % 4]:
                times[v].append(timed(*runs[v])[0])
        reference = warmup["eager full"][1]

        fraction = cached.work / full.work
        rows.append({
            "policy": parse_policy(spec).name, "params": parse_policy(spec).describe(),
            "compute_fraction": fraction, "speedup_ideal": 1 / fraction,
            "speedup_cache": median_ratio(times, "eager full", "eager cached"),
            "speedup_compile": median_ratio(times, "eager full", "compiled full"),
            "speedup_compile_cache": median_ratio(times, "eager full", "compiled cached"),
            "cache_on_compiled": median_ratio(times, "compiled full", "compiled cached"),
            "warmup_s": {v: warmup[v][0] for v in VARIANTS},
            "wall_s": times,
            "psnr_cached_db": psnr_db(warmup["eager cached"][1], reference),
            "psnr_compiled_cached_db": psnr_db(warmup["compiled cached"][1], reference),
        })  # fmt: skip
    result = {
        "benchmark": "cache-compile", "model": model, "num_images": num_images, "sampler": sampler,
        "steps": steps, "repeats": repeats, "compile": "stretto.cache.compile_blocks (torch.compile per block)",
        "graphs_compiled": counters["stats"]["unique_graphs"], "machine": describe_machine(device),
        "command": f"stretto bench cache --compile {' '.join(specs)} --num-images {num_images}", "rows": rows,
    }  # fmt: skip
    if json_path:
        write_json(result, json_path)
    print(f"{'policy':<50} {'ideal':>6} {'cache':>6} {'compile':>8} {'both':>6} {'cache on compiled':>18}")
    for r in rows:
        ratios = f"{r['speedup_cache']:>5.2f}x {r['speedup_compile']:>7.2f}x {r['speedup_compile_cache']:>5.2f}x"
        print(f"{r['params'][:50]:<50} {r['speedup_ideal']:>5.2f}x {ratios} {r['cache_on_compiled']:>17.2f}x")
    return result


def median_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over repeats of time[num] / time[den], both from the same repeat."""
    per_repeat = sorted(a / b for a, b in zip(times[num], times[den], strict=True))
    return per_repeat[len(per_repeat) // 2]
