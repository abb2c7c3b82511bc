"""Text tasks, the KV cache manager, decoding rules and caches on tiny random models (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stretto.data import text_tasks
from stretto.models.kv_cache import KVCache, cache_bytes
from stretto.models.text_lm import (
    BlockDiffusionLM,
    MaskedDiffusionLM,
    TextLMConfig,
    gen_blocks,
    left_pad_positions,
)
from stretto.pipelines import text
from stretto.pipelines.text.caches import BlockCache, DualCache, NoCache, PrefixCache, parse_cache
from stretto.pipelines.text.decode import block_spans, decode, finish_at_eot
from stretto.pipelines.text.refresh import DelayedCaching, DriftRefresh, Periodic
from stretto.pipelines.text.rules import Factor, LowConfidence, Threshold, parse_rule
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


def test_kv_cache_refuses_to_allocate_past_its_budget():
    fits = KVCache(layers=2, batch=1, heads=2, head_dim=4, capacity=8)
    assert fits.nbytes == cache_bytes(2, 1, 2, 4, 8)
    assert KVCache(2, 1, 2, 4, 8, budget_bytes=fits.nbytes).nbytes == fits.nbytes  # the limit itself is allowed
    message = (
        rf"^the KV cache needs {fits.nbytes / 2**20:.3g} MiB \(8 slots x 2 layers x batch 1\), over its budget of "
        rf"{(fits.nbytes - 1) / 2**20:.3g} MiB; pass a larger budget_bytes to KVCache$"
    )
    with pytest.raises(ValueError, match=message):
        KVCache(2, 1, 2, 4, 8, budget_bytes=fits.nbytes - 1)
    # The default budget is checked before allocating: a terabyte-sized request fails at once.
    with pytest.raises(ValueError, match=r"needs 1,048,576\.0 MiB .* over its budget of 1,024\.0 MiB"):
        KVCache(1, 1, 1, 2**26, 2**11)


def test_kv_cache_holds_no_probe_state():
    m = tiny()
    canvas, _ = text.make_canvas(m, PROMPTS, 16)
    cache = m.new_cache(2, canvas.shape[1])
    plain = m(canvas, kv_cache=cache)
    changed = canvas.clone()
    changed[:, -3] = 5
    logits, probe = m(changed, kv_cache=cache, probe_layer=1)
    assert set(vars(cache)) == {"k", "v", "positions", "valid", "blocks", "capacity", "sink_slots", "length", "writes"}
    for gone in ("commit", "committed", "track_drift", "drift", "attention", "wants_attention", "note_attention"):
        assert not hasattr(cache, gone)
    # The probe comes back with the logits: drift of every layer's overwritten keys, attention mass at layer 1.
    assert logits.shape == plain.shape and probe.layer == 1 and probe.start == 0
    assert sorted(probe.drift) == [0, 1] and probe.drift[0].shape == canvas.shape
    moved = probe.drift[0] > 1e-6  # layer 0's keys depend on the token alone: only the changed slot moved
    assert moved[:, -3].all() and moved.sum() == 2
    assert probe.attention.shape == canvas.shape
    assert torch.allclose(probe.attention.sum(-1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(m(changed, kv_cache=m.new_cache(2, canvas.shape[1])), logits, atol=1e-10)
    with pytest.raises(ValueError, match=r"probe_layer must be in \[0, 2\), got 2"):
        m(canvas, probe_layer=2)


# -- specs: rules and cache modes ------------------------------------------------------------------
CANONICAL_CACHES = [
    "none", "prefix", "dual", "dual:every=4", "dual:drift=0.05", "dual:drift=0.02,layer=2", "dual:delay",
    "prefix:delay", "prefix:every=3,delay", "dual:every=4,drift=0.05,layer=1,delay", "block", "block:fuse",
]  # fmt: skip


def test_specs_read_back_as_their_canonical_strings():
    for spec in CANONICAL_CACHES:
        assert str(parse_cache(spec)) == spec
    for spec in (
        "lowconf:tokens=1", "lowconf:tokens=2", "lowconf:tokens=2,tau=0.7", "threshold:tau=0.9", "threshold:tau=0.7",
        "factor:f=1",
    ):  # fmt: skip
        assert str(parse_rule(spec)) == spec
    assert str(parse_rule("baseline")) == "lowconf:tokens=1" and str(parse_rule("factor")) == "factor:f=1"
    assert str(parse_cache("dual:delay=true,every=0")) == "dual:delay" and str(parse_cache("block:fuse=no")) == "block"
    # The published benchmark's spec strings name the same settings today.
    rows = json.loads((Path(__file__).parents[1] / "benchmarks/results/text.json").read_text())["rows"]
    assert all(str(parse_cache(r["cache"])) == r["cache"] and str(parse_rule(r["decode"])) == r["decode"] for r in rows)


def test_cache_modes_and_refresh_options_are_small_classes():
    assert type(parse_cache("none")) is NoCache and not NoCache.uses_kv
    assert parse_cache("block:fuse") == BlockCache(fuse=True)
    prefix = parse_cache("prefix:every=3,delay")
    assert type(prefix) is PrefixCache and [type(o) for o in prefix.refresh] == [Periodic, DelayedCaching]
    dual = parse_cache("dual:drift=0.02,layer=1")
    assert type(dual) is DualCache and dual.refresh == (DriftRefresh(0.02, 1),)
    assert parse_cache("dual").refresh == ()
    assert Periodic(3).periodic(6) and not Periodic(3).periodic(4)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("triple", r"unknown cache 'triple'; allowed: block, dual, none, prefix"),
        ("dual:fuse", r"unknown parameter 'fuse' for cache 'dual'; allowed: every: an integer"),
        ("block:every=2", r"unknown parameter 'every' for cache 'block'; allowed: fuse: true or false"),
        ("none:delay", r"unknown parameter 'delay' for cache 'none'; allowed: none"),
        ("dual:every=-1", r"DualCache.every must be an integer in \[0, 10000\], got -1"),
        ("prefix:drift=3", r"PrefixCache.drift must be a number in \[0, 2\], got 3.0"),
        ("dual:every=x", r"DualCache.every must be an integer in \[0, 10000\], got 'x'"),
        ("dual:delay=maybe", r"DualCache.delay must be true or false, got 'maybe'"),
        ("prefix:layer=1", r"PrefixCache.layer applies with drift only, got layer=1 alone"),
    ],
)
def test_bad_cache_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_cache(spec)


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
        ("threshold:tau=1.5", r"Threshold.tau must be a number in \(0, 1\], got 1.5"),
        ("threshold:tau=0", r"Threshold.tau must be a number in \(0, 1\], got 0"),
        ("factor:f=-1", r"Factor.f must be a number in \(0, 1000\], got -1"),
        ("lowconf:tokens=0", r"LowConfidence.tokens must be an integer in \[1, 10000\], got 0"),
        ("greedy", r"unknown decoding rule 'greedy'; allowed: baseline, factor, learned, lowconf, threshold"),
        ("threshold:k=3", r"unknown parameter 'k' for decoding rule 'threshold'; allowed: tau: a number"),
        ("factor:f=x", r"Factor.f must be a number .*, got 'x'"),
    ],
)
def test_bad_rules(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_rule(spec)


def test_bad_caches_and_inputs():
    m, bm = tiny(), tiny(BlockDiffusionLM, 8)
    with pytest.raises(ValueError, match=r"unknown cache 'triple'; allowed"):
        text.generate(m, PROMPTS, 16, 8, cache="triple")
    with pytest.raises(ValueError, match=r"cache 'block' does not apply to a masked-lm; allowed: \['none', 'prefix'"):
        text.generate(m, PROMPTS, 16, 8, cache="block")
    with pytest.raises(ValueError, match=r"does not apply to a block-lm; allowed: \['none', 'block'\]"):
        text.generate(bm, PROMPTS, 16, 8, cache="dual")
    with pytest.raises(ValueError, match=r"DualCache.layer must be in \[0, 2\) for this model, got 2"):
        text.generate(m, PROMPTS, 16, 8, cache="dual:drift=0.1,layer=2")
    with pytest.raises(ValueError, match=r"gen_length \(36\) must be a multiple of the model's block size \(8\)"):
        text.generate(bm, PROMPTS, 36, 4, cache="block")
    with pytest.raises(ValueError, match=r"multiple of block_length"):
        text.generate(m, PROMPTS, 20, 8)
    with pytest.raises(ValueError, match=r"exceeds the model's context of 96"):
        text.generate(m, ["copy:" + "a" * 80 + "="], 32, 8)
    with pytest.raises(ValueError, match=r"= 1032 exceeds the model's context of 96; allowed with this prompt: "):
        text.generate(m, ["copy:ab="], 1024, 8)  # the allowed bound is a gen_length, never negative
    with pytest.raises(ValueError, match=r"block_length must be >= 1, got 16 and 0"):
        text.generate(m, PROMPTS, 16, 0)  # 0 is refused, not taken as the default
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


@pytest.mark.parametrize("spec", ["dual:every=3,delay", "prefix:drift=1e-9,delay", "block:fuse"])
def test_a_parsed_mode_starts_fresh_at_every_generation(spec):
    m = tiny(BlockDiffusionLM, 8) if spec.startswith("block") else tiny()
    mode, rule = parse_cache(spec), parse_rule("threshold:tau=0.5")
    runs = []
    for fresh in (mode, mode, parse_cache(spec)):  # the same object twice, then a new one
        canvas, gen_start = text.make_canvas(m, PROMPTS, 24)
        runs.append((canvas, decode(m, canvas, gen_start, 8, rule, fresh, early_stop=False)))
    assert all(torch.equal(c, runs[0][0]) and s == runs[0][1] for c, s in runs)
    assert runs[0][1].cache_bytes > 0 and text.generate(m, PROMPTS, 16, 8, cache="none").stats.cache_bytes == 0


def test_drift_refresh_triggers_by_bound():
    m = tiny()
    loose = text.generate(m, PROMPTS, 16, 8, decode="lowconf:tokens=1", cache="dual:drift=2")
    tight = text.generate(m, PROMPTS, 16, 8, decode="lowconf:tokens=1", cache="dual:drift=1e-9")
    assert loose.stats.refreshes == 0 and tight.stats.refreshes > 0
    assert tight.stats.nfe == tight.stats.steps + tight.stats.refreshes


def test_lowconf_with_tau_commits_the_scheduled_top_k_or_all_over_tau():
    """LLaDA 2.0's rule (diffusers' BlockRefinementScheduler): top-k, or every position over tau (strictly) if more."""
    rule = LowConfidence(tokens=2, tau=0.5)
    rule.start_block(torch.tensor([4, 4, 4]), 4)
    inf = float("-inf")
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.4, 0.3, 0.2, 0.1], [0.6, 0.5, inf, 0.55]])
    got = rule.select(conf, 0)
    assert got.tolist() == [
        [True, True, True, False],  # three over tau: more than k
        [True, True, False, False],  # none over tau: the scheduled k
        [True, False, False, True],  # 0.5 is not over tau; a committed position never again
    ]
    assert LowConfidence(tokens=2).tau == 1.0  # tau=1: off, plain LLaDA


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
        rules=("threshold:tau=0.9", "learned:tau=0.9"),
        caches={"masked-lm": ("dual",), "block-lm": ("block",)},
        tasks=("add", "copy"),
        continuous=4,
        sparse=("sparsed:keep=0.5",),
    )
    rows = result["rows"]
    assert {(r["model"], r["cache"]) for r in rows} >= {("m", "dual"), ("b", "block"), ("b", "none")}
    keys = {"model", "decode", "cache", "params", "accuracy", "tokens_per_s", "nfe", "speedup", "gen_length"}
    assert all(keys | {"batch_size", "batching", "sparse", "attention"} <= set(r) for r in rows) and "machine" in result
    # SparseD rows: the static sweep only, every rule x cache, fewer query-key pairs attended; dense rows attend all
    sparse = [r for r in rows if r["sparse"] != "none"]
    assert {(r["batch_size"], r["batching"]) for r in sparse} == {(3, "static")} and len(sparse) == 2 * 3 * 2
    assert all(r["attention"] < 1 for r in sparse) and all(r["attention"] == 1 for r in rows if r not in sparse)
    assert "--sparse none sparsed:keep=0.5" in result["command"]
    baseline = ("lowconf:tokens=1", "none", "static", "none")
    static_base = [r for r in rows if (r["decode"], r["cache"], r["batching"], r["sparse"]) == baseline]
    assert sorted((r["model"], r["batch_size"], r["speedup"]) for r in static_base) == [
        (m, bs, 1.0) for m in ("b", "m") for bs in (1, 3, 4)
    ]
    # continuous rows: every setting at batch 4, each prompt decoded as alone, so accuracy as at batch 1
    cont = {(r["model"], r["decode"], r["cache"]): r for r in rows if r["batching"] == "continuous"}
    alone = {(r["model"], r["decode"], r["cache"]): r for r in rows if r["batch_size"] == 1}
    assert set(cont) == set(alone) and all(cont[k]["accuracy"] == alone[k]["accuracy"] for k in cont)
    summary = result["continuous"]["m"]
    assert summary["batch_size"] == 4 and summary["vs_baseline"] > 0 and summary["vs_batch1_fastest"] > 0
    assert summary["calls_vs_batch1_fastest"] > 1  # rows at different blocks shared their model calls
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
