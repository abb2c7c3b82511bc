"""The shipped text-to-image model: a small diffusers FluxTransformer2DModel in pixel space.

A 32x32 RGB image is packed into 4x4x3 patches (64 tokens of 48 channels). The prompt encoder's token states
are Flux's `encoder_hidden_states`; their mean is `pooled_projections`.
The network predicts the flow-matching velocity v = noise - data at noise level sigma in [0, 1]
(sigma = 1 is pure noise). It knows nothing of samplers or caches.

A flow-map student (`flow_map=True`) also takes the sigma it jumps to: the gap sigma - sigma_to enters through
Flux's guidance embedding (which the teacher does not use), as AnyFlow's dual-timestep embedding does.
A distilled student records how it samples in `student` (method, sigma grid, the guidance baked in).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from stretto.models.prompt_encoder import PromptEncoder, PromptEncoderConfig


@dataclass
class ShapesFluxConfig:
    vocab: list[str]
    max_words: int = 8
    image_size: int = 32
    channels: int = 3
    patch: int = 4
    double_blocks: int = 2
    single_blocks: int = 4
    heads: int = 4
    head_dim: int = 32
    text_width: int = 64
    text_encoder: str = "words"  # "words" (the shipped model's) or "t5"; see prompt_encoder.py
    text_layers: int = 1
    axes_dims_rope: list[int] = field(default_factory=lambda: [8, 12, 12])
    flow_map: bool = False
    student: dict | None = None  # set by `stretto distill`: {"method", "sigmas", "guidance", "teacher", ...}

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PromptStates:
    """Encoded prompts: Flux's `encoder_hidden_states` (B, words, width) and `pooled_projections` (B, width)."""

    tokens: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @staticmethod
    def cat(states: list[PromptStates]) -> PromptStates:
        return PromptStates(torch.cat([s.tokens for s in states]), torch.cat([s.pooled for s in states]))


class ShapesFlux(nn.Module):
    """Prompt encoder + FluxTransformer2DModel; `model(x, sigma, cond)` returns the velocity."""

    kind = "shapes-flux"

    def __init__(self, config: ShapesFluxConfig):
        super().__init__()
        self.config = config
        self.prompt_encoder = PromptEncoder(
            PromptEncoderConfig(
                vocab=list(config.vocab),
                max_words=config.max_words,
                width=config.text_width,
                layers=config.text_layers,
                encoder=config.text_encoder,
            )
        )
        self.transformer = FluxTransformer2DModel(
            patch_size=1,  # Flux's patch_size does not patchify; packing is done here
            in_channels=config.channels * config.patch**2,
            num_layers=config.double_blocks,
            num_single_layers=config.single_blocks,
            attention_head_dim=config.head_dim,
            num_attention_heads=config.heads,
            joint_attention_dim=config.text_width,
            pooled_projection_dim=config.text_width,
            guidance_embeds=config.flow_map,
            axes_dims_rope=tuple(config.axes_dims_rope),
        )
        g = config.grid
        rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
        self.register_buffer("img_ids", img_ids, persistent=False)
        self.register_buffer("txt_ids", torch.zeros(config.max_words, 3), persistent=False)

    @property
    def blocks(self) -> list[nn.Module]:
        """The block stack in execution order (double-stream blocks, then single-stream blocks)."""
        return [*self.transformer.transformer_blocks, *self.transformer.single_transformer_blocks]

    def encode_prompts(self, prompts: list[str]) -> PromptStates:
        ids = self.prompt_encoder.tokenize(prompts).to(self.img_ids.device)
        tokens, pooled = self.prompt_encoder(ids)
        return PromptStates(tokens, pooled)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        g, p = self.config.grid, self.config.patch
        return x.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        g, p, c = self.config.grid, self.config.patch, self.config.channels
        return tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: PromptStates, sigma_to: torch.Tensor | None = None
    ) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]).to(x.dtype)
        gap = None
        if self.config.flow_map:  # u(x, sigma, sigma_to); sigma_to = sigma (default) is the instantaneous velocity
            gap = torch.zeros_like(sigma) if sigma_to is None else sigma - sigma_to.reshape(-1).expand_as(sigma)
        out = self.transformer(
            hidden_states=self.pack(x),
            encoder_hidden_states=cond.tokens,
            pooled_projections=cond.pooled,
            timestep=sigma,  # diffusers multiplies by 1000 inside
            img_ids=self.img_ids,
            txt_ids=self.txt_ids,
            guidance=gap,  # diffusers multiplies it by 1000 too
            return_dict=False,
        )[0]
        return self.unpack(out)
