"""Feature caching: the hook mechanism and the policies, on tiny random models (seconds on a CPU)."""

import pytest
import torch
from cache_helpers import (
    DIFFUSERS,
    PROMPTS,
    Toy,
    ToyStack,
    euler,
    flux_call,
    records,
    run_generation,
    same_seed_runs,
    stack_blocks,
    tiny_diffusers_flux,
)

import stretto.cache as cache
from stretto.eval.timing import BlockCounter
from stretto.sampling import flow_sigmas

torch.set_num_threads(1)

STEPS = 4


def test_no_cache_and_always_compute_are_bit_identical(tiny_flux):
    plain = run_generation(tiny_flux, PROMPTS)
    always = [
        cache.NoCache(),
        cache.FORA(interval=1),
        cache.Taylor(interval=1),
        cache.DBCache(first=1, last=1, threshold=0.0, warmup=0),
        cache.DeltaDiT(cached=1, interval=1),
    ]
    for policy in always:
        cache.apply(tiny_flux, policy)
        assert torch.equal(run_generation(tiny_flux, PROMPTS), plain), policy
        cache.remove(tiny_flux)
    assert torch.equal(run_generation(tiny_flux, PROMPTS), plain)  # removed: the plain model again


def test_model_is_unchanged_while_applied(tiny_flux):
    keys = list(tiny_flux.state_dict())
    blocks = tiny_flux.blocks
    cache.apply(tiny_flux, "fora")
    assert list(tiny_flux.state_dict()) == keys
    assert tiny_flux.blocks == blocks  # iteration outside the forward still lists the blocks
    cache.remove(tiny_flux)
    assert type(tiny_flux.transformer.transformer_blocks) is torch.nn.ModuleList


def test_fora_halves_the_block_evaluations(tiny_flux):
    n = len(tiny_flux.blocks)
    cache.apply(tiny_flux, cache.FORA(interval=2, warmup=0, final=False))
    with BlockCounter(tiny_flux.blocks) as counter:
        run_generation(tiny_flux, PROMPTS, steps=6)
    assert counter.counts == [3] * n  # steps 0, 2, 4 of 6
    s = cache.summary(tiny_flux)
    assert s.totals() == {"computed": 2 * 3 * n, "reused": 2 * 3 * n, "forecast": 0}  # two branches
    assert [r.computed for r in s.records if r.branch == "cond"] == [n, 0, n, 0, n, 0]
    assert "computed" in str(s)
    cache.remove(tiny_flux)


def test_fora_warmup_and_final_step(tiny_flux):
    cache.apply(tiny_flux, cache.FORA(interval=3, warmup=2, final=True))
    run_generation(tiny_flux, PROMPTS, steps=8)
    computed = [r.computed > 0 for r in cache.summary(tiny_flux).records if r.branch == "cond"]
    assert computed == [True, True, True, False, False, True, False, True]
    cache.remove(tiny_flux)


@pytest.mark.parametrize(
    "policy",
    [cache.FORA(interval=2), cache.Taylor(order=2, interval=2, warmup=1), cache.FirstBlock(threshold=0.5)],
    ids=["fora", "taylor", "firstblock"],
)
def test_batched_cfg_matches_separate_branch_calls(tiny_flux, policy):
    cache.apply(tiny_flux, policy)
    batched = run_generation(tiny_flux, PROMPTS, batched=True)
    rec_batched = records(tiny_flux)
    separate = run_generation(tiny_flux, PROMPTS, batched=False)
    rec_separate = records(tiny_flux)
    assert sorted(rec_batched) == sorted(rec_separate)
    assert any(r[2] or r[3] for r in rec_batched)  # something was actually skipped
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-4)
    cache.remove(tiny_flux)


@pytest.mark.parametrize("spec", ["fora:interval=3", "taylor:order=3,interval=3,warmup=2", "firstblock:threshold=0.3"])
def test_same_seed_same_output_across_generations(tiny_flux, spec):
    first, again = same_seed_runs(tiny_flux, spec, steps=STEPS)  # seed 3, another batch with seed 9, seed 3
    assert torch.equal(again, first)


def test_skipping_policies_stay_close_to_full_compute(tiny_flux):
    plain = run_generation(tiny_flux, PROMPTS, steps=8)
    for spec in [
        "fora:interval=2,warmup=3",
        "taylor:order=1,interval=2,warmup=3",
        "dbcache:first=1,warmup=3,threshold=0.3",
    ]:
        cache.apply(tiny_flux, spec)
        out = run_generation(tiny_flux, PROMPTS, steps=8)
        assert cache.summary(tiny_flux).compute_fraction < 1, spec
        assert 0 < (out - plain).abs().mean() < 0.05 * plain.abs().mean(), spec
        cache.remove(tiny_flux)


def test_per_sample_decisions(tiny_flux):
    """Rows whose branch has seen a different number of steps get their own decision in one batched call."""
    cache.apply(tiny_flux, cache.FORA(interval=2, warmup=0, final=False))
    cond = tiny_flux.encode_prompts(PROMPTS)
    null = tiny_flux.encode_prompts(["", ""])
    both = type(cond).cat([cond, null])
    x = torch.randn(2, 3, 32, 32)
    cache.reset(tiny_flux)
    with torch.no_grad():
        with cache.step(tiny_flux, 0.9, branches=("cond",)):
            tiny_flux(x, torch.tensor(0.9), cond)  # cond: step 0 (computed); uncond has no history
        with cache.step(tiny_flux, 0.8, branches=("cond", "uncond")):
            with BlockCounter(tiny_flux.blocks) as counter:
                tiny_flux(torch.cat([x, x]), torch.tensor(0.8), both)
    rec = cache.summary(tiny_flux).records[-2:]
    assert [(r.branch, r.computed > 0) for r in rec] == [("cond", False), ("uncond", True)]
    assert counter.counts == [1] * len(tiny_flux.blocks)  # one call, on the uncond rows only
    cache.remove(tiny_flux)


def test_dbcache_keeps_first_and_last_blocks(tiny_flux):
    n = len(tiny_flux.blocks)
    cache.apply(tiny_flux, cache.DBCache(first=1, last=1, threshold=10.0, warmup=2))
    with BlockCounter(tiny_flux.blocks) as counter:
        run_generation(tiny_flux, PROMPTS, steps=6)
    assert counter.counts[0] == counter.counts[-1] == 6
    assert counter.counts[1:-1] == [2] * (n - 2)  # two warm-up steps, then always skipped
    cache.remove(tiny_flux)


def test_delta_dit_caches_rear_blocks_early_and_front_blocks_late():
    toy = Toy()
    sigmas = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1, 0.0])
    cache.apply(toy, cache.DeltaDiT(cached=1, interval=2, warmup=0, boundary=0.5))
    cache.reset(toy, sigmas)
    outs = []
    with BlockCounter(toy.blocks) as counter:
        for s in sigmas[:-1]:
            with cache.step(toy, s):
                outs.append(toy(torch.zeros(1, 4), timestep=s.reshape(1)))
    assert counter.counts == [6, 8, 6]  # rear reused at steps 1 and 3 (sigma > 0.5), front at steps 5 and 7
    # a reused range adds the deviation of its last computed step: here the block's residual at that sigma
    assert torch.allclose(outs[1], torch.full((1, 4), 1 * 2.8 + 2 * 2.8 + 3 * 3.0))
    cache.remove(toy)


def test_dbcache_max_cached(tiny_flux):
    cache.apply(tiny_flux, cache.FirstBlock(threshold=10.0, max_cached=2))
    run_generation(tiny_flux, PROMPTS, steps=7)
    middle = [r.reused == 0 for r in cache.summary(tiny_flux).records if r.branch == "cond"]
    assert middle == [True, False, False, True, False, False, True]
    cache.remove(tiny_flux)


# ------------------------------------------------------------------ diffusers transformers
@pytest.mark.parametrize("name", list(DIFFUSERS))
def test_diffusers_transformers(name):
    make, call, shape = DIFFUSERS[name]
    model = make()
    plain = euler(model, call, shape)
    cache.apply(model, cache.NoCache())
    assert torch.equal(euler(model, call, shape, branches=("cond", "uncond")), plain)
    assert torch.equal(euler(model, call, shape), plain)
    cache.remove(model)
    cache.apply(model, cache.FORA(interval=2, warmup=0, final=False))
    blocks = stack_blocks(model)
    with BlockCounter(blocks) as counter:
        out = euler(model, call, shape, branches=("cond", "uncond"))
    assert counter.counts == [2] * len(blocks)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    cache.remove(model)
    cache.apply(model, cache.Taylor(order=2, interval=2, warmup=1))
    assert torch.isfinite(euler(model, call, shape, branches=("cond", "uncond"))).all()
    cache.remove(model)


class PipelineLike:
    """An object holding a `transformer`, as diffusers pipelines do."""


def test_diffusers_pipeline_style_calls():
    """A diffusers pipeline names each branch with `cache_context` and resets with `_reset_stateful_cache`."""
    model = tiny_diffusers_flux()
    x = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(0))
    sigmas = flow_sigmas(4)

    def pipeline_like():
        records = []
        y = x
        with torch.no_grad():
            for i in range(4):
                with model.cache_context("cond", step_index=i, num_inference_steps=4):
                    v_cond = flux_call(model, y, sigmas[i])
                with model.cache_context("uncond", step_index=i, num_inference_steps=4):
                    v_uncond = flux_call(model, y + 1, sigmas[i])
                y = y + (sigmas[i + 1] - sigmas[i]) * (v_uncond + 2 * (v_cond - v_uncond))
        records = [(r.branch, r.computed > 0) for r in cache.summary(model).records]
        model._reset_stateful_cache()  # what DiffusionPipeline.maybe_free_model_hooks does at the end
        return y, records

    pipe = PipelineLike()  # a diffusers pipeline: its .transformer is used
    pipe.transformer = model
    cache.apply(pipe, cache.FORA(interval=2, warmup=0, final=True))
    first, records = pipeline_like()
    assert records == [(b, c) for c in (True, False, True, True) for b in ("cond", "uncond")]  # final step computed
    second, _ = pipeline_like()
    assert torch.equal(first, second)
    cache.remove(pipe)
    assert "cache_context" not in model.__dict__


# ------------------------------------------------------------------ errors
def test_apply_twice_and_remove_none(tiny_flux):
    with pytest.raises(RuntimeError, match="no cache is applied"):
        cache.remove(tiny_flux)
    cache.apply(tiny_flux, "none")
    with pytest.raises(RuntimeError, match="already applied"):
        cache.apply(tiny_flux, "fora")
    with pytest.raises(RuntimeError, match="already applied"):
        cache.apply(tiny_flux.transformer, "fora")  # the same blocks through the inner model
    cache.remove(tiny_flux)
    with pytest.raises(RuntimeError, match="no cache is applied"):
        cache.remove(tiny_flux)


def test_unknown_policy_and_bad_parameters():
    with pytest.raises(ValueError, match="unknown cache policy 'magic'.*fora.*taylor"):
        cache.parse_policy("magic")
    with pytest.raises(ValueError, match=r"unknown parameter 'speed'.*order: an integer in \[1, 3\]"):
        cache.parse_policy("taylor:speed=2")
    with pytest.raises(ValueError, match=r"Taylor.order must be an integer in \[1, 3\], got 5"):
        cache.parse_policy("taylor:order=5")
    with pytest.raises(ValueError, match=r"FORA.interval must be an integer in \[1, 1000\], got 'two'"):
        cache.parse_policy("fora:interval=two")
    with pytest.raises(ValueError, match=r"DBCache.threshold must be a number in \[0, 10\], got -1"):
        cache.DBCache(threshold=-1)
    assert cache.parse_policy("taylor:order=3, interval=2") == cache.Taylor(order=3, interval=2)
    assert cache.parse_policy(cache.parse_policy("fora").describe()) == cache.FORA()


def test_model_without_blocks_and_explicit_blocks(tiny_flux):
    with pytest.raises(
        ValueError, match="could not find the block stack of Linear: tried .*transformer_blocks.*blocks="
    ):
        cache.apply(torch.nn.Linear(2, 2), "none")
    with pytest.raises(ValueError, match=r"DBCache.first \+ last must be below the number of blocks \(3\)"):
        cache.apply(tiny_flux, cache.DBCache(first=2, last=1))
    t = tiny_flux.transformer
    cache.apply(tiny_flux, "fora:interval=2,warmup=0,final=false", blocks=["transformer.transformer_blocks"])
    with BlockCounter(tiny_flux.blocks) as counter:
        run_generation(tiny_flux, PROMPTS, steps=4)
    assert counter.counts == [2] * len(t.transformer_blocks) + [4] * len(t.single_transformer_blocks)
    cache.remove(tiny_flux)


def test_step_without_cache_is_a_no_op(tiny_flux):
    with cache.step(tiny_flux, 0.5, branches=("cond", "uncond")):
        pass
    cache.reset(tiny_flux)


# ------------------------------------------------------------------ a toy stack with a known residual
@pytest.mark.parametrize("order", [1, 2, 3])
def test_taylor_is_exact_for_a_residual_linear_in_sigma(order):
    toy = Toy()
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.6, 0.3, 0.2, 0.1])
    x = torch.zeros(2, 4)
    plain = [toy(x, timestep=s.expand(2)) for s in sigmas]
    cache.apply(toy, cache.Taylor(order=order, interval=3, warmup=2))
    cache.reset(toy)
    cached = [toy(x, timestep=s.expand(2)) for s in sigmas]  # sigma taken from the `timestep` argument
    torch.testing.assert_close(torch.stack(cached), torch.stack(plain))
    forecast = [r.forecast for r in cache.summary(toy).records]
    assert forecast == [0, 0, 0, 3, 3, 0, 3]
    cache.remove(toy)


def test_taylor_first_blocks_run_every_step_and_the_rest_is_forecast():
    toy = Toy()
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.6, 0.3, 0.2, 0.1])
    x = torch.zeros(2, 4)
    plain = [toy(x, timestep=s.expand(2)) for s in sigmas]
    cache.apply(toy, cache.Taylor(order=1, interval=3, warmup=2, first=1))
    cache.reset(toy)
    with BlockCounter(toy.blocks) as counter:
        cached = [toy(x, timestep=s.expand(2)) for s in sigmas]
    torch.testing.assert_close(torch.stack(cached), torch.stack(plain))
    assert counter.counts == [7, 4, 4]  # block 0 on every call, the others on the 4 computed steps
    assert [r.forecast for r in cache.summary(toy).records] == [0, 0, 0, 2, 2, 0, 2]
    cache.remove(toy)
    with pytest.raises(ValueError, match="Taylor.first must be below the number of blocks \\(3\\)"):
        cache.apply(toy, cache.Taylor(first=3))


def test_taylor_final_computes_the_schedules_last_step():
    toy = Toy()
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.6, 0.3, 0.2, 0.1])
    cache.apply(toy, cache.Taylor(order=1, interval=3, warmup=2, final=True))
    cache.reset(toy, sigmas)
    for s in sigmas:
        with cache.step(toy, s):
            toy(torch.zeros(1, 4), timestep=s.reshape(1))
    assert [r.forecast for r in cache.summary(toy).records] == [0, 0, 0, 3, 3, 0, 0]  # without final: 3 at the end
    cache.remove(toy)


def test_step_index_is_keyed_on_sigma():
    """A sampler that evaluates twice per step (Heun-like) keeps the schedule's step pattern."""
    toy = Toy()
    sigmas = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    cache.apply(toy, cache.FORA(interval=2, warmup=0, final=True))
    cache.reset(toy, sigmas)
    x = torch.zeros(1, 4)
    for i in range(5):
        for s in (sigmas[i], (sigmas[i] + sigmas[i + 1]) / 2):  # two evaluations inside step i
            with cache.step(toy, s):
                toy(x, timestep=s.reshape(1))
    computed = [r.computed > 0 for r in cache.summary(toy).records]
    assert computed == [True, True, False, False, True, True, False, False, True, True]  # 0, 2 and final 4
    cache.remove(toy)


def test_taylor_two_evaluations_at_one_sigma():
    toy = Toy()
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.6, 0.3, 0.0])
    cache.apply(toy, cache.Taylor(order=2, interval=2, warmup=2))
    cache.reset(toy, sigmas)
    x = torch.zeros(1, 4)
    for s in [1.0, 1.0, 0.9, 0.9, 0.7, 0.6, 0.3]:
        with cache.step(toy, s):
            out = toy(x, timestep=torch.tensor([s]))
        torch.testing.assert_close(out, (6 * (1 + 2 * s)) * torch.ones(1, 4))
    assert [r.forecast for r in cache.summary(toy).records] == [0, 0, 0, 0, 0, 3, 0]
    cache.remove(toy)


def test_first_block_decides_per_sample():
    """Row 0's residual stays constant (skip), row 1's changes (compute): one call runs the middle on row 1 only."""
    toy = Toy()
    cache.apply(toy, cache.FirstBlock(threshold=0.05))
    cache.reset(toy)
    x = torch.zeros(2, 4)
    with BlockCounter(toy.blocks) as counter:
        for s in (1.0, 0.8, 0.6):
            out = toy(x, timestep=torch.tensor([0.5, s]))
            torch.testing.assert_close(out, 6 * (1 + 2 * torch.tensor([[0.5], [s]])).expand(2, 4))
    assert counter.counts == [3, 3, 3]  # the middle blocks ran on a one-row batch in calls 2 and 3
    computed = [r.computed for r in cache.summary(toy).records]
    assert computed == [3, 2, 2]  # per-row average: row 0 computed block 0 only, row 1 all three
    cache.remove(toy)


@pytest.mark.parametrize(("threshold", "expected"), [(0.05, [3, 3, 3]), (10.0, [3, 1, 1])])
def test_dbcache_joint_takes_one_decision_for_all_rows(threshold, expected):
    """The same rows as above: one row's change forces both to compute (low threshold) or neither (high)."""
    toy = Toy()
    cache.apply(toy, cache.FirstBlock(threshold=threshold, joint=True))
    cache.reset(toy)
    for s in (1.0, 0.8, 0.6):
        toy(torch.zeros(2, 4), timestep=torch.tensor([0.5, s]))
    assert [r.computed for r in cache.summary(toy).records] == expected  # whole rows: no per-row split
    cache.remove(toy)


class Shrink(torch.nn.Module):
    def forward(self, hidden_states, sigma):
        return hidden_states + sigma.reshape(-1, 1) * torch.ones_like(hidden_states)  # |residual| = sigma


class ShrinkToy(ToyStack):
    def __init__(self):
        super().__init__([Shrink(), Shrink()])


def test_magcache_calibrates_then_skips():
    toy = ShrinkToy()
    sigmas = torch.tensor([1.0, 0.95, 0.9, 0.85, 0.8, 0.2, 0.0])
    policy = cache.MagCache(calibrate=True)
    cache.apply(toy, policy)

    def run():
        cache.reset(toy, sigmas)
        for s in sigmas[:-1]:
            with cache.step(toy, s):
                toy(torch.zeros(1, 4), timestep=s.reshape(1))
        return [r.computed > 0 for r in cache.summary(toy).records]

    assert run() == [True] * 6  # calibration computes everything
    assert policy.ratios_text() == "0.9500/0.9474/0.9444/0.9412/0.2500"
    cache.remove(toy)
    cache.apply(toy, f"magcache:ratios=1/{policy.ratios_text()},threshold=0.2,max_skip=2,warmup=1")
    # step 1 (ratio .95): error .05, skip; step 2: .05 + .10 = .15, skip; step 3: .15 + .15 > .2, compute;
    # step 4: skip; step 5 (ratio .25): error too large, compute
    assert run() == [True, False, False, True, False, True]
    cache.remove(toy)
    with pytest.raises(ValueError, match="MagCache.ratios must be positive numbers"):
        cache.parse_policy("magcache:ratios=1/x")
