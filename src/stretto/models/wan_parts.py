"""The parts a diffusers Wan pipeline folder ships besides the transformer: text encoder, VAE, scheduler.

A folder in diffusers' pipeline layout (`model_index.json` with `tokenizer/`, `text_encoder/`, `vae/`,
`scheduler/`; e.g. Wan2.1-T2V-1.3B-Diffusers, SkyReels-V2-DF-1.3B-540P-Diffusers) gives a causal Wan its text
encoder (UMT5, prompts encoded by diffusers' own `WanPipeline.encode_prompt`) and its VAE (`AutoencoderKLWan`).
A Self-Forcing / CausVid release is fine-tuned from Wan2.1-T2V-1.3B and ships only the transformer: the base
model's folder supplies the rest. `StreamDecoder` decodes latents block by block as they stream, carrying the
VAE's causal-convolution cache from block to block, so the frames equal one decode of the whole latent video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TEXT_TOKENS = 512  # Wan's text length (WanPipeline's max_sequence_length; Self Forcing's too)
PARTS = ("tokenizer", "text_encoder", "vae", "scheduler")


@dataclass
class WanParts:
    """The text encoder (with its tokenizer), VAE and scheduler of a Wan pipeline folder; each may be absent."""

    folder: Path | None = None
    text: Any = None  # a diffusers WanPipeline holding only the tokenizer and text encoder
    vae: Any = None
    scheduler: Any = None

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        """Text -> (1, 512, text_dim) UMT5 states, zero past the prompt's tokens (WanPipeline's encode_prompt)."""
        if self.text is None:
            where = f"none in {self.folder}" if self.folder else "no parts folder given"
            raise ValueError(
                f"prompt {prompt!r} is text, but no text encoder was found ({where}); pass the folder of a "
                "diffusers Wan pipeline (parts=..., --parts), e.g. Wan2.1-T2V-1.3B-Diffusers, or prompt embeddings"
            )
        embeds, _ = self.text.encode_prompt(
            prompt, do_classifier_free_guidance=False, max_sequence_length=TEXT_TOKENS, device=self.text.device
        )
        return embeds.float()


def pipeline_folder(path: str | Path | None) -> Path | None:
    """The diffusers pipeline folder a model path sits in (the folder itself, or the parent of `transformer/`)."""
    if path is None:
        return None
    path = Path(path)
    for folder in (path, path.parent):
        if folder.is_dir() and any((folder / part).is_dir() for part in PARTS):
            return folder
    return None


def load_parts(folder: str | Path | None, device: str | torch.device = "cpu") -> WanParts:
    """The parts found in a Wan pipeline folder (fp32, eval mode); none for None."""
    if folder is None:
        return WanParts()
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"parts folder {folder} does not exist; pass a diffusers Wan pipeline folder")
    parts = WanParts(folder)
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        from diffusers import WanPipeline
        from transformers import AutoTokenizer, UMT5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder").float().eval().to(device)
        parts.text = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=None, scheduler=None)
    if (folder / "vae").is_dir():
        from diffusers import AutoencoderKLWan

        parts.vae = AutoencoderKLWan.from_pretrained(folder / "vae").float().eval().to(device)
    if (folder / "scheduler").is_dir():
        from diffusers import SchedulerMixin

        parts.scheduler = SchedulerMixin.from_pretrained(folder / "scheduler")
    return parts


class StreamDecoder:
    """Latent blocks -> video frames with a Wan VAE, the causal-conv cache carried across blocks (per stream)."""

    def __init__(self, vae):
        self.vae = vae
        self.cache: list = [None] * vae._cached_conv_counts["decoder"]
        self.first = True
        config = vae.config
        self.mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, F, C, h, w) -> frames (B, T, 3, H, W) in [-1, 1] (4 per latent, 1 for the first)."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        vae = self.vae
        p = next(vae.parameters())
        z = latents.transpose(1, 2).to(p.dtype) * self.std.to(p) + self.mean.to(p)  # the pipelines' de-normalising
        x = vae.post_quant_conv(z)
        out = []
        for i in range(x.shape[2]):  # one latent frame at a time, as AutoencoderKLWan._decode does
            out.append(vae.decoder(x[:, :, i : i + 1], feat_cache=self.cache, feat_idx=[0], first_chunk=self.first))
            self.first = False
        frames = torch.cat(out, dim=2)
        if vae.config.patch_size is not None:
            frames = unpatchify(frames, patch_size=vae.config.patch_size)
        return frames.clamp(-1, 1).transpose(1, 2)
