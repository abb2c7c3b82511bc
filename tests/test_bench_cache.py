"""The cache benchmark's pieces: the compute counter, diffusers' caches on stretto's model, a tiny bench run."""

import json
import time

import pytest
import torch

import stretto
from stretto.bench import diffusers_caches
from stretto.eval.timing import ComputeCounter, StackTimer

torch.set_num_threads(1)

PROMPTS = ["red circle", "small blue square left of green triangle"]
KW = dict(steps=6, sampler="euler", guidance=3.0, seeds=[0, 1])


@pytest.fixture(scope="module")
def shapes():
    return stretto.load("shapes-flux")


def test_compute_counter_matches_the_cache_summary(shapes):
    with ComputeCounter(shapes.blocks) as full:
        stretto.generate(shapes, PROMPTS, **KW)
    with ComputeCounter(shapes.blocks) as cached:
        result = stretto.generate(shapes, PROMPTS, cache="fora:interval=2,warmup=1,final=false", **KW)
    assert 0 < cached.tokens < full.tokens
    assert cached.tokens / full.tokens == pytest.approx(result.stats.cache.compute_fraction)


def test_stack_timer_times_the_blocks_not_the_rest(shapes):
    with StackTimer(shapes.blocks[0], shapes.blocks[-1]) as timer:
        start = time.perf_counter()
        stretto.generate(shapes, PROMPTS, **KW)
        total = time.perf_counter() - start
    assert 0 < timer.seconds < total
    seconds = timer.seconds
    stretto.generate(shapes, PROMPTS, **KW)  # detached: no more time added
    assert timer.seconds == seconds


def test_wall_check_rows_carry_both_ideals(tmp_path):
    from stretto.bench.cache import run_wall_check

    spec, plot = "fora:interval=2,warmup=1", tmp_path / "w.png"
    result = run_wall_check([spec], tmp_path / "wall.json", num_images=2, steps=4, repeats=1, plot_path=plot)
    assert plot.stat().st_size > 0
    (row,) = json.loads((tmp_path / "wall.json").read_text())["rows"]
    assert row == result["rows"][0]
    assert 0 < row["stack_share"] < 1 and row["compute_fraction"] < 1
    # the Amdahl ideal keeps the work outside the stack, so it promises less than 1 / fraction
    assert 1 < row["speedup_ideal_amdahl"] < row["speedup_ideal"] == pytest.approx(1 / row["compute_fraction"])
    assert row["of_ideal_amdahl"] == pytest.approx(row["speedup_wall"] / row["speedup_ideal_amdahl"])


def test_compute_counter_names_blocks_it_cannot_count():
    with pytest.raises(ValueError, match="block 0 .*attn.to_q"):
        ComputeCounter([torch.nn.Linear(2, 2)])


def test_diffusers_loop_without_cache_matches_stretto(shapes):
    ours = stretto.generate(shapes, PROMPTS, **KW).images
    for params in ({}, {"batched": True}):
        theirs = diffusers_caches.generate(shapes, PROMPTS, "none", params, **KW).images
        assert torch.allclose(theirs, ours, atol=1e-5), params


@pytest.mark.parametrize(
    "name,params",
    [
        ("firstblock", {"threshold": 0.5}),
        ("taylorseer", {"cache_interval": 2, "disable_cache_before_step": 1}),
        ("pab", {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (0, 1000)}),
    ],
)
def test_diffusers_caches_skip_work_on_stretto_model(shapes, name, params):
    with ComputeCounter(shapes.blocks) as full:
        plain = diffusers_caches.generate(shapes, PROMPTS, "none", {}, **KW).images
    with ComputeCounter(shapes.blocks) as cached:
        images = diffusers_caches.generate(shapes, PROMPTS, name, params, **KW).images
    assert cached.tokens < full.tokens
    assert torch.isfinite(images).all() and not torch.equal(images, plain)
    # the cache is disabled afterwards: the plain run again gives the plain images
    assert torch.equal(diffusers_caches.generate(shapes, PROMPTS, "none", {}, **KW).images, plain)


def test_diffusers_magcache_calibration_gives_one_ratio_per_step(shapes):
    ratios = diffusers_caches.calibrate_magcache(shapes, PROMPTS, **KW)
    assert len(ratios) == KW["steps"] and all(r > 0 for r in ratios)


def test_unknown_diffusers_cache_is_named():
    with pytest.raises(ValueError, match="unknown diffusers cache 'nope'.*firstblock"):
        diffusers_caches.make_config("nope", {}, 4, lambda: 0)


def test_tiny_bench_rows_and_plot(tmp_path):
    from stretto.bench.cache import run_cache_bench

    run_cache_bench(
        tmp_path / "cache.json", tmp_path / "cache.png", num_images=2, setups=(("euler", 4),),
        policies=["none", "fora", "firstblock"], calibrate=False,
    )  # fmt: skip
    assert (tmp_path / "cache.png").stat().st_size > 0
    saved = json.loads((tmp_path / "cache.json").read_text())
    assert "machine" in saved
    keys = {"engine", "policy", "params", "block_evals", "block_evals_full", "compute_fraction", "wall_s",
            "speedup_wall", "speedup_ideal", "psnr_db", "ssim", "fid", "prompt_acc"}  # fmt: skip
    for row in saved["rows"]:
        assert keys <= set(row)
        assert row["speedup_ideal"] == pytest.approx(row["block_evals_full"] / row["block_evals"])
    assert {r["engine"] for r in saved["rows"]} == {"stretto", "diffusers"}
    fora = [r for r in saved["rows"] if r["policy"] == "fora"]
    assert len(fora) == 4 and all(r["compute_fraction"] < 1 for r in fora)
    with pytest.raises(ValueError, match="num_images must be >= 2"):
        run_cache_bench(tmp_path / "x.json", None, num_images=1)
