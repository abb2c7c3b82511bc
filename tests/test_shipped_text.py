"""The shipped text models still do their job, and the block model's cache is exact on its real weights."""

import pytest
import torch

from stretto import checkpoints
from stretto.data import text_tasks
from stretto.pipelines import text

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    return {name: checkpoints.load(name) for name in ("text-masked", "text-block")}


def test_shipped_text_models_load_with_their_kinds(models):
    assert models["text-masked"].kind == "masked-lm"
    assert models["text-block"].kind == "block-lm" and models["text-block"].config.block_size == 16


@pytest.mark.parametrize("name", ["text-masked", "text-block"])
def test_shipped_models_duplicate_strings(models, name):
    examples = text_tasks.held_out(8, tasks=("duplicate",))
    res = text.generate(models[name], [e.prompt for e in examples], 64)
    accuracy = sum(out == e.answer for out, e in zip(res.texts, examples, strict=True)) / len(examples)
    # Measured when shipped (benchmarks/results/text.json, 16 held-out examples per task): see README.
    assert accuracy >= 0.75, res.texts


def test_block_cache_is_exact_on_the_shipped_block_model(models):
    model = models["text-block"]
    prompts = [e.prompt for e in text_tasks.held_out(2)]
    plain = text.generate(model, prompts, 64, decode="threshold:tau=0.9", cache="none")
    cached = text.generate(model, prompts, 64, decode="threshold:tau=0.9", cache="block")
    assert cached.texts == plain.texts
    assert cached.stats.positions < plain.stats.positions


def test_the_default_text_model_is_llada_on_the_transformers_class_and_answers_long_tasks():
    """`text-llada` (the default of `stretto text`) is a published LLaDA folder hosted on transformers' Llama and
    answers held-out prompts of its four families, 131-251 characters each, with the LLaDA baseline decoder."""
    import transformers

    from stretto.cli.text import DEFAULT_TEXT_MODEL

    assert DEFAULT_TEXT_MODEL == "text-llada" and checkpoints.is_published(checkpoints.resolve("text-llada"))
    model = checkpoints.load("text-llada")
    assert isinstance(model.host, transformers.LlamaForCausalLM) and model.kind == "masked-lm"
    tasks = tuple(checkpoints.trained_tasks("text-llada"))
    assert len(tasks) == 4 and checkpoints.trained_gen_length("text-llada") == 256
    examples = text_tasks.held_out(2, tasks=tasks)
    res = text.generate(model, [e.prompt for e in examples], 256, decode="lowconf:tokens=1", cache="none")
    right = [e.task for out, e in zip(res.texts, examples, strict=True) if out == e.answer]
    # Measured when shipped, 16 held-out prompts per family: 16/16, 16/16, 16/16 and 15/16 (see README).
    assert len(right) >= 7 and set(right) == set(tasks), res.texts
    assert min(len(e.answer) for e in examples) >= 128
