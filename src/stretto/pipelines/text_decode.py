"""Block-wise decoding of masked diffusion LMs: the block iterator and the driver that ties the pieces.

The pieces (the dInfer split): `block_spans` walks the generation region block by block (semi-autoregressive,
LLaDA); a rule (`text_rules`) picks the positions to commit each step; the `KVCache` (`kv_cache`) holds K/V;
a `RefreshPolicy` (`text_refresh`) says when stale K/V is recomputed. `decode` runs them and counts
everything: model calls (nfe), steps, token positions evaluated, refreshes.
Temperature 0 throughout: x0 = argmax, confidence = softmax probability of x0. A committed token is never
re-masked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from stretto.models.text_lm import TextLM, gen_blocks, left_pad_positions
from stretto.pipelines.text_caches import CacheSpec, RefreshPolicy, parse_cache
from stretto.pipelines.text_rules import parse_rule


def block_spans(gen_start: int, gen_length: int, block_length: int) -> Iterator[tuple[int, int]]:
    """Slot ranges [start, end) of the blocks of the generation region, left to right."""
    if block_length < 1 or gen_length < 1:
        raise ValueError(f"gen_length and block_length must be >= 1, got {gen_length} and {block_length}")
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    for s in range(gen_start, gen_start + gen_length, block_length):
        yield s, s + block_length


@dataclass
class DecodeStats:
    nfe: int = 0  # model calls (one call runs the whole batch)
    steps: int = 0  # decoding steps (commit rounds)
    positions: int = 0  # token positions run through the model, per row, summed over calls
    refreshes: int = 0  # full passes made inside a block by a refresh policy
    blocks: int = 0  # blocks decoded (fewer than gen_length / block_length after an early stop)
    cache_bytes: int = 0  # bytes allocated by the KV cache

    def to_dict(self) -> dict:
        return asdict(self)


def finish_at_eot(canvas: torch.Tensor, gen_start: int, mask_id: int, eot_id: int) -> torch.Tensor:
    """Early stop: a row whose first end-of-text has no mask before it is done; the rest becomes end-of-text.

    Returns the bool (B,) of rows that are done.
    """
    g = canvas[:, gen_start:]
    is_eot = g == eot_id
    idx = torch.arange(g.shape[1])
    first = torch.where(is_eot.any(1), is_eot.float().argmax(1), g.shape[1])
    done = is_eot.any(1) & ~((g == mask_id) & (idx[None] < first[:, None])).any(1)
    fill = done[:, None] & (idx[None] > first[:, None]) & (g == mask_id)
    g[fill] = eot_id
    return done


@torch.no_grad()
def decode(
    model: TextLM,
    canvas: torch.Tensor,
    gen_start: int,
    block_length: int,
    rule: str = "threshold:tau=0.9",
    cache: str | CacheSpec = "none",
    early_stop: bool = True,
    callback: Callable[[torch.Tensor, dict], None] | None = None,
) -> DecodeStats:
    """Fill the masked slots [gen_start, end) of `canvas` (B, S) in place (prompts left-padded with <pad>)."""
    cfg = model.config
    rule, spec = parse_rule(rule), parse_cache(cache)
    spec.check_model(model.kind, cfg.n_layer)
    b, s = canvas.shape
    spans = list(block_spans(gen_start, s - gen_start, block_length))
    model_block = cfg.block_size
    if model_block and model_block % block_length:
        raise ValueError(f"block_length ({block_length}) must divide the model's block size ({model_block})")
    if model_block and (s - gen_start) % model_block:
        raise ValueError(f"gen_length ({s - gen_start}) must be a multiple of the model's block size ({model_block})")
    positions = left_pad_positions(canvas, cfg.pad_id)
    blocks = gen_blocks(gen_start, s, model_block, canvas.device)
    stats = DecodeStats()
    kv = None if spec.mode == "none" else model.new_cache(b, s)
    policy = RefreshPolicy(spec, cfg.n_layer)
    if kv is not None:
        policy.prepare(kv)
        stats.cache_bytes = kv.nbytes

    def run(lo: int, hi: int, use_cache: bool = True) -> torch.Tensor:
        stats.nfe += 1
        stats.positions += hi - lo
        return model(
            canvas[:, lo:hi], positions[:, lo:hi], blocks[lo:hi],
            kv_cache=kv if use_cache else None, start=lo, gen_start=gen_start,
        )  # fmt: skip

    prev_start, pending = None, None
    for bs, be in spans:
        if early_stop and not (canvas[:, gen_start:] == cfg.mask_id).any():
            break
        stats.blocks += 1
        rule.start_block((canvas[:, bs:be] == cfg.mask_id).sum(1), be - bs)
        policy.start_block()
        # Block-causal models: the window is the whole model block around the (sub-)block being decoded.
        win_lo = gen_start + (bs - gen_start) // model_block * model_block if model_block else bs
        win_hi = win_lo + model_block if model_block else be
        step = 0
        while (is_masked := canvas[:, bs:be] == cfg.mask_id).any():
            if spec.mode == "none":
                logits = run(0, s, use_cache=False)[:, bs:be]
            elif spec.mode == "block":
                if kv.length < gen_start:  # prefill: the prompt is block 0, committed once
                    run(0, gen_start)
                    kv.commit(0, gen_start)
                lo = pending[0] if pending else win_lo  # fuse: the finished block rides along, exactly
                logits = run(lo, win_hi)[:, bs - lo : be - lo]
                if pending:
                    kv.commit(*pending)
                    pending = None
            elif policy.periodic(step):
                lo = prev_start if (step == 0 and spec.delay and prev_start is not None) else 0
                logits = run(lo, s)[:, bs - lo : be - lo]
                stats.refreshes += step > 0
            else:
                hi = s if spec.mode == "prefix" else be
                logits = run(bs, hi)[:, : be - bs]
                if policy.drifted(kv):
                    logits = run(0, s)[:, bs:be]
                    stats.refreshes += 1
            if kv is not None:
                policy.observe(kv, bs, be, ~is_masked)
            logits = logits.float()
            # Only characters and end-of-text are answers (an untrained model may favour <mask>).
            logits[..., [cfg.mask_id, cfg.pad_id]] = float("-inf")
            probs = logits.softmax(-1)
            conf, x0 = probs.max(-1)
            conf = conf.masked_fill(~is_masked, float("-inf"))
            commit = rule.select(conf, step) & is_masked
            block = canvas[:, bs:be]
            block[commit] = x0[commit]
            step += 1
            stats.steps += 1
            if early_stop:
                finish_at_eot(canvas, gen_start, cfg.mask_id, cfg.eot_id)
            if callback is not None:
                callback(canvas, {"block": (bs, be), "step": step, "committed": commit, "nfe": stats.nfe})
        if spec.mode == "block" and be == win_hi and be < s:  # the last block is never read again
            if spec.fuse:  # Fast-dLLM v2: write the clean K/V in the next block's first pass
                pending = (win_lo, win_hi)
            else:  # clean commit pass: the finished block's K/V, computed from its final tokens
                run(win_lo, win_hi)
                kv.commit(win_lo, win_hi)
        prev_start = bs
    return stats
