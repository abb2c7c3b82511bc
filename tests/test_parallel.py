"""Over 2 CPU processes (gloo): CFG-parallel and Ulysses images, and the Ulysses world stream, equal one process's."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from test_world import run as run_world
from test_world import tiny_world

import stretto
import stretto.parallel
from stretto import cache as feature_cache
from stretto import checkpoints
from stretto.cli import main
from stretto.models.kv_cache import cache_bytes
from stretto.models.world_dit import WorldDiT, WorldDiTConfig
from stretto.pipelines import image, world_parallel
from stretto.pipelines.image import generate
from stretto.pipelines.world import StreamSettings

PROMPTS = ["a red circle", "a blue square"]
# (cache, max abs diff allowed against one batched process). Every rank is bit-equal to one process that runs
# the branches as separate calls; what is left is rounding from the batch shape (a batch of 4 rows vs 2 in
# the timestep embedder's first Linear differs by ~4e-7), which Taylor's finite differences (divided by
# sigma gaps) amplify to ~1.4e-5 at these settings.
CASES = [
    (None, 1e-5),
    ("fora:interval=2", 1e-5),
    ("teacache:threshold=0.3", 1e-5),
    ("dbcache:first=1,threshold=0.3,warmup=2", 1e-5),
    ("taylor:order=2,interval=2,warmup=1", 2e-5),
]
STEPS = 8  # the default
# policies deciding from the step index alone; Taylor again amplifies rounding (token-slice shapes here)
ULYSSES = [(None, 1e-5), ("fora:interval=2", 1e-5), ("taylor:order=2,interval=2,warmup=1", 2e-5)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decisions(g, branch: str | None = None) -> list[tuple[str, float, float, float]]:
    """Per model call and branch: computed / reused / forecast block evaluations (what the policy decided)."""
    records = [] if g.stats.cache is None else g.stats.cache.records
    return [(r.branch, r.computed, r.reused, r.forecast) for r in records if branch in (None, r.branch)]


def _join(rank: int, port: int) -> None:
    """Join the 2-process gloo group on this machine as `rank`."""
    torch.set_num_threads(1)  # two processes on two cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    stretto.parallel.init("cpu")


def _spawn(worker, out: Path) -> list[dict]:
    """Run worker(rank, port, out) on 2 processes; what each rank saved to out/rank{r}.pt."""
    mp.spawn(worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    try:
        model = stretto.load("shapes-flux")
        results = {}
        for cache, _ in CASES:
            g = generate(model, PROMPTS, steps=STEPS, seeds=3, cache=cache, parallel="cfg")
            results[cache] = (g.images, _decisions(g), g.stats.comm_bytes, g.stats.model_calls)
        ulysses = {}
        for cache, _ in ULYSSES:  # last: Ulysses shards the model for good
            ulysses[cache] = generate(model, PROMPTS, steps=STEPS, seeds=3, cache=cache, parallel="ulysses").images
        errors = []
        for kwargs in ({"guidance": 1.0}, {"cache": "toca"}, {"cache": "teacache", "parallel": "ulysses"}):
            try:
                generate(model, PROMPTS, steps=2, **{"parallel": "cfg", **kwargs})
            except ValueError as err:
                errors.append(str(err))
        torch.save({"results": results, "ulysses": ulysses, "errors": errors}, f"{out}/rank{rank}.pt")
    finally:
        stretto.parallel.finish()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    return _spawn(_worker, tmp_path_factory.mktemp("cfg_parallel"))


def _separate_calls(model, prompts, guidance, stats):
    """One process running the two branches as separate calls: what the two ranks compute between them."""
    cond, null = model.encode_prompts(list(prompts)), model.encode_prompts([""] * len(prompts))

    def denoiser(x, sigma):
        stats.model_calls += 1
        with feature_cache.step(model, sigma, branches=("cond",)):
            v_cond = model(x, sigma, cond)
        with feature_cache.step(model, sigma, branches=("uncond",)):
            v_uncond = model(x, sigma, null)
        return v_uncond + guidance * (v_cond - v_uncond)

    return denoiser


# The 2-process tests are `slow`: run alone they pass in ~8 s, but inside the full suite a spawned child once
# aborted at exit ("terminate called without an active exception", after the Ulysses run) on a fresh clone;
# until that teardown is understood they stay out of the default run (`pytest -m slow tests/test_parallel.py`).
@pytest.mark.slow
@pytest.mark.parametrize(("cache", "tolerance"), CASES)
def test_cfg_parallel_matches_one_process(ranks, cache, tolerance, monkeypatch):
    model = stretto.load("shapes-flux")
    single = generate(model, PROMPTS, steps=STEPS, seeds=3, cache=cache)
    monkeypatch.setattr(image, "guided_denoiser", _separate_calls)
    separate = generate(model, PROMPTS, steps=STEPS, seeds=3, cache=cache)
    for branch, r in zip(("cond", "uncond"), ranks, strict=True):
        images, decisions, comm, calls = r["results"][cache]
        assert (images - single.images).abs().max() <= tolerance
        # bit for bit what one process computes with unbatched branches: the rest is batch-shape rounding
        assert torch.equal(images, separate.images)
        # each rank's cache decided exactly what one process decides for that branch's rows
        assert decisions == _decisions(single, branch)
        assert calls == single.stats.model_calls == STEPS
        # per model call each rank contributes one (2, 3, 32, 32) fp32 velocity; the gathered list holds both
        assert comm == STEPS * 2 * (2 * 3 * 32 * 32 * 4)
    if cache is not None:  # the cache really skipped work
        assert sum(d[2] + d[3] for d in _decisions(single)) > 0
    assert torch.equal(ranks[0]["results"][cache][0], ranks[1]["results"][cache][0])


@pytest.mark.slow
def test_cfg_parallel_refuses_what_it_cannot_split(ranks):
    guidance, toca, teacache = ranks[0]["errors"]
    assert "guidance must not be 0 or 1, got 1.0" in guidance
    assert "cache 'toca' picks one token subset" in toca
    assert "cache 'teacache' decides from hidden states, which parallel 'ulysses' splits" in teacache


@pytest.mark.slow
@pytest.mark.parametrize(("cache", "tolerance"), ULYSSES)
def test_ulysses_matches_one_process(ranks, cache, tolerance):
    single = generate(stretto.load("shapes-flux"), PROMPTS, steps=STEPS, seeds=3, cache=cache)
    for r in ranks:
        assert (r["ulysses"][cache] - single.images).abs().max() <= tolerance


def test_cfg_parallel_needs_two_processes(tiny_flux):
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="2 processes, got world size 1"):
        generate(tiny_flux, ["a red circle"], steps=2, parallel="cfg")
    with pytest.raises(ValueError, match="parallel must be one of cfg"):
        generate(tiny_flux, ["a red circle"], steps=2, parallel="ring")


def test_cli_parallel_needs_torchrun(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["generate", "a red circle", "--parallel", "cfg", "--out", "unused.png"]) == 2
    assert "WORLD_SIZE is not set; launch with torchrun" in capsys.readouterr().err


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 -m stretto.cli ARGS` with this checkout's stretto, offline; its output as text."""
    env = {**os.environ, "PYTHONPATH": str(Path(stretto.__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "stretto.cli"]
    run = subprocess.run([*torchrun, *args], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run


@pytest.mark.slow
def test_cli_under_torchrun_writes_the_single_process_image(tmp_path):
    common = ["generate", "a red circle", "--steps", "4", "--cache", "fora:interval=2"]
    run = _torchrun([*common, "--parallel", "cfg", "--out", str(tmp_path / "two.png")])
    assert "--parallel cfg: counts are rank 0's (cond branch); 98304 bytes all-gathered" in run.stdout
    assert main([*common, "--out", str(tmp_path / "one.png")]) == 0
    two, one = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("two", "one"))
    assert np.abs(two - one).max() <= 1  # 8-bit PNGs: at most one rounding step apart


# -- Ulysses for the world stream (stretto's own block-causal DiT) --------------------------------------------------
WORLD_FRAMES = 6  # generated past a one-block prompt
# name: (frames per block, settings), each streamed by a float64 tiny_world (2 heads: one per rank, 36 tokens a frame)
WORLD_CASES = {
    "kv-rolling": (1, StreamSettings(mode="kv-rolling", window=3, sinks=1)),  # evicts from the 5th block on
    # 108 tokens a block, 54 per rank: rank 0's slice ends inside the block's second frame
    "kv-rolling, 3-frame blocks": (3, StreamSettings(mode="kv-rolling", window=6, sinks=0)),
    "kv": (1, StreamSettings(mode="kv")),
    "recompute": (1, StreamSettings(mode="recompute", window=3, sinks=1)),  # context and mask grow per block
    "kv-rolling, crossblock": (1, StreamSettings(mode="kv-rolling", window=3, sinks=1, feature_cache="crossblock")),
}
WORLD_ERRORS = {  # model config changes / settings that the ranks refuse alike (before any collective)
    "heads": ({"n_head": 1}, {}),
    "tokens": ({"frame_size": 12}, {}),  # 9 tokens a frame
    "cache": ({}, {"feature_cache": "teacache"}),
}


def _world_errors() -> dict[str, str]:
    errors = {}
    for name, (config, settings) in WORLD_ERRORS.items():
        model = tiny_world() if not config else WorldDiT(WorldDiTConfig(n_layer=1, n_embd=32, **config)).double()
        try:
            run_world(model, 2, StreamSettings(parallel="ulysses", **settings))
        except ValueError as err:
            errors[name] = str(err)
    return errors


def _world_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    try:
        results = {}
        for name, (fpb, settings) in WORLD_CASES.items():
            pixels, frames = run_world(tiny_world(fpb), WORLD_FRAMES, replace(settings, parallel="ulysses"))
            results[name] = (pixels, frames[-1].kv_bytes, frames[-1].comm_bytes)
        torch.save({"results": results, "errors": _world_errors()}, f"{out}/rank{rank}.pt")
    finally:
        stretto.parallel.finish()


@pytest.fixture(scope="module")
def world_ranks(tmp_path_factory) -> list[dict]:
    return _spawn(_world_worker, tmp_path_factory.mktemp("ulysses_world"))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(WORLD_CASES))
def test_ulysses_world_stream_matches_one_process(world_ranks, case):
    fpb, settings = WORLD_CASES[case]
    single, frames = run_world(tiny_world(fpb), WORLD_FRAMES, settings)
    for r in world_ranks:
        pixels, kv_bytes, comm = r["results"][case]
        assert pixels.shape == single.shape == (WORLD_FRAMES, 1, 3, 24, 24)
        assert (pixels - single).abs().max() <= 1e-12  # float64: rounding from the token-slice shapes only
        if settings.mode == "recompute":
            assert kv_bytes == frames[-1].kv_bytes == 0
        else:  # a rank's K/V buffers are half one process's; the per-slot metadata (position, valid, block) stays
            c = tiny_world(fpb).config
            shape = (c.n_layer, 1, c.n_head, c.head_dim)
            slots = frames[-1].kv_bytes // cache_bytes(*shape, 1, torch.float64)  # bytes are linear in the slots
            kv = 2 * c.n_layer * c.n_head * slots * c.head_dim * 8  # one process's K and V, float64
            assert frames[-1].kv_bytes == cache_bytes(*shape, slots, torch.float64)
            assert kv_bytes == cache_bytes(c.n_layer, 1, c.n_head // 2, c.head_dim, slots, torch.float64)
            assert frames[-1].kv_bytes - kv_bytes == kv // 2
        assert comm > 0
    assert torch.equal(world_ranks[0]["results"][case][0], world_ranks[1]["results"][case][0])


@pytest.mark.slow
def test_ulysses_world_stream_counts_its_traffic(world_ranks):
    """kv-rolling, 1-frame blocks: 30 model calls of 36 tokens (the prompt's commit, 6 blocks x 4 steps, 5 commits).

    Per call and layer a rank sends its (3, 1, 2 heads, 18 tokens, 16) q, k, v and gets back a (1, 1, 36, 16)
    output, both all-to-all; at the end it all-gathers the (1, 18, 48) float64 output tokens of both ranks.
    """
    per_call = 2 * (3 * 2 * 18 * 16 + 36 * 16) * 8 + 2 * 18 * 48 * 8
    for r in world_ranks:
        assert r["results"]["kv-rolling"][2] == 30 * per_call


@pytest.mark.slow
def test_ulysses_world_stream_refuses_what_it_cannot_split(world_ranks):
    for r in world_ranks:
        e = r["errors"]
        assert "n_head=1 must divide by the world size, got 2" in e["heads"]
        assert "the 9 tokens of a block over the ranks without padding" in e["tokens"]
        assert "cache 'teacache' decides from hidden states" in e["cache"]


def test_ulysses_world_stream_needs_a_process_group():
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match=r"got world size 1: launch with torchrun --nproc-per-node 2"):
        run_world(tiny_world(), 2, StreamSettings(parallel="ulysses"))
    with pytest.raises(ValueError, match="StreamSettings.parallel must be one of ulysses"):
        run_world(tiny_world(), 2, StreamSettings(parallel="cfg"))
    with pytest.raises(ValueError, match="Ulysses needs a process group"):
        stretto.parallel.UlyssesShard()


@pytest.mark.parametrize(
    ("config", "settings", "message"),
    [
        ({"n_head": 1}, {}, "n_head=1 must divide by the world size, got 2"),
        ({"frame_size": 12}, {}, "the 9 tokens of a block over the ranks without padding"),
        ({"frame_size": 12}, {"mode": "recompute"}, "the 9 tokens of a frame over the ranks"),
        ({}, {"feature_cache": "teacache"}, "cache 'teacache' decides from hidden states"),
        ({}, {"feature_cache": "toca"}, "cache 'toca' decides from hidden states"),
    ],
)
def test_ulysses_world_stream_refuses_before_any_collective(config, settings, message, monkeypatch):
    """The checks run on every rank alike, before a collective: here one process posing as 2 ranks."""
    monkeypatch.setattr(world_parallel, "world_size", lambda: 2)
    model = WorldDiT(WorldDiTConfig(n_layer=1, n_embd=32, **{"n_head": 2, **config})).double()
    with pytest.raises(ValueError, match=message):
        run_world(model, 2, StreamSettings(parallel="ulysses", **settings))


def test_ulysses_world_stream_refuses_other_stream_models(monkeypatch):
    from test_causal_wan import run as run_wan
    from test_causal_wan import tiny_wan

    monkeypatch.setattr(world_parallel, "world_size", lambda: 2)
    message = "the tokens of stretto's world model (world-dit), not a 'causal-wan'"
    with pytest.raises(ValueError, match=re.escape(message)):
        run_wan(tiny_wan(), 3, StreamSettings(parallel="ulysses"))


def test_cli_world_stream_parallel_needs_torchrun(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = str(checkpoints.save(tiny_world().float(), tmp_path / "world"))
    common = ["stream", "--model", model, "--frames", "2", "--out", str(tmp_path / "w.gif"), "--parallel", "ulysses"]
    assert main(common) == 2
    assert "WORLD_SIZE is not set; launch with torchrun" in capsys.readouterr().err
    assert main([*common, "--interactive"]) == 2
    assert "--parallel ulysses streams on every rank from the same actions: no --interactive" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_world_stream_under_torchrun_writes_the_single_process_gif(tmp_path):
    model = str(checkpoints.save(tiny_world().float(), tmp_path / "world"))
    common = ["stream", "--model", model, "--actions", "RRUL", "--frames", "4", "--window", "2"]
    run = _torchrun([*common, "--parallel", "ulysses", "--out", str(tmp_path / "two.gif")])
    assert run.stdout.count("wrote ") == 1  # rank 0 alone writes and reports
    assert "--parallel ulysses: KV cache" in run.stdout and "MiB per rank" in run.stdout
    assert main([*common, "--out", str(tmp_path / "one.gif")]) == 0
    two, one = (Image.open(tmp_path / f"{n}.gif") for n in ("two", "one"))
    assert two.n_frames == one.n_frames == 4
    for i in range(4):
        two.seek(i)
        one.seek(i)
        a, b = (np.asarray(g.convert("RGB")).astype(int) for g in (two, one))
        assert np.abs(a - b).max() <= 1  # float32 model, 8-bit GIF: at most one rounding step apart
