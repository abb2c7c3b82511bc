"""A block-causal video DiT for an action-conditioned world model (CausVid / Self Forcing, at toy scale).

Frames are cut into patches (tokens). Tokens attend bidirectionally inside their block of `frames_per_block`
frames and causally across blocks. RoPE runs over three axes: time (frame), row and column. Each frame carries
its own noise level t and action; both modulate that frame's tokens through adaLN-zero (DiT, Peebles & Xie 2023).

`model(frames, t, actions, ...)` predicts the flow-matching velocity (noise - data) of every frame.

Three ways to call it, same weights:
- plain: a clip of frames, block-causal mask built from the frame blocks (recompute mode; context frames at t=0);
- with an explicit frame-level mask (teacher-forcing training: clean copies beside noisy ones);
- with a `KVCache`: the frames sit at cache slots [start, start + T) and attend to every cached slot;
  `write=True` stores their K/V (the commit of a clean block), otherwise they only override those slots
  (`stretto.models.kv_attention`, the attention the text LMs share).
Cached keys are stored un-rotated. The temporal RoPE position of a cached frame is its slot in the cache, not its
frame number in the stream, so after a rolling window evicts frames the positions stay inside the range the model
was trained on, however long the stream runs.

Any of the three calls can run over several processes with Ulysses sequence parallelism (DeepSpeed-Ulysses, Jacobs
et al. 2023), given a `stretto.parallel.UlyssesShard` (`shard=`): each rank runs the per-token layers (patch
embedding, adaLN, MLP) on its contiguous slice of the call's tokens, trades that slice for a head slice around
attention (every token, n_head / world heads: RoPE and the mask see every token at its global position, and a cache
made with `new_cache(shard=)` holds only those heads), trades back, and gathers the output tokens, so every rank
returns the whole velocity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from stretto.models.kv_attention import kv_attention, rope_angles
from stretto.models.kv_cache import DEFAULT_BUDGET_BYTES, KVCache

if TYPE_CHECKING:
    from stretto.parallel.ulysses import UlyssesShard


@dataclass
class WorldDiTConfig:
    frame_size: int = 24
    channels: int = 3
    patch: int = 4
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_actions: int = 5
    frames_per_block: int = 1
    train_frames: int = 12  # clip length it was trained on: temporal RoPE distances beyond it are unseen
    rope_axes: tuple[int, int, int] | None = None  # head dims rotated by time, row, column; None: ~1/4, 3/8, 3/8
    rope_base: float = 100.0
    sampling_steps: int | None = None  # denoising steps per block it was trained to sample with (None: 4)

    def __post_init__(self):
        if self.rope_axes is None:
            hd = self.n_embd // self.n_head
            t = 2 * round(hd / 8)
            y = 2 * ((hd - t) // 4)
            self.rope_axes = (t, y, hd - t - y)
        self.rope_axes = tuple(self.rope_axes)
        for name in (
            "frame_size",
            "channels",
            "patch",
            "n_layer",
            "n_head",
            "n_embd",
            "n_actions",
            "frames_per_block",
            "train_frames",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldDiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.sampling_steps is not None and self.sampling_steps < 1:
            raise ValueError(f"WorldDiTConfig.sampling_steps must be >= 1, got {self.sampling_steps}")
        if self.frame_size % self.patch:
            raise ValueError(f"frame_size {self.frame_size} is not a multiple of patch {self.patch}")
        if self.n_embd % self.n_head or sum(self.rope_axes) != self.n_embd // self.n_head:
            raise ValueError(f"rope_axes {self.rope_axes} must sum to the head dim {self.n_embd // self.n_head}")
        if any(d % 2 for d in self.rope_axes):
            raise ValueError(f"rope_axes {self.rope_axes} must be even")

    @property
    def grid(self) -> int:
        return self.frame_size // self.patch

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of noise levels t in [0, 1] (scaled to 1000 like DDPM timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


def per_token(per_frame: torch.Tensor, tpf: int, shard: UlyssesShard | None) -> torch.Tensor:
    """Per-frame values (B, T, ...) spread to the tokens of the frames this process holds (all without a shard)."""
    return per_frame.repeat_interleave(tpf, dim=1) if shard is None else shard.spread(per_frame, tpf)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, config: WorldDiTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x, rope_q, rope_k, mask, kv_cache: KVCache | None, layer: int, start: int, write: bool, shard):
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if shard is not None:  # Ulysses: every token of the call, this rank's heads (one all-to-all for q, k, v)
            qkv = shard.to_heads(qkv)
        y = kv_attention(*qkv, rope_q, rope_k, mask, kv_cache, layer, start, write)
        if shard is not None:  # and back: every head, this rank's tokens
            y = shard.to_tokens(y)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-LN transformer block with adaLN-zero modulation per token; `layer` is its KV cache layer."""

    def __init__(self, config: WorldDiTConfig, layer: int = 0):
        super().__init__()
        d = config.n_embd
        # the block knows its own cache layer, so every block takes the same arguments (a feature cache calls
        # the blocks it computes with the first block's arguments: stretto.cache.block_calls)
        self.layer = layer
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.attn = Attention(config)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.ada = nn.Linear(d, 6 * d)

    def forward(self, x, cond, tpf, rope_q, rope_k, mask, kv_cache, start, write, shard=None):
        # cond is per frame: modulate once per frame, then spread to its tokens (36x fewer adaLN FLOPs)
        mods = per_token(self.ada(cond), tpf, shard)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods.chunk(6, dim=-1)
        x = x + gate1 * self.attn(
            modulate(self.norm1(x), shift1, scale1), rope_q, rope_k, mask, kv_cache, self.layer, start, write, shard
        )
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class WorldDiT(nn.Module):
    kind = "world-dit"

    def __init__(self, config: WorldDiTConfig):
        super().__init__()
        self.config = config
        c, d = config, config.n_embd
        self.patch_in = nn.Linear(c.channels * c.patch**2, d)
        self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.action = nn.Embedding(c.n_actions, d)
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c.n_layer))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.ada_out = nn.Linear(d, 2 * d)
        self.patch_out = nn.Linear(d, c.channels * c.patch**2)
        self._init()
        rows, cols = torch.meshgrid(torch.arange(c.grid), torch.arange(c.grid), indexing="ij")
        self.register_buffer("spatial", torch.stack([rows.flatten(), cols.flatten()], dim=1), persistent=False)
        self._rope_tables: dict = {}  # (dtype, device) -> cos, sin of positions [0, P) (see rope)

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.action.weight, std=0.02)
        for block in self.blocks:  # adaLN-zero: every block starts as the identity
            nn.init.zeros_(block.ada.weight)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.patch_out.weight)

    # -- tokens <-> frames ---------------------------------------------------------------------------------
    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B, T * tokens_per_frame, C * p * p)."""
        b, t, ch, h, w = frames.shape
        p, g = self.config.patch, self.config.grid
        x = frames.reshape(b, t, ch, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, t * g * g, ch * p * p)

    def unpatchify(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        c = self.config
        p, g = c.patch, c.grid
        x = tokens.reshape(tokens.shape[0], t, g, g, c.channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(tokens.shape[0], t, c.channels, c.frame_size, c.frame_size)

    def rope(self, frame_pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (1, 1, T * tokens_per_frame, head_dim / 2) for the temporal positions (T,) of whole frames.

        Rows of a table built once per dtype and device (and grown when a position passes its end): a stream
        asks for the same few positions at every call, and building them anew was ~10% of a tiny model's call.
        """
        cos, sin = self._rope_table(int(frame_pos.max()) + 1 if len(frame_pos) else 0, dtype, frame_pos.device)
        shape = (1, 1, len(frame_pos) * self.config.tokens_per_frame, cos.shape[-1])
        return cos[frame_pos].reshape(shape), sin[frame_pos].reshape(shape)

    def _rope_table(
        self, positions: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (P, tokens_per_frame, head_dim / 2) of temporal positions [0, P), P >= positions."""
        key = (dtype, device)
        table = self._rope_tables.get(key)
        if table is not None and table[0].shape[0] >= positions:
            return table
        size = max(positions, 64, 0 if table is None else 2 * table[0].shape[0])
        c = self.config
        n = c.tokens_per_frame
        dt, dy, dx = c.rope_axes
        time = torch.arange(size, device=device).repeat_interleave(n)
        space = self.spatial.to(device).repeat(size, 1)
        angles = torch.cat(
            [
                rope_angles(time, dt, c.rope_base),
                rope_angles(space[:, 0], dy, c.rope_base),
                rope_angles(space[:, 1], dx, c.rope_base),
            ],
            dim=-1,
        ).view(size, n, -1)
        self._rope_tables[key] = table = (angles.cos().to(dtype), angles.sin().to(dtype))
        return table

    def frame_blocks(self, frame_pos: torch.Tensor) -> torch.Tensor:
        return frame_pos // self.config.frames_per_block

    def forward(
        self,
        frames: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor,
        frame_pos: torch.Tensor | None = None,
        *,
        frame_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        start: int = 0,
        write: bool = False,
        shard: UlyssesShard | None = None,
    ) -> torch.Tensor | None:
        """frames (B, T, C, H, W) at noise levels t (B, T), actions (B, T) -> velocity (B, T, C, H, W).

        frame_pos: temporal RoPE position of each frame (T,), default arange(T) (+ the cached frames before
        `start`). frame_mask: (T, T) bool, query frame i may attend to key frame j (no cache only); default
        block-causal. kv_cache: the T frames sit at slots [start, start + T * tokens_per_frame). shard: Ulysses, this
        rank's token slice and heads (the cache made with the same shard); the output is whole on every rank.
        write=True (a commit) stores the frames' K/V and returns None.
        """
        b, n_frames = frames.shape[:2]
        c = self.config
        tpf = c.tokens_per_frame
        device = frames.device
        if kv_cache is None:
            if frame_pos is None:
                frame_pos = torch.arange(n_frames, device=device)
            if frame_mask is None:
                blocks = self.frame_blocks(frame_pos)
                frame_mask = blocks[None, :] <= blocks[:, None]
            mask = frame_mask.repeat_interleave(tpf, 0).repeat_interleave(tpf, 1)
            rope_q = rope_k = self.rope(frame_pos, frames.dtype)
        else:
            frame_pos = kv_cache.place_frames(start, n_frames, tpf, c.frames_per_block, b, write)
            n_keys = max(kv_cache.length, start + n_frames * tpf) // tpf
            rope_q = self.rope(frame_pos, frames.dtype)
            rope_k = self.rope(torch.arange(n_keys, device=device), frames.dtype)
            mask = None  # the cache only holds earlier blocks, and a block sees all of itself
        temb = timestep_embedding(t, c.n_embd).to(frames.dtype)
        cond = F.silu(self.t_mlp(temb) + self.action(actions))  # (B, T, D): one per frame
        tokens = self.patchify(frames)
        x = self.patch_in(tokens if shard is None else shard.local(tokens))
        for block in self.blocks:
            x = block(x, cond, tpf, rope_q, rope_k, mask, kv_cache, start, write, shard)
        if write:  # a commit is run for the K/V it stores; its velocity is never read
            return None
        shift, scale = per_token(self.ada_out(cond), tpf, shard).chunk(2, dim=-1)
        out = self.patch_out(modulate(self.norm_out(x), shift, scale))
        return self.unpatchify(out if shard is None else shard.gather(out), n_frames)

    # -- what the streaming driver asks (stretto.pipelines.world.StreamModel) ---------------------------------
    x0_clamp = 1.0  # frames are pixels in [-1, 1]

    @property
    def frames_per_block(self) -> int:
        return self.config.frames_per_block

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.config.channels, self.config.frame_size, self.config.frame_size)

    def cache_slots(self, frames: int) -> int:
        """Cache slots (tokens) taken by `frames` frames."""
        return frames * self.config.tokens_per_frame

    def condition(self, actions: torch.Tensor) -> torch.Tensor:
        """A block's conditioning is its actions (B, F), used as they are."""
        return actions

    def context_condition(self, past: list[tuple[torch.Tensor, int]], actions: torch.Tensor) -> torch.Tensor:
        """Recompute: the past frames' own actions (one per frame) followed by the block's."""
        return torch.cat([torch.stack([a[:, i] for a, i in past], dim=1), actions], dim=1)

    def new_cache(
        self,
        batch: int,
        frames: int,
        sink_frames: int = 0,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        budget_hint: str = "pass a larger budget_bytes to new_cache",
        shard: UlyssesShard | None = None,
    ) -> KVCache:
        """A KVCache holding `frames` frames, the first `sink_frames` of them never evicted (under Ulysses: of this
        rank's n_head / world heads)."""
        p = next(self.parameters())
        c = self.config
        tpf = c.tokens_per_frame
        return KVCache(
            c.n_layer,
            batch,
            c.n_head if shard is None else shard.heads(c.n_head),
            c.head_dim,
            frames * tpf,
            dtype=p.dtype,
            device=p.device,
            sink_slots=sink_frames * tpf,
            budget_bytes=budget_bytes,
            budget_hint=budget_hint,
        )
