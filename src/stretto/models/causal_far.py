"""AnyFlow-FAR streamed by stretto's driver: its full-resolution and compressed caches held in stretto's KVCache.

diffusers' `AnyFlowFARTransformer3DModel` (AnyFlow, Gu et al. 2026, on FAR, Gu et al. 2025) generates chunk by
chunk. A chunk attends to the clean past: the last `full_chunk_limit - 1` chunks as full-resolution tokens, older
ones as 4x-compressed tokens (`far_patch_embedding`). Its context is not a cache written once per block: after
every chunk the clean prefix is re-encoded at t = 0 (a chunk that leaves the full-resolution tail is demoted to
compressed tokens, and the tail's K/V depend on which chunks are compressed). So `CausalFAR` keeps the clean latents
of its context beside the two KVCaches, and its commit (`write=True`) re-encodes that context through the class's
own cache-step forward, whose attention processor writes the KVCaches; denoising steps go through its own
inference forward, reading them. Mode kv keeps the whole stream: the frames of diffusers' `AnyFlowFARPipeline`.
Mode kv-rolling keeps `sinks + window` frames of context, re-encoded with positions counted from the first kept
frame: a constant cost per chunk (diffusers' re-encode grows with the video) and positions inside the RoPE table
however long the stream runs. Recompute runs the class's training forward (the same compressed / full layout,
block-causal) over context + block at every step. Sampling is AnyFlow's flow map: every call is conditioned on
its source and target times (t, r), and the driver steps z_r = z_t - (sigma_t - sigma_r) u
(`FlowMapEulerDiscreteScheduler`). The prompt's cross-attention K/V are computed once per prompt
(`stretto.models.prompt_kv`; the class projects the text in every block at every call). The released models
stream chunks of (1, 3, 3, ...) frames (`config.chunk_partition`; Wan's VAE encodes the first frame alone):
`first_chunk` is the driver's first block (`first_block_frames`), and the chunk bookkeeping below reads each
chunk's own length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from stretto.models.kv_cache import DEFAULT_BUDGET_BYTES, KVCache
from stretto.models.prompt_kv import PromptCrossAttention, PromptKV, encode_prompt_kv


@dataclass
class FARCache:
    """AnyFlow-FAR's context: the clean latent chunks kept, and their compressed and full-resolution K/V."""

    compressed: KVCache
    full: KVCache
    keep_chunks: int  # chunks of context kept (sinks + window, or the whole stream in mode kv)
    sink_chunks: int = 0
    chunks: list[torch.Tensor] = field(default_factory=list)  # clean latents (B, F, C, H, W), oldest first

    @property
    def nbytes(self) -> int:
        """Bytes of K/V buffers allocated (the kept latents are frames, not K/V)."""
        return self.compressed.nbytes + self.full.nbytes

    def add(self, chunk: torch.Tensor) -> None:
        """A clean chunk joins the context; past `keep_chunks`, the oldest non-sink chunk leaves it."""
        self.chunks.append(chunk)
        if len(self.chunks) > self.keep_chunks:
            del self.chunks[self.sink_chunks]


class FARSelfAttention:
    """AnyFlow-FAR's attn1 over stretto's KVCaches: its own processor's math, with SDPA and a boolean mask.

    (diffusers' processor pads attention to a multiple of 128 tokens for flex attention and, on its KV-cache
    path, leaves the zero padding unmasked, so padded keys take softmax weight; this one pads nothing.)
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 kv_cache=None, kv_cache_flag=None):  # fmt: skip
        from diffusers.models.transformers.transformer_anyflow_far import apply_rotary_emb

        dtype = hidden_states.dtype
        q = attn.norm_q(attn.to_q(hidden_states)).to(dtype).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        k = attn.norm_k(attn.to_k(hidden_states)).to(dtype).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        mask = attention_mask  # CausalFAR's boolean chunk-causal mask (training forward and cache step), or None
        if kv_cache is not None:
            cache, layer = kv_cache
            if kv_cache_flag["is_cache_step"]:  # the commit: the context's K/V, un-rotated, into the caches
                n = kv_cache_flag["num_compressed_tokens"]
                cache.compressed.write(layer, 0, k[:, :, :n], v[:, :, :n])
                cache.full.write(layer, 0, k[:, :, n:], v[:, :, n:])
            else:  # a denoising step: the block attends to everything cached, and to itself
                kc, vc = cache.compressed.read(layer)
                kf, vf = cache.full.read(layer)
                k, v = torch.cat([kc, kf, k], dim=2), torch.cat([vc, vf, v], dim=2)
        q, k = apply_rotary_emb(q, rotary_emb["query"]), apply_rotary_emb(k, rotary_emb["key"])
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return attn.to_out[1](attn.to_out[0](y.transpose(1, 2).flatten(2).type_as(q)))


class CausalFAR(nn.Module):
    """diffusers' AnyFlowFARTransformer3DModel as a stretto `StreamModel` (AnyFlow-FAR, Gu et al. 2026)."""

    kind = "causal-far"
    x0_clamp = None
    flow_map = True  # calls take a target time r beside t

    def __init__(
        self,
        transformer: nn.Module,
        frames_per_block: int = 3,
        latent_size: tuple[int, int] = (60, 104),
        first_chunk: int | None = None,
    ):
        super().__init__()
        config = transformer.config
        if config.image_dim is not None:
            raise ValueError("image-conditioned AnyFlow-FAR (image_dim set) is not supported; T2V is")
        (pt, ph, pw), (_, ch, cw) = config.patch_size, config.compressed_patch_size
        if pt != 1 or frames_per_block < 1:
            raise ValueError(f"frames_per_block must be >= 1 on a temporal patch of 1, got {frames_per_block}, {pt}")
        first_chunk = frames_per_block if first_chunk is None else first_chunk
        if not 1 <= first_chunk <= frames_per_block:
            raise ValueError(f"first_chunk must be in [1, frames_per_block={frames_per_block}], got {first_chunk}")
        h, w = latent_size
        if h % ch or w % cw:
            raise ValueError(f"latent_size {tuple(latent_size)} must be a multiple of the compressed patch {(ch, cw)}")
        self.transformer = transformer
        self.frames_per_block = frames_per_block
        self.first_block_frames = first_chunk  # the driver's first block (stretto.pipelines.world.block_frames)
        self.latent_size = (h, w)
        self.full_tokens = (h // ph) * (w // pw)
        self.compressed_tokens = (h // ch) * (w // cw)
        self.limit = config.full_chunk_limit
        self._prompt: PromptKV | None = None  # the prompt of the call in flight
        for i, block in enumerate(transformer.blocks):  # no set_attn_processor: each attention module has its own
            block.attn1.set_processor(FARSelfAttention())
            block.attn2.set_processor(PromptCrossAttention(self._prompt_in_flight, i))

    def _prompt_in_flight(self) -> PromptKV:
        if self._prompt is None:
            raise RuntimeError("this AnyFlow-FAR's cross-attention reads a PromptKV; call it through CausalFAR")
        return self._prompt

    def resized(self, latent_size: tuple[int, int]) -> CausalFAR:
        """The same weights streaming another latent resolution; the new wrapper owns the transformer."""
        return CausalFAR(self.transformer, self.frames_per_block, latent_size, self.first_block_frames)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.transformer.config.in_channels, *self.latent_size)

    def chunks(self, frames: int, from_start: bool = False) -> int:
        """How many chunks `frames` frames are: whole chunks, or a first chunk and whole ones after it. from_start:
        the frames open the stream (sinks), so a short first chunk must be among them."""
        fpb, first = self.frames_per_block, self.first_block_frames
        if frames % fpb == 0 and not (from_start and frames and first != fpb):
            return frames // fpb
        if frames >= first and (frames - first) % fpb == 0:
            return 1 + (frames - first) // fpb
        whole = f"a first chunk of {first} then chunks of {fpb}" if first != fpb else f"chunks of {fpb}"
        raise ValueError(f"{frames} frames{' from the start' if from_start else ''} are not whole chunks ({whole})")

    def partition(self, frames: int) -> list[int]:
        """The chunk lengths of `frames` frames from the stream's start (a rolling window's, once the first chunk
        has left it, are all whole)."""
        fpb, n = self.frames_per_block, self.chunks(frames)
        return [fpb] * n if frames % fpb == 0 else [self.first_block_frames] + [fpb] * (n - 1)

    def cache_slots(self, frames: int) -> int:
        """Frames must be whole chunks: the context is kept and re-encoded chunk by chunk."""
        self.chunks(frames)
        return frames * self.full_tokens

    def new_cache(self, batch: int, frames: int, sink_frames: int = 0, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                  budget_hint: str = "pass a larger budget_bytes to new_cache") -> FARCache:  # fmt: skip
        """Caches for a context of `frames` frames (whole chunks), its first `sink_frames` always kept."""
        fpb, table = self.frames_per_block, self.transformer.config.rope_max_seq_len
        if frames + fpb > table:
            raise ValueError(f"a context of {frames} frames is past the model's RoPE table ({table} positions); "
                             "use a rolling window")  # fmt: skip
        try:
            sink_chunks = self.chunks(sink_frames, from_start=True)
        except ValueError as err:
            raise ValueError(f"sinks: {err}") from None
        chunks = sink_chunks + self.chunks(frames - sink_frames)
        p = next(self.parameters())
        cfg = self.transformer.config
        full_chunks = min(self.limit - 1, chunks)
        compressed_chunks = max(chunks - (self.limit - 1), 1)  # sized for whole chunks: a short one fits too

        def kv(tokens):
            shape = (cfg.num_layers, batch, cfg.num_attention_heads, cfg.attention_head_dim, tokens)
            return KVCache(*shape, dtype=p.dtype, device=p.device, budget_bytes=budget_bytes, budget_hint=budget_hint)

        return FARCache(
            kv(compressed_chunks * fpb * self.compressed_tokens),
            kv(max(full_chunks, 1) * fpb * self.full_tokens),
            chunks,
            sink_chunks,
        )

    def condition(self, prompt_embeds: torch.Tensor | PromptKV) -> PromptKV:
        """Text-encoder states (B, L, text_dim) -> the prompt's cross-attention K/V for every layer, once."""
        return encode_prompt_kv(self.transformer, prompt_embeds)

    def context_condition(self, past: list, prompt: PromptKV) -> PromptKV:
        return prompt

    def _chunk_causal(self, partition: list[int], full_limit: int, device: torch.device) -> torch.Tensor:
        """FAR's mask as a boolean one: over chunks of `partition` frames laid out as compressed ones, then the last
        `full_limit` at full resolution (training keeps `full_chunk_limit`, the cache step one less), a chunk sees
        itself and every earlier chunk. (The class builds a flex-attention BlockMask; SDPA takes this one.)"""
        full = min(len(partition), full_limit)
        compressed = len(partition) - full
        sizes = [n * self.compressed_tokens for n in partition[:compressed]]
        sizes += [n * self.full_tokens for n in partition[compressed:]]
        ids = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(sizes)])
        return ids[None, :] <= ids[:, None]

    def forward(self, frames: torch.Tensor, t: torch.Tensor, prompt: PromptKV, *, kv_cache: FARCache | None = None,
                start: int = 0, write: bool = False, r: torch.Tensor | None = None) -> torch.Tensor | None:  # fmt: skip
        """Latent frames (B, T, C, H, W) at times t (B, T) in [0, 1], target times r (default t) -> mean velocity.

        kv_cache: the block is denoised against the cached context; `write=True` adds the clean block to the
        context and re-encodes it (returns None). No cache: chunk-causal over the T frames (recompute).
        prompt: from `condition`.
        """
        if not isinstance(prompt, PromptKV):
            raise TypeError(f"prompt must be a PromptKV (CausalFAR.condition(prompt_embeds)), got {type(prompt)}")
        if prompt.batch != frames.shape[0]:
            raise ValueError(f"the prompt has batch {prompt.batch}, the frames {frames.shape[0]}")
        self._prompt = prompt
        try:
            return self._forward(frames, t, prompt.placeholder, kv_cache, start, write, r)
        finally:
            self._prompt = None  # no state outlives the call

    def _forward(self, frames, t, prompt, kv_cache, start, write, r):
        b, n = frames.shape[0], frames.shape[1]
        timestep = 1000 * t.double()
        r_timestep = timestep if r is None else 1000 * r.double()
        if (frames.shape[3], frames.shape[4]) != self.latent_size:
            raise ValueError(f"latent frames are {tuple(frames.shape[3:])}, this CausalFAR streams {self.latent_size}")
        call = {"encoder_hidden_states": prompt, "return_dict": False}
        if kv_cache is None:
            partition = self.partition(n)
            mask = self._chunk_causal(partition, self.limit, frames.device)
            out = self.transformer(frames, timestep, r_timestep, chunk_partition=partition, attention_mask=mask,
                                   **call)[0]  # fmt: skip
            return torch.cat([out.new_zeros(b, n - out.shape[1], *out.shape[2:]), out], dim=1)  # only full frames out
        layers = [(kv_cache, i) for i in range(len(self.transformer.blocks))]
        if write:
            if bool(t.any()):
                raise ValueError("AnyFlow-FAR re-encodes its whole context at t = 0 at every commit (its cache step "
                                 "takes no noise level): stream it with context_noise 0")  # fmt: skip
            kv_cache.add(frames)
            context = torch.cat(kv_cache.chunks, dim=1)
            partition = [chunk.shape[1] for chunk in kv_cache.chunks]
            for cache in (kv_cache.compressed, kv_cache.full):
                cache.reset()
            flag = {"num_cached_chunks": len(partition) - 1, "is_cache_step": True}
            mask = self._chunk_causal(partition, self.limit - 1, frames.device)
            zeros = torch.zeros(b, context.shape[1], dtype=torch.float64, device=frames.device)
            self.transformer(context, zeros, zeros, chunk_partition=partition, kv_cache=layers,
                             kv_cache_flag=flag, attention_mask=mask, **call)  # fmt: skip
            compressed = len(partition) - min(len(partition), self.limit - 1)
            written = (
                (kv_cache.compressed, sum(partition[:compressed]) * self.compressed_tokens),
                (kv_cache.full, sum(partition[compressed:]) * self.full_tokens),
            )
            for cache, tokens in written:  # what the cache step wrote, from slot 0
                zeros = torch.zeros(b, tokens, dtype=torch.long, device=frames.device)
                cache.write_meta(0, zeros, torch.ones_like(zeros, dtype=torch.bool), zeros[0])
            return None
        partition = [chunk.shape[1] for chunk in kv_cache.chunks] + [n]
        flag = {"num_cached_chunks": len(partition) - 1, "is_cache_step": False}
        return self.transformer(frames, timestep, r_timestep, chunk_partition=partition, kv_cache=layers,
                                kv_cache_flag=flag, **call)[0]  # fmt: skip
