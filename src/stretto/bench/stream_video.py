"""`stretto bench stream` rows for causal video models on diffusers' classes (tiny, random weights: speed only).

- causal Wan (Self Forcing / CausVid's architecture, `CausalWan` on `WanTransformer3DModel`): recompute / kv /
  kv-rolling at the short length, kv-rolling alone at the long ones (a full cache past 1,024 frames would leave
  Wan's RoPE table; kv-rolling positions frames by cache slot and runs forever);
- SkyReels-V2 diffusion forcing, side by side: diffusers' `SkyReelsV2DiffusionForcingPipeline` (block-causal,
  `ar_step` = steps, so each block starts when the one before is clean; every call re-runs every frame) against
  stretto's KV-cache stream of the same transformer and schedule, whose frames equal the pipeline's
  (`max_abs_diff_vs_diffusers`);
- AnyFlow-FAR, side by side: diffusers' `AnyFlowFARPipeline` (re-encodes the whole prefix after every chunk, flex
  attention) against stretto's kv stream (the same frames: chunks of 128 tokens, where diffusers' unmasked
  attention padding is empty) and kv-rolling (a kept window re-encoded: constant cost per chunk).
Rows carry the world rows' keys (no simulator here: `psnr_db_vs_sim` and `position_error` are None), plus what
was computed, to check a speedup against the ideal on a noisy machine: `model_calls` (transformer forwards) and
`frames_computed` (latent frames through the transformer, summed over calls).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from stretto.bench.stream_cache import StreamRun, feature_cache_rows
from stretto.models.causal_wan import CausalWan
from stretto.pipelines.video import stream_video
from stretto.pipelines.world import StreamSettings

WAN_MODEL = "causal-wan (tiny, random)"
SKYREELS_MODEL = "skyreels-v2 (tiny, random)"
ANYFLOW_MODEL = "anyflow-far (tiny, random)"
ANYFLOW_CHUNK = 2  # 2 frames x 64 tokens: 128-token chunks
LATENT = (16, 16)  # 64 tokens per latent frame at Wan's (1, 2, 2) patches (Self Forcing: 1,560)
FRAMES_PER_BLOCK = 3  # Self Forcing's and CausVid's block
TEXT_TOKENS = 32
TINY = {  # Wan's shape at 1/20 of Wan2.1-1.3B's width: 4 layers of 4 x 16-dim heads
    "patch_size": (1, 2, 2), "num_attention_heads": 4, "attention_head_dim": 16, "in_channels": 16,
    "out_channels": 16, "text_dim": 64, "freq_dim": 32, "ffn_dim": 256, "num_layers": 4,
}  # fmt: skip


def tiny_wan(seed: int = 0) -> CausalWan:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return CausalWan(WanTransformer3DModel(**TINY).eval(), FRAMES_PER_BLOCK, LATENT).eval()


def tiny_skyreels(seed: int = 0):
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(seed)
    return SkyReelsV2Transformer3DModel(**TINY, inject_sample_info=True).eval()


def skyreels_scheduler():
    """SkyReels-V2 DF's UniPC, corrector off (diffusers 0.42.1's DF pipeline feeds its corrector an overwritten
    sample; see tests/test_video_stream.py), so both runs are one algorithm."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0, disable_corrector=list(range(1000))
    )


ROW_KEYS = (
    "mode", "model", "frames", "fps", "first_frame_ms", "latency_ms_p50", "latency_ms_p95",
    "latency_ms_p95_first10pct", "latency_ms_p95_last10pct", "kv_bytes_peak", "kv_bytes_constant",
    "psnr_db_vs_sim", "position_error", "window", "sinks", "steps", "seconds", "model_calls", "frames_computed",
)  # fmt: skip


@contextlib.contextmanager
def counting(transformer):
    """Count the transformer's forwards and the latent frames they ran: {"model_calls", "frames_computed"}."""
    counts = {"model_calls": 0, "frames_computed": 0}
    frame_dim = 1 if type(transformer).__name__.startswith("AnyFlow") else 2  # its (B, F, C, H, W), Wan's (B, C, F..)

    def count(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        counts["model_calls"] += 1
        counts["frames_computed"] += x.shape[frame_dim]

    handle = transformer.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield counts
    finally:
        handle.remove()


def video_row(mode: str, model: str, frames: list, total_s: float, first_s: float, settings: StreamSettings) -> dict:
    """A row with the world rows' keys, from the stream's `StreamFrame`s."""
    lat_ms = np.array([f.latency_s for f in frames]) * 1000
    tenth = max(1, len(lat_ms) // 10)
    kv = [f.kv_bytes for f in frames]
    return {
        "mode": mode,
        "model": model,
        "frames": len(frames),
        "fps": round(len(frames) / total_s, 2),
        "first_frame_ms": round(first_s * 1000, 2),
        "latency_ms_p50": round(float(np.percentile(lat_ms, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(lat_ms, 95)), 2),
        "latency_ms_p95_first10pct": round(float(np.percentile(lat_ms[:tenth], 95)), 2),
        "latency_ms_p95_last10pct": round(float(np.percentile(lat_ms[-tenth:], 95)), 2),
        "kv_bytes_peak": max(kv),
        "kv_bytes_constant": min(kv) == max(kv),
        "psnr_db_vs_sim": None,
        "position_error": None,
        "window": settings.window,
        "sinks": settings.sinks if settings.window is not None else 0,
        "steps": settings.steps,
        "seconds": round(total_s, 2),
    }


def timed_stream(
    model, prompt: torch.Tensor, n: int, settings: StreamSettings, progress: str | None, ar_step=None, seed: int = 0
) -> tuple:
    """(frames, total seconds, seconds to the first frame, counts, CPU seconds) of one stream at batch 1."""
    began, began_cpu, first, out = time.perf_counter(), time.process_time(), None, []
    stream = stream_video(model, prompt, settings, ar_step=ar_step, frames=n, seed=seed)
    with counting(model.transformer) as counts:
        for frame in tqdm(stream, total=n, desc=progress, leave=False, disable=progress is None):
            first = first if first is not None else time.perf_counter() - began
            out.append(frame)
    return out, time.perf_counter() - began, first, counts, time.process_time() - began_cpu


def video_settings(mode: str, steps: int, window: int, sinks: int, scheduler=None) -> StreamSettings:
    """kv: the whole stream cached; kv-rolling: window + sinks; recompute: the whole context re-run per call."""
    if mode == "kv-rolling":
        return StreamSettings(mode=mode, steps=steps, window=window, sinks=sinks, scheduler=scheduler)
    return StreamSettings(mode=mode, steps=steps, window=None, scheduler=scheduler)


def causal_wan_rows(lengths, modes, steps: int, window: int, sinks: int, print_row) -> list[dict]:
    """Every mode at the shortest length, kv-rolling at the longer ones."""
    model = tiny_wan()
    prompt = torch.randn(1, TEXT_TOKENS, TINY["text_dim"], generator=torch.Generator().manual_seed(0))
    timed_stream(model, prompt, 6, video_settings("kv-rolling", steps, window, sinks), None)  # warm-up
    rows = []
    for n in lengths:
        for mode in modes if n == min(lengths) else [m for m in modes if m == "kv-rolling"]:
            settings = video_settings(mode, steps, window, sinks)
            frames, total, first, counts, _ = timed_stream(model, prompt, n, settings, f"{mode} causal-wan {n}")
            rows.append({**video_row(mode, WAN_MODEL, frames, total, first, settings), **counts})
            print_row(rows[-1])
    return rows


def causal_wan_cache_rows(n: int, steps: int, window: int, sinks: int, policies, repeats: int, print_row) -> list[dict]:
    """Feature caching inside the tiny causal Wan's kv-rolling stream, against its uncached stream
    (`stretto.bench.stream_cache`; random weights: fidelity to the uncached latents, no quality score)."""
    model = tiny_wan()
    prompt = torch.randn(1, TEXT_TOKENS, TINY["text_dim"], generator=torch.Generator().manual_seed(0))
    settings = video_settings("kv-rolling", steps, window, sinks)
    timed_stream(model, prompt, 6, settings, None)  # warm-up

    def run(spec: str | None, seed: int) -> StreamRun:
        cached = replace(settings, feature_cache=spec)
        frames, total, first, counts, cpu = timed_stream(model, prompt, n, cached, None, seed=seed)
        pixels = torch.stack([f.pixels for f in frames])
        return StreamRun(pixels, total, cpu, lambda: {**video_row("kv-rolling", WAN_MODEL, frames, total, first,
                                                                 cached), **counts})  # fmt: skip

    return feature_cache_rows(run, model.transformer.blocks, policies, repeats, False, 0, print_row)


def skyreels_rows(n: int, steps: int, window: int, sinks: int, print_row) -> list[dict]:
    """diffusers' SkyReels-V2 DF pipeline, then stretto's kv and kv-rolling streams of the same model: one block at
    a time (ar_step = steps), then the diffusion-forcing wave (ar_step 1: every block one step behind the last)."""
    n = -(-n // FRAMES_PER_BLOCK) * FRAMES_PER_BLOCK  # the pipeline makes whole blocks
    prompt = torch.randn(1, TEXT_TOKENS, TINY["text_dim"], generator=torch.Generator().manual_seed(0))
    model = CausalWan(tiny_skyreels(), FRAMES_PER_BLOCK, LATENT).eval()
    rows = []
    for ar_step in (steps, 1):
        began = time.perf_counter()
        theirs, counts = skyreels_pipeline(prompt, n, steps, ar_step)
        total = time.perf_counter() - began
        rows.append({
            **{key: None for key in ROW_KEYS}, **counts, "mode": "diffusers-pipeline", "model": SKYREELS_MODEL,
            "frames": n, "fps": round(n / total, 2), "first_frame_ms": round(total * 1000, 2),  # all at the end
            "kv_bytes_peak": 0, "kv_bytes_constant": True, "sinks": 0, "steps": steps, "seconds": round(total, 2),
            "ar_step": ar_step,
        })  # fmt: skip
        print_row(rows[-1])
        for mode in ("kv", "kv-rolling"):
            in_flight = 0 if ar_step >= steps else -(-steps // ar_step) * FRAMES_PER_BLOCK  # the window holds them too
            settings = video_settings(mode, steps, window + in_flight, sinks, skyreels_scheduler())
            frames, total, first, counts, _ = timed_stream(model, prompt, n, settings, f"{mode} skyreels {n}", ar_step)
            rows.append({**video_row(mode, SKYREELS_MODEL, frames, total, first, settings), **counts,
                         "ar_step": ar_step})  # fmt: skip
            if mode == "kv":  # the same algorithm as the pipeline: the same frames
                ours = torch.stack([f.pixels for f in frames], dim=1)
                rows[-1]["max_abs_diff_vs_diffusers"] = float((ours - theirs).abs().max())
            print_row(rows[-1])
    return rows


def skyreels_pipeline(prompt: torch.Tensor, n: int, steps: int, ar_step: int) -> tuple[torch.Tensor, dict]:
    """n latent frames (1, n, C, h, w) from diffusers' DF pipeline, block-autoregressive, from the stream's noise;
    and its counts."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    gen = torch.Generator().manual_seed(0)  # the stream's draws (seed 0): one (steps, ...) tensor per block
    init = torch.cat([torch.randn((steps, 1, FRAMES_PER_BLOCK, TINY["in_channels"], *LATENT), generator=gen)[0]
                      for _ in range(n // FRAMES_PER_BLOCK)], dim=1)  # fmt: skip
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=None, text_encoder=None, transformer=tiny_skyreels(), vae=None, scheduler=skyreels_scheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    prepare = pipe.prepare_latents

    def prepare_given(*args, **kwargs):  # given latents, 0.42.1 returns a bare tensor where its caller unpacks four
        out = prepare(*args, **kwargs)
        return (out, out.shape[2], None, 0) if torch.is_tensor(out) else out

    pipe.prepare_latents = prepare_given
    video_frames = (n - 1) * 4 + 1  # Wan's VAE: 1 + 4 (n - 1) video frames for n latent frames
    with counting(pipe.transformer) as counts:
        frames = pipe(
            prompt=None, prompt_embeds=prompt, height=LATENT[0] * 8, width=LATENT[1] * 8, num_frames=video_frames,
            num_inference_steps=steps, guidance_scale=1.0, latents=init.transpose(1, 2).clone(), output_type="latent",
            base_num_frames=video_frames, ar_step=ar_step, causal_block_size=FRAMES_PER_BLOCK,
        ).frames.transpose(1, 2)  # fmt: skip
    return frames, counts


def tiny_far(seed: int = 0):
    from diffusers import AnyFlowFARTransformer3DModel

    torch.manual_seed(seed)
    return AnyFlowFARTransformer3DModel(**TINY).eval()


def anyflow_rows(n: int, steps: int, window: int, sinks: int, print_row) -> list[dict]:
    """diffusers' AnyFlow-FAR pipeline, then stretto's kv and kv-rolling streams of the same model and flow map."""
    from diffusers import AnyFlowFARPipeline, FlowMapEulerDiscreteScheduler

    from stretto.models.causal_far import CausalFAR

    chunk = ANYFLOW_CHUNK
    n = max(-(-n // chunk), 3) * chunk  # whole chunks; diffusers' pipeline needs at least full_chunk_limit of them
    prompt = torch.randn(1, TEXT_TOKENS, TINY["text_dim"], generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)  # the stream's draws (seed 0): one (steps, ...) tensor per chunk
    init = torch.cat([torch.randn((steps, 1, chunk, TINY["in_channels"], *LATENT), generator=gen)[0]
                      for _ in range(n // chunk)], dim=1)  # fmt: skip
    pipe = AnyFlowFARPipeline(tokenizer=None, text_encoder=None, transformer=tiny_far(), vae=None,
                              scheduler=FlowMapEulerDiscreteScheduler(shift=5.0))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    began = time.perf_counter()
    with counting(pipe.transformer) as counts:
        theirs = pipe(
            prompt=None, prompt_embeds=prompt, height=LATENT[0] * 8, width=LATENT[1] * 8, num_frames=(n - 1) * 4 + 1,
            num_inference_steps=steps, output_type="latent", chunk_partition=[chunk] * (n // chunk),
            latents=init.transpose(1, 2).clone(),
        ).frames.transpose(1, 2)  # fmt: skip
    total = time.perf_counter() - began
    rows = [{
        **{key: None for key in ROW_KEYS}, **counts, "mode": "diffusers-pipeline", "model": ANYFLOW_MODEL,
        "frames": n, "fps": round(n / total, 2), "first_frame_ms": round(total * 1000, 2),  # all frames at the end
        "kv_bytes_peak": far_pipeline_cache_bytes(n // chunk), "kv_bytes_constant": False, "sinks": 0,
        "steps": steps, "seconds": round(total, 2),
    }]  # fmt: skip
    print_row(rows[-1])
    model = CausalFAR(tiny_far(), chunk, LATENT).eval()
    sinks = -(-sinks // chunk) * chunk  # FAR keeps whole chunks
    window = max(window // chunk, 1) * chunk
    for mode in ("kv", "kv-rolling"):
        settings = video_settings(mode, steps, window, sinks, FlowMapEulerDiscreteScheduler(shift=5.0))
        frames, total, first, counts, _ = timed_stream(model, prompt, n, settings, f"{mode} anyflow {n}")
        rows.append({**video_row(mode, ANYFLOW_MODEL, frames, total, first, settings), **counts})
        if mode == "kv":  # the same algorithm as the pipeline: the same frames
            ours = torch.stack([f.pixels for f in frames], dim=1)
            rows[-1]["max_abs_diff_vs_diffusers"] = float((ours - theirs).abs().max())
        print_row(rows[-1])
    return rows


def far_pipeline_cache_bytes(chunks: int) -> int:
    """The K/V bytes diffusers' AnyFlowFARPipeline allocates for `chunks` chunks (fp32): sized for the whole video."""
    limit, (h, w) = 3, LATENT  # full_chunk_limit; (1, 2, 2) full and (1, 4, 4) compressed patches
    per_token = 2 * TINY["num_layers"] * TINY["num_attention_heads"] * TINY["attention_head_dim"] * 4
    full = limit * ANYFLOW_CHUNK * (h // 2) * (w // 2)
    compressed = (chunks - limit + 1) * ANYFLOW_CHUNK * (h // 4) * (w // 4)
    return per_token * (full + compressed)
