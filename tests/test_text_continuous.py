"""Continuous batching: rows leave as they finish, each row decodes as it would alone (tiny models, seconds)."""

from __future__ import annotations

import pytest
import torch

import stretto
from stretto.data import text_tasks
from stretto.models.kv_cache import CacheRows, KVCache
from stretto.models.text_lm import BlockDiffusionLM, MaskedDiffusionLM, TextLMConfig
from stretto.pipelines import text
from stretto.pipelines.text.caches import parse_cache
from stretto.pipelines.text.decode import decode
from stretto.pipelines.text.rules import Threshold

torch.set_num_threads(1)
PROMPTS = ["12+345=", "copy:abcdef=", "rev:xy=", "dup:abcdefghij=", "7+8=", "copy:zz="]  # lengths 4 to 15


def tiny(cls=MaskedDiffusionLM, block_size=0):
    torch.manual_seed(0)
    cfg = TextLMConfig(n_layer=2, n_head=2, n_embd=32, max_len=96, block_size=block_size)
    return cls(cfg).double().eval()  # float64: batched and alone runs must not differ by rounding


MASKED = ["none", "prefix", "dual", "dual:every=2,delay", "prefix:delay", "dual:drift=0.05"]
BLOCK = ["none", "block", "block:fuse"]
RULES = ["lowconf:tokens=1", "threshold:tau=0.5", "factor:f=2"]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind,cache", [("masked", c) for c in MASKED] + [("block", c) for c in BLOCK])
def test_every_prompt_decodes_as_it_would_alone(kind, cache, rule):
    m = tiny() if kind == "masked" else tiny(BlockDiffusionLM, 8)
    alone = [text.generate(m, [p], 24, 8, decode=rule, cache=cache) for p in PROMPTS]
    run = text.generate_stream(m, PROMPTS, 24, 8, decode=rule, cache=cache, batch_size=4)
    got = list(run)
    assert sorted(i for i, _ in got) == list(range(len(PROMPTS)))  # every prompt once, in finishing order
    for i, res in got:
        assert torch.equal(res.canvas, alone[i].canvas)  # its prompt and its tokens, without the lanes' padding
        assert res.texts == alone[i].texts and res.tokens == alone[i].tokens
        counts, ref = res.stats, alone[i].stats  # the same calls, steps, blocks and refreshes as alone
        assert (counts.nfe, counts.steps, counts.blocks, counts.refreshes) == (ref.nfe, ref.steps, ref.blocks,
                                                                             ref.refreshes)  # fmt: skip
    assert run.stats.nfe < sum(r.stats.nfe for r in alone)  # calls of rows at different blocks were shared


def spy_calls(m) -> list[dict]:
    """Record the keyword arguments and the ids of every model call."""
    seen, real = [], m.forward

    def spy(ids, positions=None, blocks=None, **kw):
        seen.append(kw | {"ids": ids})
        return real(ids, positions, blocks, **kw)

    m.forward = spy
    return seen


def test_finished_rows_leave_and_waiting_prompts_join_rows_still_decoding():
    m = tiny()
    seen = spy_calls(m)
    run = text.generate_stream(m, PROMPTS, 24, 8, decode="threshold:tau=0.5", cache="none", batch_size=3)
    order = [i for i, _ in run]
    width = run.gen_start
    padded = [torch.tensor([m.config.pad_id] * (width - len(e)) + e) for e in run.encoded]
    in_call = [{i for row in c["ids"][:, :width] for i, p in enumerate(padded) if torch.equal(row, p)} for c in seen]
    assert all(len(rows) == len(c["ids"]) for rows, c in zip(in_call, seen, strict=True))
    assert any(rows & {0, 1, 2} and rows & {3, 4, 5} for rows in in_call)  # a refilled lane beside a first-wave row
    assert max(len(rows) for rows in in_call) == 3 and order[0] in {0, 1, 2}


def test_rows_at_different_blocks_run_in_one_call_at_their_own_starts():
    m = tiny()
    seen = spy_calls(m)
    run = text.generate_stream(m, PROMPTS, 24, 8, decode="threshold:tau=0.5", cache="dual", batch_size=3)
    list(run)
    starts = [c["start"] for c in seen]
    assert any(isinstance(s, torch.Tensor) and len(set(s.tolist())) > 1 for s in starts)
    assert run.stats.nfe == len(seen) and run.stats.steps <= run.stats.nfe


@pytest.mark.parametrize("cache", ["none", "dual", "prefix:every=2"])
def test_generate_with_a_batch_size_gives_the_static_batch_tokens(cache):
    m = tiny()
    static = text.generate(m, PROMPTS, 24, 8, decode="threshold:tau=0.5", cache=cache)
    lanes = text.generate(m, PROMPTS, 24, 8, decode="threshold:tau=0.5", cache=cache, batch_size=2)
    assert torch.equal(lanes.canvas, static.canvas) and lanes.texts == static.texts
    assert (
        lanes.tokens == static.tokens
        and lanes.stats.nfe > 0
        and lanes.stats.cache_bytes == (cache != "none") * (lanes.stats.cache_bytes)
    )


def test_continuous_settings_are_checked_before_any_work():
    m = tiny()
    with pytest.raises(ValueError, match="tests the batch"):  # drift's test is over the static batch
        text.generate(m, PROMPTS, 24, 8, cache="dual:drift=0.05", batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        text.generate_stream(m, PROMPTS, 24, 8, batch_size=0)
    with pytest.raises(ValueError, match="multiple of block_length"):
        text.generate_stream(m, PROMPTS, 20, 8)
    with pytest.raises(ValueError, match="does not apply to a masked-lm"):
        text.generate_stream(m, PROMPTS, 24, 8, cache="block")


class NaNLM(MaskedDiffusionLM):
    """A model whose logits are NaN: decoding must stop, not loop."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        return out * float("nan")


def test_a_model_that_gives_nan_stops_with_the_step_named():
    torch.manual_seed(0)
    m = NaNLM(TextLMConfig(n_layer=1, n_head=2, n_embd=32, max_len=96)).eval()
    for batch_size in (None, 2):
        stopped = r"step 0 of the block at slots \[\d+, \d+\): .*non-finite confidence"
        with pytest.raises(FloatingPointError, match=stopped):
            text.generate(m, PROMPTS[:3], 16, 8, cache="dual", batch_size=batch_size)


class Stalls(Threshold):
    """A broken rule: commits nothing. Decoding must stop, not loop."""

    def select(self, conf, step):
        return torch.zeros_like(conf, dtype=torch.bool)


def test_a_rule_that_commits_nothing_stops_with_the_step_named():
    m = tiny()
    canvas, gen_start = text.make_canvas(m, PROMPTS[:2], 16)
    stopped = rf"^decoding stopped at step 0 of the block at slots \[{gen_start}, {gen_start + 8}\): .* no token"
    with pytest.raises(RuntimeError, match=stopped):
        decode(m, canvas, gen_start, 8, Stalls(), parse_cache("dual"))


def test_kv_cache_writes_and_reads_rows_at_their_own_starts():
    c = KVCache(layers=1, batch=3, heads=1, head_dim=2, capacity=8)
    rows, starts = torch.tensor([2, 0]), torch.tensor([5, 1])
    keys = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2) + 1  # (n, H, T, D)
    c.write_meta(starts, torch.tensor([[7, 8, 9], [1, 2, 3]]), torch.ones(2, 3, dtype=torch.bool),
                 torch.tensor([[1, 1, 2], [0, 0, 1]]), rows=rows)  # fmt: skip
    c.write(0, starts, keys, -keys, rows=rows)
    assert c.length == 8 and torch.equal(c.k[0, 2, 0, 5:8], keys[0, 0]) and torch.equal(c.k[0, 0, 0, 1:4], keys[1, 0])
    assert not c.k[0, 1].any() and c.valid[2, 5:].all() and not c.valid[2, :5].any()
    assert c.positions[0, 1:4].tolist() == [1, 2, 3] and c.blocks[5:8].tolist() == [1, 1, 2]
    view = c.rows(rows)
    assert isinstance(view, CacheRows) and c.rows(None) is c
    k, v = view.read(0)
    assert k.shape == (2, 1, 8, 2) and torch.equal(k[0, 0, 5:], keys[0, 0]) and torch.equal(v[1, 0, 1:4], -keys[1, 0])
    fresh = torch.full((2, 1, 1, 2), 99.0)  # laid over each row's own slot for this read only
    k, _ = view.read(0, torch.tensor([6, 2]), fresh, fresh)
    assert k[0, 0, 6].tolist() == [99, 99] and k[1, 0, 2].tolist() == [99, 99] and c.k[0, 2, 0, 6, 0] != 99
    pos, valid, _ = view.meta()
    assert pos[0, 5:].tolist() == [7, 8, 9] and valid.shape == (2, 8)
    c.clear_rows(torch.tensor([2]))
    assert not c.valid[2].any() and c.valid[0, 1:4].all()
    with pytest.raises(ValueError, match="outside the cache capacity"):
        c.write(0, torch.tensor([6, 0]), keys, keys, rows=rows)


def test_shipped_models_decode_each_prompt_as_alone_under_continuous_batching():
    prompts = [e.prompt for e in text_tasks.held_out(1)]
    for name, caches in (("text-masked", ["none", "dual"]), ("text-block", ["none", "block:fuse"])):
        m = stretto.load(name)
        for cache in caches:
            alone = [text.generate(m, [p], decode="threshold:tau=0.7", cache=cache).canvas for p in prompts]
            run = stretto.generate_text_stream(m, prompts, decode="threshold:tau=0.7", cache=cache, batch_size=4)
            for i, res in run:
                assert torch.equal(res.canvas, alone[i]), (name, cache, prompts[i])


def test_cli_text_decodes_by_continuous_batching(capsys):
    from stretto.cli import main

    main(["text", "dup:abc=", "rev:xy=", "copy:hello=", "--batch-size", "2", "--decode", "threshold:tau=0.7",
          "--model", "text-masked"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    alone = [text.generate(stretto.load("text-masked"), [p], decode="threshold:tau=0.7").texts[0] for p in
             ("dup:abc=", "rev:xy=", "copy:hello=")]  # fmt: skip
    assert lines == [f"{p}{a}" for p, a in zip(("dup:abc=", "rev:xy=", "copy:hello="), alone, strict=True)]
