"""The feature cache on every diffusers transformer family in its table, each built tiny from config."""

import pytest
import torch
from cache_helpers import stack_blocks
from diffusers_tiny import TINY

import stretto.cache as cache
from stretto.cache.families import FAMILIES, REFUSED, UNETS, markdown_table
from stretto.eval.timing import BlockCounter
from stretto.sampling import flow_sigmas

torch.set_num_threads(1)

STEPS = 6
FORA = "fora:interval=2,warmup=1,final=false"  # computes steps 0, 1, 3, 5 of 6


def generate(tiny, model, seed=0, steps=STEPS):
    """Euler steps from seeded noise, the model called with its own timestep (no step context); with a cache
    applied, the schedule goes to reset() in the model's timestep scale."""
    x = torch.randn(*tiny.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = flow_sigmas(steps)
    cache.reset(model, tiny.time(sigmas))
    with torch.no_grad():
        for i in range(steps):
            x = x + (sigmas[i + 1] - sigmas[i]) * tiny.call(model, x, tiny.time(sigmas[i]))
    return x


@pytest.fixture(scope="module", params=list(TINY))
def family(request):
    tiny = TINY[request.param]
    model = tiny.build()
    return request.param, tiny, model, generate(tiny, model)


def test_every_table_entry_has_a_tiny_model():
    assert set(TINY) == set(FAMILIES)


def test_none_is_the_plain_model_bit_for_bit(family):
    name, tiny, model, plain = family
    cache.apply(model, "none")
    out = generate(tiny, model)
    s = cache.summary(model)
    cache.remove(model)
    assert torch.equal(out, plain), name
    assert s.compute_fraction == 1 and len(s.records) == STEPS


def test_skipping_reduces_block_evaluations_and_stays_close(family):
    name, tiny, model, plain = family
    cache.apply(model, FORA)
    blocks = stack_blocks(model)
    with BlockCounter(blocks) as counter:
        out = generate(tiny, model)
    fraction = cache.summary(model).compute_fraction
    cache.remove(model)
    assert counter.counts == [4] * len(blocks), name  # 2 of 6 steps reuse the stack's residual
    assert fraction == pytest.approx(4 / 6)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert (out - plain).abs().mean() < 0.1 * plain.abs().mean(), name


def test_remove_restores_the_plain_model(family):
    name, tiny, model, plain = family
    lists = {n: type(getattr(model, s.attr)) for n, s in enumerate(FAMILIES[name].segments)}
    cache.apply(model, FORA)
    generate(tiny, model)
    cache.remove(model)
    assert {n: type(getattr(model, s.attr)) for n, s in enumerate(FAMILIES[name].segments)} == lists
    assert not any(k.startswith("_stretto") for k in model.__dict__)
    assert torch.equal(generate(tiny, model), plain)


def test_same_seed_same_output_across_generations(family):
    name, tiny, model, _ = family
    cache.apply(model, "taylor:order=1,interval=2,warmup=1")
    first = generate(tiny, model, seed=3)
    generate(tiny, model, seed=5)  # another generation in between
    again = generate(tiny, model, seed=3)
    cache.remove(model)
    assert torch.equal(first, again), name


def test_rows_decide_separately(family):
    """A branch seen before reuses its residual while a new one computes, in one call: the computing row gets
    the plain model's output, so per-row block arguments (masks, per-sample rotary tables) follow the rows."""
    name, tiny, model, _ = family
    x = torch.randn(*tiny.shape, generator=torch.Generator().manual_seed(1))
    t0, t1 = tiny.time(torch.tensor(0.8)), tiny.time(torch.tensor(0.6))
    with torch.no_grad():
        plain = tiny.call(model, x, t1)
        cache.apply(model, "fora:interval=2,warmup=0,final=false")
        cache.reset(model)
        with cache.step(model, t0, branches=("a", "b")):
            tiny.call(model, x, t0)
        with cache.step(model, t1, branches=("a", "c"), index=1), BlockCounter(stack_blocks(model)) as counter:
            out = tiny.call(model, x, t1)
    rec = cache.summary(model).records[-2:]
    cache.remove(model)
    assert [(r.branch, r.computed > 0) for r in rec] == [("a", False), ("c", True)]
    assert set(counter.counts) == {1}  # every block ran once, on the one row that computes
    torch.testing.assert_close(out[1], plain[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out[0], plain[0])


def test_markdown_table_lists_every_class():
    table = markdown_table()
    for name in [*FAMILIES, *UNETS, *REFUSED]:
        assert f"| {name} |" in table
    assert "`transformer_blocks` (image, encoder)" in table  # CogVideoX's return order


@pytest.mark.parametrize(
    "name, timesteps, keys",
    [
        ("FluxTransformer2DModel", [1000.0, 250.0], [1.0, 0.25]),  # the pipeline passes t / 1000
        ("SD3Transformer2DModel", [1000.0, 250.0], [1000.0, 250.0]),
        ("Lumina2Transformer2DModel", [1000.0, 250.0], [1.0, 0.25]),  # passes 1 - t / 1000; time counts up
        ("MochiTransformer3DModel", [0.0, 750.0], [1000.0, 250.0]),  # its scheduler's timesteps count up
    ],
)
def test_pipeline_schedule_in_the_model_scale(name, timesteps, keys):
    got = FAMILIES[name].schedule_keys(torch.tensor(timesteps, dtype=torch.float64), None)
    torch.testing.assert_close(got, torch.tensor(keys, dtype=torch.float64))
