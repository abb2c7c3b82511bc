"""Masked diffusion language models over characters: a bidirectional one and a block-diffusion one.

- `MaskedDiffusionLM` (LLaDA, Nie et al. 2025): a bidirectional RoPE transformer that predicts the clean token
  at every masked position. No causal mask, so a KV cache of it is only ever an approximation.
- `BlockDiffusionLM` (BD3-LM, Arriola et al. 2025; Fast-dLLM v2): the same network with a block-causal mask,
  attention is bidirectional inside a block and causal across blocks, so the K/V of finished blocks never
  change and a KV cache is exact. The prompt is block 0; generated block i (`block_size` tokens) is block i+1.

`model(ids, positions, blocks, kv_cache=..., start=..., write=..., gen_start=...)` returns logits. With a
`KVCache` the T input tokens sit at cache slots [start, start + T) and attend to every slot the cache holds
(`stretto.models.kv_attention`). With `probe_layer=l` it returns (logits, `Probe`): the drift of every key the
call overwrote and the attention mass over keys at layer l, which Elastic-Cache's refresh test reads.

Besides RoPE (relative), each token gets two learned absolute position embeddings: its distance from the start
of the prompt and its offset from the start of the answer (`gen_start`). RoPE alone cannot tell an answer token
which prompt character it should read when prompt lengths vary (copy needs "5 + j after the prompt start",
reverse "j + 2 before the answer"); the two offsets make that a lookup the attention can learn.
The model knows nothing about decoding rules or when a cache is refreshed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from stretto.data.text_tasks import TOKENIZER
from stretto.models.kv_attention import Probe, kv_attention, rope_angles, slot_mask
from stretto.models.kv_cache import KVCache
from stretto.models.sparse_attention import SparsePattern


@dataclass
class TextLMConfig:
    vocab_size: int = TOKENIZER.vocab_size
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    max_len: int = 192
    block_size: int = 0  # 0: bidirectional (masked-lm); > 0: block-causal with this block length (block-lm)
    rope_base: float = 10000.0
    pad_id: int = TOKENIZER.pad_id
    mask_id: int = TOKENIZER.mask_id
    eot_id: int = TOKENIZER.eot_id

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"TextLMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"TextLMConfig.n_embd ({self.n_embd}) / n_head ({self.n_head}) must be an even integer")
        if self.block_size < 0:
            raise ValueError(f"TextLMConfig.block_size must be >= 0, got {self.block_size}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


def rope_tables(positions: torch.Tensor, dim: int, base: float, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos, sin of shape (B, 1, T, dim/2) for integer positions (B, T)."""
    angles = rope_angles(positions, dim, base)
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


class SelfAttention(nn.Module):
    def __init__(self, config: TextLMConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(
        self, x, rope_q, rope_k, mask, kv_cache: KVCache | None, layer: int, start: int, write: bool, probe, sparse
    ):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        y = kv_attention(q, k, v, rope_q, rope_k, mask, kv_cache, layer, start, write, probe, sparse)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, config: TextLMConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
        )

    def forward(self, x, rope_q, rope_k, mask, kv_cache, layer, start, write, probe, sparse=None):
        x = x + self.attn(self.ln1(x), rope_q, rope_k, mask, kv_cache, layer, start, write, probe, sparse)
        return x + self.mlp(self.ln2(x))


class TextLM(nn.Module):
    """Token embedding, a stack of pre-LN RoPE transformer blocks, an output head."""

    kind = "text-lm"
    tokenizer = TOKENIZER  # what prompts are encoded with and answers decoded with
    logit_shift = False  # the logits at slot i score slot i (a model adapted from an AR LM scores slot i + 1)

    def __init__(self, config: TextLMConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe_prompt = nn.Embedding(config.max_len, config.n_embd)  # distance from the prompt's first token
        self.wpe_answer = nn.Embedding(2 * config.max_len, config.n_embd)  # offset from gen_start, in [-L, L)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        # Not tied to wte: safetensors refuses shared storage, and the head is only vocab x width weights.
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def block_causal(self) -> bool:
        return self.config.block_size > 0

    def attention_mask(self, q_blocks: torch.Tensor, k_blocks: torch.Tensor, k_valid: torch.Tensor) -> torch.Tensor:
        """(B, 1, Tq, Tk) bool: valid keys; block-causal: only keys of the same or earlier blocks."""
        return slot_mask(q_blocks, k_blocks, k_valid, self.block_causal)

    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        blocks: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        start: int | torch.Tensor = 0,
        write: bool = True,
        attn_mask: torch.Tensor | None = None,
        gen_start: int = 0,
        slots: torch.Tensor | None = None,
        probe_layer: int | None = None,
        sparse: SparsePattern | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Probe]:
        """ids (B, T) -> logits (B, T, vocab), or (logits, Probe) when probe_layer is given.

        positions: RoPE positions (B, T), default start + arange(T). blocks: block index (T,) of each token
        (block-causal models). kv_cache: the T tokens sit at slots [start, start + T) and attend to all cached
        slots; `write` stores their K/V there, otherwise they override those slots for this call only.
        attn_mask: an explicit (B, 1, T, Tk) mask, used by block-diffusion training.
        gen_start: the slot where the answer starts; slots: the slot of each token (T,), default start + arange(T).
        Continuous batching: start may be a tensor (B,) of per-row first slots, blocks then (B, T); kv_cache may be
        `KVCache.rows(...)`, the batch rows this call runs.
        probe_layer: also return a `Probe` with the drift of the keys this call overwrote (every layer, when it
        writes to a cache) and the attention mass over keys at this layer (Elastic-Cache's refresh test).
        sparse: SparseD's pattern of this generation (`stretto.models.sparse_attention`); None: dense attention.
        """
        if probe_layer is not None and not 0 <= probe_layer < self.config.n_layer:
            raise ValueError(f"probe_layer must be in [0, {self.config.n_layer}), got {probe_layer}")
        b, t = ids.shape
        # (T,), or (B, T) when each row starts at its own slot (continuous batching)
        from_start = torch.arange(t, device=ids.device) + (start[:, None] if isinstance(start, torch.Tensor) else start)
        if slots is None:
            slots = from_start
        if positions is None:
            positions = from_start.expand(b, t)
        if blocks is None:
            blocks = torch.zeros(t, dtype=torch.long, device=ids.device)
        valid = ids != self.config.pad_id
        if kv_cache is None:
            k_pos, k_valid, k_blocks = positions, valid, blocks
        elif write:
            kv_cache.write_meta(start, positions, valid, blocks)
            k_pos, k_valid, k_blocks = kv_cache.meta()
        else:
            k_pos, k_valid, k_blocks = kv_cache.meta(start, positions, valid, blocks)
        if attn_mask is None:
            attn_mask = self.attention_mask(blocks, k_blocks, k_valid)
        max_len = self.config.max_len
        x = (
            self.wte(ids)
            + self.wpe_prompt(positions.clamp(0, max_len - 1))
            + self.wpe_answer((slots - gen_start).clamp(-max_len, max_len - 1) + max_len)
        )
        dim, base = self.config.head_dim, self.config.rope_base
        rope_q = rope_tables(positions, dim, base, x.dtype)
        rope_k = rope_q if kv_cache is None else rope_tables(k_pos, dim, base, x.dtype)
        probe = None if probe_layer is None else Probe(probe_layer, start)
        for i, block in enumerate(self.blocks):
            x = block(x, rope_q, rope_k, attn_mask, kv_cache, i, start, write, probe, sparse)
        logits = self.lm_head(self.ln_f(x))
        return logits if probe is None else (logits, probe)

    def new_cache(self, batch: int, capacity: int, **kwargs) -> KVCache:
        """A KVCache shaped for this model (the cache manager allocates; the model only says the shapes)."""
        p = next(self.parameters())
        c = self.config
        return KVCache(c.n_layer, batch, c.n_head, c.head_dim, capacity, dtype=p.dtype, device=p.device, **kwargs)


class MaskedDiffusionLM(TextLM):
    """Bidirectional masked diffusion LM (LLaDA)."""

    kind = "masked-lm"

    def __init__(self, config: TextLMConfig):
        if config.block_size != 0:
            raise ValueError(f"a masked-lm has block_size 0 (bidirectional), got {config.block_size}")
        super().__init__(config)


class BlockDiffusionLM(TextLM):
    """Block diffusion LM (BD3-LM / Fast-dLLM v2): bidirectional inside a block, causal across blocks."""

    kind = "block-lm"

    def __init__(self, config: TextLMConfig):
        if config.block_size < 1:
            raise ValueError(f"a block-lm needs block_size >= 1, got {config.block_size}")
        super().__init__(config)


def gen_blocks(gen_start: int, total: int, block_size: int, device=None) -> torch.Tensor:
    """Block index per slot: 0 for the prompt [0, gen_start), then 1 + (slot - gen_start) // block_size."""
    slots = torch.arange(total, device=device)
    if block_size <= 0:
        return torch.zeros(total, dtype=torch.long, device=device)
    return torch.where(slots < gen_start, 0, 1 + (slots - gen_start) // block_size)


def left_pad_positions(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """RoPE positions for left-padded rows: the first real token of each row is at position 0."""
    n_pad = (ids == pad_id).cumprod(dim=1).sum(dim=1, keepdim=True)
    return (torch.arange(ids.shape[1], device=ids.device)[None] - n_pad).clamp(min=0)
