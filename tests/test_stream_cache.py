"""Feature caching inside a stream: exact when off, the commit pass never cached, cross-block reuse keyed on sigma."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import pytest
import torch
from test_causal_wan import run as run_wan
from test_causal_wan import text, tiny_wan
from test_world import run as run_world
from test_world import tiny_world

from stretto import cache, checkpoints
from stretto.cache.policy import CachePolicy
from stretto.cli import main
from stretto.eval.timing import BlockCounter
from stretto.models.world_dit import WorldDiT, WorldDiTConfig
from stretto.pipelines.video import stream_video
from stretto.pipelines.world import StreamContext, StreamSettings

torch.set_num_threads(1)
SETTINGS = {
    "kv": StreamSettings(mode="kv", steps=3, window=None),
    "kv-rolling": StreamSettings(mode="kv-rolling", steps=3, window=3, sinks=1),
    "recompute": StreamSettings(mode="recompute", steps=3, window=None),
}
WAN_SETTINGS = {  # blocks of 3 latent frames
    "kv-rolling": StreamSettings(mode="kv-rolling", steps=3, window=6, sinks=3),
    "recompute": StreamSettings(mode="recompute", steps=3, window=None),
}
AGGRESSIVE = "crossblock:plan=xww,refresh=1000"  # every block evaluation of steps 0-1 reused after the first block


@pytest.mark.parametrize("mode", list(SETTINGS))
def test_world_stream_with_the_cache_off_is_the_uncached_stream_bit_for_bit(mode):
    model = tiny_world()
    plain, _ = run_world(model, 5, SETTINGS[mode], batch=2)
    off, _ = run_world(model, 5, replace(SETTINGS[mode], feature_cache="none"), batch=2)
    assert torch.equal(plain, off)
    cached, _ = run_world(model, 5, replace(SETTINGS[mode], feature_cache=AGGRESSIVE), batch=2)
    assert not torch.equal(plain, cached)  # the cache did something
    assert cache.get_handle(model) is None  # and went with the stream


@pytest.mark.parametrize("mode", list(WAN_SETTINGS))
def test_causal_wan_stream_with_the_cache_off_is_the_uncached_stream_bit_for_bit(mode):
    model = tiny_wan()
    plain, _ = run_wan(model, 9, WAN_SETTINGS[mode])
    off, _ = run_wan(model, 9, replace(WAN_SETTINGS[mode], feature_cache="none"))
    assert torch.equal(plain, off)
    cached, _ = run_wan(model, 9, replace(WAN_SETTINGS[mode], feature_cache=AGGRESSIVE))
    assert not torch.equal(plain, cached)


def commits_of(model, stream, monkeypatch) -> list[tuple[torch.Tensor, object, torch.Tensor, torch.Tensor]]:
    """Run `stream()` and record every commit: its frames, condition and the KV cache right after it."""
    seen = []
    commit = StreamContext.commit

    def recording(self, frames, cond):
        commit(self, frames, cond)
        n = self.cache.length
        seen.append((frames.clone(), cond, self.cache.k[..., :n, :].clone(), self.cache.v[..., :n, :].clone()))

    monkeypatch.setattr(StreamContext, "commit", recording)
    stream()
    monkeypatch.setattr(StreamContext, "commit", commit)
    return seen


@pytest.mark.parametrize("which", ["world", "wan"])
def test_a_cached_stream_commits_the_kv_cache_a_full_model_builds_from_its_frames(which, monkeypatch):
    """The commit pass runs every block: replaying the cached stream's blocks through an uncached model gives the
    same K/V, bit for bit, after every commit (so no later frame ever attends to a stale layer)."""
    model = tiny_world() if which == "world" else tiny_wan()
    settings = SETTINGS["kv-rolling"] if which == "world" else WAN_SETTINGS["kv-rolling"]
    cached = replace(settings, feature_cache=AGGRESSIVE)
    stream = (lambda: run_world(model, 6, cached)) if which == "world" else (lambda: run_wan(model, 15, cached))
    with BlockCounter(model.blocks if which == "world" else model.transformer.blocks) as counter:
        seen = commits_of(model, stream, monkeypatch)
    assert len(seen) >= 4
    replay = StreamContext(model, seen[0][0].shape[0], settings)
    for frames, cond, k, v in seen:
        replay.commit(frames, cond)
        n = replay.cache.length
        assert torch.equal(replay.cache.k[..., :n, :], k) and torch.equal(replay.cache.v[..., :n, :], v)
    layers = len(model.blocks) if which == "world" else len(model.transformer.blocks)
    assert counter.total < len(seen) * layers * (1 + settings.steps)  # denoising blocks were reused


def test_crossblock_reuses_the_previous_blocks_same_step_found_by_sigma():
    model = tiny_world()
    kv = model.new_cache(1, 4)
    x = torch.randn(1, 1, 3, 24, 24, dtype=torch.float64)
    a = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        model(x, torch.zeros(1, 1), a, kv_cache=kv, start=0, write=True)  # one frame of context

    def call(sigma: float) -> torch.Tensor:
        t = torch.full((1, 1), sigma)
        with torch.no_grad(), cache.step(model, t):
            return model(x * sigma, t, a, kv_cache=kv, start=36)

    levels = [1.0, 0.5]
    with cache.applied(model, "crossblock:plan=xc,refresh=1000"), BlockCounter(model.blocks) as counter:
        cache.reset(model, levels)
        cache.next_loop(model, levels)
        first = [call(s) for s in levels]
        assert counter.total == 4  # nothing to reuse yet
        cache.next_loop(model, levels)  # the next stream block: the state carries over
        step1 = call(0.5)  # called first, still step 1 by its sigma: plan 'c', computed
        assert counter.total == 6 and torch.equal(step1, first[1])
        step0 = call(1.0)  # step 0: the previous block's step-0 residual, no block run
        assert counter.total == 6 and torch.allclose(step0, first[0], atol=1e-12)
        with cache.bypass(model):  # the commit pass: every block, the cache's state and records untouched
            calls = len(cache.summary(model).records)
            model(x, torch.zeros(1, 1), a, kv_cache=kv, start=36, write=True)
            assert counter.total == 8 and len(cache.summary(model).records) == calls
        summary = cache.summary(model)
    assert [r.reused for r in summary.records] == [0, 0, 0, 2]


def test_a_cache_the_caller_applied_starts_fresh_with_every_stream():
    model = tiny_world()
    cross = replace(SETTINGS["kv-rolling"], feature_cache="crossblock:plan=xww,refresh=1000")
    owned, _ = run_world(model, 4, cross)
    with cache.applied(model, "crossblock:plan=xww,refresh=1000"):
        first, _ = run_world(model, 4, SETTINGS["kv-rolling"])
        again, _ = run_world(model, 4, SETTINGS["kv-rolling"])  # nothing carried over from the first stream
        assert len(cache.summary(model).records) == 4 * 3  # the caller's cache keeps its records: one stream's
    assert torch.equal(first, owned) and torch.equal(again, owned)


def test_next_loop_starts_within_block_policies_afresh_and_can_drop_records():
    model = tiny_world()
    x = torch.randn(1, 2, 3, 24, 24, dtype=torch.float64)
    a = torch.zeros(1, 2, dtype=torch.long)
    levels = [1.0, 0.5]
    with cache.applied(model, "fora:interval=2,warmup=0,final=0"), BlockCounter(model.blocks) as counter:
        cache.reset(model, levels)
        for loop in range(2):
            cache.next_loop(model, levels, records=loop == 0)
            for s in levels:
                with torch.no_grad(), cache.step(model, s):
                    model(x, torch.full((1, 2), s), a)
            assert counter.total == 2 * (loop + 1)  # each loop: step 0 computes (fresh state), step 1 reuses
        assert len(cache.summary(model).records) == 2  # the second loop dropped the first's records


@dataclass
class _FirstRowOnly(CachePolicy):
    """Test double: compute row 0, reuse the rest (a per-row decision)."""

    name = "test-first-row-only"

    def run(self, stack, h, call):
        compute = torch.zeros_like(call.fresh)
        compute[0] = True
        return stack.compute_or_reuse(h, 0, stack.num_blocks, compute, call.state, "residual")


def test_a_policy_computing_some_rows_runs_them_over_those_rows_of_the_kv_cache():
    model = tiny_world()
    plain, _ = run_world(model, 4, SETTINGS["kv-rolling"], batch=2)
    mixed, _ = run_world(model, 4, replace(SETTINGS["kv-rolling"], feature_cache=_FirstRowOnly()), batch=2)
    assert torch.allclose(mixed[:, 0], plain[:, 0], atol=1e-12) and not torch.equal(mixed[:, 1], plain[:, 1])
    with pytest.raises(ValueError, match="decides per row .* stream batch 1"):  # CausalWan: a clear refusal
        run_wan(tiny_wan(), 6, replace(WAN_SETTINGS["kv-rolling"], feature_cache=_FirstRowOnly()))


def test_bad_feature_cache_settings_fail_in_one_line():
    model = tiny_world()
    with pytest.raises(ValueError, match=r"StreamSettings.feature_cache: .*plan must be one letter per"):
        run_world(model, 2, replace(SETTINGS["kv"], feature_cache="crossblock:plan=xq"))
    with pytest.raises(ValueError, match="StreamSettings.feature_cache: .*unknown cache policy"):
        run_world(model, 2, replace(SETTINGS["kv"], feature_cache="nope"))
    with pytest.raises(ValueError, match="runs on UNets"):
        run_world(model, 2, replace(SETTINGS["kv"], feature_cache="deepcache"))
    with pytest.raises(ValueError, match="CrossBlock.first must be below the number of blocks"):
        run_world(model, 2, replace(SETTINGS["kv"], feature_cache="crossblock:first=2"))
    with pytest.raises(ValueError, match="diffusion forcing"):
        stream_video(tiny_wan(), text(), replace(WAN_SETTINGS["kv-rolling"], feature_cache="fora"), ar_step=1)
    assert cache.get_handle(model) is None


# -- CLI and bench rows -------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_world_checkpoint(tmp_path):
    """A tiny world model of 3 blocks (crossblock with first=1 has two to reuse), every weight random."""
    torch.manual_seed(0)
    model = WorldDiT(WorldDiTConfig(n_layer=3, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return str(checkpoints.save(model.eval(), tmp_path / "world"))


def test_stream_command_takes_a_feature_cache(tiny_world_checkpoint, tmp_path, capsys):
    out = tmp_path / "w.gif"
    args = ["stream", "--model", tiny_world_checkpoint, "--frames", "4", "--out", str(out), "--cache", "crossblock"]
    assert main(args) == 0
    assert "4 steps, cache crossblock)" in capsys.readouterr().out
    assert main([*args[:-1], "crossblock:plan=q"]) == 2
    assert "plan must be one letter per denoising step" in capsys.readouterr().err


def test_bench_stream_feature_cache_rows(tiny_world_checkpoint, tmp_path):
    out = tmp_path / "stream.json"
    args = ["bench", "stream", "--models", tiny_world_checkpoint, "--frames", "4", "--modes", "kv-rolling",
            "--window", "3", "--drift-episodes", "1", "--drift-frames", "2", "--json", str(out), "--plot",
            str(tmp_path / "s.png"), "--gif", "", "--video-models", "causal-wan", "--feature-cache",
            "crossblock:plan=xcwc", "crossblock:plan=xxxx,first=1", "--cache-repeats", "2"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    # the recorded command names every option that differs from its default: it reruns the same run
    options = ("--frames 4", "--window 3", "--modes kv-rolling", "--video-models causal-wan", "--cache-repeats 2",
               "--feature-cache crossblock:plan=xcwc crossblock:plan=xxxx,first=1", "--drift-episodes 1")  # fmt: skip
    for option in options:
        assert option in result["command"]
    cached = [r for r in rows if r["feature_cache"] != "none"]
    assert [(("wan" in r["model"]), r["feature_cache"]) for r in cached] == [
        (wan, spec)
        for wan in (False, True)
        for spec in ("crossblock:plan=xcwc,first=0,refresh=8", "crossblock:plan=xxxx,first=1,refresh=8")
    ]
    for r in cached:
        assert r["mode"] == "kv-rolling" and r["frames"] == 4 and r["repeats"] == 2
        assert r["speedup_vs_uncached"] > 0 and r["speedup_vs_uncached_cpu"] > 0 and r["fps"] > 0
        assert r["blocks_per_frame"] < r["uncached_blocks_per_frame"]
        assert r["psnr_db_vs_uncached"] > 0 and r["seed_psnr_db"] > 0
        assert 0 < r["psnr_db_vs_uncached_median"] <= 99 and 0 < r["seed_psnr_db_median"] <= 99  # capped at 99
        assert (r["psnr_loss_db"] is None) == ("wan" in r["model"])  # the random Wan has no quality score
        assert r["quality_episodes"] == (1 if "wan" in r["model"] else 8)  # world: scored on 8 held-out maps
    world = [r for r in cached if "wan" not in r["model"]]
    # 3 blocks: the prompt's commit, then per frame 4 steps, and a commit but after the last frame
    assert world[0]["uncached_blocks_per_frame"] == (3 + 4 * 4 * 3 + 3 * 3) / 4
    # xcwc: steps 1 and 3 (and step 0 in the first frame: nothing to reuse yet; refresh 8), step 2 never
    assert world[0]["blocks_per_frame"] == (3 + 3 + 4 * 2 * 3 + 3 * 3) / 4
    assert (tmp_path / "s.png").exists()


def test_median_frame_psnr_is_the_typical_frames_and_caps_identical_frames():
    from stretto.bench.stream_cache import median_frame_psnr, psnr_vs

    ref = torch.zeros(5, 2, 3, 4, 4)
    frames = ref.clone()
    frames[0, 0] += 1.0  # one frame far off (MSE 1), one slightly (MSE 1e-4), eight identical
    frames[1, 1] += 0.01
    assert median_frame_psnr(frames, ref, 2.0) == 99.0  # the typical frame is identical
    assert psnr_vs(frames, ref, 2.0) < 20  # the pooled figure is set by the far-off frame
    frames[2:] += 0.01  # now most frames are off by 0.01: PSNR 10 log10(4 / 1e-4) = 46.0 dB
    assert abs(median_frame_psnr(frames, ref, 2.0) - 10 * math.log10(4 / 1e-4)) < 1e-6
