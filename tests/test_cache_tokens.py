"""Token-level feature caching (ToCa, RAS) and Stack.compute_tokens, on tiny random models (seconds on a CPU)."""

from dataclasses import dataclass
from functools import partial

import cache_helpers
import pytest
import torch
from cache_helpers import (
    PROMPTS,
    ToyStack,
    dit_call,
    flux_call,
    same_seed_runs,
    sd3_call,
    stack_blocks,
    tiny_diffusers_flux,
    tiny_dit,
    tiny_sd3,
    tiny_wan,
)
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

import stretto.cache as cache
from stretto.cache.policy import CachePolicy
from stretto.cache.toca import window_winners
from stretto.eval.timing import BlockCounter
from stretto.sampling import flow_sigmas

torch.set_num_threads(1)

STEPS = 6
run_generation = partial(cache_helpers.run_generation, steps=STEPS)  # batched CFG


def cond_records(model):
    return [(r.computed, r.reused) for r in cache.summary(model).records if r.branch == "cond"]


# ------------------------------------------------------------------ on the tiny ShapesFlux (64 image tokens)
@pytest.mark.parametrize(
    "policy",
    [cache.ToCa(ratio=1.0), cache.ToCa(interval=1, ratio=0.1), cache.RAS(ratio=1.0), cache.RAS(full_every=1)],
    ids=["toca-ratio1", "toca-interval1", "ras-ratio1", "ras-full-every1"],
)
def test_every_token_is_bit_identical_to_no_cache(tiny_flux, policy):
    plain = run_generation(tiny_flux, PROMPTS)
    cache.apply(tiny_flux, policy)
    assert torch.equal(run_generation(tiny_flux, PROMPTS), plain)
    assert cache.summary(tiny_flux).compute_fraction == 1.0
    cache.remove(tiny_flux)


def test_toca_computes_the_ratio_of_tokens_between_full_steps(tiny_flux):
    n = len(tiny_flux.blocks)
    plain = run_generation(tiny_flux, PROMPTS, steps=7)
    cache.apply(tiny_flux, "toca:interval=3,ratio=0.25,warmup=1")
    with BlockCounter(tiny_flux.blocks) as counter:
        out = run_generation(tiny_flux, PROMPTS, steps=7)
    part = (n * 16 / 64, n * 48 / 64)  # 16 of 64 tokens
    assert cond_records(tiny_flux) == [(n, 0), (n, 0), part, part, (n, 0), part, (n, 0)]  # the final step is full
    assert counter.counts == [7] * n  # every block still runs once per call, on fewer tokens
    assert 0 < (out - plain).abs().mean() < 0.05 * plain.abs().mean()
    cache.remove(tiny_flux)


def test_ras_refreshes_the_ratio_plus_starved_tokens(tiny_flux):
    n = len(tiny_flux.blocks)
    cache.apply(tiny_flux, cache.RAS(ratio=0.25, warmup=2, max_age=0, full_every=0, final=False))
    run_generation(tiny_flux, PROMPTS, steps=6)
    assert cond_records(tiny_flux) == [(n, 0)] * 2 + [(n * 16 / 64, n * 48 / 64)] * 4
    cache.remove(tiny_flux)
    cache.apply(tiny_flux, cache.RAS(ratio=0.25, warmup=2, max_age=2, full_every=0))
    run_generation(tiny_flux, PROMPTS, steps=6)
    computed = [c for c, _ in cond_records(tiny_flux)]
    assert computed[:3] == [n, n, n * 16 / 64]  # nothing is 2 steps old yet at step 2
    assert computed[3] > n * 16 / 64  # at step 3 the 48 tokens refreshed at step 1 are starved
    cache.remove(tiny_flux)


def test_ratio_zero_reuses_every_token(tiny_flux):
    n = len(tiny_flux.blocks)
    cache.apply(tiny_flux, cache.ToCa(interval=4, ratio=0.0, warmup=1))
    out = run_generation(tiny_flux, PROMPTS, steps=5)
    assert torch.isfinite(out).all()
    assert cond_records(tiny_flux) == [(n, 0), (n, 0), (0, n), (0, n), (n, 0)]  # the final step is full
    cache.remove(tiny_flux)


@pytest.mark.parametrize("spec", ["toca:interval=3,ratio=0.3,warmup=1", "ras:ratio=0.3,warmup=2,max_age=3"])
def test_same_seed_same_output_across_generations(tiny_flux, spec):
    first, again = same_seed_runs(tiny_flux, spec, steps=STEPS)  # seed 3, another batch with seed 9, seed 3
    assert torch.equal(again, first)


# ------------------------------------------------------------------ token choice
def test_window_winners_spread_over_the_grid():
    score = torch.arange(64.0).flip(0)  # the best tokens all sit in the top rows
    winners = window_winners(score)
    assert winners.tolist() == [r * 16 + c * 2 for r in range(4) for c in range(4)]  # top-left of every 2x2
    assert window_winners(torch.zeros(10)).tolist() == [0, 4, 8]  # not a square: runs of 4 tokens


def token_state(change, refreshed):
    return {"change": change[None], "refreshed": refreshed[None]}


def test_toca_picks_one_token_per_window_then_the_oldest():
    state = token_state(torch.zeros(64), torch.zeros(64, dtype=torch.long))
    state["refreshed"][0, 1] = -5  # the oldest token
    tokens = cache.ToCa(interval=3, ratio=0.25)._pick(state, torch.tensor([0]), torch.tensor([4]))
    windows = {(int(t) // 8 // 2, int(t) % 8 // 2) for t in tokens}
    assert len(tokens) == 16 and len(windows) == 16 and 1 in tokens.tolist()


def test_ras_picks_the_largest_change_and_starved_tokens():
    change = torch.zeros(64)
    change[[5, 9, 40, 63]] = torch.tensor([1.0, 4.0, 3.0, 2.0])
    refreshed = torch.full((64,), 6)
    refreshed[20] = 0  # starved: 8 steps old
    state = token_state(change, refreshed)
    tokens = cache.RAS(ratio=3 / 64, max_age=5)._pick(state, torch.tensor([0]), torch.tensor([8]))
    assert tokens.tolist() == [9, 20, 40, 63]


# ------------------------------------------------------------------ diffusers transformers
GRID_IDS = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)


def grid_flux_call(model, x, t):
    """Flux with distinct image positions (a 4x4 grid) rather than all at one."""
    return flux_call(model, x, t, img_ids=GRID_IDS.reshape(-1, 3)[: x.shape[1]])


DIFFUSERS = {  # each has 16 image tokens
    "flux": (tiny_diffusers_flux, grid_flux_call, (2, 16, 8)),
    "sd3": (tiny_sd3, sd3_call, (2, 4, 8, 8)),
    "dit": (tiny_dit, dit_call, (2, 4, 8, 8)),
}
euler = partial(cache_helpers.euler, steps=5, branches=("cond", "uncond"))


@pytest.mark.parametrize("name", list(DIFFUSERS))
def test_diffusers_transformers(name):
    make, call, shape = DIFFUSERS[name]
    model = make()
    n = len(stack_blocks(model))
    plain = euler(model, call, shape)
    for policy in (cache.ToCa(ratio=1.0), cache.RAS(ratio=1.0)):
        cache.apply(model, policy)
        assert torch.equal(euler(model, call, shape), plain), policy
        cache.remove(model)
    for policy in (
        cache.ToCa(interval=3, ratio=0.25, warmup=1),
        cache.RAS(ratio=0.25, warmup=2, max_age=0, full_every=0),
    ):
        cache.apply(model, policy)
        out = euler(model, call, shape)
        assert torch.isfinite(out).all() and not torch.equal(out, plain), policy
        assert (n * 4 / 16, n * 12 / 16) in cond_records(model), policy  # 4 of 16 tokens on cached steps
        cache.remove(model)


@dataclass
class FixedTokens(CachePolicy):
    """Runs the stack on a fixed token subset only (the model then returns just those tokens)."""

    name = "fixed-tokens"
    tokens: tuple = (1, 6, 7, 12)

    def run(self, stack, h, call):
        return stack.compute_tokens(h, 0, stack.num_blocks, torch.tensor(self.tokens))


def test_compute_tokens_matches_the_model_on_those_tokens():
    """Flux with distinct image positions: the subset through the hooked stack equals the plain model called
    on just those tokens and their positions (so the rotary table is sliced right; text tokens go along)."""
    model = tiny_diffusers_flux()
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    keep = torch.tensor(FixedTokens.tokens)
    with torch.no_grad():
        expected = flux_call(model, x[:, keep], torch.tensor(0.7), img_ids=GRID_IDS.reshape(-1, 3)[keep])
        cache.apply(model, FixedTokens())
        cache.reset(model)
        got = grid_flux_call(model, x, torch.tensor(0.7))
    torch.testing.assert_close(got, expected)
    n = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    assert cond_records(model) == [(n * 4 / 16, n * 12 / 16)]
    cache.remove(model)


def test_wan_is_refused_clearly():
    model = tiny_wan(num_layers=2)
    cache.apply(model, "toca")
    x = torch.randn(1, 4, 2, 8, 8)
    with pytest.raises(ValueError, match="token-level cache policies support Flux.*; WanTransformer3DModel is not one"):
        with torch.no_grad():
            model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.ones(1, 3, 16))
    cache.remove(model)


# ------------------------------------------------------------------ errors
class FlatBlock(torch.nn.Module):
    def forward(self, hidden_states, sigma):
        return hidden_states + sigma.reshape(-1, 1)


class FlatToy(ToyStack):
    """A stack whose hidden states have no token dimension: (batch, channels)."""

    def __init__(self):
        super().__init__([FlatBlock(), FlatBlock()])


def test_hidden_states_without_tokens_are_refused():
    toy = FlatToy()
    cache.apply(toy, "ras")
    cache.reset(toy)
    with pytest.raises(ValueError, match=r"need \(batch, tokens, channels\) hidden states.*FlatToy passes \(1, 4\)"):
        toy(torch.zeros(1, 4), timestep=torch.tensor([0.5]))
    cache.remove(toy)


def test_bad_parameters():
    with pytest.raises(ValueError, match=r"ToCa.ratio must be a number in \[0, 1\], got 1.5"):
        cache.ToCa(ratio=1.5)
    with pytest.raises(ValueError, match=r"ToCa.interval must be an integer in \[1, 1000\], got 0"):
        cache.parse_policy("toca:interval=0")
    with pytest.raises(ValueError, match=r"RAS.max_age must be an integer in \[0, 1000\], got -1"):
        cache.RAS(max_age=-1)
    with pytest.raises(ValueError, match=r"RAS.full_every must be an integer in \[0, 1000\], got 'x'"):
        cache.parse_policy("ras:full_every=x")
    with pytest.raises(ValueError, match=r"unknown parameter 'order' for cache policy 'ras'.*ratio: a number"):
        cache.parse_policy("ras:order=2")
    assert cache.parse_policy(cache.ToCa(ratio=0.3).describe()) == cache.ToCa(ratio=0.3)
    assert cache.parse_policy("ras:ratio=0.3,max_age=2") == cache.RAS(ratio=0.3, max_age=2)


# ------------------------------------------------------------------ attention over all tokens (cached keys/values)
@dataclass
class FullThenPart(CachePolicy):
    """Runs the stack on every token (recording the keys and values), then on a subset with the same inputs."""

    name = "full-then-part"
    tokens: tuple = (1, 6, 7, 12)
    attend_all: bool = True

    def run(self, stack, h, call):
        kv = []
        full = stack.compute_tokens(h, 0, stack.num_blocks, torch.arange(stack.main(h).shape[1]), kv=kv)
        self.recorded = list(kv)
        part = stack.compute_tokens(
            h, 0, stack.num_blocks, torch.tensor(self.tokens), kv=kv if self.attend_all else None
        )
        self.kv, self.outputs = kv, (full, part)
        return full


@pytest.mark.parametrize("name", list(DIFFUSERS))
def test_refreshed_tokens_attend_to_the_cached_keys_and_values(name):
    """With unchanged inputs, the subset's outputs equal the full computation's for those tokens (every block's
    attention sees all keys and values), and the cache keeps its values; without the cache they differ."""
    make, call, shape = DIFFUSERS[name]
    model = make()
    processors = [type(m.processor) for m in model.modules() if hasattr(m, "processor")]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    keep = torch.tensor(FullThenPart.tokens)
    for attend_all in (True, False):
        policy = FullThenPart(attend_all=attend_all)
        cache.apply(model, policy)
        cache.reset(model)
        with torch.no_grad():
            call(model, x, torch.tensor(0.6))
        cache.remove(model)
        (full, part), image = policy.outputs, -1  # the image tokens are the last carried tensor
        close = torch.allclose(part[image], full[image][:, keep], atol=1e-5, rtol=1e-5)
        assert close == attend_all, (name, attend_all)
        if attend_all:
            assert len(policy.kv) >= 3 and all(k.shape[0] == 2 for k in policy.kv)  # one per block, per row
            for old, new in zip(policy.recorded, policy.kv, strict=True):
                torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
            if len(full) == 2 and part[0] is not None:  # the text tokens see all of them too
                torch.testing.assert_close(part[0], full[0], atol=1e-5, rtol=1e-5)
    assert [type(m.processor) for m in model.modules() if hasattr(m, "processor")] == processors  # restored


def test_toca_refresh_right_after_a_full_step_is_exact(tiny_flux):
    """interval=2, warmup=1: steps 0 and 1 are full, step 2 refreshes a quarter of the tokens. Calling the model
    twice at step 1's sigma with the same input makes the second call a partial step with unchanged inputs:
    its output must equal the full output (refreshed tokens exact, the others reuse an exact residual)."""
    cond = tiny_flux.encode_prompts(PROMPTS)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sigmas = flow_sigmas(4)
    with torch.no_grad():
        plain = tiny_flux(x, sigmas[1], cond)
        cache.apply(tiny_flux, cache.ToCa(interval=2, ratio=0.25, warmup=1))
        cache.reset(tiny_flux)  # no schedule: the step index counts calls
        outs = []
        for _ in range(3):
            with cache.step(tiny_flux, sigmas[1]):
                outs.append(tiny_flux(x, sigmas[1], cond))
    n = len(tiny_flux.blocks)
    assert cond_records(tiny_flux)[2] == (n * 16 / 64, n * 48 / 64)
    for out in outs:
        torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    cache.remove(tiny_flux)


class MyFluxProcessor(FluxAttnProcessor):
    pass


def test_unknown_attention_processors_are_refused_and_restored():
    model = tiny_diffusers_flux()
    model.single_transformer_blocks[1].attn.set_processor(MyFluxProcessor())
    originals = [m.processor for m in model.modules() if hasattr(m, "processor")]
    cache.apply(model, "toca:ratio=0.5,warmup=0")
    cache.reset(model)
    with pytest.raises(ValueError, match="Model's FluxSingleTransformerBlock.attn uses MyFluxProcessor"):
        with torch.no_grad():
            grid_flux_call(model, torch.randn(1, 16, 8), torch.tensor(0.5))
    assert [m.processor for m in model.modules() if hasattr(m, "processor")] == originals
    cache.remove(model)
