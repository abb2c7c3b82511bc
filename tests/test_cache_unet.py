"""DeepCache and Faster Diffusion on diffusers UNets (UNet2DModel, UNet2DConditionModel) built tiny, bare and inside
pipelines."""

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers_tiny import TINY

import stretto.cache as cache

torch.set_num_threads(1)

LEVELS = dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4)
EMBEDS = torch.linspace(-1, 1, 2 * 3 * 16).reshape(2, 3, 16)


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), **LEVELS,
    ).eval()  # fmt: skip


def tiny_conditional_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, cross_attention_dim=16, attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), **LEVELS,
    ).eval()  # fmt: skip


UNETS = {
    "UNet2DModel": (tiny_unet, lambda m, x, t: m(x, t, return_dict=False)[0], (2, 3, 8, 8)),
    "UNet2DConditionModel": (
        tiny_conditional_unet,
        lambda m, x, t: m(x, t, encoder_hidden_states=EMBEDS, return_dict=False)[0],
        (2, 4, 8, 8),
    ),
}
TIMESTEPS = torch.arange(950, -1, -50)  # 20 DDIM-style steps, 950 .. 0


def denoise(name, model, seed=0):
    """A DDIM-like loop over TIMESTEPS calling the UNet with its own timestep."""
    _, call, shape = UNETS[name]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    cache.reset(model, TIMESTEPS.float())
    with torch.no_grad():
        for t in TIMESTEPS:
            x = 0.95 * x - 0.05 * call(model, x, t)
    return x


@pytest.mark.parametrize("name", list(UNETS))
def test_deepcache_on_unets(name):
    model = UNETS[name][0]()
    plain = denoise(name, model)
    cache.apply(model, "none")
    assert torch.equal(denoise(name, model), plain)
    cache.remove(model)
    cache.apply(model, "deepcache:interval=3,depth=1,warmup=1")
    out = denoise(name, model)
    records = cache.summary(model).records
    again = denoise(name, model, seed=0)
    cache.remove(model)
    full = [i == 0 or (i - 1) % 3 == 0 for i in range(20)]  # warm-up step 0, then every 3rd step from step 1
    assert [r.computed for r in records] == [7 if f else 2 for f in full]  # 3 down + mid + 3 up; 2 kept
    assert [r.reused for r in records] == [0 if f else 5 for f in full]
    assert torch.equal(out, again) and torch.isfinite(out).all() and not torch.equal(out, plain)
    assert (out - plain).abs().mean() < 0.1 * plain.abs().mean()
    assert not any("forward" in b.__dict__ for b in model.modules())  # removed: the blocks' own forwards
    assert torch.equal(denoise(name, model), plain)


def test_deeper_branch_runs_more_blocks():
    model = tiny_unet()
    cache.apply(model, "deepcache:interval=2,depth=2,warmup=0")
    denoise("UNet2DModel", model)
    assert [r.computed for r in cache.summary(model).records[:4]] == [7, 4, 7, 4]  # 2 down + 2 up kept
    cache.remove(model)


def ddim_pipeline():
    pipe = DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ddim_images(pipe, seed=0):
    return pipe(
        batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(seed), output_type="np"
    ).images


def sd_pipeline():
    """StableDiffusionPipeline (tiny UNet2DConditionModel + AutoencoderKL + DDIM, batched CFG); its prompt embeddings
    are given directly (sd_images): there is no tokenizer offline."""
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,),
        latent_channels=4, norm_num_groups=4,
    ).eval()  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=tiny_conditional_unet(),
        scheduler=DDIMScheduler(clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_images(pipe, seed=0):
    return pipe(
        prompt_embeds=EMBEDS, negative_prompt_embeds=torch.zeros_like(EMBEDS), num_inference_steps=10,
        guidance_scale=5.0, height=8, width=8, generator=torch.Generator().manual_seed(seed), output_type="np",
    ).images  # fmt: skip


def cached_run(pipe, images, spec):
    """The cached images and summary of one call of `pipe` under `spec`, and its plain images. A second call with the
    same seed (another seed between them) gives the same images; `remove` restores the plain pipeline bit for bit."""
    plain, cls = images(pipe), type(pipe)
    cache.apply(pipe, spec)
    first, s = images(pipe), cache.summary(pipe)
    images(pipe, seed=5)
    again = images(pipe)
    cache.remove(pipe)
    assert np.array_equal(first, again) and not np.array_equal(first, plain)
    assert type(pipe) is cls and np.array_equal(images(pipe), plain)
    return first, plain, s


def test_ddim_pipeline_same_seed_same_image():
    _, _, s = cached_run(ddim_pipeline(), ddim_images, "deepcache:interval=3")
    assert s.totals() == {"computed": 40, "reused": 30, "forecast": 0}  # full steps 0, 1, 4, 7 of 10


def test_stable_diffusion_shaped_pipeline():
    _, _, s = cached_run(sd_pipeline(), sd_images, "deepcache:interval=3")
    assert [r.computed for r in s.records] == [7, 7, 2, 2, 7, 2, 2, 7, 2, 2]


def test_unet_errors():
    unet = tiny_unet()
    policies = "its cache policies are deepcache, fasterdiffusion and none"
    with pytest.raises(ValueError, match=f"UNet2DModel is a UNet: {policies}, got 'fora'"):
        cache.apply(unet, "fora")
    with pytest.raises(ValueError, match=f"UNet2DModel is a UNet: {policies}, got 'toca'"):
        cache.apply(unet, "toca")  # token-level policies need a transformer's tokens
    with pytest.raises(ValueError, match="UNet2DModel is a UNet: the cache runs its blocks itself"):
        cache.apply(unet, "deepcache", blocks=["up_blocks"])
    with pytest.raises(
        ValueError, match=r"DeepCache.depth must be below the number of UNet levels of UNet2DModel \(3\)"
    ):
        cache.apply(unet, "deepcache:depth=3")
    with pytest.raises(ValueError, match="deepcache runs on UNets .*, not on DiTTransformer2DModel"):
        cache.apply(TINY["DiTTransformer2DModel"].build(), "deepcache")
    cache.apply(unet, "deepcache")
    cache.reset(unet, TIMESTEPS / 1000)  # a 0..1 schedule for a UNet called at 0..1000
    with pytest.raises(ValueError, match="UNet2DModel was called at noise level 950 but the step schedule runs"):
        unet(torch.randn(2, 3, 8, 8), 950)
    cache.remove(unet)
    conditional = tiny_conditional_unet()
    cache.apply(conditional, "deepcache")
    x = torch.randn(2, 4, 8, 8)
    residuals = tuple(torch.zeros(1) for _ in range(4))
    with pytest.raises(ValueError, match="cannot run UNet2DConditionModel with down_block_additional_residuals="):
        conditional(x, 10, encoder_hidden_states=EMBEDS, down_block_additional_residuals=residuals)
    cache.remove(conditional)


# -- Faster Diffusion: the encoder (conv_in, down blocks, mid block) runs at key steps only ---------------------------
@pytest.mark.parametrize("name", list(UNETS))
def test_fasterdiffusion_with_every_step_a_key_step_is_the_plain_unet(name):
    model = UNETS[name][0]()
    plain = denoise(name, model)
    cache.apply(model, "fasterdiffusion:interval=1")
    out, records = denoise(name, model), cache.summary(model).records
    cache.remove(model)
    assert torch.equal(out, plain) and [r.computed for r in records] == [7] * 20


@pytest.mark.parametrize("name", list(UNETS))
def test_fasterdiffusion_on_unets(name):
    model = UNETS[name][0]()
    plain = denoise(name, model)
    cache.apply(model, "fasterdiffusion")  # the paper's key steps 0/1/2/3/5/10/15/25/35
    out, s = denoise(name, model), cache.summary(model)
    again = denoise(name, model)
    cache.remove(model)
    keys = {0, 1, 2, 3, 5, 10, 15}  # those within 20 steps
    assert [r.computed for r in s.records] == [7 if i in keys else 3 for i in range(20)]  # 3 up blocks run
    assert [r.reused for r in s.records] == [0 if i in keys else 4 for i in range(20)]  # 3 down + mid reused
    assert s.compute_fraction == pytest.approx((7 * 7 + 13 * 3) / 140)
    assert torch.equal(out, again) and torch.isfinite(out).all() and not torch.equal(out, plain)
    assert (out - plain).abs().mean() < 0.1 * plain.abs().mean()
    assert not any("forward" in m.__dict__ for m in model.modules())  # conv_in and the blocks: their own forwards
    assert torch.equal(denoise(name, model), plain)


def test_fasterdiffusion_non_key_step_runs_the_decoder_on_the_stored_encoder_features():
    """At a non-key step the output depends only on the stored features (conv_in's included) and the timestep, as in
    the paper's parallel decoding: another input sample gives the same output."""
    model = tiny_unet()
    cache.apply(model, "fasterdiffusion:keys=0/2")
    cache.reset(model, TIMESTEPS.float())
    x, y = torch.randn(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(x, 950)  # key step 0: stores the encoder's outputs
        a, b = model(x, 900).sample, model(y, 900).sample  # step 1: decoder only
        c, d = model(x, 850).sample, model(y, 850).sample  # key step 2: the whole UNet
    records = cache.summary(model).records
    cache.remove(model)
    assert torch.equal(a, b) and not torch.equal(c, d)
    assert [r.computed for r in records] == [7, 3, 3, 7, 7]


def test_fasterdiffusion_pipelines_same_seed_same_image():
    _, _, s = cached_run(ddim_pipeline(), ddim_images, "fasterdiffusion")
    assert s.policy == "fasterdiffusion:keys=0/1/2/3/5/10/15/25/35,interval=0,warmup=0"
    assert s.totals() == {"computed": 50, "reused": 20, "forecast": 0}  # key steps 0, 1, 2, 3, 5 of 10
    first, plain, s = cached_run(sd_pipeline(), sd_images, "fasterdiffusion:interval=2,warmup=1")
    assert [r.computed for r in s.records] == [7, 7, 3, 7, 3, 7, 3, 7, 3, 7]  # step 0, then every 2nd from step 1
    assert np.abs(first - plain).mean() < 0.1 * np.abs(plain - 0.5).mean()


def test_fasterdiffusion_errors(tiny_flux):
    bad = {
        "fasterdiffusion:keys=0/a": r"FasterDiffusion.keys must be step indices \(integers in \[0, 100000\]\) "
        r"separated by '/', e\.g\. '0/1/2/3/5/10'; got '0/a'",
        "fasterdiffusion:keys=0/-3": "FasterDiffusion.keys must be step indices .*; got '0/-3'",
        "fasterdiffusion:keys=": "FasterDiffusion.keys must be step indices .*; got ''",
        "fasterdiffusion:interval=-1": r"FasterDiffusion.interval must be an integer in \[0, 1000\], got -1",
        "fasterdiffusion:interval=1.5": r"FasterDiffusion.interval must be an integer in \[0, 1000\], got '1.5'",
        "fasterdiffusion:warmup=1001": r"FasterDiffusion.warmup must be an integer in \[0, 1000\], got 1001",
        "fasterdiffusion:keys=0/4,interval=2": "FasterDiffusion takes keys= .* or interval= .*, not both; "
        "got keys='0/4' and interval=2",
        "fasterdiffusion:depth=1": "unknown parameter 'depth' for cache policy 'fasterdiffusion'",
    }
    for text, message in bad.items():
        with pytest.raises(ValueError, match=message):
            cache.parse_policy(text)
    with pytest.raises(ValueError, match="fasterdiffusion runs on UNets .*, not on DiTTransformer2DModel"):
        cache.apply(TINY["DiTTransformer2DModel"].build(), "fasterdiffusion")
    with pytest.raises(ValueError, match="fasterdiffusion runs on UNets .*, not on FluxTransformer2DModel"):
        cache.apply(tiny_flux, "fasterdiffusion")  # stretto's own model, hosted on diffusers' Flux
    assert cache.get_handle(tiny_flux) is None
