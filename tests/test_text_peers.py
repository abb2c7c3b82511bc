"""Peer engines in the same run (`stretto bench text --peers`): diffusers' LLaDA2Pipeline gives stretto's tokens
where the algorithm is the same; what cannot be matched is reported with the reason.

Tiny random published-layout models (`stretto.bench.tiny_published`), seconds on a CPU. Speed is only reported
by the bench, never asserted here.
"""

import json

import pytest
import torch

from stretto.bench.text import run_text_bench
from stretto.bench.text_peers import (
    GEMMA_GENERATE,
    GEMMA_PIPELINE,
    LLADA2,
    WINDOW_NOTE,
    PipelineLM,
    gemma_rows,
    llada2_rows,
    peer_prompts,
    run_llada2,
    run_stretto,
)
from stretto.bench.tiny_published import write_checkpoint, write_diffusion_gemma
from stretto.cli import main
from stretto.models.hf_load import load_published

BLOCK = 4  # the block of the tiny block-causal models


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    """family -> the tiny checkpoint as stretto loads it."""
    root = tmp_path_factory.mktemp("peers")
    models = {}
    for family in ("sdar", "Fast_dLLM_Qwen", "llada"):
        write_checkpoint(family, root / family)
        models[family] = load_published(root / family)
    return models


@pytest.mark.parametrize("family", ["sdar", "Fast_dLLM_Qwen"])
@pytest.mark.parametrize(("tokens", "threshold"), [(1, 0.7), (2, 0.05)])
def test_stretto_gives_llada2_pipelines_tokens_on_a_block_causal_model(family, tokens, threshold, hosted):
    lm, prompts, gen_length = hosted[family], peer_prompts(3, 2 * BLOCK), 16
    peer = run_llada2(lm, prompts, gen_length, BLOCK, tokens, threshold)
    decode = f"lowconf:tokens={tokens},tau={threshold}"
    for cache in ("none", "block", "block:fuse"):  # the same algorithm, then stretto's exact caches
        mine = run_stretto(lm, prompts, gen_length, BLOCK, decode, cache)
        assert torch.equal(mine.tokens, peer.tokens), cache
        assert not (mine.tokens == lm.config.mask_id).any()
    steps = gen_length // BLOCK * -(-BLOCK // tokens)  # the scheduled steps: every block runs them all...
    if threshold < 0.5:  # ...unless the threshold commits more: the path that makes it LLaDA 2.0's rule is taken
        assert run_stretto(lm, prompts, gen_length, BLOCK, decode, "none").nfe < steps


def test_a_bidirectional_model_is_reported_with_why_the_algorithms_differ(hosted):
    lm, prompts = hosted["llada"], peer_prompts(2, BLOCK)
    rows = llada2_rows("llada", lm, prompts, 8, BLOCK, 1, 0.7, repeats=1)
    peer, mine = rows[0], rows[1:]
    assert peer["engine"] == LLADA2 and peer["note"] == WINDOW_NOTE
    assert [r["cache"] for r in mine] == ["none", "prefix", "dual"] and all(r["peer"] == LLADA2 for r in mine)
    assert peer["same_tokens"] == mine[0]["same_tokens"] and isinstance(peer["same_tokens"], bool)
    # What the note says: with one block the pipeline's window is the whole canvas, and the tokens agree.
    one_block = run_llada2(lm, prompts, BLOCK, BLOCK, 1, 0.7)
    assert torch.equal(
        run_stretto(lm, prompts, BLOCK, BLOCK, "lowconf:tokens=1,tau=0.7", "none").tokens, one_block.tokens
    )


def test_block_causal_rows_hold_the_comparison_and_the_positions_the_cache_saves(hosted):
    rows = llada2_rows("sdar", hosted["sdar"], peer_prompts(2, BLOCK), 8, BLOCK, 1, 0.7, repeats=1)
    peer, none, block, fused = rows
    assert peer["note"] is None and peer["same_tokens"] is True
    assert all(r["same_tokens"] for r in (none, block, fused))
    assert peer["nfe"] == none["nfe"] == 2 * BLOCK  # one call per step, no cache: the same calls
    assert block["positions"] < peer["positions"] and block["positions_saved"] == peer["positions"] / block["positions"]
    assert block["cpu_speedup"] == peer["cpu_seconds"] / block["cpu_seconds"]  # the steadier clock on a shared machine


def test_diffusion_gemma_peers_run_alone_with_the_reason(tmp_path):
    write_diffusion_gemma(tmp_path / "gemma")
    rows = gemma_rows(tmp_path / "gemma", gen_length=16, tokens=2, threshold=0.7, n=2, prompt_len=4, repeats=1)
    assert [r["engine"] for r in rows] == [GEMMA_PIPELINE, GEMMA_GENERATE]
    for r in rows:
        assert r["same_tokens"] is None and "cannot be decoded by stretto yet" in r["note"]
        assert r["tokens"] == 2 * 16 and r["positions"] > 0
    # two canvases of 8: each one encoder pass, and 4 denoising steps (8 positions / 2 per step) for the pipeline
    assert rows[0]["nfe"] == 2 * (1 + 4)
    assert "samples" in rows[1]["note"]


def test_bench_text_with_peers_writes_them_beside_the_unchanged_keys(tmp_path, capsys):
    peers = {"families": ["sdar"], "gen_length": 8, "batch_size": 2, "repeats": 1}
    result = run_text_bench(json_path=tmp_path / "text.json", plot_path=tmp_path / "text.png", models=[], peers=peers)
    saved = json.loads((tmp_path / "text.json").read_text())
    assert saved["rows"] == [] and saved["continuous"] == {} and saved["command"].endswith("--peers")
    assert [r["engine"] for r in saved["peers"]["rows"]] == [LLADA2, "stretto", "stretto", "stretto"]
    assert saved["peers"]["rows"][1]["same_tokens"] is True and result["peers"] == saved["peers"]
    assert not (tmp_path / "text.png").exists()  # no sweep, no plot
    assert "sdar: diffusers:LLaDA2Pipeline" in capsys.readouterr().out


def test_the_adapter_and_the_pipeline_refuse_padding_and_misaligned_prompts(hosted):
    lm = hosted["sdar"]
    model = PipelineLM(lm, gen_start=4)
    ids = torch.tensor([lm.tokenizer.encode("abcd")])
    with pytest.raises(ValueError, match="unpadded prompts of one length"):
        model(ids, attention_mask=torch.tensor([[0, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"prompt length \(3\) and gen_length \(8\) must be multiples of block_length"):
        run_llada2(lm, ["abc"], 8, BLOCK, 1, 0.7)
    with pytest.raises(ValueError, match=r"one length \(no padding\), got lengths \[3, 4\]"):
        run_llada2(lm, ["abc", "abcd"], 8, BLOCK, 1, 0.7)


def test_cli_peers_says_one_line_for_a_bad_width(capsys):
    assert main(["bench", "text", "--peers", "--peer-width", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Size.hidden (100)" in err and len(err.splitlines()) == 1
