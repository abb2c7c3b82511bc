import pytest
import torch

import stretto
from stretto.data.shapes import PromptError
from stretto.pipelines.image import generate
from stretto.sampling import flow_sigmas, get_sampler

PROMPTS = ["a red circle left of a blue square", "a small green triangle at the top"]


def test_same_seed_same_images(tiny_flux):
    a = generate(tiny_flux, PROMPTS, steps=3, seeds=[5, 6]).images
    b = generate(tiny_flux, PROMPTS, steps=3, seeds=5).images
    c = generate(tiny_flux, PROMPTS, steps=3, seeds=7).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pipeline_is_the_plain_sampler_loop(tiny_flux):
    """generate() adds nothing to the math: it equals calling the sampler on the CFG denoiser by hand."""
    torch.manual_seed(0)
    out = generate(tiny_flux, PROMPTS[:1], steps=4, sampler="euler", guidance=2.5, seeds=[3]).images
    cond = tiny_flux.encode_prompts(PROMPTS[:1])
    null = tiny_flux.encode_prompts([""])
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for s, s_next in zip(flow_sigmas(4)[:-1], flow_sigmas(4)[1:], strict=True):
            v_c = tiny_flux(x, s, cond)
            v_u = tiny_flux(x, s, null)
            x = x + (s_next - s) * (v_u + 2.5 * (v_c - v_u))
    assert torch.allclose(out, x.clamp(-1, 1), atol=1e-5)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm++2m"])
def test_counts_model_calls_and_block_evaluations(tiny_flux, sampler):
    result = generate(tiny_flux, PROMPTS, steps=4, sampler=sampler)
    s = result.stats
    from stretto.sampling import nfe_per_sampler

    assert s.model_calls == nfe_per_sampler(sampler, 4)
    assert s.block_evals == [s.model_calls] * len(tiny_flux.blocks)
    assert s.wall_s > 0


def test_guidance_one_runs_only_the_conditional_branch(tiny_flux):
    with_cfg = generate(tiny_flux, PROMPTS, steps=2, guidance=1.0)
    assert with_cfg.stats.model_calls == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"sampler": "ddpm"}, "ddpm"),
        ({"guidance": 50.0}, r"guidance must be in \[0, 20\], got 50.0"),
        ({"shift": -1.0}, r"shift must be in \(0, 100\]"),
        ({"seeds": [1, 2, 3]}, "got 3 seeds for 2 prompts"),
    ],
)
def test_bad_settings_are_named(tiny_flux, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_flux, PROMPTS, **kwargs)


def test_unknown_sampler_lists_the_samplers():
    with pytest.raises(ValueError, match="euler.*heun.*dpm"):
        get_sampler("nope")


def test_unknown_prompt_word_is_rejected(tiny_flux):
    with pytest.raises(PromptError, match="hexagon"):
        generate(tiny_flux, ["a red hexagon on the left"])


def test_non_finite_values_stop_with_the_step(tiny_flux):
    class Broken(torch.nn.Module):
        """Returns NaN from the third call on."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        blocks = property(lambda self: self.inner.blocks)
        encode_prompts = property(lambda self: self.inner.encode_prompts)

        def forward(self, x, sigma, cond):
            self.calls += 1
            v = self.inner(x, sigma, cond)
            return v * float("nan") if self.calls >= 3 else v

    with pytest.raises(FloatingPointError, match="step 2"):
        generate(Broken(tiny_flux), PROMPTS, steps=5, sampler="euler")


def test_top_level_api(tiny_flux):
    result = stretto.generate(tiny_flux, PROMPTS[:1], steps=2)
    assert result.images.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("prompt", ["", "  "])
def test_an_empty_prompt_needs_guidance_zero(tiny_flux, prompt):
    with pytest.raises(PromptError, match=f"prompt '{prompt}' is .*guidance=0"):
        generate(tiny_flux, [PROMPTS[0], prompt], steps=2)
    unconditional = generate(tiny_flux, [prompt], steps=2, guidance=0.0)
    assert unconditional.stats.model_calls == 2 and torch.isfinite(unconditional.images).all()
