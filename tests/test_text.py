"""Text tasks, the KV cache manager, decoding rules and caches on tiny random models (seconds)."""

from __future__ import annotations

import pytest
import torch

from stretto.data import text_tasks
from stretto.models.kv_cache import KVCache
from stretto.models.text_lm import (
    BlockDiffusionLM,
    MaskedDiffusionLM,
    TextLMConfig,
    gen_blocks,
    left_pad_positions,
)
from stretto.pipelines import text
from stretto.pipelines.text_caches import parse_cache
from stretto.pipelines.text_decode import block_spans, finish_at_eot
from stretto.pipelines.text_rules import Factor, LowConfidence, Threshold, parse_rule
from stretto.train.text import (
    TextTrainConfig,
    block_diffusion_loss,
    block_diffusion_mask,
    masked_diffusion_loss,
)

torch.set_num_threads(1)
PROMPTS = ["12+345=", "copy:abcdef="]
MASK = text_tasks.TOKENIZER.mask_id


def tiny(cls=MaskedDiffusionLM, block_size=0, seed=0):
    torch.manual_seed(seed)
    cfg = TextLMConfig(n_layer=2, n_head=2, n_embd=32, max_len=96, block_size=block_size)
    return cls(cfg).double().eval()  # float64: cache vs no-cache comparisons must not hinge on rounding


# -- tasks and tokenizer ---------------------------------------------------------------------------
def test_tasks_are_deterministic_correct_and_split():
    for i in range(12):
        e = text_tasks.make_example(0, i)
        assert e == text_tasks.make_example(0, i)
        assert not text_tasks.is_test(e.prompt)
        assert len(e.answer) <= text_tasks.MAX_ANSWER and len(e.prompt) <= text_tasks.MAX_PROMPT
    test = text_tasks.held_out(2)
    assert all(text_tasks.is_test(e.prompt) for e in test)
    assert {e.task for e in test} == set(text_tasks.TASKS)
    add = next(e for e in test if e.task == "add")
    a, b = add.prompt[:-1].split("+")
    assert int(add.answer) == int(a) + int(b)
    ids, p = text_tasks.make_batch(0, 0, 4, gen_length=64)
    assert ids.shape[1] == p + 64 and (ids[:, -1] == text_tasks.TOKENIZER.eot_id).all()


def test_tokenizer_roundtrip_and_bad_characters():
    tok = text_tasks.TOKENIZER
    assert tok.decode(tok.encode("rev:abc=") + [tok.eot_id, 5]) == "rev:abc="
    with pytest.raises(ValueError, match=r"\['A', '#'\]"):
        tok.encode("A+1=#")


# -- KV cache manager ------------------------------------------------------------------------------
def test_kv_cache_write_read_override_evict():
    c = KVCache(layers=1, batch=1, heads=1, head_dim=2, capacity=6, sink_slots=1)
    assert c.nbytes > 0 and c.used_bytes == 0
    for start in range(0, 6, 2):
        c.write_meta(start, torch.tensor([[start, start + 1]]), torch.ones(1, 2, dtype=torch.bool), torch.zeros(2))
        c.write(0, start, torch.full((1, 1, 2, 2), float(start)), torch.zeros(1, 1, 2, 2))
    assert c.length == 6 and c.used_bytes == 2 * 6 * 2 * 4
    k, _ = c.read(0, 2, torch.full((1, 1, 2, 2), -1.0), torch.zeros(1, 1, 2, 2))
    assert k[0, 0, :, 0].tolist() == [0, 0, -1, -1, 4, 4] and c.k[0, 0, 0, 2, 0] == 2  # override is not stored
    with pytest.raises(ValueError, match="sink"):
        c.evict(0, 2)
    nxt = c.make_room(2)  # rolling window: the oldest non-sink block [1, 3) goes
    assert nxt == 4 and c.k[0, 0, 0, :4, 0].tolist() == [0, 2, 4, 4] and c.positions[0, :4].tolist() == [0, 3, 4, 5]
    with pytest.raises(ValueError, match="capacity"):
        c.write(0, 5, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


# -- decoding rules --------------------------------------------------------------------------------
def test_rules_select():
    inf = float("-inf")
    conf = torch.tensor([[0.5, 0.95, inf, 0.92, 0.2]])
    assert Threshold(0.9).select(conf, 0).tolist() == [[False, True, False, True, False]]
    assert Threshold(0.99).select(conf, 0).tolist() == [[False, True, False, False, False]]  # at least one
    # factor f=1: n=1: 2*0.05=0.1<1, n=2: 3*0.08=0.24<1, n=3: 4*0.5=2 -> commit 2
    assert Factor(1.0).select(conf, 0).sum() == 2
    rule = LowConfidence(tokens=2)
    rule.start_block(torch.tensor([4]), 5)  # 3 steps for 4 masked tokens: 2, 1, 1
    assert rule.select(conf, 0).tolist() == [[False, True, False, True, False]]
    assert str(parse_rule("threshold:tau=0.5")) == "threshold:tau=0.5" and parse_rule("baseline").tokens == 1


@pytest.mark.parametrize(
    "spec, match",
    [
        ("threshold:tau=1.5", r"tau must be in \(0, 1\], got 1.5"),
        ("threshold:tau=0", r"tau must be in \(0, 1\]"),
        ("greedy", r"unknown decoding rule 'greedy'; allowed"),
        ("threshold:k=3", r"unknown option 'k'.*allowed: \['tau'\]"),
        ("factor:f=x", "not a valid float"),
    ],
)
def test_bad_rules(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_rule(spec)


def test_bad_caches_and_inputs():
    m, bm = tiny(), tiny(BlockDiffusionLM, 8)
    with pytest.raises(ValueError, match=r"unknown cache 'triple'; allowed"):
        parse_cache("triple")
    with pytest.raises(ValueError, match="does not apply to a masked-lm"):
        text.generate(m, PROMPTS, 16, 8, cache="block")
    with pytest.raises(ValueError, match="does not apply to a block-lm"):
        text.generate(bm, PROMPTS, 16, 8, cache="dual")
    with pytest.raises(ValueError, match=r"multiple of block_length"):
        text.generate(m, PROMPTS, 20, 8)
    with pytest.raises(ValueError, match=r"exceeds the model's context of 96"):
        text.generate(m, ["copy:" + "a" * 80 + "="], 32, 8)
    with pytest.raises(ValueError, match=r"not in the vocabulary: \['A', '\?'\]"):
        text.generate(m, ["A+1=?"], 16, 8)
    with pytest.raises(ValueError, match="must divide the model's block size"):
        text.generate(bm, PROMPTS, 32, 16, cache="block")
    with pytest.raises(ValueError, match="multiple of block_length"):
        list(block_spans(0, 10, 4))


# -- the driver ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["lowconf:tokens=1", "lowconf:tokens=3", "threshold:tau=0.05", "factor:f=3"])
@pytest.mark.parametrize("block_length", [8, 4])
def test_block_cache_is_exact(rule, block_length):
    m = tiny(BlockDiffusionLM, 8)
    ref = text.generate(m, PROMPTS, 16, block_length, decode=rule, cache="none", early_stop=False)
    got = text.generate(m, PROMPTS, 16, block_length, decode=rule, cache="block", early_stop=False)
    fused = text.generate(m, PROMPTS, 16, block_length, decode=rule, cache="block:fuse", early_stop=False)
    assert torch.equal(ref.canvas, got.canvas) and torch.equal(ref.canvas, fused.canvas)
    assert got.stats.positions < ref.stats.positions
    assert got.stats.nfe == ref.stats.nfe + 2 and fused.stats.nfe == ref.stats.nfe + 1  # prefill (+ 1 commit)


@pytest.mark.parametrize("cache", ["dual:every=1", "prefix:every=1"])
def test_refresh_every_step_equals_no_cache(cache):
    m = tiny()
    ref = text.generate(m, PROMPTS, 16, 8, decode="threshold:tau=0.1", cache="none", early_stop=False)
    got = text.generate(m, PROMPTS, 16, 8, decode="threshold:tau=0.1", cache=cache, early_stop=False)
    assert torch.equal(ref.canvas, got.canvas)


@pytest.mark.parametrize(
    "cache", ["none", "prefix", "dual", "dual:delay", "prefix:every=2", "dual:drift=0.001,layer=1"]
)
@pytest.mark.parametrize("rule", ["threshold:tau=0.9", "factor:f=1", "lowconf:tokens=2"])
def test_steps_commit_and_never_remask(rule, cache):
    m = tiny()
    seen = []
    res = text.generate(m, PROMPTS, 16, 8, decode=rule, cache=cache, callback=lambda c, info: seen.append(c.clone()))
    prev = None
    for canvas in seen:
        if prev is not None:
            was = prev != MASK
            assert torch.equal(canvas[was], prev[was])  # committed tokens never change
            assert (canvas != MASK).sum() > (prev != MASK).sum()  # at least one commit per step
        prev = canvas
    assert not (res.canvas == MASK).any() and res.stats.steps == len(seen)
    assert res.stats.nfe >= res.stats.steps and len(res.texts) == 2 and res.tokens_per_s > 0


def test_drift_refresh_triggers_by_bound():
    m = tiny()
    loose = text.generate(m, PROMPTS, 16, 8, decode="lowconf:tokens=1", cache="dual:drift=2")
    tight = text.generate(m, PROMPTS, 16, 8, decode="lowconf:tokens=1", cache="dual:drift=1e-9")
    assert loose.stats.refreshes == 0 and tight.stats.refreshes > 0
    assert tight.stats.nfe == tight.stats.steps + tight.stats.refreshes


def test_lowconf_commits_fixed_counts():
    counts = []
    text.generate(
        tiny(),
        PROMPTS,
        16,
        8,
        decode="lowconf:tokens=2",
        cache="none",
        early_stop=False,
        callback=lambda c, info: counts.append(int(info["committed"].sum(1)[0])),
    )
    assert counts == [2] * 8


def test_batch_equals_single_rows():
    m = tiny(BlockDiffusionLM, 8)
    both = text.generate(m, PROMPTS, 16, 8, decode="threshold:tau=0.5", cache="block", early_stop=False)
    for i, p in enumerate(PROMPTS):
        one = text.generate(m, [p], 16, 8, decode="threshold:tau=0.5", cache="block", early_stop=False)
        assert one.texts[0] == both.texts[i]


def test_early_stop_fills_after_end_of_text():
    eot = text_tasks.TOKENIZER.eot_id
    canvas = torch.tensor([[5, 6, eot, MASK, MASK], [5, MASK, eot, MASK, MASK]])
    done = finish_at_eot(canvas, 0, MASK, eot)
    assert done.tolist() == [True, False]
    assert canvas[0].tolist() == [5, 6, eot, eot, eot] and canvas[1, 3] == MASK


# -- training --------------------------------------------------------------------------------------
def test_block_training_pass_matches_decoding_view():
    """The vectorised [clean ; noisy] pass gives a noisy block the logits it gets at decoding time."""
    m = tiny(BlockDiffusionLM, 4)
    ids, p = text_tasks.make_batch(0, 0, 2, gen_length=32, tasks=("add",))
    ids = torch.cat([ids[:, : p + 4], ids[:, -4:]], 1)  # a short answer region: two blocks of 4
    noisy = ids[:, p:].clone()
    noisy[:, 5] = MASK  # second answer block (slots p+4..p+8) partly masked
    pos = left_pad_positions(ids, m.config.pad_id)
    both = m(
        torch.cat([ids, noisy], 1),
        torch.cat([pos, pos[:, p:]], 1),
        attn_mask=block_diffusion_mask(ids, p, 4, 0),
        gen_start=p,
        slots=torch.cat([torch.arange(ids.shape[1]), torch.arange(p, ids.shape[1])]),
    )
    view = torch.cat([ids[:, : p + 4], noisy[:, 4:]], 1)
    direct = m(view, pos, gen_blocks(p, ids.shape[1], 4), gen_start=p)
    assert torch.allclose(both[:, ids.shape[1] + 4 :], direct[:, p + 4 :], atol=1e-9)


def test_losses_are_finite_and_configs_validate():
    ids, p = text_tasks.make_batch(0, 0, 2, gen_length=64, tasks=("copy",))
    ids = torch.cat([ids[:, : p + 12], ids[:, -4:]], 1)  # a short answer region: 16 tokens
    gen = torch.Generator().manual_seed(0)
    assert torch.isfinite(masked_diffusion_loss(tiny().float(), ids, p, gen))
    assert torch.isfinite(masked_diffusion_loss(tiny().float(), ids, p, gen, semi_ar=1.0, block=4))
    assert torch.isfinite(block_diffusion_loss(tiny(BlockDiffusionLM, 8).float(), ids, p, gen))
    with pytest.raises(ValueError, match="unknown text task"):
        TextTrainConfig(tasks="copy,poetry")
    with pytest.raises(ValueError, match="model must be one of"):
        TextTrainConfig(model="gpt")


# -- bench and CLI ---------------------------------------------------------------------------------
def test_bench_rows_and_plot(tmp_path):
    from stretto.bench.text import run_text_bench

    models = {"m": tiny().float(), "b": tiny(BlockDiffusionLM, 8).float()}
    result = run_text_bench(
        tmp_path / "t.json",
        tmp_path / "t.png",
        models=models,
        n_per_task=1,
        batch_size=3,
        gen_length=16,
        block_length=8,
        rules=("threshold:tau=0.9",),
        caches={"masked-lm": ("dual",), "block-lm": ("block",)},
        tasks=("add", "copy"),
    )
    rows = result["rows"]
    assert {(r["model"], r["cache"]) for r in rows} >= {("m", "dual"), ("b", "block"), ("b", "none")}
    keys = {"model", "decode", "cache", "params", "accuracy", "tokens_per_s", "nfe", "speedup", "gen_length"}
    assert all(keys <= set(r) for r in rows) and "machine" in result
    assert [r["speedup"] for r in rows if r["decode"] == "lowconf:tokens=1" and r["cache"] == "none"] == [
        1.0,
        1.0,
    ]
    assert (tmp_path / "t.png").exists() and (tmp_path / "t.json").exists()


def test_cli_parsers():
    import argparse

    from stretto.cli.bench import add_bench_text_command
    from stretto.cli.text import add_text_command
    from stretto.cli.train import add_train_text_command

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_text_command(sub)
    add_train_text_command(sub.add_parser("train").add_subparsers(dest="what"))
    add_bench_text_command(sub.add_parser("bench").add_subparsers(dest="what"))
    args = parser.parse_args(["text", "123+456=", "--decode", "threshold:tau=0.8", "--cache", "dual", "--show"])
    assert args.prompts == ["123+456="] and args.show and args.func.__name__ == "cmd_text"
    assert parser.parse_args(["train", "text", "--model", "block"]).func.__name__ == "cmd_train_text"
    assert parser.parse_args(["bench", "text", "--json", "x.json"]).func.__name__ == "cmd_bench_text"
