"""`stretto bench stream --feature-cache`: feature caching inside the stream, against the uncached stream.

For one model and one set of stream settings (kv-rolling, the shortest `--frames` length), the uncached stream and
every policy run in turn, `repeats` rounds (uncached, policy 1, policy 2, ...; each round starting one further on,
so no policy always runs right after another): the same model, settings, actions or prompt and noise seed, so a
speedup is a ratio within one run, interleaved against the load of the machine. Each policy's row has the stream
rows' keys (its fps is frames over its summed wall time) and:
- `feature_cache`: the policy as a `--cache` string;
- `speedup_vs_uncached`: the uncached stream's summed wall time over the policy's; `speedup_vs_uncached_cpu`: the
  same ratio of process CPU time (steadier on a loaded machine: time waiting for the CPU does not count);
- `psnr_db_vs_uncached`: PSNR of the frames against the uncached stream's (same episodes), from their mean
  squared error over the whole stream (pixels in [-1, 1]; latents of a video model over their own range, the
  uncached stream's max - min; inf when identical);
- `psnr_loss_db`: how much the quality score dropped: the uncached streams' PSNR against the simulator minus the
  cached ones' (world models; negative: better), over `quality_episodes` held-out episodes (one stream's score
  moves by tenths of a dB with its noise seed alone). None for the video models here, whose random weights have
  no reference to be scored against (their `psnr_db_vs_uncached`, on the timed stream, is the fidelity);
- `blocks_per_frame` / `uncached_blocks_per_frame`: transformer block evaluations per generated frame (commit
  passes included), the ideal a speedup is checked against; `uncached_fps`, `repeats`.
- `psnr_db_vs_uncached_median`: the median frame's own PSNR against the uncached stream's same frame (the pooled
  figure above is set by the few frames where the streams went different ways; this one by the typical frame).
Two uncached streams that differ only in their noise seed are a yardstick for both: `seed_psnr_db` and
`seed_psnr_db_median` on the rows are those of the uncached stream at seed + 1 against seed's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from stretto.cache import parse_policy
from stretto.eval.timing import BlockCounter

# within a block (FORA at its defaults; compute the first and last step), a first-block threshold, the previous
# block's deep residual at every step, and cross-block + within-block plans (stretto.cache.cross_block)
DEFAULT_FEATURE_CACHES = (
    "fora:interval=2",
    "fora:interval=3,warmup=0",
    "firstblock:threshold=0.4",
    "crossblock:plan=xxxx,first=1,refresh=2",
    "crossblock:plan=xcwc",
    "crossblock:plan=xxwc",
    "crossblock:plan=xwwc",
)


@dataclass
class StreamRun:
    """One timed stream: its frames (N, B, ...), the wall and CPU seconds of the stream alone, and its row."""

    frames: torch.Tensor
    wall_s: float
    cpu_s: float
    row: Callable[[], dict]  # the stream row without the cache keys (built only when needed: not timed)


RunStream = Callable[[str | None, int], StreamRun]  # run(policy or None for uncached, noise seed)


def psnr_vs(frames: torch.Tensor, reference: torch.Tensor, data_range: float) -> float:
    """PSNR in dB of a stream's frames against the reference stream's, for values spanning data_range: from the
    mean squared error over all frames (a per-frame mean would be inf as soon as one frame is identical, e.g. a
    first block computed in full); inf when the streams are identical."""
    mse = float((frames.double() - reference.double()).pow(2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(data_range**2 / mse)


def median_frame_psnr(frames: torch.Tensor, reference: torch.Tensor, data_range: float) -> float:
    """The median over every frame of every episode (frames (N, B, ...)) of its own PSNR against the reference's
    same frame, capped at 99 dB (identical frames): the typical frame, where the pooled `psnr_vs` is set by the
    few frames in which a stream went another way (an object seen in one stream and not in the other)."""
    mse = (frames.double() - reference.double()).pow(2).flatten(2).mean(-1).flatten()
    psnr = torch.where(mse > 0, 10 * torch.log10(data_range**2 / mse.clamp_min(1e-30)), torch.full_like(mse, 99.0))
    return float(psnr.clamp_max(99.0).median())


# untimed streams of several episodes: quality(policy or None, noise seed) -> (frames (N, B, ...), mean PSNR against
# the ground truth in dB)
Quality = Callable[[str | None, int], tuple[torch.Tensor, float]]


def feature_cache_rows(
    run: RunStream,
    blocks: Sequence[nn.Module],
    policies: Sequence[str],
    repeats: int,
    pixels: bool,
    seed: int,
    print_row: Callable[[dict], None] | None = None,
    quality: Quality | None = None,
) -> list[dict]:
    """One row per policy: the uncached stream and the policies run alternately `repeats` times (see the module).
    With `quality`, the PSNR keys come from its episodes (one stream's score is noisy), else from the timed runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    specs: list[str | None] = [None, *(parse_policy(p).describe() for p in policies)]
    wall = dict.fromkeys(specs, 0.0)
    cpu = dict.fromkeys(specs, 0.0)
    first: dict[str | None, tuple[StreamRun, int]] = {}
    with BlockCounter(blocks) as counter:
        for r in range(repeats):
            for spec in specs[r % len(specs) :] + specs[: r % len(specs)]:  # each round in another order
                counter.reset()
                done = run(spec, seed)
                wall[spec] += done.wall_s
                cpu[spec] += done.cpu_s
                first.setdefault(spec, (done, counter.total))
    if quality is None:  # the timed streams themselves
        scored = {spec: (done.frames, done.row().get("psnr_db_vs_sim")) for spec, (done, _) in first.items()}
        other_seed = run(None, seed + 1).frames
    else:
        scored = {spec: quality(spec, seed) for spec in specs}
        other_seed = quality(None, seed + 1)[0]
    reference, base_score = scored[None]
    data_range = 2.0 if pixels else float(reference.max() - reference.min())
    seed_psnr = round(psnr_vs(other_seed, reference, data_range), 2)
    seed_median = round(median_frame_psnr(other_seed, reference, data_range), 2)
    base_blocks = first[None][1]
    n = first[None][0].frames.shape[0]
    rows = []
    for spec in specs[1:]:
        done, evaluated = first[spec]
        frames, score = scored[spec]
        loss = None if score is None or base_score is None else round(base_score - score, 2)
        rows.append({
            **done.row(), "fps": round(n * repeats / wall[spec], 2), "seconds": round(wall[spec] / repeats, 2),
            "feature_cache": spec, "speedup_vs_uncached": round(wall[None] / wall[spec], 3),
            "speedup_vs_uncached_cpu": round(cpu[None] / cpu[spec], 3),
            "psnr_db_vs_uncached": round(psnr_vs(frames, reference, data_range), 2), "psnr_loss_db": loss,
            "psnr_db_vs_uncached_median": round(median_frame_psnr(frames, reference, data_range), 2),
            "seed_psnr_db": seed_psnr, "seed_psnr_db_median": seed_median,
            "uncached_fps": round(n * repeats / wall[None], 2),
            "blocks_per_frame": round(evaluated / n, 2), "uncached_blocks_per_frame": round(base_blocks / n, 2),
            "repeats": repeats, "quality_episodes": frames.shape[1],
        })  # fmt: skip
        if print_row is not None:
            print_row(rows[-1])
    return rows


TABLE = [
    ("model", "model", "<26"), ("feature cache", "feature_cache", "<40"), ("fps", "fps", ">6.1f"),
    ("x wall", "speedup_vs_uncached", ">6.2f"), ("x cpu", "speedup_vs_uncached_cpu", ">6.2f"),
    ("blocks/frame", lambda r: f"{r['blocks_per_frame']:g}/{r['uncached_blocks_per_frame']:g}", ">12"),
    ("PSNR vs uncached", "psnr_db_vs_uncached", ">16.1f"), ("(seed)", "seed_psnr_db", ">6.1f"),
    ("median frame", "psnr_db_vs_uncached_median", ">12.1f"), ("(seed)", "seed_psnr_db_median", ">6.1f"),
    ("PSNR loss", lambda r: "-" if r["psnr_loss_db"] is None else f"{r['psnr_loss_db']:.2f}", ">9"),
]  # fmt: skip
