"""Helpers shared by the feature-cache tests (test_cache*.py): a guided Euler generation with the cache step
context, tiny random diffusers transformers and how to call them, toy block stacks and record helpers."""

import torch
from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel, WanTransformer3DModel

import stretto.cache as cache
from stretto.cache.block_list import find_stack
from stretto.sampling import flow_sigmas, sample_euler

PROMPTS = ["red circle", "small blue square"]


def run_generation(model, prompts, steps=4, guidance=3.0, seed=0, batched=True, sigmas=None):
    """A minimal guided Euler generation that sets the cache step context the way pipeline.generate does:
    batched CFG (one call, both branches) or one call per branch."""
    sigmas = flow_sigmas(steps) if sigmas is None else sigmas
    cond = model.encode_prompts(prompts)
    null = model.encode_prompts([""] * len(prompts))
    both = type(cond).cat([cond, null])
    cache.reset(model, sigmas)

    def denoiser(x, sigma):
        if batched:
            with cache.step(model, sigma, branches=("cond", "uncond")):
                v_cond, v_uncond = model(torch.cat([x, x]), sigma, both).chunk(2)
        else:
            with cache.step(model, sigma, branches=("cond",)):
                v_cond = model(x, sigma, cond)
            with cache.step(model, sigma, branches=("uncond",)):
                v_uncond = model(x, sigma, null)
        return v_uncond + guidance * (v_cond - v_uncond)

    x = torch.randn(len(prompts), 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return sample_euler(denoiser, x, sigmas)


def same_seed_runs(model, spec, steps):
    """With `spec` applied: generate PROMPTS with seed 3, a different batch with seed 9, then PROMPTS with seed 3
    again; returns the two seed-3 outputs (the cache is removed again)."""
    cache.apply(model, spec)
    first = run_generation(model, PROMPTS, steps=steps, seed=3)
    run_generation(model, ["green triangle"], steps=steps, seed=9)  # different batch and content in between
    again = run_generation(model, PROMPTS, steps=steps, seed=3)
    cache.remove(model)
    return first, again


def records(model):
    """(branch, computed, reused, forecast) of every record of the applied cache's summary."""
    return [(r.branch, r.computed, r.reused, r.forecast) for r in cache.summary(model).records]


def stack_blocks(model):
    """The blocks of the model's block stack, as the cache mechanism finds them."""
    return [b for owner, attr in find_stack(model, None) for b in getattr(owner, attr)]


# ------------------------------------------------------------------ diffusers transformers
def tiny_diffusers_flux():
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4),
    ).eval()  # fmt: skip


def _text_inputs(x):
    """The image tokens with three text tokens and a pooled text embedding (Flux, SD3)."""
    b = x.shape[0]
    return {"hidden_states": x, "encoder_hidden_states": torch.ones(b, 3, 16), "pooled_projections": torch.ones(b, 16)}


def flux_call(model, x, t, img_ids=None):
    """`img_ids` default to all zeros (every image token at the same position)."""
    return model(
        **_text_inputs(x),
        timestep=t.expand(x.shape[0]),
        img_ids=torch.zeros(x.shape[1], 3) if img_ids is None else img_ids,
        txt_ids=torch.zeros(3, 3),
        guidance=None,
        return_dict=False,
    )[0]


def tiny_sd3():
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
        pos_embed_max_size=8,
    ).eval()  # fmt: skip


def sd3_call(model, x, t):
    return model(**_text_inputs(x), timestep=t.expand(x.shape[0]) * 1000, return_dict=False)[0]


def tiny_dit():
    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=3, sample_size=8, patch_size=2,
        num_embeds_ada_norm=10,
    ).eval()  # fmt: skip


def dit_call(model, x, t):
    b = x.shape[0]
    return model(x, timestep=(t * 999).long().expand(b), class_labels=torch.arange(b) % 10, return_dict=False)[0]


def tiny_wan(num_layers=3):
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=num_layers,
    ).eval()  # fmt: skip


def wan_call(model, x, t):
    b = x.shape[0]
    return model(
        hidden_states=x, timestep=t.expand(b) * 1000, encoder_hidden_states=torch.ones(b, 3, 16), return_dict=False
    )[0]


DIFFUSERS = {  # name: (build, call, input shape)
    "wan": (tiny_wan, wan_call, (2, 4, 2, 8, 8)),
    "flux": (tiny_diffusers_flux, flux_call, (2, 16, 8)),
    "sd3": (tiny_sd3, sd3_call, (2, 4, 8, 8)),
    "dit": (tiny_dit, dit_call, (2, 4, 8, 8)),
}


def euler(model, call, shape, steps=4, branches=None):
    """Euler steps of `call(model, x, sigma)` from seeded noise, each inside a cache step context with
    `branches` (None: no step context, the cache takes sigma from the call's `timestep`, whose scale differs by
    model, so steps are counted instead of keyed on a schedule)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    sigmas = flow_sigmas(steps)
    cache.reset(model, None if branches is None else sigmas)
    with torch.no_grad():
        for i in range(steps):
            if branches is None:  # no step context: sigma comes from the call's `timestep`
                v = call(model, x, sigmas[i])
            else:
                with cache.step(model, sigmas[i], branches=branches):
                    v = call(model, x, sigmas[i])
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


# ------------------------------------------------------------------ toy block stacks
class ToyStack(torch.nn.Module):
    """A model that is only a block stack: each block maps (hidden_states, sigma) in turn."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)

    def forward(self, x, timestep):
        for block in self.blocks:
            x = block(x, timestep)
        return x


class AddSigma(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, hidden_states, sigma):
        return hidden_states + self.scale * (1 + 2 * sigma.reshape(-1, 1))  # residual s * (1 + 2 sigma): linear


class Toy(ToyStack):
    """Three blocks with known residuals 1, 2 and 3 times (1 + 2 sigma)."""

    def __init__(self):
        super().__init__(AddSigma(s) for s in (1.0, 2.0, 3.0))
