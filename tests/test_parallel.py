"""CFG-parallel over 2 CPU processes (gloo): the same images as one process, with and without a feature cache."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

import stretto
import stretto.parallel
from stretto import cache as feature_cache
from stretto.cli import main
from stretto.pipelines import image
from stretto.pipelines.image import generate

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


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # two processes on two cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    stretto.parallel.init("cpu")
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
    out = tmp_path_factory.mktemp("cfg_parallel")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


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


@pytest.mark.slow
def test_cli_under_torchrun_writes_the_single_process_image(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(stretto.__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
    common = ["generate", "a red circle", "--steps", "4", "--cache", "fora:interval=2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "stretto.cli"]
    run = subprocess.run(
        [*torchrun, *common, "--parallel", "cfg", "--out", str(tmp_path / "two.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "--parallel cfg: counts are rank 0's (cond branch); 98304 bytes all-gathered" in run.stdout
    assert main([*common, "--out", str(tmp_path / "one.png")]) == 0
    two, one = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("two", "one"))
    assert np.abs(two - one).max() <= 1  # 8-bit PNGs: at most one rounding step apart
