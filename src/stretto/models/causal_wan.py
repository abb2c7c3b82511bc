"""Block-causal Wan with stretto's KV cache: CausVid / Self Forcing inference on diffusers' `WanTransformer3DModel`.

diffusers' Wan has no mask and no cache. `CausalWan` keeps its class and weights and swaps only the attention
processors (`set_attn_processor`, diffusers' plug point):
- self-attention (`attn1`) goes through `stretto.models.kv_attention`: the frames of this call sit at cache slots
  [start, start + T) and attend to every cached slot (CausVid's block-causal attention with a KV cache), or, with
  no cache, to their own and earlier blocks through a block-causal mask (the recompute baseline);
- cross-attention (`attn2`) reads the prompt's K/V from a `PromptKV`, computed once per prompt (CausVid's text
  cache), instead of projecting the text tokens at every call.
Keys are cached before RoPE. The temporal RoPE position of a frame is its cache slot, not its frame number in the
stream, so a rolling window keeps positions inside the model's RoPE table however long the stream runs (the
released Self Forcing rotates by absolute frame and breaks past its table). Wan rotates interleaved pairs of head
dims; queries and keys are reordered to the halves layout `kv_attention` uses, which leaves q . k unchanged.
Timesteps are per frame (diffusers' Wan takes one per token), in the driver's [0, 1], scaled to Wan's 1000.

SkyReels-V2's diffusion-forcing transformer (diffusers' `SkyReelsV2Transformer3DModel`, Chen et al. 2025) is
Wan's architecture with per-frame timesteps and an fps embedding: the same processors host it, and its calls go
through its own diffusion-forcing forward (`enable_diffusion_forcing=True`, one integer timestep per frame, as its
pipeline's int64 step template gives them).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from stretto.models.kv_attention import kv_attention
from stretto.models.kv_cache import DEFAULT_BUDGET_BYTES, KVCache
from stretto.models.prompt_kv import PromptCrossAttention, PromptKV, encode_prompt_kv

SELF_FORCING_FRAMES_PER_BLOCK = 3  # latent frames per block in Self Forcing and CausVid
SELF_FORCING_LATENT_SIZE = (60, 104)  # 480 x 832 video through Wan's 8x VAE
SKYREELS_CLASS = "SkyReelsV2Transformer3DModel"
SKYREELS_DEFAULT_FPS = 24  # its pipeline's default; the fps embedding has two entries: 16 fps and anything else


@dataclass
class _Call:
    """What one model call tells its attention processors (the forward has no way to pass it through)."""

    cache: KVCache | None
    start: int
    write: bool
    rope_q: tuple[torch.Tensor, torch.Tensor]
    rope_k: tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None
    prompt: PromptKV


class _CallSlot:
    """The call in flight, shared by one adapter's processors; empty outside a `CausalWan` call."""

    def __init__(self):
        self.call: _Call | None = None

    @contextlib.contextmanager
    def bind(self, call: _Call):
        self.call = call
        try:
            yield
        finally:
            self.call = None  # no state outlives the call: the next stream starts clean

    def get(self) -> _Call:
        if self.call is None:
            raise RuntimeError("this Wan's attention is block-causal (stretto CausalWan); call it through CausalWan")
        return self.call


def _halves(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H * D) -> (B, H, T, D) with each head's interleaved RoPE pairs split into halves (q . k unchanged)."""
    x = x.unflatten(2, (heads, -1)).transpose(1, 2)
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


class CausalSelfAttention:
    """Wan's attn1 as block-causal attention over stretto's KV cache (CausVid, Yin et al. 2025)."""

    def __init__(self, slot: _CallSlot, layer: int):
        self.slot, self.layer = slot, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        call = self.slot.get()
        if call.cache is not None and hidden_states.shape[0] != call.cache.k.shape[1]:
            raise ValueError(
                f"this Wan's attention reads the KV cache of all {call.cache.k.shape[1]} rows but ran "
                f"{hidden_states.shape[0]}: a feature-cache policy that decides per row (firstblock, dbcache, "
                "teacache, magcache, ...) computed some rows only; stream batch 1 or use one that decides for the "
                "whole batch (fora, taylor, delta, crossblock)"
            )
        q = _halves(attn.norm_q(attn.to_q(hidden_states)), attn.heads)
        k = _halves(attn.norm_k(attn.to_k(hidden_states)), attn.heads)
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        y = kv_attention(q, k, v, call.rope_q, call.rope_k, call.mask, call.cache, self.layer, call.start, call.write)
        return attn.to_out[1](attn.to_out[0](y.transpose(1, 2).flatten(2).type_as(hidden_states)))


class CausalWan(nn.Module):
    """diffusers' WanTransformer3DModel streamed block by block with a KV cache (CausVid / Self Forcing).

    Wrapping swaps the transformer's attention processors: the newest CausalWan on a transformer owns it.
    Hosts diffusers' `WanTransformer3DModel` and `SkyReelsV2Transformer3DModel` (diffusion forcing).
    `causal_training` says how the weights were trained to stream ("self-forcing", "diffusion-forcing", ...), or
    None for a Wan trained on whole clips (bidirectional), which streams, but not well (the loader warns).
    """

    kind = "causal-wan"
    x0_clamp = None  # frames are VAE latents: unbounded, unlike pixels

    def __init__(
        self,
        transformer: nn.Module,
        frames_per_block: int = SELF_FORCING_FRAMES_PER_BLOCK,
        latent_size: tuple[int, int] = SELF_FORCING_LATENT_SIZE,
        causal_training: str | None = None,
        fps: int = SKYREELS_DEFAULT_FPS,
    ):
        super().__init__()
        config = transformer.config
        self.diffusion_forcing = type(transformer).__name__ == SKYREELS_CLASS
        self.causal_training = causal_training
        self.fps = fps
        self.patch = tuple(config.patch_size)
        pt, ph, pw = self.patch
        if config.added_kv_proj_dim is not None or config.image_dim is not None:
            raise ValueError("image-conditioned Wan (image_dim / added_kv_proj_dim set) is not supported; T2V Wan is")
        if frames_per_block < 1 or frames_per_block % pt:
            raise ValueError(
                f"frames_per_block {frames_per_block} must be a positive multiple of the temporal patch {pt}"
            )
        h, w = latent_size
        if h < ph or w < pw or h % ph or w % pw:
            raise ValueError(f"latent_size {tuple(latent_size)} must be a multiple of the spatial patch {(ph, pw)}")
        self.transformer = transformer
        self.frames_per_block = frames_per_block
        self.latent_size = (h, w)
        self.grid = (h // ph, w // pw)
        self.heads = config.num_attention_heads
        self.head_dim = config.attention_head_dim
        self.layers = config.num_layers
        self._slot = _CallSlot()
        processors = {}
        for name in transformer.attn_processors:  # "blocks.{i}.attn{1,2}.processor"
            _, layer, which, _ = name.split(".")
            if which == "attn1":
                processors[name] = CausalSelfAttention(self._slot, int(layer))
            else:
                processors[name] = PromptCrossAttention(lambda: self._slot.get().prompt, int(layer))
        transformer.set_attn_processor(processors)

    def resized(self, latent_size: tuple[int, int]) -> CausalWan:
        """The same weights streaming another latent resolution; the new wrapper owns the transformer."""
        return CausalWan(self.transformer, self.frames_per_block, latent_size, self.causal_training, self.fps)

    # -- the streaming driver's interface (stretto.pipelines.world.StreamModel) -------------------------------
    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.transformer.config.in_channels, *self.latent_size)

    @property
    def tokens_per_patch_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def cache_slots(self, frames: int) -> int:
        """Cache slots (tokens) taken by `frames` latent frames."""
        pt = self.patch[0]
        if frames % pt:
            raise ValueError(f"{frames} frames do not fill whole temporal patches of {pt} frames")
        return frames // pt * self.tokens_per_patch_frame

    def new_cache(
        self,
        batch: int,
        frames: int,
        sink_frames: int = 0,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        budget_hint: str = "pass a larger budget_bytes to new_cache",
    ) -> KVCache:
        """A KVCache holding `frames` latent frames, the first `sink_frames` of them never evicted."""
        table = self.transformer.rope.max_seq_len
        if frames // self.patch[0] > table:
            raise ValueError(
                f"a cache of {frames} frames is past the model's RoPE table ({table} positions); use a rolling window"
            )
        p = next(self.parameters())
        return KVCache(
            self.layers,
            batch,
            self.heads,
            self.head_dim,
            self.cache_slots(frames),
            dtype=p.dtype,
            device=p.device,
            sink_slots=self.cache_slots(sink_frames),
            budget_bytes=budget_bytes,
            budget_hint=budget_hint,
        )

    def condition(self, prompt_embeds: torch.Tensor | PromptKV) -> PromptKV:
        """Text-encoder states (B, L, text_dim) -> the prompt's cross-attention K/V for every layer, once."""
        return encode_prompt_kv(self.transformer, prompt_embeds)

    def context_condition(self, past: list, prompt: PromptKV) -> PromptKV:
        """Recompute: the context frames are re-run under the current prompt (the text is not per frame)."""
        return prompt

    # -- the model call ---------------------------------------------------------------------------------------
    def rope(self, frame_pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (1, 1, T * tokens, head_dim / 2) from Wan's own table, for patch-frame positions (T,)."""
        table = self.transformer.rope
        if len(frame_pos) and int(frame_pos.max()) >= table.max_seq_len:
            raise ValueError(
                f"temporal position {int(frame_pos.max())} is past the model's RoPE table "
                f"({table.max_seq_len} positions); stream with a window (mode kv-rolling)"
            )
        gh, gw = self.grid
        device = frame_pos.device
        rows = torch.arange(gh, device=device).repeat_interleave(gw)
        cols = torch.arange(gw, device=device).repeat(gh)
        index = (frame_pos.repeat_interleave(gh * gw), rows.repeat(len(frame_pos)), cols.repeat(len(frame_pos)))
        dims = [table.t_dim, table.h_dim, table.w_dim]
        cos = torch.cat([part[i] for part, i in zip(table.freqs_cos.split(dims, 1), index, strict=True)], dim=-1)
        sin = torch.cat([part[i] for part, i in zip(table.freqs_sin.split(dims, 1), index, strict=True)], dim=-1)
        # the table repeats every angle for its interleaved pair; one of each is the halves layout's angle
        return cos[:, 0::2].to(dtype)[None, None], sin[:, 1::2].to(dtype)[None, None]

    def forward(
        self,
        frames: torch.Tensor,
        t: torch.Tensor,
        prompt: PromptKV,
        *,
        kv_cache: KVCache | None = None,
        start: int = 0,
        write: bool = False,
    ) -> torch.Tensor:
        """Latent frames (B, T, C, H, W) at noise levels t (B, T) in [0, 1] -> flow velocity (B, T, C, H, W).

        No cache: block-causal over the T frames (blocks of `frames_per_block`). kv_cache: the frames sit at
        slots [start, start + cache_slots(T)); `write=True` stores their K/V (the commit of a clean block).
        """
        b, n, _, h, w = frames.shape
        pt = self.patch[0]
        if (h, w) != self.latent_size:
            raise ValueError(f"latent frames are {(h, w)}, this CausalWan streams {self.latent_size}")
        if not isinstance(prompt, PromptKV):
            raise TypeError(f"prompt must be a PromptKV (CausalWan.condition(prompt_embeds)), got {type(prompt)}")
        if prompt.batch != b:
            raise ValueError(f"the prompt has batch {prompt.batch}, the frames {b}")
        per_frame = self.tokens_per_patch_frame
        n_pf = self.cache_slots(n) // per_frame
        frames_per_block = self.frames_per_block // pt
        device = frames.device
        if kv_cache is None:
            frame_pos = torch.arange(n_pf, device=device)
            blocks = (frame_pos // frames_per_block).repeat_interleave(per_frame)
            mask = blocks[None, :] <= blocks[:, None]  # a block sees itself and every earlier block
            rope_q = rope_k = self.rope(frame_pos, frames.dtype)
        else:
            frame_pos = kv_cache.place_frames(start, n_pf, per_frame, frames_per_block, b, write)
            n_keys = max(kv_cache.length, start + n_pf * per_frame) // per_frame
            rope_q = self.rope(frame_pos, frames.dtype)
            rope_k = self.rope(torch.arange(n_keys, device=device), frames.dtype)
            mask = None  # the cache holds only earlier blocks, and a block sees all of itself
            if n_pf > frames_per_block:  # blocks in flight together (diffusion forcing): block-causal among them
                q_block = (torch.arange(n_pf, device=device) // frames_per_block).repeat_interleave(per_frame)
                k_block = torch.full((n_keys * per_frame,), n_pf, device=device)  # past the call: never seen
                k_block[:start] = -1  # the cache before the call: always seen
                k_block[start : start + len(q_block)] = q_block
                mask = k_block[None, :] <= q_block[:, None]
        call = _Call(kv_cache, start, write, rope_q, rope_k, mask, prompt)
        with self._slot.bind(call):
            out = self._transformer_call(frames.transpose(1, 2), t[:, ::pt], prompt.placeholder)
        return out.transpose(1, 2)

    def _transformer_call(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The hosted class's own forward, given its timestep layout. t: (B, patch frames) in [0, 1]."""
        timestep = 1000 * t.to(x.dtype)
        if self.diffusion_forcing:  # SkyReels-V2: one integer timestep per patch frame, the way it was trained
            fps = [0 if self.fps == 16 else 1] * x.shape[0]
            timestep = timestep.round().long()
            return self.transformer(x, timestep, text, enable_diffusion_forcing=True, fps=fps, return_dict=False)[0]
        if bool((timestep == timestep[:, :1]).all()):
            timestep = timestep[:, 0]  # one level for the whole call: Wan's (B,) path, no per-token embedding
        else:
            timestep = timestep.repeat_interleave(self.tokens_per_patch_frame, dim=1)  # per frame, to its tokens
        return self.transformer(x, timestep, text, return_dict=False)[0]
