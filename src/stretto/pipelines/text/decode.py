"""Block-wise decoding of masked diffusion LMs: the block iterator and the driver that ties the pieces.

The pieces (the dInfer split): `block_spans` walks the generation region block by block (semi-autoregressive,
LLaDA); a rule (`rules`) picks the positions to commit each step; a cache mode (`caches`, with its `refresh`
options) decides which slots each step runs against the KV cache; `ModelCalls` (`model_calls`) runs and counts
the model calls; SparseD's pattern (`models.sparse_attention`), when on, is stepped here with the loop and read
by the model's attention. `decode_program` is the loop, written as a generator that yields each model call it needs, so
the same loop drives a static batch (`decode`: every call run at once on all rows) and each row of a continuous
batch (`continuous`: calls of rows at different blocks batched together). Counted: model calls (nfe), steps,
token positions evaluated, refreshes. Temperature 0 throughout: x0 = argmax, confidence = softmax probability
of x0. A committed token is never re-masked. Progress guard: a non-finite confidence or a step that commits
nothing stops decoding with an error naming the step.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import torch

from stretto.models.sparse_attention import SparseD
from stretto.models.text_lm import TextLM
from stretto.pipelines.text.caches import CacheMode
from stretto.pipelines.text.model_calls import Call, DecodeStats, ModelCalls, Reply, Slots
from stretto.pipelines.text.rules import Rule

Program = Generator[Call, Reply, None]  # a decoding program: asks for model calls, fills its canvas rows


def block_spans(gen_start: int, gen_length: int, block_length: int) -> Iterator[tuple[int, int]]:
    """Slot ranges [start, end) of the blocks of the generation region, left to right."""
    if block_length < 1 or gen_length < 1:
        raise ValueError(f"gen_length and block_length must be >= 1, got {gen_length} and {block_length}")
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    for s in range(gen_start, gen_start + gen_length, block_length):
        yield s, s + block_length


def check_blocks(model: TextLM, gen_length: int, block_length: int) -> None:
    """Raise ValueError unless blocks of block_length tile gen_length and fit the model's own blocks."""
    if block_length < 1 or gen_length < 1:
        raise ValueError(f"gen_length and block_length must be >= 1, got {gen_length} and {block_length}")
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    model_block = model.config.block_size
    if model_block and model_block % block_length:
        raise ValueError(f"block_length ({block_length}) must divide the model's block size ({model_block})")
    if model_block and gen_length % model_block:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of the model's block size ({model_block})")


def finish_at_eot(canvas: torch.Tensor, gen_start: int, mask_id: int, eot_id: int, eager: bool = False) -> torch.Tensor:
    """Early stop: a row whose first end-of-text has no mask before it is done; the rest becomes end-of-text.

    eager (Learn2PD's End-of-Text Prediction): the masks after a row's first end-of-text become end-of-text at
    once, even while masks before it remain, so the blocks after it are never decoded. The answer is cut at its
    first end-of-text anyway; what changes is only what the earlier masks see. Returns the bool (B,) of rows
    that are done.
    """
    g = canvas[:, gen_start:]
    is_eot = g == eot_id
    idx = torch.arange(g.shape[1])
    first = torch.where(is_eot.any(1), is_eot.float().argmax(1), g.shape[1])
    done = is_eot.any(1) & ~((g == mask_id) & (idx[None] < first[:, None])).any(1)
    fill = (is_eot.any(1) if eager else done)[:, None] & (idx[None] > first[:, None]) & (g == mask_id)
    g[fill] = eot_id
    return done


def check_progress(conf: torch.Tensor, is_masked: torch.Tensor, commit: torch.Tensor, where: str) -> None:
    """The decode loop's progress guard: raise at a non-finite confidence or a step that commits nothing."""
    if not (torch.isfinite(conf) | ~is_masked).all():  # the model's fault: the CLI prints it as one line
        raise FloatingPointError(f"decoding stopped at {where}: the model gave a non-finite confidence (NaN logits)")
    if not (commit.any(1) | ~is_masked.any(1)).all():
        raise RuntimeError(f"decoding stopped at {where}: the rule committed no token for a row with masks left")


def decode_program(
    calls: Slots,
    block_length: int,
    rule: Rule,
    cache: CacheMode,
    banned: list[int],
    eot_id: int,
    early_stop: bool = True,
    callback: Callable[[torch.Tensor, dict], None] | None = None,
) -> Program:
    """Block-wise decoding of the rows of `calls.canvas` in place: the loop, asking for its model calls.

    A generator: it yields a `Call` whenever the cache mode needs the model and is sent back the logits, so the
    same program runs a static batch (`decode`) or one row of a continuous batch (`continuous`). banned: token
    ids never committed.
    """
    canvas, gen_start, mask_id, stats = calls.canvas, calls.gen_start, calls.mask_id, calls.stats
    cache.start()
    for bs, be in block_spans(gen_start, calls.end - gen_start, block_length):
        if early_stop and not (canvas[:, gen_start:] == mask_id).any():
            break
        stats.blocks += 1
        rule.start_block((canvas[:, bs:be] == mask_id).sum(1), be - bs)
        if calls.sparse is not None:
            calls.sparse.start_block()
        yield from cache.start_block(calls, bs, be)
        step = 0
        while (is_masked := canvas[:, bs:be] == mask_id).any():
            if calls.sparse is not None:
                calls.sparse.start_step()
            logits = (yield from cache.logits(calls, bs, be, step)).float()
            logits[..., banned] = float("-inf")  # an untrained model may favour <mask>
            probs = logits.softmax(-1)
            conf, x0 = probs.max(-1)
            conf = conf.masked_fill(~is_masked, float("-inf"))
            commit = rule.choose(conf, step, probs, x0) & is_masked
            check_progress(conf, is_masked, commit, f"step {step} of the block at slots [{bs}, {be})")
            block = canvas[:, bs:be]
            block[commit] = x0[commit]
            step += 1
            stats.steps += 1
            if early_stop:
                finish_at_eot(canvas, gen_start, mask_id, eot_id, eager=rule.ends_at_eot)
            if callback is not None:
                callback(canvas, {"block": (bs, be), "step": step, "committed": commit, "nfe": stats.nfe})
        yield from cache.end_block(calls, bs, be)


def banned_tokens(model: TextLM) -> list[int]:
    """Never an answer: the mask, and padding unless it is also end-of-text (LLaDA pads with its end-of-text)."""
    cfg = model.config
    return [cfg.mask_id] + [cfg.pad_id] * (cfg.pad_id != cfg.eot_id)


@torch.no_grad()
def decode(
    model: TextLM,
    canvas: torch.Tensor,
    gen_start: int,
    block_length: int,
    rule: Rule,
    cache: CacheMode,
    early_stop: bool = True,
    callback: Callable[[torch.Tensor, dict], None] | None = None,
    sparse: SparseD | None = None,
) -> DecodeStats:
    """Fill the masked slots [gen_start, end) of `canvas` (B, S) in place (prompts left-padded with <pad>).

    rule and cache are parsed objects already checked against the model and the block layout (`generate`
    does both, once); the cache mode's state starts fresh here. The rows step together (a static batch): each
    call the program asks for is run at once on every row. sparse: SparseD's settings (None: dense attention);
    its pattern is this generation's.
    """
    calls = ModelCalls(model, canvas, gen_start, with_cache=cache.uses_kv, sparse=sparse)
    eot_id = model.config.eot_id
    program = decode_program(calls, block_length, rule, cache, banned_tokens(model), eot_id, early_stop, callback)
    reply = None
    while True:
        try:
            call = program.send(reply)
        except StopIteration:
            return calls.stats
        reply = calls(call.lo, call.hi, call.probe_layer)
