"""SparseD's sparse attention and Learn2PD's learned rule on tiny random text models (seconds)."""

from __future__ import annotations

import math

import pytest
import torch

from stretto import checkpoints
from stretto.data import text_tasks
from stretto.models.sparse_attention import SparseD, SparsePattern, parse_sparse
from stretto.models.text_lm import BlockDiffusionLM, MaskedDiffusionLM, TextLMConfig
from stretto.pipelines import text
from stretto.pipelines.text.decode import finish_at_eot
from stretto.pipelines.text.learned import FEATURES, Learned
from stretto.pipelines.text.rules import parse_rule
from stretto.train.unmask_filter import collect_traces, fit_filter, split, trace_examples

torch.set_num_threads(1)
PROMPTS = ["12+345=", "copy:abcdef="]
MASK, EOT = text_tasks.TOKENIZER.mask_id, text_tasks.TOKENIZER.eot_id


def tiny(cls=MaskedDiffusionLM, block_size=0, seed=0):
    torch.manual_seed(seed)
    cfg = TextLMConfig(n_layer=2, n_head=2, n_embd=32, max_len=96, block_size=block_size)
    return cls(cfg).double().eval()


def run(model, decode="threshold:tau=0.5", cache="none", sparse=None, **kw):
    return text.generate(model, PROMPTS, 16, 8, decode, cache, sparse=sparse, **kw)


# -- SparseD -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "cache"), [("masked", "none"), ("masked", "prefix"), ("masked", "dual"),
                                             ("block", "block")])  # fmt: skip
def test_sparsed_off_and_in_its_dense_steps_is_the_plain_decoder_bit_for_bit(kind, cache):
    model = tiny() if kind == "masked" else tiny(BlockDiffusionLM, 8)
    plain = run(model, cache=cache)
    for off in ("none", "sparsed:keep=0.3,dense=10000"):  # never past the dense steps: the pattern is never used
        got = run(model, cache=cache, sparse=off)
        assert torch.equal(got.canvas, plain.canvas) and got.stats == plain.stats


def test_sparsed_dense_steps_give_the_same_logits_as_no_pattern():
    model = tiny()
    ids = torch.randint(3, 20, (2, 12))
    pattern = SparsePattern(SparseD(keep=0.3, dense=5), width=12, gen_start=6)
    pattern.start_step()  # step 0 of 5 dense steps
    with torch.no_grad():
        assert torch.equal(model(ids, sparse=pattern), model(ids))
    assert pattern.fraction == 1.0


@pytest.mark.parametrize(("kind", "cache"), [("masked", "none"), ("masked", "dual"), ("block", "block")])
@pytest.mark.parametrize("per_block", [False, True])
def test_sparsed_keeping_every_key_gives_the_dense_tokens(kind, cache, per_block):
    model = tiny() if kind == "masked" else tiny(BlockDiffusionLM, 8)
    dense = run(model, cache=cache)
    got = run(model, cache=cache, sparse="sparsed:keep=1" + ",per_block" * per_block)
    assert torch.equal(got.canvas, dense.canvas) and got.stats.attention == 1.0


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_sparsed_attends_to_fewer_pairs_and_still_finishes(cache):
    model = tiny()
    res = run(model, "lowconf:tokens=1", cache, sparse="sparsed:keep=0.25,qblock=4")
    assert 0 < res.stats.attention < 1 and not (res.canvas == MASK).any()
    tighter = run(model, "lowconf:tokens=1", cache, sparse="sparsed:keep=0.1,qblock=4")
    assert tighter.stats.attention < res.stats.attention


def test_the_selection_keeps_the_top_share_of_prompt_and_answer_keys_per_head_and_query_block():
    torch.manual_seed(0)
    b, h, s, d, gen_start, keep = 2, 3, 10, 8, 4, 0.5
    q, k = torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    valid = torch.ones(b, s, dtype=torch.bool)
    valid[1, 0] = False  # a left-padded prompt slot of row 1
    mask = valid[:, None, None, :]
    pattern = SparsePattern(SparseD(keep=keep, dense=1, qblock=5), s, gen_start)
    pattern.start_step()
    slots = torch.arange(s)
    pattern.select(0, q, k, mask, slots, slots)
    kept = pattern.kept[0]  # (B, H, S, S)
    att = ((q @ k.transpose(-1, -2)) / math.sqrt(d)).masked_fill(~mask, float("-inf")).softmax(-1)
    for row in range(b):
        for head in range(h):
            for block in (range(0, 5), range(5, 10)):
                rows = kept[row, head, block.start]
                assert all(torch.equal(kept[row, head, i], rows) for i in block)  # one choice per query block
                mass = att[row, head, block.start : block.stop].sum(0)
                for part in (range(0, gen_start), range(gen_start, s)):
                    ok = [j for j in part if valid[row, j]]
                    want = sorted(ok, key=lambda j: -float(mass[j]))[: math.ceil(keep * len(ok))]
                    assert sorted(j for j in part if rows[j]) == sorted(want)
    assert not torch.equal(kept[:, 0], kept[:, 1])  # the heads chose differently
    pattern.start_step()  # sparse from here on: the mask narrows to the kept keys and is counted
    narrowed = pattern.restrict(0, mask, q, slots, slots)
    assert torch.equal(narrowed, kept & mask.expand(b, h, s, s))
    assert pattern.fraction < 1


def test_bad_sparse_settings_are_one_line_errors():
    cases = {
        "sparsed:keep=0": r"SparseD.keep must be a number in \(0, 1\], got 0.0",
        "sparsed:keep=1.5": r"SparseD.keep must be a number in \(0, 1\], got 1.5",
        "sparsed:dense=0": r"SparseD.dense must be an integer in \[1, 10000\], got 0",
        "sparsed:qblock=x": r"SparseD.qblock must be an integer .*, got 'x'",
        "sparsed:k=3": r"unknown parameter 'k' for sparse attention 'sparsed'; allowed: keep",
        "topk:keep=0.3": r"unknown sparse attention 'topk'; allowed: none, sparsed",
    }
    for spec, match in cases.items():
        with pytest.raises(ValueError, match=match):
            parse_sparse(spec)
    assert parse_sparse("none") is None and parse_sparse(None) is None
    assert str(parse_sparse("sparsed")) == "sparsed:keep=0.3"
    assert str(parse_sparse("sparsed:keep=0.5,per_block=yes,dense=2")) == "sparsed:keep=0.5,dense=2,per_block"
    with pytest.raises(ValueError, match="sparse attention sparsed:keep=0.3 keeps one pattern for the static batch"):
        run(tiny(), sparse="sparsed", batch_size=1)


# -- Learn2PD ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["learned:tau=0.9", "learned:tau=1", "learned:tau=0.5,eot"])
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_the_learned_rule_commits_at_least_one_position_per_step_and_finishes(spec, cache):
    steps = []

    def count(canvas, info):
        steps.append(int(info["committed"].sum(1).min()))

    res = text.generate(tiny(), PROMPTS, 16, 8, spec, cache, early_stop=False, callback=count)
    assert steps and min(steps) >= 1 and not (res.canvas == MASK).any()
    assert res.stats.steps == len(steps) <= 16


def test_the_learned_rule_reads_the_shipped_filter_and_says_what_it_is():
    rule = parse_rule("learned")
    assert isinstance(rule, Learned) and str(rule) == "learned:tau=0.9" and not rule.ends_at_eot
    assert str(parse_rule("learned:tau=0.7,eot")) == "learned:tau=0.7,eot" and parse_rule("learned:eot").ends_at_eot
    net = rule.net
    assert net.config.n_features == len(FEATURES) and sum(p.numel() for p in net.parameters()) < 5000
    meta = checkpoints.read_config("text-masked-filter")
    assert meta["trained_on"] == "text-masked" and meta["train_command"].startswith("stretto train unmask-filter")


def test_end_of_text_prediction_fills_after_a_committed_eot_at_once():
    g = [5, MASK, EOT, MASK, MASK]
    for eager, want in ((False, [5, MASK, EOT, MASK, MASK]), (True, [5, MASK, EOT, EOT, EOT])):
        canvas = torch.tensor([[9, *g]])
        done = finish_at_eot(canvas, 1, MASK, EOT, eager=eager)
        assert canvas[0, 1:].tolist() == want and not done.any()  # a mask before the end-of-text: not done


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("learned:tau=0", r"Learned.tau must be a number in \(0, 1\], got 0"),
        ("learned:eot=maybe", r"Learned.eot must be true or false, got 'maybe'"),
        ("learned:filter=no-such-filter", r"no checkpoint at 'no-such-filter'"),
        ("learned:filter=text-masked", r"checkpoint 'text-masked' is a 'masked-lm', expected a 'unmask-filter'"),
    ],
)
def test_bad_learned_rules(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_rule(spec)


def test_traces_come_from_train_split_prompts_only_and_label_the_committed_position_final():
    examples = trace_examples(seed=3, n=24)
    assert all(not text_tasks.is_test(e.prompt) for e in examples)
    assert {e.task for e in examples} == set(text_tasks.TASKS)
    prompts = [e.prompt[:12] + "=" for e in examples[:4]]  # short prompts: the tiny model's context
    prompts = [p for p in prompts if not text_tasks.is_test(p)]
    traces = collect_traces(tiny().float(), prompts, gen_length=16, block_length=8, batch_size=2)
    assert traces.prompts == prompts and traces.features.shape == (len(traces.labels), len(FEATURES))
    top = traces.features[:, FEATURES.index("rank")] == 0  # the baseline commits its most confident position
    assert top.any() and traces.labels[top].all()
    held_out = text_tasks.held_out(1)[0].prompt
    with pytest.raises(ValueError, match="must come from the train split; .* is a held-out prompt"):
        collect_traces(tiny().float(), [prompts[0], held_out], gen_length=16, block_length=8)


def test_the_filter_learns_the_traces():
    prompts = ("12+34=", "copy:abc=", "rev:xyz=", "dup:ab=", "sort:31=", "cum:12=")
    prompts = [p for p in prompts if not text_tasks.is_test(p)]
    traces = collect_traces(tiny().float(), prompts, gen_length=16, block_length=8, batch_size=3)
    learn, held = split(traces, 0.25)
    assert len(learn.labels) + len(held.labels) == len(traces.labels) and set(held.prompts).isdisjoint(learn.prompts)
    net, losses = fit_filter(learn, steps=150, lr=1e-2, hidden=8, batch=256)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10


def test_cli_parses_the_new_flags():
    import argparse

    from stretto.cli.bench import add_bench_text_command, caches_by_kind
    from stretto.cli.text import add_text_command
    from stretto.cli.train import add_train_unmask_filter_command

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_text_command(sub)
    add_train_unmask_filter_command(sub.add_parser("train").add_subparsers(dest="what"))
    add_bench_text_command(sub.add_parser("bench").add_subparsers(dest="what"))
    args = parser.parse_args(["text", "dup:ab=", "--decode", "learned:tau=0.9,eot", "--sparse", "sparsed:keep=0.3"])
    assert args.sparse == "sparsed:keep=0.3" and args.decode == "learned:tau=0.9,eot"
    args = parser.parse_args(["train", "unmask-filter", "--prompts", "8", "--steps", "10"])
    assert args.func.__name__ == "cmd_train_unmask_filter" and (args.prompts, args.steps, args.seed) == (8, 10, 7)
    args = parser.parse_args(["bench", "text", "--decode", "learned:tau=0.9", "--cache", "none", "dual", "--sparse",
                              "none", "sparsed:keep=0.3"])  # fmt: skip
    assert args.cache == ["none", "dual"] and args.sparse == ["none", "sparsed:keep=0.3"]
    assert caches_by_kind(["none", "dual", "block"]) == {"masked-lm": ("none", "dual"), "block-lm": ("none", "block")}
