"""The explicit cache schedule (ECAD) policy, its NSGA-II search and `stretto search cache`, on tiny models."""

import argparse
import json
import math
import re

import pytest
import torch
from cache_helpers import Toy

import stretto
import stretto.cache as cache
from stretto import checkpoints
from stretto.cache.schedule import pick
from stretto.cli.tune import add_search_commands
from stretto.eval.timing import BlockCounter
from stretto.tune.search import Candidate, non_dominated, search_schedules

torch.set_num_threads(1)

PROMPTS = ["a small red circle on the left", "a blue square above a green triangle"]


def generate(model, policy, steps=4):
    return stretto.generate(model, PROMPTS, steps=steps, sampler="euler", guidance=3.0, seeds=0, cache=policy)


SIGMAS = torch.tensor([1.0, 0.8, 0.6, 0.0])


# ------------------------------------------------------------------ the policy
def test_all_ones_mask_is_bit_identical_to_no_cache(tiny_flux):
    plain = generate(tiny_flux, None)
    ones = generate(tiny_flux, "schedule:pattern=111/111/111/111")
    assert torch.equal(ones.images, plain.images)
    assert ones.stats.cache.compute_fraction == 1.0
    short = generate(tiny_flux, cache.Schedule.from_mask([[1, 1, 1]]))  # steps beyond the mask compute
    assert torch.equal(short.images, plain.images)


def test_mask_sets_the_block_evaluations(tiny_flux):
    policy = cache.Schedule(pattern="111/011/001/000")
    assert policy.mask.tolist() == [[True] * 3, [False, True, True], [False, False, True], [False] * 3]
    cache.apply(tiny_flux, policy)
    with BlockCounter(tiny_flux.blocks) as counter:
        out = generate(tiny_flux, None)  # generate uses the applied cache
    s = cache.summary(tiny_flux)
    cache.remove(tiny_flux)
    assert counter.counts == [1, 2, 3]  # one batched CFG call per step
    assert out.stats.block_evals == [1, 2, 3]
    assert [r.computed for r in s.records if r.branch == "cond"] == [3, 2, 1, 0]
    assert [r.reused for r in s.records if r.branch == "uncond"] == [0, 1, 2, 3]
    assert s.compute_fraction == 0.5 and s.policy == "schedule:pattern=111/011/001/000"
    assert out.stats.cache is None or out.stats.cache.compute_fraction == 0.5
    plain = generate(tiny_flux, None)
    assert 0 < (out.images - plain.images).abs().mean() < 0.2  # close to full compute, not equal


def test_reused_blocks_add_their_own_residual_in_one_jump():
    toy = Toy()
    cache.apply(toy, "schedule:pattern=111/010/001")
    cache.reset(toy, SIGMAS)
    x = torch.zeros(1, 4)
    outs = []
    with BlockCounter(toy.blocks) as counter:
        for s in SIGMAS[:-1]:
            with cache.step(toy, s):
                outs.append(toy(x, timestep=s.reshape(1)))
    cache.remove(toy)
    assert counter.counts == [1, 2, 2]  # skipped blocks are never called
    torch.testing.assert_close(outs[0], torch.full((1, 4), 6 * 3.0))
    torch.testing.assert_close(outs[1], torch.full((1, 4), 1 * 3.0 + 2 * 2.6 + 3 * 3.0))  # 0, 2 from step 0
    torch.testing.assert_close(outs[2], torch.full((1, 4), 1 * 3.0 + 2 * 2.6 + 3 * 2.2))  # 1 from step 1


def test_decisions_are_per_row():
    """Rows at different steps (per-row sigma) in one call follow their own step's mask row."""
    toy = Toy()
    cache.apply(toy, "schedule:pattern=111/111/010")
    cache.reset(toy, SIGMAS)
    x = torch.zeros(2, 4)
    with cache.step(toy, torch.tensor([1.0, 1.0])):
        toy(x, timestep=torch.ones(2))
    with BlockCounter(toy.blocks) as counter, cache.step(toy, torch.tensor([0.8, 0.6])):
        out = toy(x, timestep=torch.tensor([0.8, 0.6]))
    s = cache.summary(toy)
    cache.remove(toy)
    assert counter.counts == [1, 1, 1]  # blocks 0 and 2 on row 0 only, block 1 on both rows, one call each
    torch.testing.assert_close(out[0], torch.full((4,), 6 * 2.6))  # step 1: all computed
    torch.testing.assert_close(out[1], torch.full((4,), 1 * 3.0 + 2 * 2.2 + 3 * 3.0))  # step 2: block 1 only
    assert (s.records[-1].computed, s.records[-1].reused) == (2, 1)  # averaged over the two rows


def test_fresh_rows_compute(tiny_flux):
    """A branch with no stored residuals yet computes every block, whatever the mask says."""
    cache.apply(tiny_flux, "schedule:pattern=111/000")
    cond = tiny_flux.encode_prompts(PROMPTS)
    both = type(cond).cat([cond, tiny_flux.encode_prompts(["", ""])])
    x = torch.randn(2, 3, 32, 32)
    cache.reset(tiny_flux)
    with torch.no_grad():
        with cache.step(tiny_flux, 0.9, branches=("cond",)):
            tiny_flux(x, torch.tensor(0.9), cond)
        with BlockCounter(tiny_flux.blocks) as counter, cache.step(tiny_flux, 0.8, branches=("cond", "uncond")):
            tiny_flux(torch.cat([x, x]), torch.tensor(0.8), both)
    rec = cache.summary(tiny_flux).records[-2:]
    cache.remove(tiny_flux)
    assert [(r.branch, r.computed, r.reused) for r in rec] == [("cond", 0, 3), ("uncond", 3, 0)]
    assert counter.counts == [1, 1, 1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("schedule:pattern=11a/111", "step 0 ('11a') has 'a'"),
        ("schedule:pattern=111/11", "same number of blocks: step 0 has 3, step 1 has 2"),
        ("schedule:pattern=111//111", "empty group at step 1"),
        ("schedule:pattern= ", "Schedule needs pattern="),
        ("schedule", "Schedule needs pattern="),
        ("schedule:pattern=111,file=front.json,min_psnr=30", "not both"),
        ("schedule:file=front.json", "needs min_psnr > 0"),
        ("schedule:file=/no/such/front.json,min_psnr=30", "cannot read '/no/such/front.json'"),
        ("schedule:pattern=111,min_psnr=-1", "min_psnr must be a number in [0, 1000]"),
    ],
)
def test_bad_masks_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cache.parse_policy(spec)


def test_mask_must_match_the_stack(tiny_flux):
    with pytest.raises(ValueError, match="2 blocks per step but the model's block stack has 3"):
        cache.apply(tiny_flux, "schedule:pattern=11/10")
    assert cache.get_handle(tiny_flux) is None
    with pytest.raises(ValueError, match="Schedule.pattern is empty"):
        cache.Schedule(pattern="  ")
    for bad in ([[1, 2]], [1, 0, 1], [[]]):
        with pytest.raises(ValueError, match="Schedule.from_mask needs"):
            cache.Schedule.from_mask(bad)
    assert cache.Schedule.from_mask(torch.tensor([[True, False]])).describe() == "schedule:pattern=10"


def test_schedule_picks_from_a_saved_front(tmp_path):
    front = [
        {"mask": "111/000", "compute_fraction": 0.5, "psnr_db": 20.0},
        {"mask": "111/010", "compute_fraction": 0.67, "psnr_db": 31.0},
        {"mask": "111/111", "compute_fraction": 1.0, "psnr_db": None},  # full compute (identical)
    ]
    path = tmp_path / "front.json"
    path.write_text(json.dumps({"front": front}))
    assert cache.parse_policy(f"schedule:file={path},min_psnr=30").describe() == "schedule:pattern=111/010"
    assert cache.parse_policy(f"schedule:file={path},min_psnr=10").describe() == "schedule:pattern=111/000"
    path.write_text(json.dumps({"front": front[:2]}))
    with pytest.raises(ValueError, match="no front member reaches 40 dB PSNR; the best available is 31.00 dB"):
        cache.parse_policy(f"schedule:file={path},min_psnr=40")
    path.write_text("{}")
    with pytest.raises(ValueError, match="holds no search front"):
        cache.parse_policy(f"schedule:file={path},min_psnr=30")


# ------------------------------------------------------------------ the search
def test_pick_honours_the_budget():
    mask = torch.ones(1, 1, dtype=torch.bool)
    front = [Candidate(mask, f, p, 0.0, "x") for f, p in [(0.3, 15.0), (0.5, 25.0), (0.7, 35.0), (1.0, math.inf)]]
    assert pick(front, 20).compute_fraction == 0.5
    assert pick(front, 25).compute_fraction == 0.5
    assert pick(front, 100).compute_fraction == 1.0
    assert pick(front, 0).compute_fraction == 0.3
    with pytest.raises(ValueError, match="the front is empty"):
        pick([], 20)


def test_non_dominated():
    mask = torch.ones(1, 1, dtype=torch.bool)
    points = [(0.5, 20.0), (0.4, 25.0), (0.6, 30.0), (0.6, 28.0), (1.0, math.inf), (0.4, 25.0), (0.9, 29.0)]
    front = non_dominated([Candidate(mask, f, p, 0.0, str(i)) for i, (f, p) in enumerate(points)])
    assert [(c.compute_fraction, c.psnr_db) for c in front] == [(0.4, 25.0), (0.6, 30.0), (1.0, math.inf)]


def test_search_returns_a_sorted_non_dominated_front(tiny_flux):
    result = search_schedules(tiny_flux, PROMPTS[:1], 4, "euler", 3.0, 0, population=6, generations=2, progress=False)
    front, evaluated = result.front, result.evaluated
    assert result.reference in front and front[-1].compute_fraction == 1.0 and math.isinf(front[-1].psnr_db)
    assert len({c.pattern for c in evaluated}) == len(evaluated) == result.model_runs <= 1 + 6 * 3
    fractions = [c.compute_fraction for c in front]
    assert fractions == sorted(fractions) and len(front) >= 2 and fractions[0] < 1
    for a in front:
        for b in evaluated:
            assert not (
                b.compute_fraction <= a.compute_fraction
                and b.psnr_db >= a.psnr_db
                and (b.compute_fraction < a.compute_fraction or b.psnr_db > a.psnr_db)
            ), (a, b)
    assert all(c.mask[0].all() for c in evaluated)  # the warm-up step always computes
    cheap = front[0]  # the policy reproduces what the search measured
    rerun = generate(tiny_flux, cache.parse_policy(cheap.spec))
    assert rerun.stats.cache.compute_fraction == cheap.compute_fraction
    with pytest.raises(ValueError, match="population must be an integer >= 4"):
        search_schedules(tiny_flux, PROMPTS, 4, "euler", 3.0, 0, population=2, generations=1)


def test_search_cache_command(tiny_flux, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_search_commands(parser.add_subparsers(dest="command", required=True))
    out_json, out_png = tmp_path / "search.json", tmp_path / "search.png"
    args = parser.parse_args(
        ["search", "cache", "--model", str(checkpoints.save(tiny_flux, tmp_path / "tiny")), "--steps", "3",
         "--num-prompts", "2", "--population", "4", "--generations", "1", "--json", str(out_json),
         "--plot", str(out_png), "--budget-psnr", "20"]
    )  # fmt: skip
    args.func(args)
    result = json.loads(out_json.read_text())
    assert {"machine", "model", "sampler", "steps", "num_prompts", "population", "generations", "front"} <= set(result)
    assert set(result["front"][0]) >= {"mask", "compute_fraction", "speedup_ideal", "psnr_db", "mse"}
    assert result["front"][-1]["psnr_db"] is None and len(result["evaluated"]) >= len(result["front"])
    assert out_png.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "--cache schedule:pattern=" in printed
    args = parser.parse_args(["search", "cache", "--population", "2"])
    with pytest.raises(ValueError, match="--population must be >= 4, got 2"):
        args.func(args)
