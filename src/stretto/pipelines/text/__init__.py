"""Text generation with masked diffusion LMs: `stretto.pipelines.text.generate(model, prompts, ...)`.

The pieces, one file each: `decode` (the block iterator and the driver), `rules` (which positions a step
commits), `caches` (KV cache modes: none, prefix, dual, block), `refresh` (when a prefix / dual cache
recomputes stale K/V), `model_calls` (the counted model calls and the generation's KV cache).
`generate` parses the rule and cache specs once, checks them and the block layout against the model, builds
the canvas and hands the parsed objects to `decode`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from stretto.models.text_lm import TextLM
from stretto.pipelines.text.caches import parse_cache
from stretto.pipelines.text.decode import check_blocks
from stretto.pipelines.text.decode import decode as decode_canvas
from stretto.pipelines.text.model_calls import DecodeStats
from stretto.pipelines.text.rules import parse_rule


@dataclass
class TextResult:
    """Generated texts (each cut at its first end-of-text) and what it cost."""

    texts: list[str]
    stats: DecodeStats
    seconds: float
    tokens: int  # generated tokens up to and including each row's end-of-text
    canvas: torch.Tensor = field(repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        return {
            **self.stats.to_dict(),
            "seconds": self.seconds,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
        }


def make_canvas(model: TextLM, prompts: list[str], gen_length: int) -> tuple[torch.Tensor, int]:
    """Left-padded prompts followed by gen_length masks; checks the vocabulary and the context length."""
    if not prompts:
        raise ValueError("no prompts given")
    if gen_length < 1:
        raise ValueError(f"gen_length must be >= 1, got {gen_length}")
    tok, cfg = model.tokenizer, model.config
    encoded = []
    for p in prompts:
        if not p:
            raise ValueError("empty prompt; a prompt needs at least one character")
        encoded.append(tok.encode(p))
    p_len = max(len(e) for e in encoded)
    if p_len + gen_length > cfg.max_len:
        raise ValueError(
            f"prompt ({p_len} tokens) + gen_length ({gen_length}) = {p_len + gen_length} exceeds "
            f"the model's context of {cfg.max_len}; allowed prompt length here: <= {cfg.max_len - gen_length}"
        )
    device = next(model.parameters()).device
    canvas = torch.full((len(prompts), p_len + gen_length), cfg.mask_id, dtype=torch.long, device=device)
    for row, e in enumerate(encoded):
        canvas[row, : p_len - len(e)] = cfg.pad_id
        canvas[row, p_len - len(e) : p_len] = torch.tensor(e, device=device)
    return canvas, p_len


def default_block_length(model: TextLM) -> int:
    """The model's own block for block-diffusion models, else 16 (four blocks on the default canvas of 64)."""
    return model.config.block_size or 16


def default_cache(model: TextLM) -> str:
    """The exact block cache for block-diffusion models, the dual cache for bidirectional ones."""
    return "block" if model.config.block_size else "dual"


def generate(
    model: TextLM,
    prompts: list[str] | str,
    gen_length: int = 64,
    block_length: int | None = None,
    decode: str = "threshold:tau=0.9",
    cache: str | None = None,
    early_stop: bool = True,
    callback: Callable[[torch.Tensor, dict], None] | None = None,
) -> TextResult:
    """Complete a batch of prompts with block-wise masked-diffusion decoding.

    decode: a rule spec, "lowconf:tokens=1" (LLaDA baseline), "threshold:tau=0.9" or "factor:f=1".
    cache: a cache spec, "none", "prefix", "dual", "dual:every=4", "dual:drift=0.05", "dual:delay", "block";
    default: "block" for a block-lm, "dual" for a masked-lm. block_length: default `default_block_length`.
    callback(canvas, info) is called after every step (the canvas is the live (B, S) tensor).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    block_length = block_length or default_block_length(model)
    # Parsed and checked once, before any work; decode takes the objects as they are.
    rule, mode = parse_rule(decode), parse_cache(default_cache(model) if cache is None else cache)
    mode.check_model(model)
    check_blocks(model, gen_length, block_length)
    canvas, gen_start = make_canvas(model, list(prompts), gen_length)
    t0 = time.perf_counter()
    stats = decode_canvas(model, canvas, gen_start, block_length, rule, mode, early_stop, callback)
    seconds = time.perf_counter() - t0
    gen = canvas[:, gen_start:].cpu()
    texts = [model.tokenizer.decode(row) for row in gen]
    eot = gen == model.config.eot_id
    tokens = int(torch.where(eot.any(1), eot.float().argmax(1) + 1, gen.shape[1]).sum())
    return TextResult(texts, stats, seconds, tokens, canvas)
