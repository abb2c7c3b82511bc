"""Published diffusion-LM folders (LLaDA, Dream, Fast-dLLM v2, SDAR) on transformers' classes through stretto.

Each family's tiny random checkpoint is written in its published layout (`stretto.bench.tiny_published`);
stretto's loaded model must give the logits of an independent forward of the reference transformers model
(called with an explicit full or block-causal 4D bool mask), and stretto's exact caches the tokens of no cache.
"""

import json

import pytest
import torch

import stretto
import stretto.pipelines.text
from stretto import checkpoints
from stretto.bench.tiny_published import BLOCK, CHARS, LAYOUTS, SHIFTED, write_checkpoint, write_diffusion_gemma
from stretto.checkpoints import CheckpointError
from stretto.cli import main
from stretto.models.hf_cache import SlotCache
from stretto.models.kv_attention import slot_mask
from stretto.pipelines.text import generate

FAMILIES = list(LAYOUTS)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """family -> (folder, reference model with the same weights)."""
    root = tmp_path_factory.mktemp("published")
    return {family: (root / family, write_checkpoint(family, root / family)) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(published):
    return {family: stretto.load(str(folder)) for family, (folder, _) in published.items()}


def reference_logits(ref, ids, blocks, block_causal: bool, shifted: bool):
    """The reference host class called directly, with the explicit 4D bool mask."""
    t = ids.shape[1]
    mask = slot_mask(blocks, blocks, torch.ones(ids.shape, dtype=torch.bool), block_causal)
    with torch.no_grad():
        logits = ref(ids, attention_mask=mask, position_ids=torch.arange(t)[None].expand_as(ids)).logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if shifted else logits


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_the_transformers_class_with_an_explicit_mask(family, published, loaded):
    model, ref = loaded[family], published[family][1]
    assert type(model.host) is type(ref)  # hosted on the transformers class itself, no copy of it
    ids = torch.tensor([model.tokenizer.encode("ab=12"), model.tokenizer.encode("cd+34")])
    block = BLOCK.get(family, 0)
    blocks = torch.tensor([0, 0, 0, 1, 1]) if block else torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        got = model(ids, torch.arange(5)[None].expand(2, 5), blocks)
    want = reference_logits(ref, ids, blocks, bool(block), family in SHIFTED)
    assert torch.equal(got, want)
    # The mask matters: LLaDA / Dream see the future, the block-causal ones not across blocks.
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % len(CHARS) + 3
    with torch.no_grad():
        first = model(changed, torch.arange(5)[None].expand(2, 5), blocks)[:, 1]
    assert torch.equal(first, got[:, 1]) == bool(block)


@pytest.mark.parametrize("family", FAMILIES)
def test_kinds_and_token_ids_come_from_the_published_config(family, loaded):
    model, config = loaded[family], LAYOUTS[family]["config"]
    assert model.kind == ("block-lm" if family in BLOCK else "masked-lm")
    assert model.config.block_size == BLOCK.get(family, 0)
    assert model.config.mask_id == config["mask_token_id"] and model.config.eot_id == config["eos_token_id"]
    assert model.logit_shift == (family in SHIFTED)


def test_the_kv_cache_serves_transformers_as_its_cache(loaded):
    model = loaded["sdar"]
    kv = model.new_cache(batch=1, capacity=8)
    ids = torch.tensor([model.tokenizer.encode("abcdefgh")])
    with torch.no_grad():
        full = model(ids, kv_cache=kv, start=0)
        # slots [4, 8) again against the cached [0, 4): the same logits, within float noise
        part = model(ids[:, 4:], kv_cache=kv, start=4)
    assert kv.length == 8 and kv.writes == 2 * 8 + 2 * 4  # two layers: 8 slots, then 4 rewritten
    torch.testing.assert_close(part, full[:, 4:], rtol=1e-5, atol=1e-5)
    past = SlotCache(kv, start=4)
    assert past.get_seq_length() == 8 and len(past) == model.config.n_layer


def _tokens(model, cache, decode, block_length, prompts=("ab=", "hello12=")):
    result = generate(
        model, list(prompts), gen_length=8, block_length=block_length, decode=decode, cache=cache, early_stop=False
    )
    return result.canvas, result.stats


@pytest.mark.parametrize("family", ["Fast_dLLM_Qwen", "sdar"])
@pytest.mark.parametrize("decode", ["threshold:tau=0.5", "lowconf:tokens=1"])
@pytest.mark.parametrize("block_length", [4, 2])
def test_block_cache_of_the_block_causal_families_is_exact(family, decode, block_length, loaded):
    model = loaded[family]
    want, plain = _tokens(model, "none", decode, block_length)
    for cache in ("block", "block:fuse"):
        got, stats = _tokens(model, cache, decode, block_length)
        assert torch.equal(got, want), cache
        assert stats.positions < plain.positions  # the cache ran fewer positions than the full canvas each step


@pytest.mark.parametrize("family", FAMILIES)
def test_continuous_batching_decodes_each_prompt_as_alone_on_a_published_model(family, loaded):
    model = loaded[family]
    prompts = ["ab=", "hello12=", "a=", "xyz 9=", "q+1="]
    caches = ("none", "block:fuse") if model.block_causal else ("none", "dual", "prefix:every=2")
    for cache in caches:
        alone = [_tokens(model, cache, "threshold:tau=0.5", 4, [p])[0] for p in prompts]
        run = stretto.pipelines.text.generate_stream(
            model, prompts, 8, 4, "threshold:tau=0.5", cache, early_stop=False, batch_size=2
        )
        for i, res in run:
            assert torch.equal(res.canvas, alone[i]), (cache, prompts[i])


@pytest.mark.parametrize("family", ["llada", "Dream"])
@pytest.mark.parametrize("cache", ["prefix:every=1", "dual:every=1"])
def test_refreshed_caches_of_the_bidirectional_families_are_exact(family, cache, loaded):
    model = loaded[family]
    want, _ = _tokens(model, "none", "threshold:tau=0.5", 4)
    got, stats = _tokens(model, cache, "threshold:tau=0.5", 4)
    assert torch.equal(got, want) and stats.cache_bytes > 0


@pytest.mark.parametrize("cache", ["dual", "prefix:every=2", "dual:drift=0.05,layer=1", "dual:delay"])
def test_every_cache_mode_runs_on_a_published_model(cache, loaded):
    model = loaded["Dream"]
    canvas, stats = _tokens(model, cache, "factor:f=1", 4)
    assert not (canvas == model.config.mask_id).any() and stats.nfe >= 2


def test_a_published_model_loads_in_bfloat16_and_decodes(published):
    model = stretto.load(str(published["sdar"][0]), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    canvas, stats = _tokens(model, "block", "threshold:tau=0.5", 4)
    assert not (canvas == model.config.mask_id).any() and stats.cache_bytes > 0


def test_the_folder_tokenizer_encodes_prompts_and_decodes_answers(loaded):
    model = loaded["llada"]
    result = generate(model, ["ab=", "hello12="], gen_length=8, block_length=4, decode="threshold:tau=0.5")
    assert len(result.texts) == 2 and all(isinstance(t, str) for t in result.texts)
    assert model.tokenizer.decode(model.tokenizer.encode("ab=12")) == "ab=12"
    eot = model.config.eot_id
    assert model.tokenizer.decode([3, 4, eot, 5]) == model.tokenizer.decode([3, 4])


def test_dreams_vocab_and_merges_load_without_its_remote_tokenizer_class(published, loaded):
    folder, tok = published["Dream"][0], loaded["Dream"].tokenizer
    assert (
        not (folder / "tokenizer.json").exists() and "DreamTokenizer" in (folder / "tokenizer_config.json").read_text()
    )
    assert tok.vocab_size == len(CHARS) + 2 and tok.decode(tok.encode("ab=12 cd")) == "ab=12 cd"
    assert tok.decode([0, 1, loaded["Dream"].config.eot_id, 2]) == "ab"


def test_commands_for_stretto_checkpoints_name_a_published_folder_by_its_model_type(published, capsys):
    folder = published["llada"][0]
    assert main(["bench", "samplers", "--model", str(folder)]) == 2
    assert "is a 'published llada checkpoint', expected a 'shapes-flux'" in capsys.readouterr().err
    assert checkpoints.check_kind(folder, ("masked-lm", "block-lm")) == "published llada checkpoint"  # text: taken


def test_cli_text_runs_a_published_folder(published, capsys):
    folder = published["sdar"][0]
    code = main(["text", "ab=", "--model", str(folder), "--gen-length", "8", "--cache", "block"])
    assert code == 0
    assert capsys.readouterr().out.startswith("ab=")


def test_diffusion_gemma_loads_natively_and_text_decoding_says_what_is_missing(tmp_path, capsys):
    folder = tmp_path / "diffusion-gemma"
    ref = write_diffusion_gemma(folder)
    model = stretto.load(str(folder))
    assert type(model) is type(ref)
    want = ref.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    capsys.readouterr()  # the load's progress bar
    assert main(["text", "ab=", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be decoded by stretto yet" in err and "self-conditioning" in err and len(err.splitlines()) == 1


# -- bad input ----------------------------------------------------------------------------------------------


def _edit_config(folder, **edits):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edits}))


def test_a_config_that_does_not_fit_its_weights_names_the_tensor_and_both_shapes(tmp_path):
    folder = tmp_path / "llada"
    write_checkpoint("llada", folder)
    _edit_config(folder, mlp_hidden_size=48)
    with pytest.raises(CheckpointError, match=r"tensor model\.transformer\.blocks\.\d\.\w+\.weight has shape \[") as e:
        stretto.load(str(folder))
    assert "[64, 32]" in str(e.value) or "[32, 64]" in str(e.value)
    assert "48" in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_model_type_lists_the_known_ones(tmp_path):
    folder = tmp_path / "moe"
    write_checkpoint("Dream", folder)
    _edit_config(folder, model_type="llada2_moe")
    with pytest.raises(CheckpointError, match="'llada2_moe'.*known: llada, Dream, Fast_dLLM_Qwen, sdar"):
        stretto.load(str(folder))


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    folder = tmp_path / "big-tokenizer"
    write_checkpoint("sdar", folder, chars=CHARS + "ABCDEFGHIJ")
    with pytest.raises(CheckpointError, match="53 tokens, more than the model's vocabulary of 48"):
        stretto.load(str(folder))


def test_a_mask_token_outside_the_vocabulary_is_refused(tmp_path):
    folder = tmp_path / "mask"
    write_checkpoint("Fast_dLLM_Qwen", folder)
    _edit_config(folder, mask_token_id=151665)
    with pytest.raises(CheckpointError, match=r"mask token id 151665 is outside the vocabulary \[0, 48\)"):
        stretto.load(str(folder))


def test_a_missing_shard_and_a_missing_tensor_are_named(tmp_path):
    folder = tmp_path / "shards"
    write_checkpoint("Dream", folder)
    _edit_config(folder, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"no tensor for model\.layers\.2\.\S+ \(shape \["):
        stretto.load(str(folder))
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-00002.safetensors named by .* is missing"):
        stretto.load(str(folder))


def test_cli_says_one_line_for_a_bad_published_folder(tmp_path, capsys):
    folder = tmp_path / "bad"
    write_checkpoint("llada", folder)
    _edit_config(folder, model_type="gpt2")
    assert main(["text", "ab=", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'gpt2'" in err and "known:" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("family", "cache"), [("llada", "dual"), ("Dream", "none"), ("sdar", "block")])
def test_sparsed_runs_through_the_transformers_attention(family, cache, loaded):
    model = loaded[family]
    dense = generate(model, ["ab=", "hello12="], gen_length=8, block_length=4, decode="threshold:tau=0.5", cache=cache)
    for keep, same in ((1.0, True), (0.3, False)):
        res = generate(model, ["ab=", "hello12="], gen_length=8, block_length=4, decode="threshold:tau=0.5",
                       cache=cache, sparse=f"sparsed:keep={keep},qblock=2")  # fmt: skip
        assert not (res.canvas == model.config.mask_id).any()
        assert (res.stats.attention == 1.0) == same and (torch.equal(res.canvas, dense.canvas) or not same)
