"""Block-causal Wan (diffusers' WanTransformer3DModel + stretto's KV cache): exactness, rolling, positions, loading."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import warnings

import pytest
import torch
from diffusers import WanTransformer3DModel

import stretto
from stretto.checkpoints import CheckpointError
from stretto.models.causal_wan import CausalWan
from stretto.models.wan_checkpoints import NotCausalWarning, release_config
from stretto.pipelines.video import stream_video
from stretto.pipelines.world import StreamSettings

torch.set_num_threads(1)
LATENT = (4, 6)
TEXT_DIM = 16


def tiny_transformer(patch=(1, 2, 2), heads=2, head_dim=8, layers=2, rope_max_seq_len=32, seed=0):
    """A tiny Wan with every weight random (its zero / identity inits would hide bugs)."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=patch,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        text_dim=TEXT_DIM,
        freq_dim=16,
        ffn_dim=32,
        num_layers=layers,
        rope_max_seq_len=rope_max_seq_len,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def tiny_wan(frames_per_block=3, **kw) -> CausalWan:
    return CausalWan(tiny_transformer(**kw), frames_per_block=frames_per_block, latent_size=LATENT).eval()


def text(batch=2, tokens=5, seed=1):
    return torch.randn(batch, tokens, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def run(model, n, settings, first_block=None, prompt=None):
    prompt = text() if prompt is None else prompt
    out = list(stream_video(model, prompt, settings, first_block=first_block, frames=n))
    return torch.stack([f.pixels for f in out], 1), out


# diffusers' names -> the original Wan2.1 names of a Self-Forcing / CausVid release (the converter's inverse)
TO_RELEASE = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm3."),  # Wan's cross-attention norm is norm3; diffusers calls it norm2
    ("proj_out", "head.head"),
]


def release_state(model: WanTransformer3DModel) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        for new, old in TO_RELEASE:
            key = key.replace(new, old)
        if key.endswith("scale_shift_table"):
            key = key.replace("scale_shift_table", "modulation" if key.startswith("blocks.") else "head.modulation")
        out["model." + key] = value.clone()
    return out


# -- the processor ----------------------------------------------------------------------------------------
def test_one_block_without_cache_is_diffusers_wan():
    transformer = tiny_transformer()
    reference = tiny_transformer()  # same seed: same weights, diffusers' own processors
    model = CausalWan(transformer, frames_per_block=6, latent_size=LATENT)
    x, prompt = torch.randn(2, 6, 4, *LATENT), text()
    with torch.no_grad():
        ours = model(x, torch.full((2, 6), 0.7), model.condition(prompt))
        theirs = reference(x.transpose(1, 2), torch.full((2,), 700.0), prompt, return_dict=False)[0]
    assert (ours - theirs.transpose(1, 2)).abs().max() < 1e-5
    with pytest.raises(RuntimeError, match="call it through CausalWan"):
        transformer(x.transpose(1, 2), torch.full((2,), 700.0), prompt)


# -- streaming: exactness, rolling memory, positions, the prompt cache --------------------------------------
@pytest.mark.parametrize(
    ("patch", "fpb", "given_first_block"), [((1, 2, 2), 3, False), ((1, 2, 2), 3, True), ((2, 2, 1), 2, False)]
)
def test_stream_with_kv_cache_equals_recompute(patch, fpb, given_first_block):
    model = tiny_wan(fpb, patch=patch)
    n = 4 * fpb
    first = torch.randn(2, fpb, 4, *LATENT) if given_first_block else None
    common = {"steps": 3, "shift": 5.0}
    recompute, _ = run(model, n, StreamSettings(mode="recompute", window=None, **common), first)
    kv, _ = run(model, n, StreamSettings(mode="kv", window=None, max_frames=n + fpb, **common), first)
    rolling, _ = run(model, n, StreamSettings(mode="kv-rolling", window=n + fpb, sinks=0, **common), first)
    assert recompute.shape == (2, n, 4, *LATENT) and recompute.abs().mean() > 0.1
    assert (kv - recompute).abs().max() < 1e-5
    assert (rolling - recompute).abs().max() < 1e-5
    short, _ = run(model, n, StreamSettings(mode="kv-rolling", window=fpb, sinks=0, **common), first)
    assert (short - recompute).abs().max() > 1e-3  # a window that forgets changes the frames: the test can tell


def test_context_noise_commits_the_same_noised_past_with_and_without_the_cache():
    # Self Forcing's inference context_noise (SkyReels-V2's addnoise_condition): the past committed at a small level
    model = tiny_wan(3)
    settings = {"steps": 3, "shift": 5.0, "context_noise": 0.02}
    recompute, _ = run(model, 9, StreamSettings(mode="recompute", window=None, **settings))
    kv, _ = run(model, 9, StreamSettings(mode="kv", window=None, max_frames=12, **settings))
    clean, _ = run(model, 9, StreamSettings(mode="kv", window=None, max_frames=12, steps=3, shift=5.0))
    assert (kv - recompute).abs().max() < 1e-5
    assert torch.equal(kv[:, :3], clean[:, :3])  # nothing committed before the first block
    assert (kv[:, 3:] - clean[:, 3:]).abs().max() > 1e-4


def test_rolling_memory_is_constant_and_positions_stay_in_the_rope_table(monkeypatch):
    table = 8  # RoPE positions the model knows; the stream runs 12x past it
    model = tiny_wan(3, layers=1, rope_max_seq_len=table)
    seen = []
    rope = CausalWan.rope

    def spy(self, frame_pos, dtype):
        seen.append(int(frame_pos.max()))
        return rope(self, frame_pos, dtype)

    monkeypatch.setattr(CausalWan, "rope", spy)
    frames, out = run(model, 96, StreamSettings(mode="kv-rolling", window=6, sinks=1, steps=1))
    assert len(out) == 96 and torch.isfinite(frames).all()
    assert len({f.kv_bytes for f in out}) == 1 and out[0].kv_bytes > 0
    assert max(seen) < 1 + 6  # below sinks + window: the slot, never the frame number (up to 95)
    with pytest.raises(ValueError, match="past the model's RoPE table"):
        run(model, 3, StreamSettings(mode="kv", window=None, max_frames=table + 1))
    with pytest.raises(ValueError, match="temporal position 8 is past the model's RoPE table"):
        run(model, 12, StreamSettings(mode="recompute", window=None, steps=1))


def test_prompt_cross_attention_kv_is_computed_once_per_stream():
    model = tiny_wan(3)
    calls = []
    for block in model.transformer.blocks:
        block.attn2.to_k.register_forward_hook(lambda *_: calls.append(1))
    run(model, 12, StreamSettings(mode="kv-rolling", window=6, steps=2))
    assert len(calls) == len(model.transformer.blocks)  # 4 blocks x (2 steps + commit) calls, one projection


# -- loading: the released layout and the diffusers folder ----------------------------------------------------
def test_release_and_diffusers_layouts_load_the_same_weights(tmp_path):
    transformer = tiny_transformer()
    stale = tiny_transformer(seed=5)  # the non-EMA weights: the loader must pick generator_ema
    release = tmp_path / "self_forcing" / "checkpoints"
    release.mkdir(parents=True)
    torch.save({"generator": release_state(stale), "generator_ema": release_state(transformer), "step": 7},
               release / "self_forcing_dmd.pt")  # fmt: skip
    (release / "config.json").write_text(json.dumps({"num_heads": 2, "dim": 16}))  # Wan2.1's own config keys
    transformer.save_pretrained(tmp_path / "diffusers")

    expected = transformer.state_dict()
    for path, causal in ((release / "self_forcing_dmd.pt", "self-forcing"), (tmp_path / "diffusers", None)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = stretto.load(str(path))
        assert [w.category for w in caught] == ([] if causal else [NotCausalWarning])  # a plain Wan folder warns
        assert isinstance(model, CausalWan) and model.heads == 2 and model.causal_training == causal
        got = model.transformer.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    with pytest.raises(CheckpointError, match="is a 'causal-wan', expected a 'world-dit'"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotCausalWarning)
        stretto.load(str(tmp_path / "diffusers"), kind="world-dit")


def test_release_head_count_defaults_to_wan21_heads():
    state = tiny_transformer(heads=2, head_dim=128, layers=1).state_dict()
    config = release_config(state)
    assert (config["num_attention_heads"], config["attention_head_dim"], config["num_layers"]) == (2, 128, 1)
    assert config["patch_size"] == (1, 2, 2) and config["text_dim"] == TEXT_DIM and config["cross_attn_norm"]


# -- bad input -------------------------------------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_with_code_is_refused_with_the_conversion_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"generator": {"x": torch.zeros(1)}, "hook": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickle that holds code") as err:
        stretto.load(str(tmp_path / "evil.pt"))
    assert not (tmp_path / "PWNED").exists() and "\n" not in str(err.value)

    # a checkpoint whose pickle holds a harmless object: the command in the message converts it, then it loads
    state = release_state(tiny_transformer(layers=1))
    torch.save({"generator_ema": state, "args": argparse.Namespace(lr=1e-5)}, tmp_path / "trusted.pt")
    with pytest.raises(CheckpointError) as err:
        stretto.load(str(tmp_path / "trusted.pt"))
    command = str(err.value).split("convert it once to safetensors and load that: ")[1]
    subprocess.run([sys.executable, *shlex.split(command)[1:]], check=True)
    (tmp_path / "config.json").write_text(json.dumps({"num_heads": 2}))
    model = stretto.load(str(tmp_path / "trusted.safetensors"))
    assert torch.equal(model.transformer.proj_out.weight, state["model.head.head.weight"])

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a readable torch checkpoint"):
        stretto.load(str(tmp_path / "garbage.pt"))


def test_bad_stream_shapes_fail_in_one_line():
    with pytest.raises(ValueError, match="frames_per_block 3 must be a positive multiple of the temporal patch 2"):
        tiny_wan(3, patch=(2, 2, 1))
    model = tiny_wan(3)
    with pytest.raises(ValueError, match=r"window 2 is smaller than a block \(3 frame\(s\) per block\)"):
        run(model, 3, StreamSettings(mode="kv-rolling", window=2))
    with pytest.raises(ValueError, match=r"prompt embeddings must be \(batch, tokens, 16\), got \(2, 5, 8\)"):
        run(model, 3, StreamSettings(), prompt=torch.zeros(2, 5, 8))
    with pytest.raises(ValueError, match="StreamSettings.window=3: 3 frames do not fill whole temporal patches of 2"):
        run(tiny_wan(2, patch=(2, 2, 1)), 2, StreamSettings(mode="kv-rolling", window=3, sinks=0))
