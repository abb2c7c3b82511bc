"""The feature cache applied to diffusers pipelines in one call, and the bad input it refuses loudly."""

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    PriorTransformer,
)
from diffusers_tiny import TINY

import stretto.cache as cache
from stretto.eval.timing import BlockCounter
from stretto.sampling import flow_sigmas

torch.set_num_threads(1)  # tiny models: more threads only contend


@pytest.fixture(scope="module")
def dit_pipe():
    """A real DiTPipeline (DiT + AutoencoderKL + DDIM) built tiny from config."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=6, sample_size=8,
        patch_size=2,
    ).eval()  # fmt: skip
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,),
        latent_channels=4, norm_num_groups=4,
    ).eval()  # fmt: skip
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dit_images(pipe, seed=0):
    """20 DDIM steps with batched CFG (the pipeline runs both branches in one transformer call)."""
    generator = torch.Generator().manual_seed(seed)
    return pipe(class_labels=[1, 2], guidance_scale=4.0, num_inference_steps=20, generator=generator, output_type="np")


def test_dit_pipeline_same_seed_same_image(dit_pipe):
    plain = dit_images(dit_pipe).images
    cache.apply(dit_pipe, "fora:interval=3")
    blocks = list(dit_pipe.transformer.transformer_blocks)
    with BlockCounter(blocks) as counter:
        first = dit_images(dit_pipe).images
    s = cache.summary(dit_pipe)
    dit_images(dit_pipe, seed=7)
    again = dit_images(dit_pipe).images
    s_again = cache.summary(dit_pipe)
    cache.remove(dit_pipe)
    assert np.array_equal(first, again) and not np.array_equal(first, plain)
    # warm-up step 0, then every 3rd step from step 1 (1, 4, ..., 16) and the final step 19: 8 of 20
    computed = [r.computed > 0 for r in s.records]
    assert computed == [i == 0 or (i - 1) % 3 == 0 or i == 19 for i in range(20)]
    assert counter.counts == [8] * 6
    assert s.totals() == s_again.totals() == {"computed": 48, "reused": 72, "forecast": 0}  # the last call
    assert [r.sigma for r in s.records[:2]] == [950.0, 900.0]  # DDIM's timesteps, the transformer's scale
    assert type(dit_pipe) is DiTPipeline and "_stretto_cache" not in dit_pipe.__dict__
    assert np.array_equal(dit_images(dit_pipe).images, plain)  # removed: the plain pipeline again


class TwoCallPipeline:
    """A Flux-style pipeline: a flow-matching scheduler, CFG as two transformer calls named by `cache_context`,
    the timestep passed as t / 1000; it never resets any cache itself."""

    def __init__(self):
        self.tiny = TINY["FluxTransformer2DModel"]
        self.transformer = self.tiny.build()
        self.scheduler = FlowMatchEulerDiscreteScheduler()

    def __call__(self, steps=6, seed=0):
        x = torch.randn(*self.tiny.shape, generator=torch.Generator().manual_seed(seed))
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
        with torch.no_grad():
            for t in self.scheduler.timesteps:
                with self.transformer.cache_context("cond"):
                    cond = self.tiny.call(self.transformer, x, t / 1000)
                with self.transformer.cache_context("uncond"):
                    uncond = self.tiny.call(self.transformer, -x, t / 1000)
                x = self.scheduler.step(uncond + 2 * (cond - uncond), t, x).prev_sample
        return x


def test_pipeline_calling_branches_separately():
    pipe = TwoCallPipeline()
    plain = pipe()
    cache.apply(pipe, "fora:interval=2,warmup=1,final=true")
    first, s = pipe(), cache.summary(pipe)
    again = pipe()
    cache.remove(pipe)
    assert torch.equal(first, again) and not torch.equal(first, plain)
    steps = [(r.branch, r.computed > 0) for r in s.records]
    # the final step is known from the scheduler's schedule alone (nothing else names it)
    assert steps == [(b, c) for c in (True, True, False, True, False, True) for b in ("cond", "uncond")]
    assert torch.equal(pipe(), plain)


class TwoExpertPipeline:
    """Wan 2.2-style: `transformer` denoises the high-noise steps, `transformer_2` the rest (DDIM-like timesteps)."""

    def __init__(self):
        self.tiny = TINY["WanTransformer3DModel"]
        self.transformer, self.transformer_2 = self.tiny.build(), self.tiny.build()
        with torch.no_grad():
            for p in self.transformer_2.parameters():
                p.mul_(0.9)  # a different expert
        self.scheduler = DDIMScheduler(clip_sample=False)

    def __call__(self, seed=0):
        x = torch.randn(*self.tiny.shape, generator=torch.Generator().manual_seed(seed))
        self.scheduler.set_timesteps(8)
        with torch.no_grad():
            for t in self.scheduler.timesteps:
                model = self.transformer if t >= 500 else self.transformer_2
                x = 0.9 * x - 0.1 * self.tiny.call(model, x, t.float())
        return x


def test_both_experts_of_a_two_expert_pipeline():
    pipe = TwoExpertPipeline()
    plain = pipe()
    cache.apply(pipe, "fora:interval=2,warmup=0,final=false")
    first, s = pipe(), cache.summary(pipe)
    assert torch.equal(pipe(), first) and not torch.equal(first, plain)
    assert cache.get_handle(pipe.transformer_2) is not None
    cache.remove(pipe.transformer_2)  # any member removes the whole pipeline's cache
    assert cache.get_handle(pipe) is None and type(pipe) is TwoExpertPipeline
    assert torch.equal(pipe(), plain)
    # timesteps 875 .. 0 by 125: the first expert runs steps 0-3, the second steps 4-7; FORA's step index is the
    # pipeline's (the schedule's), so each expert computes the even steps
    assert [(r.call, r.sigma, r.computed > 0) for r in s.records] == [
        (i, 875.0 - 125 * i, i % 2 == 0) for i in range(8)
    ]


def test_reset_and_summary_on_a_pipeline(dit_pipe):
    with pytest.raises(RuntimeError, match="no cache is applied to this DiTPipeline"):
        cache.summary(dit_pipe)
    cache.apply(dit_pipe, "none")
    dit_images(dit_pipe)
    assert len(cache.summary(dit_pipe).records) == 20
    cache.reset(dit_pipe)
    assert cache.summary(dit_pipe).records == []
    cache.remove(dit_pipe)


# ------------------------------------------------------------------ bad input
def test_pipeline_without_a_denoiser():
    class TextPipeline:
        components = {"text_encoder": None}

    with pytest.raises(ValueError, match="TextPipeline has no `transformer` or `unet` model"):
        cache.apply(TextPipeline(), "fora")


def test_class_without_a_table_entry():
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=4, num_layers=1, embedding_dim=8, num_embeddings=2,
        additional_embeddings=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="no table entry for PriorTransformer; supported: FluxTransformer2DModel"):
        cache.apply(prior, "fora")


def test_arguments_the_cache_would_drop_are_refused():
    tiny = TINY["FluxTransformer2DModel"]
    model = tiny.build()
    cache.apply(model, "fora")
    x = torch.randn(*tiny.shape)
    with pytest.raises(ValueError, match="cannot run FluxTransformer2DModel with controlnet_block_samples="):
        model(
            hidden_states=x, encoder_hidden_states=torch.ones(2, 3, 16), pooled_projections=torch.ones(2, 16),
            timestep=torch.ones(2), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(3, 3),
            controlnet_block_samples=[torch.zeros_like(x)],
        )  # fmt: skip
    cache.remove(model)


@pytest.mark.parametrize("name", ["WanTransformer3DModel", "FluxTransformer2DModel"])
def test_schedule_in_another_scale_fails(name):
    """Wan takes 0..1000 and Flux 0..1: a schedule in the other scale would silently compute every block."""
    tiny = TINY[name]
    model = tiny.build()
    cache.apply(model, "fora")
    wrong = flow_sigmas(4) * (1 / 1000 if name.startswith("Wan") else 1000)
    cache.reset(model, tiny.time(wrong))
    x = torch.randn(*tiny.shape)
    with pytest.raises(ValueError, match=f"{name} was called at noise level .* give reset\\(\\) the schedule"):
        tiny.call(model, x, tiny.time(torch.tensor(1.0)))
    cache.remove(model)


def test_positional_timestep_is_read():
    tiny = TINY["WanTransformer3DModel"]  # its call passes the timestep positionally
    model = tiny.build()
    cache.apply(model, "fora:interval=2,warmup=0,final=false")
    cache.reset(model)
    with torch.no_grad():
        for sigma in (1.0, 0.5):
            tiny.call(model, torch.randn(*tiny.shape), tiny.time(torch.tensor(sigma)))
    assert [r.sigma for r in cache.summary(model).records] == [1000.0, 500.0]
    cache.remove(model)


def test_magcache_without_ratios_fails():
    with pytest.raises(ValueError, match="MagCache needs calibrated ratios: give ratios=.* or calibrate=true"):
        cache.parse_policy("magcache")


def test_long_skip_from_a_block_not_computed():
    tiny = TINY["HunyuanDiT2DModel"]  # 6 blocks: block 4 takes block 1's output as its long skip
    model = tiny.build()
    cache.apply(model, "dbcache:first=1,last=2,warmup=1,threshold=10")
    sigmas = flow_sigmas(2) * 1000
    cache.reset(model, sigmas)
    x = torch.randn(*tiny.shape)
    tiny.call(model, x, sigmas[0])
    with pytest.raises(ValueError, match="block 4 takes the long skip of block 1, which this call did not compute"):
        tiny.call(model, x, sigmas[1])
    cache.remove(model)
