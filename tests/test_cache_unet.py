"""DeepCache on diffusers UNets (UNet2DModel, UNet2DConditionModel) built tiny, bare and inside pipelines."""

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


def test_ddim_pipeline_same_seed_same_image():
    pipe = DDIMPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)

    def images(seed=0):
        return pipe(
            batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(seed), output_type="np"
        )

    plain = images().images
    cache.apply(pipe, "deepcache:interval=3")
    first, s = images().images, cache.summary(pipe)
    images(seed=5)
    again = images().images
    cache.remove(pipe)
    assert np.array_equal(first, again) and not np.array_equal(first, plain)
    assert s.totals() == {"computed": 40, "reused": 30, "forecast": 0}  # full steps 0, 1, 4, 7 of 10
    assert np.array_equal(images().images, plain)


def test_stable_diffusion_shaped_pipeline():
    """StableDiffusionPipeline (tiny UNet2DConditionModel + AutoencoderKL + DDIM, batched CFG) with prompt embeddings
    given directly: there is no tokenizer offline."""
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

    def images(seed=0):
        return pipe(
            prompt_embeds=EMBEDS, negative_prompt_embeds=torch.zeros_like(EMBEDS), num_inference_steps=10,
            guidance_scale=5.0, height=8, width=8, generator=torch.Generator().manual_seed(seed), output_type="np",
        ).images  # fmt: skip

    plain = images()
    cache.apply(pipe, "deepcache:interval=3")
    first, s = images(), cache.summary(pipe)
    again = images()
    cache.remove(pipe)
    assert np.array_equal(first, again) and not np.array_equal(first, plain)
    assert [r.computed for r in s.records] == [7, 7, 2, 2, 7, 2, 2, 7, 2, 2]
    assert type(pipe) is StableDiffusionPipeline and np.array_equal(images(), plain)


def test_unet_errors():
    unet = tiny_unet()
    with pytest.raises(
        ValueError, match="UNet2DModel is a UNet: its cache policies are deepcache and none, got 'fora'"
    ):
        cache.apply(unet, "fora")
    with pytest.raises(
        ValueError, match="UNet2DModel is a UNet: its cache policies are deepcache and none, got 'toca'"
    ):
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
