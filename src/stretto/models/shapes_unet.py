"""A small text-to-image UNet on the shapes data: diffusers' UNet2DConditionModel, shaped like Stable Diffusion's.

The UNet that DeepCache and Faster Diffusion (cache/unet.py) are measured on: down blocks, a mid block and up
blocks joined by skips, cross-attention to the prompt encoder's token states (Stable Diffusion's layout, scaled
down). The 32x32 image is folded into 2x2 patches (16x16 x 12 channels) before the UNet, standing in for SD's
latent at 1/8 resolution: it keeps a CPU training step ~4x cheaper than convolving full-size pixels.
It is trained with the same flow-matching loss and prompts as `shapes-flux` and samples through the same
pipeline: `model(x, sigma, cond)` returns the velocity v = noise - data at sigma in [0, 1].
Departures from Stable Diffusion: pixels folded into patches instead of a VAE latent, and a velocity target
instead of epsilon, so one pipeline and one set of samplers serve both models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from stretto.models.prompt_encoder import PromptEncoder, PromptEncoderConfig
from stretto.models.shapes_flux import PromptStates

TIMESTEP_SCALE = 1000.0  # the UNet's sinusoidal time embedding is laid out for t in [0, 1000], as in SD


@dataclass
class ShapesUNetConfig:
    vocab: list[str]
    max_words: int = 8
    image_size: int = 32
    channels: int = 3
    patch: int = 2  # pixels folded into channels: the UNet sees (channels * patch**2, size / patch, size / patch)
    widths: list[int] = field(default_factory=lambda: [32, 64, 96])  # a level each: 16, 8, 4 px
    layers_per_block: int = 1
    head_dim: int = 16
    text_width: int = 64
    text_layers: int = 1

    def __post_init__(self):
        if self.patch < 1 or self.image_size % self.patch:
            raise ValueError(f"patch must be a positive divisor of image_size {self.image_size}, got {self.patch}")
        if len(self.widths) < 2 or any(w < 1 or w % 8 for w in self.widths):
            raise ValueError(f"widths must be >= 2 positive multiples of 8 (GroupNorm of 8 groups), got {self.widths}")

    def to_dict(self) -> dict:
        return asdict(self)


class ShapesUNet(nn.Module):
    """Prompt encoder + UNet2DConditionModel; `model(x, sigma, cond)` returns the velocity."""

    kind = "shapes-unet"

    def __init__(self, config: ShapesUNetConfig):
        super().__init__()
        self.config = config
        self.prompt_encoder = PromptEncoder(
            PromptEncoderConfig(
                vocab=list(config.vocab), max_words=config.max_words, width=config.text_width, layers=config.text_layers
            )
        )
        levels = len(config.widths)
        # the outermost level convolves only (as SD's); cross-attention on the inner, lower-resolution levels
        self.unet = UNet2DConditionModel(
            sample_size=config.image_size // config.patch,
            in_channels=config.channels * config.patch**2,
            out_channels=config.channels * config.patch**2,
            block_out_channels=tuple(config.widths),
            layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            cross_attention_dim=config.text_width,
            attention_head_dim=config.head_dim,
            norm_num_groups=8,
        )
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    @property
    def blocks(self) -> list[nn.Module]:
        """The UNet's blocks in execution order (down, mid, up): what block evaluations count."""
        return [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]

    def encode_prompts(self, prompts: list[str]) -> PromptStates:
        ids = self.prompt_encoder.tokenize(prompts).to(self._device_probe.device)
        tokens, pooled = self.prompt_encoder(ids)
        return PromptStates(tokens, pooled)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: PromptStates) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]).to(x.dtype)
        folded = nn.functional.pixel_unshuffle(x, self.config.patch)
        out = self.unet(folded, sigma * TIMESTEP_SCALE, encoder_hidden_states=cond.tokens, return_dict=False)[0]
        return nn.functional.pixel_shuffle(out, self.config.patch)
