"""Text generation with masked diffusion LMs: `stretto.pipelines.text.generate(model, prompts, ...)`.

The pieces, one file each: `decode` (the block iterator and the driver), `rules` (which positions a step
commits), `learned` (Learn2PD's rule: a learned filter), `caches` (KV cache modes: none, prefix, dual, block),
`refresh` (when a prefix / dual cache recomputes stale K/V), `model_calls` (the counted model calls and the
generation's KV cache), `continuous` (continuous batching: rows leave as they finish, waiting prompts take their
place), `result` (`TextResult`). SparseD's sparse attention lives with the models (`models.sparse_attention`).
`generate` parses the rule, cache and sparse-attention specs once, checks them and the block layout against the
model, builds the canvas and hands the parsed objects to `decode`; `generate_stream` hands them to a
`ContinuousBatch`, which yields each prompt's result as it finishes (what a server calls).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from stretto.models.sparse_attention import parse_sparse
from stretto.models.text_lm import TextLM
from stretto.pipelines.text import learned  # noqa: F401  (registers Learn2PD's "learned" rule with parse_rule)
from stretto.pipelines.text.caches import CacheMode, parse_cache
from stretto.pipelines.text.continuous import ContinuousBatch
from stretto.pipelines.text.decode import check_blocks
from stretto.pipelines.text.decode import decode as decode_canvas
from stretto.pipelines.text.result import TextResult, answer_tokens
from stretto.pipelines.text.rules import Rule, parse_rule

DEFAULT_GEN_LENGTH = 64  # answer slots when neither the caller nor the model's training record says

__all__ = ["TextResult", "default_block_length", "default_cache", "generate", "generate_stream", "make_canvas"]


def encode_prompts(model: TextLM, prompts: list[str], gen_length: int) -> list[list[int]]:
    """Token ids of each prompt; checks the vocabulary and that the longest prompt + gen_length fits the context."""
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
            f"the model's context of {cfg.max_len}; allowed with this prompt: gen_length <= {cfg.max_len - p_len}"
        )
    return encoded


def make_canvas(model: TextLM, prompts: list[str], gen_length: int) -> tuple[torch.Tensor, int]:
    """Left-padded prompts followed by gen_length masks; checks the vocabulary and the context length."""
    encoded = encode_prompts(model, prompts, gen_length)
    cfg, p_len = model.config, max(len(e) for e in encoded)
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


def parse_settings(
    model: TextLM, gen_length: int, block_length: int | None, decode: str, cache: str | None
) -> tuple[int, Rule, CacheMode]:
    """The block length, rule and cache mode, parsed and checked against the model once, before any work."""
    block_length = default_block_length(model) if block_length is None else block_length  # 0 is an error, not "default"
    rule, mode = parse_rule(decode), parse_cache(default_cache(model) if cache is None else cache)
    mode.check_model(model)
    check_blocks(model, gen_length, block_length)
    return block_length, rule, mode


def generate(
    model: TextLM,
    prompts: list[str] | str,
    gen_length: int = DEFAULT_GEN_LENGTH,
    block_length: int | None = None,
    decode: str = "threshold:tau=0.9",
    cache: str | None = None,
    early_stop: bool = True,
    callback: Callable[[torch.Tensor, dict], None] | None = None,
    batch_size: int | None = None,
    sparse: str | None = None,
) -> TextResult:
    """Complete a batch of prompts with block-wise masked-diffusion decoding.

    decode: a rule spec, "lowconf:tokens=1" (LLaDA baseline), "threshold:tau=0.9", "factor:f=1" or
    "learned:tau=0.9[,eot]" (Learn2PD's learned filter).
    cache: a cache spec, "none", "prefix", "dual", "dual:every=4", "dual:drift=0.05", "dual:delay", "block";
    default: "block" for a block-lm, "dual" for a masked-lm. block_length: default `default_block_length`.
    callback(canvas, info) is called after every step (the canvas is the live (B, S) tensor).
    batch_size: decode by continuous batching (`generate_stream`), this many rows at a time, and return the
    texts in prompt order. Each row then decodes as it would alone, which is what one static batch gives too,
    except under a drift refresh (its test is taken over the batch): that combination is refused.
    sparse: "none" (default) or a SparseD spec, "sparsed:keep=0.3[,dense=1,qblock=8,per_block]": head-specific
    sparse attention selected at an early step (`stretto.models.sparse_attention`); static batches only.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    block_length, rule, mode = parse_settings(model, gen_length, block_length, decode, cache)
    sparse_attention = parse_sparse(sparse)
    if batch_size is not None:
        if callback is not None or not mode.rows_independent or sparse_attention is not None:
            why = (
                "a callback sees one static canvas" if callback is not None
                else f"cache {mode} tests the batch" if not mode.rows_independent
                else f"sparse attention {sparse_attention} keeps one pattern for the static batch"
            )  # fmt: skip
            raise ValueError(f"batch_size (continuous batching) would not give generate's tokens here: {why}")
        return _collect(model, list(prompts), gen_length, block_length, rule, mode, early_stop, batch_size)
    canvas, gen_start = make_canvas(model, list(prompts), gen_length)
    t0 = time.perf_counter()
    stats = decode_canvas(model, canvas, gen_start, block_length, rule, mode, early_stop, callback, sparse_attention)
    seconds = time.perf_counter() - t0
    gen = canvas[:, gen_start:].cpu()
    texts = [model.tokenizer.decode(row) for row in gen]
    return TextResult(texts, stats, seconds, answer_tokens(gen, model.config.eot_id), canvas)


def generate_stream(
    model: TextLM,
    prompts: list[str],
    gen_length: int = DEFAULT_GEN_LENGTH,
    block_length: int | None = None,
    decode: str = "threshold:tau=0.9",
    cache: str | None = None,
    early_stop: bool = True,
    batch_size: int = 16,
) -> ContinuousBatch:
    """Continuous batching (dInfer; SGLang): iterate to get (index, TextResult) for each prompt as it finishes.

    batch_size rows decode at a time; a finished row leaves and the next prompt takes its place, each row at its
    own block and step. Every row decodes as it would alone (batch 1). The settings are those of `generate`,
    checked here, before the first result is asked for; the returned object's `stats` sums up the run.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    block_length, rule, mode = parse_settings(model, gen_length, block_length, decode, cache)
    encoded = encode_prompts(model, list(prompts), gen_length)
    return ContinuousBatch(model, encoded, gen_length, block_length, rule, mode, batch_size, early_stop)


def _collect(model, prompts, gen_length, block_length, rule, mode, early_stop, batch_size) -> TextResult:
    """Run a continuous batch to the end; one TextResult in prompt order, the canvas as `make_canvas` lays it out."""
    encoded = encode_prompts(model, prompts, gen_length)
    run = ContinuousBatch(model, encoded, gen_length, block_length, rule, mode, batch_size, early_stop)
    t0 = time.perf_counter()
    results = dict(iter(run))
    seconds = time.perf_counter() - t0
    width = run.gen_start + gen_length
    canvas = torch.full((len(prompts), width), model.config.pad_id, dtype=torch.long, device=run.lanes.canvas.device)
    for i, r in results.items():
        canvas[i, width - r.canvas.shape[1] :] = r.canvas[0]
    texts = [results[i].texts[0] for i in range(len(prompts))]
    return TextResult(texts, run.stats, seconds, sum(r.tokens for r in results.values()), canvas)
