"""Tiny random diffusers transformers, one per family the feature cache supports, and how to call each.

Every entry builds a model of 20k-60k parameters from config (offline, seeded) and calls it the way its
pipeline does. `time(sigma)` turns a noise level in [0, 1] (1 = noise) into the model's own timestep
(Flux 0..1, SD3 / Wan 0..1000, DiT integer steps, Lumina2 counting up); `call(model, x, timestep)` takes
that timestep. Inputs have a batch of 2.
"""

from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import torch

B = 2  # batch rows of every input


def _ones(*shape):
    return torch.linspace(-1, 1, torch.Size(shape).numel()).reshape(shape)  # deterministic, not constant


@dataclass
class Tiny:
    """How to build one tiny model and call it: `call(model, x, t)` returns the model's prediction for x."""

    build: Callable[[], torch.nn.Module]
    call: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    shape: tuple[int, ...]
    time: Callable[[torch.Tensor], torch.Tensor] = lambda sigma: sigma * 1000


def _unit(sigma):
    return sigma  # Flux-style models take the noise level itself (their pipelines pass t / 1000)


def _make(cls, zeros_to_random=False, **config):
    def build():
        torch.manual_seed(0)
        model = getattr(diffusers, cls)(**config).eval()
        if zeros_to_random:  # a zero-initialised output layer would hide every block from the output
            with torch.no_grad():
                for p in model.parameters():
                    if not p.any():
                        p.normal_(0, 0.1)
        return model

    return build


def _text(n=3, width=16):
    return _ones(B, n, width)


def _flux(m, x, t):
    return m(
        hidden_states=x, encoder_hidden_states=_text(), pooled_projections=_ones(B, 16), timestep=t.expand(B),
        img_ids=_ids(x.shape[1]), txt_ids=torch.zeros(3, 3), return_dict=False,
    )[0]  # fmt: skip


def _ids(n):
    return torch.stack([torch.zeros(n), torch.arange(n) // 4, torch.arange(n) % 4], 1).float()


def _flux2(m, x, t):
    ids4 = torch.cat([torch.zeros(x.shape[1], 1), _ids(x.shape[1])], 1)
    return m(
        hidden_states=x, encoder_hidden_states=_text(), timestep=t.expand(B), img_ids=ids4,
        txt_ids=torch.zeros(3, 4), guidance=None, return_dict=False,
    )[0]  # fmt: skip


def _chroma(m, x, t):
    return m(
        hidden_states=x, encoder_hidden_states=_text(), timestep=t.expand(B), img_ids=_ids(x.shape[1]),
        txt_ids=torch.zeros(3, 3), return_dict=False,
    )[0]  # fmt: skip


def _sd3(m, x, t):
    return m(
        hidden_states=x, encoder_hidden_states=_text(), pooled_projections=_ones(B, 16), timestep=t.expand(B),
        return_dict=False,
    )[0]  # fmt: skip


def _dit(m, x, t):
    return m(x, timestep=t.expand(B), class_labels=torch.arange(B) % 10, return_dict=False)[0]


def _pixart(m, x, t):
    return m(
        x, encoder_hidden_states=_text(), timestep=t.expand(B), added_cond_kwargs={"resolution": None,
        "aspect_ratio": None}, return_dict=False,
    )[0]  # fmt: skip


def _sana(m, x, t):
    return m(x, encoder_hidden_states=_text(), timestep=t.expand(B), return_dict=False)[0]


def _wan_like(m, x, t):
    return m(hidden_states=x, timestep=t.expand(B), encoder_hidden_states=_text(), return_dict=False)[0]


def _wan_positional(m, x, t):
    return m(x, t.expand(B), _text(), return_dict=False)[0]  # Wan's signature allows a positional timestep


def _anyflow(m, x, t):
    """AnyFlow takes (batch, frames, channels, h, w) and a timestep per frame."""
    return m(
        hidden_states=x, timestep=t.expand(B, 2), r_timestep=(t / 2).expand(B, 2),
        encoder_hidden_states=_text(),
        return_dict=False,
    )[0]  # fmt: skip


def _cogvideox(m, x, t):
    return m(hidden_states=x, encoder_hidden_states=_text(), timestep=t.expand(B), return_dict=False)[0]


def _hunyuan_dit(m, x, t):
    return m(
        x, t.expand(B), encoder_hidden_states=_ones(B, 3, 16), text_embedding_mask=torch.ones(B, 3),
        encoder_hidden_states_t5=_ones(B, 4, 16), text_embedding_mask_t5=torch.ones(B, 4),
        image_rotary_emb=_hunyuan_rope(), return_dict=False,
    )[0]  # fmt: skip


def _hunyuan_rope():
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    return get_2d_rotary_pos_embed(8, ((0, 0), (4, 4)), (4, 4), output_type="pt")  # head_dim 8, 4x4 patches


def _hunyuan_video(m, x, t):
    return m(
        hidden_states=x, timestep=t.expand(B), encoder_hidden_states=_text(),
        encoder_attention_mask=torch.ones(B, 3), pooled_projections=_ones(B, 16), guidance=None, return_dict=False,
    )[0]  # fmt: skip


def _ltx(m, x, t):
    return m(
        hidden_states=x, encoder_hidden_states=_text(), timestep=t.expand(B),
        encoder_attention_mask=torch.ones(B, 3), num_frames=1, height=4, width=4, return_dict=False,
    )[0]  # fmt: skip


def _qwenimage(m, x, t):
    return m(
        hidden_states=x, encoder_hidden_states=_text(), encoder_hidden_states_mask=torch.ones(B, 3),
        timestep=t.expand(B), img_shapes=[[(1, 4, 4)]] * B, return_dict=False,
    )[0]  # fmt: skip


def _lumina2(m, x, t):
    return m(x, t.expand(B), _text(), torch.ones(B, 3, dtype=torch.bool), return_dict=False)[0]


def _helios(m, x, t):
    return m(hidden_states=x, timestep=t.expand(B), encoder_hidden_states=_text(), return_dict=False)[0]


def _auraflow(m, x, t):
    return m(hidden_states=x, encoder_hidden_states=_text(), timestep=t.expand(B), return_dict=False)[0]


def _mochi(m, x, t):
    return m(
        hidden_states=x, encoder_hidden_states=_text(), timestep=t.expand(B),
        encoder_attention_mask=torch.ones(B, 3), return_dict=False,
    )[0]  # fmt: skip


def _cogview(m, x, t):
    sizes = torch.tensor([[64.0, 64.0]] * B)
    return m(
        hidden_states=x, encoder_hidden_states=_text(), timestep=t.expand(B), original_size=sizes,
        target_size=sizes, crop_coords=torch.zeros(B, 2), return_dict=False,
    )[0]  # fmt: skip


def _allegro(m, x, t):
    return m(hidden_states=x, encoder_hidden_states=_text(), timestep=t.expand(B), return_dict=False)[0]


def _easyanimate(m, x, t):
    return m(x, t.expand(B), encoder_hidden_states=_text(), return_dict=False)[0]


def _flux_like(m, x, t):
    """Bria, LongCat-Image, Ovis-Image: Flux's inputs without pooled projections."""
    return m(
        hidden_states=x, encoder_hidden_states=_text(), timestep=t.expand(B), img_ids=_ids(x.shape[1]),
        txt_ids=torch.zeros(3, 3), return_dict=False,
    )[0]  # fmt: skip


def _transformer_2d(m, x, t):
    cond = {"resolution": None, "aspect_ratio": None}
    return m(x, encoder_hidden_states=_text(), timestep=t.expand(B), added_cond_kwargs=cond, return_dict=False)[0]


def _lumina_next(m, x, t):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    rope = get_2d_rotary_pos_embed_lumina(8, 16, 16)  # head_dim 8
    return m(
        x, t.expand(B), _text(), torch.ones(B, 3, dtype=torch.bool), image_rotary_emb=rope,
        cross_attention_kwargs={}, return_dict=False,
    )[0]  # fmt: skip


def _stable_audio(m, x, t):
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    rope = get_1d_rotary_pos_embed(4, x.shape[2] + 1, use_real=True, repeat_interleave_real=False)
    return m(
        x, t.expand(B), encoder_hidden_states=_text(), global_hidden_states=_ones(B, 1, 16), rotary_embedding=rope,
        return_dict=False,
    )[0]  # fmt: skip


def _sana_video(m, x, t):
    return m(x, encoder_hidden_states=_text(), timestep=t.expand(B), return_dict=False)[0]


def _hunyuan_15(m, x, t):
    return m(
        hidden_states=x, timestep=t.expand(B), encoder_hidden_states=_text(), encoder_attention_mask=torch.ones(B, 3),
        encoder_hidden_states_2=_ones(B, 2, 16), encoder_attention_mask_2=torch.ones(B, 2),
        image_embeds=_ones(B, 2, 16), return_dict=False,
    )[0]  # fmt: skip


def _hunyuan_image(m, x, t):
    return m(
        hidden_states=x, timestep=t.expand(B), encoder_hidden_states=_text(), encoder_attention_mask=torch.ones(B, 3),
        return_dict=False,
    )[0]  # fmt: skip


def _cosmos(m, x, t):
    return m(
        hidden_states=x, timestep=t.expand(B), encoder_hidden_states=_text(), fps=30, return_dict=False,
    )[0]  # fmt: skip


def _prx(m, x, t):
    return m(x, t.expand(B), _text(), return_dict=False)[0]


def _nucleus(m, x, t):
    return m(
        hidden_states=x, img_shapes=[(1, 4, 4)] * B, encoder_hidden_states=_text(),
        encoder_hidden_states_mask=torch.ones(B, 3), timestep=t.expand(B), return_dict=False,
    )[0]  # fmt: skip


def _glm(m, x, t):
    return m(
        hidden_states=x, encoder_hidden_states=_text(), prior_token_id=torch.zeros(B, 16, dtype=torch.long),
        prior_token_drop=torch.zeros(B, 16, dtype=torch.bool), timestep=t.expand(B),
        target_size=torch.tensor([[8.0, 8.0]] * B), crop_coords=torch.zeros(B, 2), return_dict=False,
    )[0]  # fmt: skip


def _z_image(m, x, t):
    """Z-Image takes lists (one tensor per sample) and counts time up."""
    out = m(list(x.unbind(0)), t.expand(B), list(_text().unbind(0)), return_dict=False)[0]
    return torch.stack(out)


WAN = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
    freq_dim=16, ffn_dim=32, num_layers=3,
)  # fmt: skip
VIDEO = (B, 4, 2, 8, 8)
IMAGE = (B, 4, 8, 8)

# fmt: off
TINY: dict[str, Tiny] = {
    "AuraFlowTransformer2DModel": Tiny(
        _make("AuraFlowTransformer2DModel", sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=2,
              num_single_dit_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
              caption_projection_dim=16, out_channels=4, pos_embed_max_size=16),
        _auraflow, IMAGE, _unit,
    ),
    "MochiTransformer3DModel": Tiny(  # Mochi counts time up: 0 is noise
        _make("MochiTransformer3DModel", patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=3,
              pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=16, max_sequence_length=3),
        _mochi, VIDEO, lambda sigma: 1000 - sigma * 1000,
    ),
    "CogView4Transformer2DModel": Tiny(
        _make("CogView4Transformer2DModel", patch_size=2, in_channels=4, out_channels=4, num_layers=3,
              attention_head_dim=8, num_attention_heads=2, text_embed_dim=16, time_embed_dim=16, condition_dim=8,
              pos_embed_max_size=8, sample_size=8, rope_axes_dim=(4, 4)),
        _cogview, IMAGE,
    ),
    "CogView3PlusTransformer2DModel": Tiny(
        _make("CogView3PlusTransformer2DModel", patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
              num_attention_heads=2, out_channels=4, text_embed_dim=16, time_embed_dim=16, condition_dim=8,
              pos_embed_max_size=8, sample_size=8),
        _cogview, IMAGE,
    ),
    "AllegroTransformer3DModel": Tiny(
        _make("AllegroTransformer3DModel", patch_size=2, num_attention_heads=2, attention_head_dim=8, in_channels=4,
              out_channels=4, num_layers=3, cross_attention_dim=16, sample_height=8, sample_width=8, sample_frames=2,
              caption_channels=16),
        _allegro, VIDEO,
    ),
    "EasyAnimateTransformer3DModel": Tiny(
        _make("EasyAnimateTransformer3DModel", num_attention_heads=2, attention_head_dim=16, in_channels=4,
              out_channels=4, patch_size=2, sample_width=8, sample_height=8, num_layers=3, mmdit_layers=3,
              time_embed_dim=16, text_embed_dim=16),
        _easyanimate, VIDEO,
    ),
    "ChronoEditTransformer3DModel": Tiny(_make("ChronoEditTransformer3DModel", **WAN), _wan_like, VIDEO),
    "BriaTransformer2DModel": Tiny(
        _make("BriaTransformer2DModel", in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8,
              num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=[2, 2, 4]),
        _flux_like, (B, 16, 8),
    ),
    "LongCatImageTransformer2DModel": Tiny(
        _make("LongCatImageTransformer2DModel", in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8,
              num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[2, 2, 4]),
        _flux_like, (B, 16, 8), _unit,
    ),
    "OvisImageTransformer2DModel": Tiny(
        _make("OvisImageTransformer2DModel", in_channels=8, out_channels=8, num_layers=2, num_single_layers=2,
              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4)),
        _flux_like, (B, 16, 8), _unit,
    ),
    "Transformer2DModel": Tiny(  # the time-conditioned PixArt-alpha layout
        _make("Transformer2DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=3,
              norm_num_groups=4, cross_attention_dim=16, sample_size=8, patch_size=2, norm_type='ada_norm_single',
              caption_channels=16),
        _transformer_2d, IMAGE,
    ),
    "LuminaNextDiT2DModel": Tiny(  # counts time up: 0 is noise
        _make("LuminaNextDiT2DModel", sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=3,
              num_attention_heads=2, num_kv_heads=1, multiple_of=8, learn_sigma=False, cross_attention_dim=16),
        _lumina_next, IMAGE, lambda sigma: 1 - sigma,
    ),
    "StableAudioDiTModel": Tiny(
        _make("StableAudioDiTModel", sample_size=8, in_channels=4, num_layers=3, attention_head_dim=8,
              num_attention_heads=2, num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16,
              time_proj_dim=16, global_states_input_dim=16, cross_attention_input_dim=16),
        _stable_audio, (B, 4, 8),
    ),
    "SanaVideoTransformer3DModel": Tiny(
        _make("SanaVideoTransformer3DModel", in_channels=4, out_channels=4, num_attention_heads=2,
              attention_head_dim=12, num_layers=3, num_cross_attention_heads=2, cross_attention_head_dim=12,
              cross_attention_dim=24, caption_channels=16, sample_size=8),
        _sana_video, VIDEO,
    ),
    "HunyuanVideo15Transformer3DModel": Tiny(
        _make("HunyuanVideo15Transformer3DModel", in_channels=4, out_channels=4, num_attention_heads=2,
              attention_head_dim=8, num_layers=3, num_refiner_layers=1, patch_size=2, text_embed_dim=16,
              text_embed_2_dim=16, image_embed_dim=16, rope_axes_dim=(2, 2, 4), target_size=64, task_type='t2v'),
        _hunyuan_15, VIDEO,
    ),
    "HunyuanImageTransformer2DModel": Tiny(
        _make("HunyuanImageTransformer2DModel", in_channels=4, out_channels=4, num_attention_heads=2,
              attention_head_dim=8, num_layers=2, num_single_layers=2, num_refiner_layers=1, patch_size=(2, 2),
              text_embed_dim=16, rope_axes_dim=(4, 4)),
        _hunyuan_image, IMAGE,
    ),
    "CosmosTransformer3DModel": Tiny(  # no padding mask: it needs torchvision, which cannot be imported here
        _make("CosmosTransformer3DModel", in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12,
              num_layers=3, text_embed_dim=16, adaln_lora_dim=8, max_size=(4, 16, 16), patch_size=(1, 2, 2),
              concat_padding_mask=False),
        _cosmos, VIDEO,
    ),
    "PRXTransformer2DModel": Tiny(  # its output layer starts at zero
        _make("PRXTransformer2DModel", zeros_to_random=True, in_channels=4, patch_size=2, context_in_dim=16,
              hidden_size=16, num_heads=2, depth=3, axes_dim=[4, 4]),
        _prx, IMAGE, _unit,
    ),
    "NucleusMoEImageTransformer2DModel": Tiny(
        _make("NucleusMoEImageTransformer2DModel", patch_size=2, in_channels=16, out_channels=4, num_layers=3,
              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4),
              moe_enabled=False),
        _nucleus, (B, 16, 16), _unit,
    ),
    "GlmImageTransformer2DModel": Tiny(
        _make("GlmImageTransformer2DModel", patch_size=2, in_channels=4, out_channels=4, num_layers=3,
              attention_head_dim=8, num_attention_heads=2, text_embed_dim=16, time_embed_dim=16, condition_dim=8,
              prior_vq_quantizer_codebook_size=8),
        _glm, IMAGE,
    ),
    "ZImageTransformer2DModel": Tiny(  # counts time up: 0 is noise
        _make("ZImageTransformer2DModel", all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=16,
              n_layers=3, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[2, 2, 4],
              axes_lens=[64, 64, 64]),
        _z_image, (B, 4, 1, 8, 8), lambda sigma: 1 - sigma,
    ),
    "FluxTransformer2DModel": Tiny(
        _make("FluxTransformer2DModel", in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8,
              num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4)),
        _flux, (B, 16, 8), _unit,
    ),
    "Flux2Transformer2DModel": Tiny(
        _make("Flux2Transformer2DModel", in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8,
              num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=16, axes_dims_rope=(2, 2, 2,
              2), guidance_embeds=False),
        _flux2, (B, 16, 8), _unit,
    ),
    "ChromaTransformer2DModel": Tiny(
        _make("ChromaTransformer2DModel", in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8,
              num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4), approximator_num_channels=8,
              approximator_hidden_dim=16, approximator_layers=1),
        _chroma, (B, 16, 8), _unit,
    ),
    "SD3Transformer2DModel": Tiny(
        _make("SD3Transformer2DModel", sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
              num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
              out_channels=4, pos_embed_max_size=8),
        _sd3, IMAGE,
    ),
    "DiTTransformer2DModel": Tiny(
        _make("DiTTransformer2DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=3,
              sample_size=8, patch_size=2, num_embeds_ada_norm=10),
        _dit, IMAGE, lambda sigma: (sigma * 999).round().long(),
    ),
    "PixArtTransformer2DModel": Tiny(
        _make("PixArtTransformer2DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
              num_layers=3, cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=16),
        _pixart, IMAGE,
    ),
    "SanaTransformer2DModel": Tiny(
        _make("SanaTransformer2DModel", in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
              num_layers=3, num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
              caption_channels=16, sample_size=8, patch_size=2),
        _sana, IMAGE,
    ),
    "WanTransformer3DModel": Tiny(_make("WanTransformer3DModel", **WAN), _wan_positional, VIDEO),
    "SkyReelsV2Transformer3DModel": Tiny(_make("SkyReelsV2Transformer3DModel", **WAN), _wan_like, VIDEO),
    "AnyFlowTransformer3DModel": Tiny(  # frames before channels
        _make("AnyFlowTransformer3DModel", **WAN),
        _anyflow, (B, 2, 4, 8, 8),
    ),
    "HeliosTransformer3DModel": Tiny(_make("HeliosTransformer3DModel", **WAN, rope_dim=(4, 4, 4)), _helios, VIDEO),
    "CogVideoXTransformer3DModel": Tiny(
        _make("CogVideoXTransformer3DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4,
              out_channels=4, time_embed_dim=16, text_embed_dim=16, num_layers=3, sample_width=8, sample_height=8,
              sample_frames=5, patch_size=2, max_text_seq_length=3),
        _cogvideox, (B, 2, 4, 8, 8),
    ),
    "HunyuanDiT2DModel": Tiny(
        _make("HunyuanDiT2DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2,
              sample_size=8, hidden_size=16, num_layers=6, cross_attention_dim=16, cross_attention_dim_t5=16,
              pooled_projection_dim=16, text_len=3, text_len_t5=4, use_style_cond_and_image_meta_size=False,
              learn_sigma=False),
        _hunyuan_dit, IMAGE,
    ),
    "HunyuanVideoTransformer3DModel": Tiny(
        _make("HunyuanVideoTransformer3DModel", in_channels=4, out_channels=4, num_attention_heads=2,
              attention_head_dim=8, num_layers=2, num_single_layers=2, num_refiner_layers=1, patch_size=2,
              guidance_embeds=False, text_embed_dim=16, pooled_projection_dim=16, rope_axes_dim=(2, 2, 4)),
        _hunyuan_video, VIDEO,
    ),
    "LTXVideoTransformer3DModel": Tiny(
        _make("LTXVideoTransformer3DModel", in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8,
              cross_attention_dim=16, num_layers=3, caption_channels=16),
        _ltx, (B, 16, 8),
    ),
    "QwenImageTransformer2DModel": Tiny(
        _make("QwenImageTransformer2DModel", patch_size=2, in_channels=8, out_channels=2, num_layers=3,
              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4)),
        _qwenimage, (B, 16, 8), _unit,
    ),
    "Lumina2Transformer2DModel": Tiny(  # counts time up: 0 is noise
        _make("Lumina2Transformer2DModel", sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=3,
              num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=8, axes_dim_rope=(2, 2, 4),
              axes_lens=(16, 16, 16), cap_feat_dim=16),
        _lumina2, IMAGE, lambda sigma: 1 - sigma,
    ),
}
# fmt: on
