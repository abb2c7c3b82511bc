"""Long-answer text tasks, and text models trained by stretto in a published layout (LLaDA on Llama, SDAR on Qwen3).

A few training steps of a tiny model must export a folder that `stretto.load` hosts on the transformers class
itself and whose logits are an independent forward of the same weights (the reference class called directly with
an explicit 4D bool mask); a run interrupted and resumed must end bit-exactly where an unbroken run ends.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
from safetensors.torch import load_file

import stretto
from stretto.cli import main
from stretto.data import text_tasks
from stretto.data.long_text_tasks import EXPAND, LONG_MAX_PROMPT, LONG_MIN_ANSWER, LONG_TASKS, REPEATS
from stretto.models.kv_attention import slot_mask
from stretto.pipelines.text import generate
from stretto.train.state import ResumeError
from stretto.train.text import TextTrainConfig, train_text

torch.set_num_threads(1)
FAST_EVAL = {"eval_every": 0, "eval_per_task": 1, "eval_decode": "threshold:tau=0.01"}  # a block per step


# -- tasks ------------------------------------------------------------------------------------------------------
def _groups(answer: str) -> list[str]:
    return answer.split("+")


def _check_answer(e: text_tasks.Example) -> None:
    """Each family's answer, rebuilt from its definition (not from the generator)."""
    body = e.prompt.split(":", 1)[1].rstrip("=")
    if e.task in ("count_down", "count_up"):
        values = [int(g) for g in _groups(e.answer)]
        step = -1 if e.task == "count_down" else 1
        assert values[0] == int(body) and all(b - a == step for a, b in zip(values, values[1:], strict=False))
        assert values[-1] % 100 == (0 if e.task == "count_down" else 99)
        assert all(len(g) == len(body) for g in _groups(e.answer))
    elif e.task in ("hex_down", "oct_down", "bin_down"):
        base, width = {"hex_down": (16, 5), "oct_down": (8, 5), "bin_down": (2, 6)}[e.task]
        values = [int(g, base) for g in _groups(e.answer)]
        assert values[0] == int(body, base) and all(b - a == -1 for a, b in zip(values, values[1:], strict=False))
        assert values[-1] % base**2 == 0 and all(len(g) == width for g in _groups(e.answer))
    elif e.task == "letters":

        def value(pair):
            return 26 * (ord(pair[0]) - 97) + ord(pair[1]) - 97

        groups = _groups(e.answer)
        assert groups[0] == body and all(g[:2] == body[:2] for g in groups)
        assert [value(g[2:]) for g in groups] == list(range(value(body[2:]), -1, -1))
    elif e.task == "stride":
        first, step, count = body[0], int(body[1]), int(body.split(":")[1])
        groups = _groups(e.answer)
        assert [int(g[1:]) for g in groups] == list(range(count, -1, -1))
        assert all((ord(g[0]) - ord(first)) % 26 == (i * step) % 26 for i, g in enumerate(groups))
    elif e.task == "expand":
        assert e.answer == "".join(c * EXPAND for c in body) and len(set(body)) == len(body)
    else:
        assert e.answer == "".join(body + str(d) for d in reversed(range(REPEATS))) and len(set(body)) == len(body)


def test_long_tasks_make_long_exact_answers_and_a_disjoint_split():
    long = text_tasks.task_names("long")
    assert long == tuple(LONG_TASKS) and len(long) >= 5
    train = [text_tasks.make_example(0, i, "train", long) for i in range(40 * len(long))]
    test = text_tasks.held_out(8, tasks=long)
    for e in train + test:
        assert LONG_MIN_ANSWER <= len(e.answer) < 256 and len(e.prompt) <= LONG_MAX_PROMPT
        text_tasks.TOKENIZER.encode(e.prompt + e.answer)  # the shipped tokenizer's characters only
        _check_answer(e)
    assert {e.task for e in test} == set(long)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert all(text_tasks.is_test(e.prompt) for e in test) and not any(text_tasks.is_test(e.prompt) for e in train)
    assert train[3] == text_tasks.make_example(0, 3, "train", long)  # a pure function of (seed, index)
    assert text_tasks.max_answer(long) < 256 and text_tasks.max_prompt(long) == LONG_MAX_PROMPT
    ids, p = text_tasks.make_batch(0, 0, 3, gen_length=256, tasks=long)
    assert ids.shape[1] == p + 256 and (ids[:, -1] == text_tasks.TOKENIZER.eot_id).all()


def test_task_lists_keep_all_as_the_shipped_short_tasks():
    assert text_tasks.task_names("all") == tuple(text_tasks.TASKS)
    assert text_tasks.task_names("copy, expand") == ("copy", "expand")
    tok = text_tasks.TOKENIZER
    assert tok.vocab_size == 3 + len(text_tasks.CHARS)  # the shipped models' vocabulary
    # a published-layout model's embedding is padded past the table: such ids decode to no answer character
    assert tok.decode([*tok.encode("ab"), tok.vocab_size + 1, *tok.encode("c")]) == "ab?c"
    with pytest.raises(ValueError, match=r"unknown text task\(s\) \['poetry'\]; allowed: \[.*'count_down'"):
        text_tasks.task_names("expand,poetry")
    assert TextTrainConfig(tasks="long").gen_length == 256 and TextTrainConfig().gen_length == 64


# -- training in a published layout ---------------------------------------------------------------------------
def _config(out, layout="llada", steps=3, **kw) -> TextTrainConfig:
    model = "block" if layout == "sdar" else "masked"
    base = dict(out=str(out), layout=layout, model=model, steps=steps, batch_size=2, n_layer=1, n_embd=32)
    return TextTrainConfig(**(base | dict(tasks="count_down,expand", save_every=2, warmup=1) | FAST_EVAL | kw))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """layout -> the run folder of a 3-step tiny run."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for layout in ("llada", "sdar"):
        train_text(_config(root / layout, layout, block_size=16))
        runs[layout] = root / layout
    return runs


def _reference(run, host_cls, config_cls, keys: dict):
    """The host class built from hand-written config keys, holding the run's EMA weights as shipped (fp16)."""
    ref = getattr(transformers, host_cls)(getattr(transformers, config_cls)(**keys)).eval()
    state = load_file(run / "train_state.safetensors")
    ref.load_state_dict(
        {k.removeprefix("ema.host."): v.half().float() for k, v in state.items() if k.startswith("ema.host.")}
    )
    return ref


def _ids(model):
    return torch.tensor([model.tokenizer.encode("down:12325=+0"), model.tokenizer.encode("exp:abcdef=aa")])


def test_a_llada_run_exports_the_published_layout_on_llama(trained):
    folder = trained["llada"] / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llada" and config["mask_token_id"] == text_tasks.TOKENIZER.mask_id
    assert config["trained_steps"] == 3 and "--layout llada" in config["train_command"]
    names = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.transformer.blocks.0.attn_out.weight" in names and "model.transformer.ff_out.weight" in names
    assert not any(n.startswith("model.layers.") for n in names) and len(set(names.values())) == 2

    model = stretto.load(str(folder))
    assert type(model.host) is transformers.LlamaForCausalLM and model.kind == "masked-lm"
    prompt = "down:12325="
    assert model.tokenizer.encode(prompt) == text_tasks.TOKENIZER.encode(prompt)  # the char tokenizer's ids
    keys = dict(vocab_size=48, hidden_size=32, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4)
    keys |= dict(num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False)
    ref = _reference(trained["llada"], "LlamaForCausalLM", "LlamaConfig", keys)
    ids = _ids(model)
    t = ids.shape[1]
    with torch.no_grad():
        got = model(ids, torch.arange(t)[None].expand_as(ids))
        mask = torch.ones(2, 1, t, t, dtype=torch.bool)  # LLaDA: every token sees every token
        want = ref(ids, attention_mask=mask, position_ids=torch.arange(t)[None].expand_as(ids)).logits
    assert torch.equal(got, want)


def test_an_sdar_run_exports_a_block_causal_qwen3_whose_block_cache_is_exact(trained):
    folder = trained["sdar"] / "model"
    model = stretto.load(str(folder))
    assert type(model.host) is transformers.Qwen3ForCausalLM and model.kind == "block-lm"
    assert model.config.block_size == 16 and json.loads((folder / "config.json").read_text())["model_type"] == "sdar"
    keys = dict(vocab_size=48, hidden_size=32, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4)
    keys |= dict(num_key_value_heads=4, head_dim=8, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False)
    ref = _reference(trained["sdar"], "Qwen3ForCausalLM", "Qwen3Config", keys)
    ids = _ids(model)
    t = ids.shape[1]
    blocks = (torch.arange(t) >= 8).long()  # two blocks: causal across, bidirectional inside
    with torch.no_grad():
        got = model(ids, torch.arange(t)[None].expand_as(ids), blocks)
        mask = slot_mask(blocks, blocks, torch.ones(ids.shape, dtype=torch.bool), True)
        want = ref(ids, attention_mask=mask, position_ids=torch.arange(t)[None].expand_as(ids)).logits
    assert torch.equal(got, want)
    prompts = ["down:12325=", "exp:abcdefghijklmnop="]
    plain = generate(model, prompts, 32, 16, "threshold:tau=0.5", "none", early_stop=False)
    cached = generate(model, prompts, 32, 16, "threshold:tau=0.5", "block", early_stop=False)
    assert torch.equal(cached.canvas, plain.canvas) and cached.stats.positions < plain.stats.positions


def test_cli_text_runs_the_trained_llada_folder(trained, capsys):
    code = main(["text", "down:12325=", "--model", str(trained["llada"] / "model"), "--gen-length", "16"])
    assert code == 0 and capsys.readouterr().out.startswith("down:12325=")


def test_an_interrupted_llada_run_resumes_bit_exactly(tmp_path, monkeypatch):
    train_text(_config(tmp_path / "straight", steps=4))
    make_batch = text_tasks.make_batch

    def dies_at_step_3(seed, step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return make_batch(seed, step, *args)

    monkeypatch.setattr(text_tasks, "make_batch", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_text(_config(tmp_path / "resumed", steps=4))  # the state of step 2 is saved
    monkeypatch.setattr(text_tasks, "make_batch", make_batch)
    assert json.loads((tmp_path / "resumed" / "train_state.json").read_text())["step"] == 2
    train_text(_config(tmp_path / "resumed", steps=4))
    straight = load_file(tmp_path / "straight" / "train_state.safetensors")
    resumed = load_file(tmp_path / "resumed" / "train_state.safetensors")
    assert straight.keys() == resumed.keys() and any(k.startswith("opt/") for k in straight)
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    with pytest.raises(ResumeError, match=r"other settings \(n_embd: saved 32, given 64\)"):
        train_text(_config(tmp_path / "resumed", steps=5, n_embd=64))


# -- bad flags --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--layout", "llada", "--model", "block"], "layout llada trains a masked model, got model 'block'"),
        (["--layout", "sdar", "--model", "masked"], "layout sdar trains a block model, got model 'masked'"),
        (["--tasks", "long", "--gen-length", "64"], "gen_length 64 does not hold the answers of tasks count_down"),
        (["--tasks", "expand,poetry"], r"unknown text task\(s\) \['poetry'\]"),
        (["--tasks", ","], "no text task in ','"),
        (["--layout", "llada", "--n-head", "5"], r"n_embd \(128\) must split into n_head \(5\) heads"),
        (["--layout", "sdar", "--tasks", "long", "--block-size", "24"], r"gen_length \(256\) must be a multiple"),
        (["--eval-decode", "greedy"], "unknown decoding rule .greedy."),
    ],
)
def test_bad_train_text_flags_say_one_line(flags, message, tmp_path, capsys):
    assert main(["train", "text", "--out", str(tmp_path / "run"), "--steps", "1", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any work
