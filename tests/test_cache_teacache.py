"""TeaCache, its calibration (and MagCache's), and confidence-gated Taylor, on tiny random models."""

import argparse
import json
import math
from functools import partial

import cache_helpers
import pytest
import torch
from cache_helpers import DIFFUSERS, PROMPTS, Toy, euler, records, same_seed_runs, stack_blocks

import stretto.cache as cache
from stretto import checkpoints
from stretto.cache.teacache import modulated_input
from stretto.cli.tune import add_calibrate_commands
from stretto.eval.timing import BlockCounter
from stretto.tune.calibrate import _MeanPerStep, calibrate_magcache, calibrate_teacache

torch.set_num_threads(1)

STEPS = 6
run_generation = partial(cache_helpers.run_generation, steps=STEPS)


def test_threshold_zero_is_bit_identical_to_no_cache(tiny_flux):
    plain = run_generation(tiny_flux, PROMPTS)
    for policy in [cache.TeaCache(threshold=0.0), cache.GatedTaylor(threshold=0.0)]:
        cache.apply(tiny_flux, policy)
        assert torch.equal(run_generation(tiny_flux, PROMPTS), plain), policy
        assert cache.summary(tiny_flux).compute_fraction == 1.0
        cache.remove(tiny_flux)


@pytest.mark.parametrize(
    "policy",
    [cache.TeaCache(threshold=0.5), cache.GatedTaylor(threshold=0.5, warmup=1, max_forecast=3)],
    ids=["teacache", "gatedtaylor"],
)
def test_reduces_block_evaluations_and_stays_close(tiny_flux, policy):
    plain = run_generation(tiny_flux, PROMPTS, steps=8)
    cache.apply(tiny_flux, policy)
    with BlockCounter(tiny_flux.blocks) as counter:
        out = run_generation(tiny_flux, PROMPTS, steps=8)
    assert sum(counter.counts) < 8 * len(tiny_flux.blocks)
    if isinstance(policy, cache.GatedTaylor):
        assert counter.counts[0] == 8  # the gate runs on every step
    assert cache.summary(tiny_flux).compute_fraction < 1
    assert 0 < (out - plain).abs().mean() < 0.05 * plain.abs().mean()
    cache.remove(tiny_flux)


@pytest.mark.parametrize(
    "policy", [cache.TeaCache(threshold=0.5), cache.GatedTaylor(threshold=0.5, warmup=1)], ids=["teacache", "gated"]
)
def test_batched_cfg_matches_separate_branch_calls(tiny_flux, policy):
    cache.apply(tiny_flux, policy)
    batched = run_generation(tiny_flux, PROMPTS, batched=True)
    rec_batched = sorted(records(tiny_flux))
    separate = run_generation(tiny_flux, PROMPTS, batched=False)
    rec_separate = sorted(records(tiny_flux))
    assert rec_batched == rec_separate
    assert any(r[2] or r[3] for r in rec_batched)
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-4)
    cache.remove(tiny_flux)


@pytest.mark.parametrize("spec", ["teacache:threshold=0.4,coefficients=2/0.5/0", "gatedtaylor:order=2,threshold=0.3"])
def test_same_seed_same_output_across_generations(tiny_flux, spec):
    first, again = same_seed_runs(tiny_flux, spec, steps=STEPS)  # seed 3, another batch with seed 9, seed 3
    assert torch.equal(again, first)


@pytest.mark.parametrize("name", ["flux", "sd3", "dit"])
def test_diffusers_transformers(name):
    make, call, shape = DIFFUSERS[name]
    model = make()
    for policy in [
        cache.TeaCache(threshold=10.0, warmup=1, final=False),
        cache.GatedTaylor(threshold=10.0, warmup=1, max_forecast=2),
    ]:
        cache.apply(model, policy)
        blocks = stack_blocks(model)
        with BlockCounter(blocks) as counter:
            out = euler(model, call, shape, steps=6, branches=("cond", "uncond"))
        assert torch.isfinite(out).all()
        assert sum(counter.counts) < 6 * len(blocks), (name, policy)
        cache.remove(model)


def test_modulated_input_lookup():
    flux = DIFFUSERS["flux"][0]()
    h = torch.randn(2, 16, 16)
    temb = torch.randn(2, 16)
    double, single = flux.transformer_blocks[0], flux.single_transformer_blocks[0]
    torch.testing.assert_close(modulated_input(double, h, {"temb": temb}), double.norm1(h, emb=temb)[0])
    torch.testing.assert_close(modulated_input(single, h, {"temb": temb}), single.norm(h, emb=temb)[0])
    sd3 = DIFFUSERS["sd3"][0]().transformer_blocks[0]
    torch.testing.assert_close(modulated_input(sd3, h, {"temb": temb}), sd3.norm1(h, emb=temb)[0])
    dit = DIFFUSERS["dit"][0]().transformer_blocks[0]
    t, labels = torch.tensor([10, 500]), torch.tensor([1, 2])
    expected = dit.norm1(h, t, labels, hidden_dtype=h.dtype)[0]
    torch.testing.assert_close(modulated_input(dit, h, {"timestep": t, "class_labels": labels}), expected)
    assert not torch.allclose(expected, h)
    assert modulated_input(Toy().blocks[0], h, {"sigma": t}) is h  # unknown block: the raw input


def test_teacache_decides_per_row_on_the_raw_input():
    """Toy blocks have no adaptive norm: the signal is the raw input. Row 0's input is constant (reuse after the
    warm-up), row 1's changes a lot (compute): one call runs the stack on row 1 only."""
    toy = Toy()
    cache.apply(toy, cache.TeaCache(threshold=0.5, warmup=1, final=False))
    cache.reset(toy)
    with BlockCounter(toy.blocks) as counter:
        for i, s in enumerate((1.0, 0.8, 0.6)):
            x = torch.stack([torch.ones(4), torch.full((4,), 4.0**i)])
            toy(x, timestep=torch.tensor([s, s]))
    assert counter.counts == [3, 3, 3]
    assert [r.computed for r in cache.summary(toy).records] == [3, 1.5, 1.5]  # per-row average
    cache.remove(toy)


@pytest.mark.parametrize(("threshold", "expected"), [(0.5, [3, 3, 3]), (100.0, [3, 0, 0])])
def test_teacache_joint_takes_one_decision_for_all_rows(threshold, expected):
    """The same rows as above, joint: the batch's mean change decides for both rows, so no call splits them
    (threshold 0.5: row 1's change makes both compute; 100: both reuse)."""
    toy = Toy()
    cache.apply(toy, cache.TeaCache(threshold=threshold, warmup=1, final=False, joint=True))
    cache.reset(toy)
    for i, s in enumerate((1.0, 0.8, 0.6)):
        x = torch.stack([torch.ones(4), torch.full((4,), 4.0**i)])
        toy(x, timestep=torch.tensor([s, s]))
    assert [r.computed for r in cache.summary(toy).records] == expected
    cache.remove(toy)


def test_teacache_accumulates_the_rescaled_change():
    """A constant polynomial 0.3 adds 0.3 per step: with threshold 1 three steps are reused, the fourth computes."""
    toy = Toy()
    cache.apply(toy, "teacache:coefficients=0.3,threshold=1,warmup=1,final=false")
    cache.reset(toy)
    x = torch.ones(1, 4)
    for s in torch.linspace(1, 0.1, 9):
        toy(x, timestep=s.reshape(1))
    computed = [r.computed > 0 for r in cache.summary(toy).records]
    assert computed == [True, False, False, False, True, False, False, False, True]
    cache.remove(toy)


def test_gated_taylor_is_exact_for_a_residual_linear_in_sigma():
    """The first block's forecast is exact, so the gate always trusts it; max_forecast caps the runs."""
    toy = Toy()
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.6, 0.3, 0.2, 0.1])
    x = torch.ones(2, 4)
    plain = [toy(x, timestep=s.expand(2)) for s in sigmas]
    cache.apply(toy, cache.GatedTaylor(order=1, threshold=1e-3, warmup=2, max_forecast=2))
    cache.reset(toy)
    cached = [toy(x, timestep=s.expand(2)) for s in sigmas]
    torch.testing.assert_close(torch.stack(cached), torch.stack(plain))
    assert [r.forecast for r in cache.summary(toy).records] == [0, 0, 2, 2, 0, 2, 2]
    cache.remove(toy)


# ------------------------------------------------------------------ calibration
def test_calibrate_teacache(tiny_flux):
    fit = calibrate_teacache(tiny_flux, PROMPTS, steps=5, sampler="euler", guidance=3.0, seeds=0, degree=2)
    assert len(fit.coefficients) == 3 and all(math.isfinite(c) for c in fit.coefficients)
    assert sorted(fit.index) == [i for i in range(1, 5) for _ in range(4)]  # each step after the first, 4 rows
    assert len(fit.x) == len(fit.y) == 16 and fit.r2 <= 1
    policy = cache.parse_policy(fit.spec() + ",threshold=0.3")  # the printed string is a working policy
    assert policy.coefficients == fit.coefficients_text
    cache.apply(tiny_flux, policy)
    assert torch.isfinite(run_generation(tiny_flux, PROMPTS)).all()
    cache.remove(tiny_flux)
    with pytest.raises(ValueError, match=r"degree must be an integer in \[1, 10\], got 0"):
        calibrate_teacache(tiny_flux, PROMPTS, steps=5, sampler="euler", guidance=3.0, degree=0)
    with pytest.raises(ValueError, match="steps >= 2"):
        calibrate_teacache(tiny_flux, PROMPTS, steps=1, sampler="euler", guidance=3.0)


def test_calibrate_magcache(tiny_flux):
    fit = calibrate_magcache(tiny_flux, PROMPTS, steps=5, sampler="euler", guidance=3.0, seeds=0)
    assert len(fit.ratios) == 5 and fit.ratios[0] == 1.0 and all(r > 0 and math.isfinite(r) for r in fit.ratios)
    assert cache.parse_policy(fit.spec()).ratios == fit.ratios_text
    table = _MeanPerStep()
    for index, value in [(1, 0.5), (1, 1.5), (2, 2.0)]:
        table[index] = value
    assert dict(table) == {1: 1.0, 2: 2.0}  # the mean over the rows, not the last row


def test_calibrate_command(tiny_flux, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_calibrate_commands(parser.add_subparsers(dest="command", required=True))
    model = str(checkpoints.save(tiny_flux, tmp_path / "tiny"))
    common = ["--model", model, "--steps", "4", "--num-prompts", "2"]
    for method, extra in [("teacache", ["--degree", "2"]), ("magcache", [])]:
        out_json, out_png = tmp_path / f"{method}.json", tmp_path / f"{method}.png"
        args = parser.parse_args(
            ["calibrate", "cache", method, *common, *extra, "--json", str(out_json), "--plot", str(out_png)]
        )
        args.func(args)
        result = json.loads(out_json.read_text())
        assert out_png.exists() and result["method"] == method
        assert f'--cache "{result["spec"]}"' in capsys.readouterr().out
    assert len(json.loads((tmp_path / "teacache.json").read_text())["coefficients"]) == 3
    for bad, message in [(["--num-prompts", "0"], "--num-prompts must be >= 1"), (["--degree", "11"], "--degree")]:
        args = parser.parse_args(["calibrate", "cache", "teacache", "--model", model, *bad])
        with pytest.raises(ValueError, match=message):
            args.func(args)


# ------------------------------------------------------------------ errors
def test_bad_parameters(tiny_flux):
    for spec, message in [
        ("teacache:coefficients=1/x", r"TeaCache.coefficients must be finite numbers separated by '/'.*'1/x'"),
        ("teacache:coefficients=nan/1", r"TeaCache.coefficients must be finite numbers"),
        ("teacache:threshold=-1", r"TeaCache.threshold must be a number in \[0, 100\], got -1"),
        ("teacache:warmup=1.5", r"TeaCache.warmup must be an integer in \[0, 10000\], got '1.5'"),
        ("gatedtaylor:order=4", r"GatedTaylor.order must be an integer in \[1, 3\], got 4"),
        ("gatedtaylor:threshold=11", r"GatedTaylor.threshold must be a number in \[0, 10\], got 11"),
        ("gatedtaylor:max_forecast=0", r"GatedTaylor.max_forecast must be an integer in \[1, 10000\], got 0"),
        ("gatedtaylor:first=0", r"GatedTaylor.first must be an integer in \[1, 10000\], got 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            cache.parse_policy(spec)
    with pytest.raises(ValueError, match=r"GatedTaylor.first must be below the number of blocks \(3\)"):
        cache.apply(tiny_flux, cache.GatedTaylor(first=3))
    for policy in [cache.TeaCache(coefficients="1.5/-2e-3/0"), cache.GatedTaylor(order=3, max_forecast=2)]:
        assert cache.parse_policy(policy.describe()) == policy
