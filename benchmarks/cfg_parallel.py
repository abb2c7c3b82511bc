"""CFG-parallel and Ulysses on this machine: one process (all cores) against two ranks (one core each).

    torchrun --nproc-per-node 2 benchmarks/cfg_parallel.py --out /tmp/cfg_parallel.json

Per batch size: median wall time of the generation (model loaded, one warm-up run excluded) for one batched
process with 1 and with 2 threads and for cfg-parallel and Ulysses with 1 thread per rank, the speedup over the faster
single process, the max abs difference of the images, and the bytes all-gathered per model call. All are
timed in the same run, in turn, so a busy machine slows them alike (2 OpenMP threads suffer most when other
jobs hold the cores).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.distributed as dist

import stretto
import stretto.parallel
from stretto.pipelines.image import generate


def timed(model, n: int, repeats: int, **kwargs) -> tuple[float, torch.Tensor, int]:
    """Median wall seconds over `repeats` generations of n images (after one warm-up), the images, comm bytes."""
    prompts = ["a red circle left of a blue square"] * n
    g = generate(model, prompts, seeds=0, **kwargs)
    walls = []
    for _ in range(repeats):
        g = generate(model, prompts, seeds=0, **kwargs)
        walls.append(g.stats.wall_s)
    return statistics.median(walls), g.images, g.stats.comm_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,16", help="images per generation, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--out", default="/tmp/cfg_parallel.json")
    args = parser.parse_args()
    stretto.parallel.init("cpu")
    model = stretto.load("shapes-flux")
    sharded = stretto.load("shapes-flux")  # Ulysses shards its transformer for good
    rows = []
    for n in (int(b) for b in args.batches.split(",")):
        torch.set_num_threads(1)  # two ranks share the two cores
        par, images, comm = timed(model, n, args.repeats, steps=args.steps, cache=args.cache, parallel="cfg")
        uly, uly_images, _ = timed(sharded, n, args.repeats, steps=args.steps, cache=args.cache, parallel="ulysses")
        dist.barrier()
        if stretto.parallel.rank() == 0:
            one_thread, single, _ = timed(model, n, args.repeats, steps=args.steps, cache=args.cache)
            torch.set_num_threads(2)  # the single process gets the whole machine
            two_threads, _, _ = timed(model, n, args.repeats, steps=args.steps, cache=args.cache)
            rows.append(
                {
                    "images": n,
                    "single_1thread_s": round(one_thread, 4),
                    "single_2threads_s": round(two_threads, 4),
                    "cfg_parallel_s": round(par, 4),
                    "speedup": round(min(one_thread, two_threads) / par, 3),
                    "max_abs_diff": float((images - single).abs().max()),
                    "ulysses_s": round(uly, 4),
                    "ulysses_speedup": round(min(one_thread, two_threads) / uly, 3),
                    "ulysses_max_abs_diff": float((uly_images - single).abs().max()),
                    "bytes_per_call": comm // args.steps,
                }
            )
            print(rows[-1], flush=True)
        dist.barrier()
    if stretto.parallel.rank() == 0:
        with open(args.out, "w") as f:
            json.dump({"steps": args.steps, "cache": args.cache, "repeats": args.repeats, "rows": rows}, f, indent=1)
    stretto.parallel.finish()


if __name__ == "__main__":
    main()
