"""Streaming causal video models end to end: SkyReels-V2 vs its diffusers pipeline, prompt switching, text in and
decoded frames out of a Wan pipeline folder, the plain-Wan warning, `stretto stream --model <folder>`."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    SkyReelsV2DiffusionForcingPipeline,
    SkyReelsV2Transformer3DModel,
    UniPCMultistepScheduler,
)
from test_causal_wan import LATENT, TEXT_DIM, text, tiny_transformer, tiny_wan

import stretto
from stretto.cli import main
from stretto.models.causal_wan import CausalWan
from stretto.models.wan_checkpoints import NotCausalWarning
from stretto.models.wan_parts import StreamDecoder
from stretto.pipelines.video import stream_video
from stretto.pipelines.world import StreamSettings

torch.set_num_threads(1)


def tiny_skyreels(seed=0) -> SkyReelsV2Transformer3DModel:
    torch.manual_seed(seed)
    model = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32, inject_sample_info=True,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def unipc(**kw) -> UniPCMultistepScheduler:
    """SkyReels-V2 DF's scheduler (flow prediction, flow sigmas, shift 8)."""
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0, **kw)


def latents(frames) -> torch.Tensor:
    return torch.stack([f.pixels for f in frames], 1)


# -- SkyReels-V2 diffusion forcing: stretto's KV-cache stream vs diffusers' pipeline ----------------------------
@pytest.mark.parametrize(("mode", "ar_step"), [("kv", 4), ("kv", 1), ("kv", 3), ("recompute", 2)])
def test_skyreels_stream_equals_the_diffusers_pipeline(mode, ar_step):
    fpb, steps, blocks = 3, 4, 4
    n = fpb * blocks
    # UniPC's corrector is off: diffusers 0.42.1's DF pipeline steps each frame's solver on a view of its latents
    # and then writes into that view, so the solver's remembered sample is overwritten before its corrector reads
    # it; with the corrector off both runs are the same algorithm (checked with it on, they differ by ~0.1)
    scheduler = unipc(disable_corrector=list(range(steps)))
    prompt = text(batch=1)
    model = CausalWan(tiny_skyreels(), frames_per_block=fpb, latent_size=LATENT)
    settings = StreamSettings(mode=mode, window=None, steps=steps, scheduler=scheduler)
    ours = latents(stream_video(model, prompt, settings, ar_step=ar_step, frames=n, seed=3))

    gen = torch.Generator().manual_seed(3)  # the driver's noise draws, one (steps, ...) tensor per block
    init = torch.cat([torch.randn((steps, 1, fpb, 4, *LATENT), generator=gen)[0] for _ in range(blocks)], dim=1)
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=None, text_encoder=None, transformer=tiny_skyreels(), vae=None, scheduler=copy.deepcopy(scheduler)
    )
    pipe.set_progress_bar_config(disable=True)
    prepare = pipe.prepare_latents  # given latents, 0.42.1 returns a bare tensor where its caller unpacks four

    def prepare_with_latents(*args, **kwargs):
        out = prepare(*args, **kwargs)
        return (out, out.shape[2], None, 0) if torch.is_tensor(out) else out

    pipe.prepare_latents = prepare_with_latents
    video_frames = (n - 1) * 4 + 1  # Wan's VAE: 1 + 4 (n - 1) video frames for n latent frames
    theirs = pipe(
        prompt=None, prompt_embeds=prompt, height=LATENT[0] * 8, width=LATENT[1] * 8, num_frames=video_frames,
        num_inference_steps=steps, guidance_scale=1.0, latents=init.transpose(1, 2).clone(), output_type="latent",
        base_num_frames=video_frames, ar_step=ar_step, causal_block_size=fpb,
    ).frames.transpose(1, 2)  # fmt: skip
    # ar_step = steps: each block starts when the one before is clean (one block at a time); below: a wave of
    # blocks in flight, each ar_step steps behind the one before (diffusion forcing over the KV cache)
    assert ours.shape == theirs.shape and ours.abs().mean() > 0.5
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("ar_step", [None, 1])
def test_skyreels_rolls_past_its_rope_table_with_constant_memory(ar_step):
    model = CausalWan(tiny_skyreels(), frames_per_block=3, latent_size=LATENT)  # RoPE table: 32 frames
    settings = StreamSettings(mode="kv-rolling", window=9, sinks=0, steps=2, scheduler=unipc())
    out = list(stream_video(model, text(batch=1), settings, ar_step=ar_step, frames=60))
    assert [f.index for f in out] == list(range(60)) and torch.isfinite(latents(out)).all()
    assert len({f.kv_bytes for f in out}) == 1


# -- prompt switching (CausVid's dynamic prompting) --------------------------------------------------------------
def test_prompt_switch_keeps_the_video_cache_and_computes_the_new_text_kv_once():
    model = tiny_wan(3)
    calls = []
    for block in model.transformer.blocks:
        block.attn2.to_k.register_forward_hook(lambda *_: calls.append(1))
    a, b = text(batch=1, seed=1), text(batch=1, seed=2)
    settings = StreamSettings(mode="kv", window=None, max_frames=12, steps=2)
    switched = latents(stream_video(model, a, settings, switches={5: b}, frames=12))
    assert len(calls) == 2 * len(model.transformer.blocks)  # each prompt's K/V once, not per block or step
    only_a = latents(stream_video(model, a, settings, frames=12))
    assert torch.equal(switched[:, :6], only_a[:, :6])  # frame 5 is inside block 1: the switch starts at frame 6
    assert (switched[:, 6:] - only_a[:, 6:]).abs().max() > 1e-3

    # the same switch done by hand: block 2 onwards under prompt b, attending to the cache filled under prompt a
    from stretto.pipelines.world import stream_blocks

    by_hand = latents(stream_blocks(model, [a, a, b, b], settings, batch=1, frames=12))
    assert torch.equal(switched, by_hand)


def test_bad_switches_fail_in_one_line():
    model = tiny_wan(3)
    with pytest.raises(ValueError, match="the prompt switch at frame 6 has an empty prompt"):
        stretto.stream(model, "a cat", switches={6: "  "})
    with pytest.raises(ValueError, match=r"a prompt switch's frame must be an int >= 1 .*got 0"):
        stretto.stream(model, "a cat", switches={0: "a dog"})
    with pytest.raises(ValueError, match=r"ar_step must be an int in \[1, steps=4\), got 0"):
        next(stretto.stream(model, text(batch=1), ar_step=0, scheduler=unipc()))
    with pytest.raises(ValueError, match="diffusion forcing steps every block with its own solver"):
        next(stretto.stream(model, text(batch=1), ar_step=2))
    with pytest.raises(ValueError, match="the prompt is empty"):
        stretto.stream(model, "")
    with pytest.raises(ValueError, match="'a cat' is text, but no text encoder was found"):
        next(stretto.stream(model, "a cat"))
    assert main(["stream", "--model", "world-sf", "--prompt", "a cat"]) == 2


# -- a diffusers Wan pipeline folder: text in, decoded frames out -----------------------------------------------
def tiny_vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    return AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0],
    ).eval()  # fmt: skip


def save_pipeline_folder(path, causal_training: str | None = "self-forcing"):
    """A tiny Wan pipeline folder in diffusers' layout: transformer, UMT5 text encoder, tokenizer, VAE."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    tiny_transformer(rope_max_seq_len=64).save_pretrained(path / "transformer")
    if causal_training:
        config = json.loads((path / "transformer" / "config.json").read_text())
        (path / "transformer" / "config.json").write_text(json.dumps({**config, "causal_training": causal_training}))
    words = ["<pad>", "</s>", "<unk>", "a", "red", "blue", "ball", "rolls", "cat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path / "tokenizer")
    torch.manual_seed(0)
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1,
                                          num_heads=2, relative_attention_num_buckets=8))  # fmt: skip
    encoder.save_pretrained(path / "text_encoder")
    tiny_vae().save_pretrained(path / "vae")
    return path


def test_streaming_decode_equals_one_decode_of_the_whole_latent_video():
    vae = tiny_vae()
    z = torch.randn(1, 9, 4, *LATENT)
    decoder = StreamDecoder(vae)
    streamed = torch.cat([decoder.decode(z[:, i : i + 3]) for i in range(0, 9, 3)], dim=1)
    with torch.no_grad():
        whole = vae.decode(z.transpose(1, 2) * decoder.std + decoder.mean).sample.transpose(1, 2)
    assert streamed.shape == (1, 1 + 4 * 8, 3, LATENT[0] * 8, LATENT[1] * 8)
    assert (streamed - whole).abs().max() < 1e-5


def test_stream_a_pipeline_folder_from_text_with_a_switch(tmp_path):
    folder = save_pipeline_folder(tmp_path / "wan")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotCausalWarning)  # its config says it was trained to stream
        stream = stretto.stream(str(folder / "transformer"), "a red ball", switches={3: "a blue ball"}, frames=6,
                                steps=2, latent_size=LATENT)  # fmt: skip
        frames = list(stream)
    assert [f.index for f in frames] == list(range(1 + 4 * 5))  # 6 latent frames -> 21 video frames, in order
    video = torch.stack([f.pixels for f in frames], 1)
    assert video.shape == (1, 21, 3, LATENT[0] * 8, LATENT[1] * 8)
    assert video.abs().max() <= 1 and video.std() > 0.01
    kw = {"frames": 6, "steps": 2, "latent_size": LATENT, "decode": False}
    plain = latents(stretto.stream(str(folder), "a red ball", **kw))
    switched = latents(stretto.stream(str(folder), "a red ball", switches={3: "a blue ball"}, **kw))
    assert torch.equal(switched[:, :3], plain[:, :3])  # block 0 is before the switch
    # the text encoder's "blue" changed the rest (a little: 3 words among Wan's 512 zero-padded text positions)
    assert (switched[:, 3:] - plain[:, 3:]).abs().max() > 1e-3
    # text in, frames out, switch mid-stream: the same from the command line, to a GIF
    out = tmp_path / "cat.gif"
    args = ["stream", "--model", str(folder), "--prompt", "a red ball", "--switch", "3:a cat rolls", "--frames", "6",
            "--steps", "2", "--latent-size", "4x6", "--out", str(out)]  # fmt: skip
    assert main(args) == 0 and out.stat().st_size > 0
    assert main([*args[:5], "--switch", "3:", *args[7:]]) == 2  # an empty prompt in a switch: a one-line error


def test_a_plain_wan_folder_streams_with_a_warning(tmp_path):
    folder = save_pipeline_folder(tmp_path / "wan", causal_training=None)
    with pytest.warns(NotCausalWarning, match="not block-causally"):
        model = stretto.load(str(folder))
    assert model.causal_training is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotCausalWarning)
        assert stretto.load(str(save_pipeline_folder(tmp_path / "sf"))).causal_training == "self-forcing"


# -- bench rows -------------------------------------------------------------------------------------------------
def test_bench_stream_video_rows(tmp_path):
    out = tmp_path / "stream.json"
    args = ["bench", "stream", "--models", "--frames", "6", "9", "--json", str(out), "--plot", "", "--gif", "",
            "--window", "3", "--sinks", "0", "--steps", "2", "--feature-cache"]  # fmt: skip
    assert main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    world_keys = {"mode", "model", "frames", "fps", "latency_ms_p95_last10pct", "kv_bytes_peak", "psnr_db_vs_sim"}
    assert all({*world_keys, "feature_cache", "speedup_vs_uncached", "psnr_loss_db"} <= row.keys() for row in rows)
    wan = [(r["mode"], r["frames"]) for r in rows if "wan" in r["model"]]
    assert wan == [("recompute", 6), ("kv", 6), ("kv-rolling", 6), ("kv-rolling", 9)]
    assert all(r["kv_bytes_constant"] for r in rows if r["mode"] == "kv-rolling")
    computed = {r["mode"]: r["frames_computed"] for r in rows if "wan" in r["model"] and r["frames"] == 6}
    assert computed == {"recompute": 2 * 3 + 2 * 6, "kv": 2 * 3 + 3 + 2 * 3, "kv-rolling": 2 * 3 + 3 + 2 * 3}
    sky = [(r["mode"], r["ar_step"]) for r in rows if "skyreels" in r["model"]]
    assert sky == [(mode, a) for a in (2, 1) for mode in ("diffusers-pipeline", "kv", "kv-rolling")]
    for ar_step in (2, 1):  # one block at a time, then the wave
        sky = {r["mode"]: r for r in rows if "skyreels" in r["model"] and r["ar_step"] == ar_step}
        assert sky["kv"]["max_abs_diff_vs_diffusers"] < 1e-4
        assert sky["kv"]["frames_computed"] < sky["diffusers-pipeline"]["frames_computed"]  # it re-runs every frame
    far = {r["mode"]: r for r in rows if "anyflow" in r["model"]}
    assert list(far) == ["diffusers-pipeline", "kv", "kv-rolling"] and far["kv"]["max_abs_diff_vs_diffusers"] < 1e-4
    assert far["kv-rolling"]["frames_computed"] < far["diffusers-pipeline"]["frames_computed"]
    assert {(r["feature_cache"], r["speedup_vs_uncached"], r["psnr_loss_db"]) for r in rows} == {("none", 1.0, 0.0)}


# -- AnyFlow-FAR: its compressed + full caches in stretto's KVCache -----------------------------------------------
def tiny_far(seed=0, layers=1, rope=64):
    from diffusers import AnyFlowFARTransformer3DModel

    torch.manual_seed(seed)
    model = AnyFlowFARTransformer3DModel(
        patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=3, num_attention_heads=2,
        attention_head_dim=12, in_channels=4, out_channels=4, text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32,
        num_layers=layers, rope_max_seq_len=rope,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


# diffusers 0.42.1 pads its KV-cache attention to a multiple of 128 tokens without masking the padding (zero keys
# take softmax weight), so these sizes make every attention of its a multiple of 128 tokens: 16 x 16 latents give a
# 2-frame chunk 128 tokens; 32 x 64 give 512 full and 128 compressed tokens a frame (for a one-frame chunk)
@pytest.mark.parametrize(
    ("partition", "size"),
    [([2, 2, 2, 2], (16, 16)), ([1, 2, 2, 2], (32, 64))],  # uniform chunks; the released layout's one-frame first
)
def test_anyflow_far_stream_equals_the_diffusers_pipeline(partition, size):
    from diffusers import AnyFlowFARPipeline, FlowMapEulerDiscreteScheduler

    from stretto.models.causal_far import CausalFAR

    # 4 chunks: from chunk 3 on the oldest chunk is compressed context
    fpb, steps, n = 2, 2, sum(partition)
    prompt = text(batch=1)
    flow_map = FlowMapEulerDiscreteScheduler(shift=5.0)

    def streams(size):  # stretto's kv and recompute streams of the same model
        model = CausalFAR(tiny_far(), fpb, size, first_chunk=partition[0])
        settings = {"window": None, "steps": steps, "sinks": 0, "scheduler": flow_map}
        return [latents(stream_video(model, prompt, StreamSettings(mode=mode, **settings), frames=n))
                for mode in ("kv", "recompute")]  # fmt: skip

    kv, recompute = streams(size)
    gen = torch.Generator().manual_seed(0)  # the driver's noise draws: one (steps, ...) tensor per chunk
    init = torch.cat([torch.randn((steps, 1, k, 4, *size), generator=gen)[0] for k in partition], dim=1)
    pipe = AnyFlowFARPipeline(tokenizer=None, text_encoder=None, transformer=tiny_far(), vae=None,
                              scheduler=FlowMapEulerDiscreteScheduler(shift=5.0))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompt=None, prompt_embeds=prompt, height=size[0] * 8, width=size[1] * 8, num_frames=(n - 1) * 4 + 1,
        num_inference_steps=steps, output_type="latent", chunk_partition=partition,
        latents=init.transpose(1, 2).clone(),
    ).frames.transpose(1, 2)  # fmt: skip
    assert theirs.shape == kv.shape and theirs.abs().mean() > 0.5
    assert (kv - theirs).abs().max() < 1e-4
    assert (recompute - theirs).abs().max() < 1e-4  # FAR's training forward over context + block
    if partition[0] != fpb:  # at a size diffusers pads, the cache and recompute still agree with each other
        kv, recompute = streams((16, 16))
        assert (kv - recompute).abs().max() < 1e-4


def test_anyflow_far_computes_each_prompts_text_kv_once_per_stream():
    from diffusers import FlowMapEulerDiscreteScheduler

    from stretto.models.causal_far import CausalFAR

    model = CausalFAR(tiny_far(), 2, (8, 8))
    calls = []
    for block in model.transformer.blocks:
        block.attn2.to_k.register_forward_hook(lambda *_: calls.append(1))
    settings = StreamSettings(mode="kv", window=None, steps=2, sinks=0, scheduler=FlowMapEulerDiscreteScheduler())
    out = latents(stream_video(model, text(batch=1), settings, switches={3: text(batch=1, seed=2)}, frames=8))
    assert torch.isfinite(out).all()
    assert len(calls) == 2 * len(model.transformer.blocks)  # not once per block, step and commit (18 calls each)
    with pytest.raises(TypeError, match="prompt must be a PromptKV"):
        model(out[:, :2], torch.ones(1, 2), text(batch=1))
    noisy = StreamSettings(mode="kv", window=None, steps=2, sinks=0, scheduler=FlowMapEulerDiscreteScheduler(),
                           context_noise=0.02)  # fmt: skip
    with pytest.raises(ValueError, match="AnyFlow-FAR re-encodes its whole context at t = 0"):
        list(stream_video(model, text(batch=1), noisy, frames=4))


def test_anyflow_far_rolls_past_its_rope_table_with_constant_memory(tmp_path):
    from diffusers import FlowMapEulerDiscreteScheduler

    tiny_far(rope=12).save_pretrained(tmp_path / "far")
    model = stretto.load(str(tmp_path / "far"))
    assert model.kind == "causal-far"
    # the one-frame first chunk is the sink
    settings = {"mode": "kv-rolling", "window": 6, "sinks": 1, "steps": 2, "scheduler": FlowMapEulerDiscreteScheduler()}
    out = list(stretto.stream(model, text(batch=1), frames=60, latent_size=(8, 8), **settings))
    assert len(out) == 60 and torch.isfinite(latents(out)).all()  # 5x its 12-frame RoPE table
    assert len({f.kv_bytes for f in out}) == 1 and out[0].kv_bytes > 0
    assert model.first_block_frames == 1  # the config's chunk_partition (1, 3, 3, ...): streamed as trained
    with pytest.raises(
        ValueError, match=r"sinks=2: 2 frames are not whole chunks \(a first chunk of 1 then chunks of 3"
    ):
        next(stretto.stream(model, text(batch=1), frames=6, latent_size=(8, 8), **{**settings, "sinks": 2}))
    with pytest.raises(ValueError, match=r"sinks: 3 frames from the start are not whole chunks \(a first chunk of 1"):
        next(stretto.stream(model, text(batch=1), frames=6, latent_size=(8, 8), **{**settings, "sinks": 3}))
    with pytest.raises(ValueError, match="past the model's RoPE table"):
        next(stretto.stream(model, text(batch=1), frames=15, latent_size=(8, 8), mode="kv", window=None))
