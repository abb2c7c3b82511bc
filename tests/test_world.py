"""The world model: simulator, block-causal DiT, KV cache streaming (exactness, rolling, positions), training."""

from __future__ import annotations

import gc
import json
import weakref
from dataclasses import replace

import pytest
import torch
from PIL import Image

from stretto import checkpoints
from stretto.cli import main
from stretto.data import world
from stretto.models.world_dit import WorldDiT, WorldDiTConfig
from stretto.pipelines.world import StreamSettings, denoise_block, few_step_timesteps, stream
from stretto.train.world import (
    WorldTrainConfig,
    self_forcing_loss,
    teacher_forcing_loss,
    teacher_forcing_mask,
    train_world,
)

torch.set_num_threads(1)


def tiny_world(frames_per_block: int = 1, seed: int = 0) -> WorldDiT:
    """A tiny model with every weight random (adaLN-zero init would make it output zeros, hiding bugs)."""
    torch.manual_seed(seed)
    cfg = WorldDiTConfig(n_layer=2, n_head=2, n_embd=32, frames_per_block=frames_per_block)
    model = WorldDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.double().eval()


def run(model, n_frames, settings, map_seed=3, seed=0, batch=1):
    actions = world.random_actions(n_frames + model.config.frames_per_block, torch.Generator().manual_seed(seed))
    fpb = model.config.frames_per_block
    eps = [world.simulate(map_seed + i, actions) for i in range(batch)]
    prompt = torch.stack([e.frames[:fpb] for e in eps]).double()
    prompt_actions = torch.stack([e.actions[:fpb] for e in eps])
    out = list(stream(model, prompt, prompt_actions, actions[fpb:], settings, seed=seed, frames=n_frames))
    return torch.stack([f.pixels for f in out]), out


# -- simulator --------------------------------------------------------------------------------------
def test_simulator_is_deterministic_wraps_and_locates():
    acts = world.parse_actions("N" + "R" * (world.MAP // world.STEP))
    a, b = world.simulate(5, acts), world.simulate(5, acts)
    assert torch.equal(a.frames, b.frames)
    assert a.frames.shape == (len(acts), 3, world.FRAME, world.FRAME) and a.frames.abs().max() <= 1
    assert torch.equal(a.frames[0], a.frames[-1])  # walked once around the map
    assert not torch.equal(a.frames[0], a.frames[1])
    assert world.position_error(a.frames, a.world, a.camera).max() == 0
    shifted = world.position_error(a.frames[1:], a.world, a.camera[:-1])
    assert (shifted > 0).any()
    assert not torch.equal(world.make_map(5), world.make_map(6))


def test_unknown_actions_are_listed():
    with pytest.raises(ValueError, match=r"'X'.*allowed: N \(stay\), L \(left\)"):
        world.parse_actions("RRXU")
    assert world.parse_actions("rlud") == [2, 1, 3, 4]


# -- model ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fpb", [1, 2])
def test_model_is_block_causal(fpb):
    model = tiny_world(fpb)
    x = torch.randn(1, 4, 3, 24, 24, dtype=torch.float64)
    t, a = torch.rand(1, 4), torch.randint(0, 5, (1, 4))
    y = model(x, t, a)
    x2 = x.clone()
    x2[:, -1] += 1  # change the last frame: only its block may change
    y2 = model(x2, t, a)
    assert y.shape == x.shape
    assert torch.equal(y[:, : 4 - fpb], y2[:, : 4 - fpb])
    assert not torch.allclose(y[:, 4 - fpb :], y2[:, 4 - fpb :])


def test_teacher_forcing_pass_equals_one_call_per_block():
    """The vectorised [clean ; noisy] pass gives each noisy frame what the sampler will show it."""
    model = tiny_world()
    n = 4
    clips = torch.rand(1, n, 3, 24, 24, dtype=torch.float64) * 2 - 1
    noisy = torch.randn_like(clips)
    t_clean, t_noisy = torch.zeros(1, n), torch.rand(1, n)
    acts = torch.randint(0, 5, (1, n))
    pos = torch.arange(n)
    joint = model(
        torch.cat([clips, noisy], 1),
        torch.cat([t_clean, t_noisy], 1),
        torch.cat([acts, acts], 1),
        torch.cat([pos, pos]),
        frame_mask=teacher_forcing_mask(n, 1),
    )[:, n:]
    for i in range(n):
        alone = model(
            torch.cat([clips[:, :i], noisy[:, i : i + 1]], 1),
            torch.cat([t_clean[:, :i], t_noisy[:, i : i + 1]], 1),
            acts[:, : i + 1],
        )[:, -1]
        torch.testing.assert_close(joint[:, i], alone)


# -- streaming --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fpb", [1, 2])
def test_cached_and_recomputed_streams_give_the_same_frames(fpb):
    model = tiny_world(fpb)
    n = 10
    recompute, _ = run(model, n, StreamSettings(mode="recompute", window=None), batch=2)
    kv, _ = run(model, n, StreamSettings(mode="kv", window=None, max_frames=n + fpb), batch=2)
    rolling, _ = run(model, n, StreamSettings(mode="kv-rolling", window=n + fpb, sinks=1), batch=2)
    torch.testing.assert_close(kv, recompute, rtol=0, atol=1e-10)
    torch.testing.assert_close(rolling, kv, rtol=0, atol=1e-10)  # window covers everything: nothing evicted
    short, _ = run(model, n, StreamSettings(mode="kv-rolling", window=2 * fpb, sinks=1), batch=2)
    assert not torch.allclose(short, kv)  # a short window does change what the model sees


def test_context_noise_commits_the_same_noised_past_to_the_cache_and_to_recompute():
    model = tiny_world(2)
    n, c = 8, 0.05
    recompute, _ = run(model, n, StreamSettings(mode="recompute", window=None, context_noise=c), batch=2)
    kv, _ = run(model, n, StreamSettings(mode="kv", window=None, max_frames=n + 2, context_noise=c), batch=2)
    torch.testing.assert_close(kv, recompute, rtol=0, atol=1e-10)  # the same draws, the same level, both ways
    clean, _ = run(model, n, StreamSettings(mode="kv", window=None, max_frames=n + 2), batch=2)
    zero, _ = run(model, n, StreamSettings(mode="kv", window=None, max_frames=n + 2, context_noise=0.0), batch=2)
    assert torch.equal(zero, clean)  # 0 is the clean commit, bit for bit
    assert not torch.allclose(kv, clean)  # the prompt block too is committed noised: every frame moves, a little
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match=r"context_noise must be a noise level in \[0, 1\), got"):
            run(model, n, StreamSettings(mode="kv", window=None, max_frames=n + 2, context_noise=bad))


def test_rolling_memory_is_constant_and_positions_stay_in_range():
    model = tiny_world()
    cfg = model.config
    seen_positions = []
    original = model.rope

    def spy(frame_pos, dtype):
        seen_positions.append(int(frame_pos.max()))
        return original(frame_pos, dtype)

    model.rope = spy
    window, sinks = 3, 1
    n = 4 * cfg.train_frames  # far past the clip length it was trained on
    frames, out = run(model, n, StreamSettings(mode="kv-rolling", window=window, sinks=sinks))
    assert torch.isfinite(frames).all() and len(out) == n
    assert len({f.kv_bytes for f in out}) == 1  # memory: constant from the first frame to the last
    assert max(seen_positions) <= window + sinks - 1  # RoPE never sees a position past the cache
    # The cache holds the sink (stream frame 0) and the last window - 1 frames, in order: relative distances
    # between the frames the model sees are the true ones (apart from the jump to the sink).
    cache = model.new_cache(1, sinks + window, sinks)
    assert cache.nbytes == out[0].kv_bytes


def test_rolling_cache_keeps_sinks_and_evicts_the_oldest_frames():
    model = tiny_world()
    tpf = model.config.tokens_per_frame
    cache = model.new_cache(1, 4, sink_frames=1)
    for frame in range(7):
        start = cache.make_room(tpf)
        x = torch.rand(1, 1, 3, 24, 24, dtype=torch.float64)
        with torch.no_grad():
            model(x, torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), kv_cache=cache, start=start, write=True)
        # stored absolute frame numbers are kept by eviction; model positions come from the slot
        cache.positions[:, start : start + tpf] = frame
    held = cache.positions[0, ::tpf].tolist()
    assert held == [0, 4, 5, 6]
    assert cache.length == cache.capacity


def test_closing_a_stream_releases_its_cache():
    model = tiny_world()
    made = []
    new_cache = model.new_cache
    model.new_cache = lambda *a, **k: made.append(weakref.ref(c := new_cache(*a, **k))) or c
    prompt = world.simulate(0, [0]).frames[None].double()
    endless = iter(lambda: 2, None)  # an endless stream of "move right"
    gen = stream(model, prompt, torch.zeros(1, 1, dtype=torch.long), endless, StreamSettings(mode="kv-rolling"))
    assert next(gen).kv_bytes > 0 and made[0]() is not None
    gen.close()  # what Ctrl-C or dropping the generator does
    gc.collect()
    assert made[0]() is None


@pytest.mark.parametrize(
    "settings, message",
    [
        (StreamSettings(mode="fast"), "unknown stream mode 'fast'; modes: recompute, kv, kv-rolling"),
        (StreamSettings(mode="kv-rolling", window=1), "window 1 is smaller than a block"),
        (StreamSettings(mode="kv-rolling", window=4, sinks=5), "sink count 5 must be in"),
        (StreamSettings(mode="kv", window=None), "mode kv needs max_frames"),
        (StreamSettings(kv_budget_mib=0), "StreamSettings.kv_budget_mib must be a number of MiB > 0, got 0"),
    ],
)
def test_bad_stream_settings_are_clear(settings, message):
    model = tiny_world(frames_per_block=2)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        settings.check(model)


def test_kv_mode_says_when_the_stream_outgrows_the_cache():
    with pytest.raises(ValueError, match="the kv cache holds 3 frames"):
        run(tiny_world(), 5, StreamSettings(mode="kv", window=None, max_frames=3))


def test_stream_fails_before_allocating_a_cache_over_its_budget():
    model = tiny_world()
    made = []
    new_cache = model.new_cache
    model.new_cache = lambda *a, **k: made.append(c := new_cache(*a, **k)) or c
    with pytest.raises(
        ValueError, match=r"over its budget of 1\.0 MiB; raise it with --kv-budget-mib .*smaller window"
    ):
        run(model, 2, StreamSettings(mode="kv-rolling", window=100, kv_budget_mib=1))
    with pytest.raises(ValueError, match=r"over its budget of 0\.5 MiB; raise it with --kv-budget-mib .*kv-rolling"):
        run(model, 2, StreamSettings(mode="kv", window=None, max_frames=100, kv_budget_mib=0.5))
    assert made == []  # refused before anything was allocated
    frames, out = run(model, 2, StreamSettings(mode="kv-rolling", window=8, kv_budget_mib=1))
    assert len(made) == 1 and 0 < out[0].kv_bytes <= 2**20


def test_few_step_schedule_and_grad_step():
    assert few_step_timesteps(4, 1.0) == [1.0, 0.75, 0.5, 0.25]
    assert few_step_timesteps(4, 5.0)[:2] == pytest.approx([1.0, 0.9375])
    with pytest.raises(ValueError, match="steps must be >= 1"):
        few_step_timesteps(0)
    w = torch.ones((), requires_grad=True)
    calls = []

    def call(x, t):
        calls.append(torch.is_grad_enabled())
        return x * w

    noise = torch.randn(4, 1, 1, 3, 4, 4)
    x0 = denoise_block(call, noise, few_step_timesteps(4, 1.0), grad_step=2)
    assert calls == [False, False, True] and x0.requires_grad


# -- training ---------------------------------------------------------------------------------------
def test_losses_run_and_self_forcing_never_backpropagates_through_the_cache():
    model = tiny_world().float().train()
    cfg = WorldTrainConfig(mode="self-forcing", init="unused", frames=5, window=2, sinks=1, batch_size=2)
    clips, actions = world.batch([1, 2], cfg.frames, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    tf = teacher_forcing_loss(model, clips, actions, cfg, gen)
    sf = self_forcing_loss(model, clips, actions, cfg, gen)
    for loss in (tf, sf):
        assert torch.isfinite(loss) and loss.requires_grad
    sf.backward()
    assert all(p.grad is not None for p in model.blocks.parameters())


def test_train_world_both_modes_export_loadable_checkpoints(tmp_path):
    tf = WorldTrainConfig(
        out=str(tmp_path / "tf"), steps=2, batch_size=2, frames=3, n_layer=1, n_embd=32, n_head=2, save_every=2
    )
    folder = train_world(tf)
    model = checkpoints.load(folder, kind="world-dit")
    assert json.loads((folder / "config.json").read_text())["train_mode"] == "teacher-forcing"
    sf = WorldTrainConfig(
        out=str(tmp_path / "sf"),
        mode="self-forcing",
        init=str(folder),
        steps=1,
        batch_size=2,
        frames=3,
        window=1,
        sinks=0,
        save_every=1,
    )
    sf_model = checkpoints.load(train_world(sf), kind="world-dit")
    assert sf_model.config == model.config
    # a Self Forcing run with fewer denoising steps: the model streams with them by default
    two = replace(sf, out=str(tmp_path / "sf2"), denoise_steps=2)
    folder2 = train_world(two)
    assert checkpoints.load(folder2, kind="world-dit").config.sampling_steps == 2
    assert "--denoise-steps 2" in json.loads((folder2 / "config.json").read_text())["train_command"]
    for mode in ("clip-score", "teacher-forcing"):  # the other objectives also continue a checkpoint
        other = WorldTrainConfig(out=str(tmp_path / mode), mode=mode, init=str(folder), steps=1, batch_size=2,
                                 frames=3, save_every=1)  # fmt: skip
        assert json.loads((train_world(other) / "config.json").read_text())["train_mode"] == mode
    with pytest.raises(ValueError, match="pass --init"):
        WorldTrainConfig(mode="self-forcing")


# -- CLI --------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_world_checkpoint(tmp_path):
    return str(checkpoints.save(tiny_world().float(), tmp_path / "world"))


def test_stream_command_writes_a_gif(tiny_world_checkpoint, tmp_path, capsys):
    out = tmp_path / "w.gif"
    code = main(
        [
            "stream",
            "--model",
            tiny_world_checkpoint,
            "--actions",
            "RRUL",
            "--frames",
            "6",
            "--out",
            str(out),
            "--compare",
        ]
    )
    assert code == 0
    gif = Image.open(out)
    assert gif.n_frames == 6 and gif.width == 4 * (2 * 24 + 2)
    assert "frames/s" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--actions", "RQ"], "unknown action symbol(s) 'Q'"),
        (["--frames", "0"], "--frames must be >= 1"),
        (["--window", "0"], "window 0 is smaller than a block"),
        (["--sinks", "9", "--window", "4"], "sink count 9 must be in [0, window=4]"),
    ],
)
def test_stream_bad_input_is_one_clear_line(args, message, tiny_world_checkpoint, capsys):
    assert main(["stream", "--model", tiny_world_checkpoint, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_stream_over_the_kv_budget_is_one_clear_line(tiny_world_checkpoint, tmp_path, capsys):
    out = tmp_path / "never.gif"
    assert main(["stream", "--model", tiny_world_checkpoint, "--window", "100000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error" in line]  # the progress bar may come first
    assert line.startswith("stretto: error: the KV cache needs") and "Traceback" not in err
    assert "over its budget of 1,024.0 MiB; raise it with --kv-budget-mib" in line and not out.exists()


def test_the_kv_budget_flag_raises_and_lowers_the_limit(tiny_world_checkpoint, tmp_path, capsys):
    out = tmp_path / "w.gif"
    args = ["stream", "--model", tiny_world_checkpoint, "--frames", "3", "--out", str(out)]
    assert main([*args, "--kv-budget-mib", "1e-4"]) == 2
    assert "over its budget of 9.92e-05 MiB" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--window", "4000", "--kv-budget-mib", "100000"]) == 0 and out.exists()


def test_stream_refuses_a_checkpoint_of_another_kind(tiny_flux, tmp_path, capsys):
    folder = checkpoints.save(tiny_flux, tmp_path / "flux")
    assert main(["stream", "--model", str(folder)]) == 2
    assert "expected a 'world-dit'" in capsys.readouterr().err


def test_interactive_stream_reads_actions_from_stdin(tiny_world_checkpoint, tmp_path, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("RRU\nL\nq\n"))
    out = tmp_path / "i.gif"
    assert main(["stream", "--model", tiny_world_checkpoint, "--interactive", "--out", str(out)]) == 0
    assert Image.open(out).n_frames == 4


def test_bench_stream_rows_have_the_contract_keys(tiny_world_checkpoint, tmp_path):
    out = tmp_path / "stream.json"
    code = main(
        [
            "bench",
            "stream",
            "--models",
            tiny_world_checkpoint,
            "--frames",
            "6",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "stream.png"),
            "--drift-episodes",
            "2",
            "--drift-frames",
            "5",
            "--window",
            "3",
            "--gif",
            str(tmp_path / "s.gif"),
            "--feature-cache",  # none: no cache rows (tests/test_stream_cache.py runs them)
            "--video-models",  # none: the world rows alone (tests/test_video_stream.py runs the video rows)
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    keys = {
        "mode",
        "model",
        "frames",
        "fps",
        "first_frame_ms",
        "latency_ms_p50",
        "latency_ms_p95",
        "latency_ms_p95_first10pct",
        "latency_ms_p95_last10pct",
        "kv_bytes_peak",
        "psnr_db_vs_sim",
        "position_error",
        "feature_cache",
        "speedup_vs_uncached",
        "psnr_loss_db",
    }
    assert [r["mode"] for r in result["rows"]] == ["recompute", "kv", "kv-rolling"]
    assert {(r["feature_cache"], r["speedup_vs_uncached"], r["psnr_loss_db"]) for r in result["rows"]} == {
        ("none", 1.0, 0.0)
    }
    for row in result["rows"]:
        assert keys <= row.keys() and row["frames"] == 6 and row["fps"] > 0
    assert result["rows"][0]["kv_bytes_peak"] == 0 and result["rows"][1]["kv_bytes_peak"] > 0
    assert "machine" in result and len(result["drift"]["models"][tiny_world_checkpoint]["psnr_db"]) == 5
    assert (tmp_path / "stream.png").exists()
    assert Image.open(tmp_path / "s.gif").width == 4 * (3 * 24 + 2 * 2)  # simulator | model | model + memory


def test_python_api_streams_frames_with_multi_frame_blocks():
    import stretto

    model = tiny_world(frames_per_block=2).float()
    out = list(stretto.stream_world(model, "RRUL", frames=3, mode="kv-rolling", window=4))
    assert [f.index for f in out] == [0, 1, 2] and out[0].pixels.shape == (1, 3, 24, 24)
    assert out[0].latency_s == out[1].latency_s  # one block, two frames
    with pytest.raises(ValueError, match="unknown action symbol"):
        stretto.stream_world(model, "RZ")


# -- drift measures -------------------------------------------------------------------------------------------
def test_draw_map_masks_cover_the_objects_and_keep_the_map():
    for seed in range(4):
        world_map, masks = world.draw_map(seed)
        assert torch.equal(world_map, world.make_map(seed)) and masks.dtype == torch.bool
        assert masks.flatten(1).sum(1).min() > 0  # every object keeps some pixels
        assert not (masks.sum(0) > 1).any()  # a later object covers an earlier one: masks do not overlap
        background = world_map[:, ~masks.any(0)]
        assert background.max() < world_map[:, masks.any(0)].max()  # objects are the bright pixels


def test_object_recall_on_a_hand_made_path():
    seed = 3
    episode = world.simulate(seed, [world.STAY] + [world.ACTIONS.index("R")] * 11)
    _, masks = world.draw_map(seed)
    truth = episode.frames
    shown = world.visible_objects(masks, episode.camera)
    assert shown.any()
    assert torch.equal(world.object_recall(truth, truth, masks, episode.camera).nan_to_num(1.0), torch.ones(12))
    blank = torch.full_like(truth, -0.8)
    recall = world.object_recall(blank, truth, masks, episode.camera)
    assert recall.nan_to_num(0.0).max() == 0.0 and (~recall.isnan()).any()
    # only the objects of the first frame counted: frames showing none of them are NaN
    known = world.visible_objects(masks, episode.camera[:1])
    recall_known = world.object_recall(truth, truth, masks, episode.camera, known)
    assert recall_known[0] == 1.0
    none_known = world.object_recall(truth, truth, masks, episode.camera, torch.zeros_like(known))
    assert none_known.isnan().all()


def test_bench_stream_drift_only_reports_the_three_curves_and_windows(tmp_path):
    folder = checkpoints.save(tiny_world().float(), tmp_path / "w")
    out = tmp_path / "drift.json"
    args = ["bench", "stream", "--models", str(folder), "--drift-only", "--drift-episodes", "2", "--drift-frames",
            "12", "--json", str(out), "--plot", str(tmp_path / "d.png"), "--gif", str(tmp_path / "d.gif")]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["rows"] == [] and "--drift-only" in result["command"]
    models = result["drift"]["models"]
    assert set(models) == {str(folder), f"{folder} + pose memory", "frozen prompt (baseline)"}
    for curve in models.values():
        assert len(curve["psnr_db"]) == len(curve["position_error"]) == len(curve["object_recall"]) == 12
        assert set(curve["windows"]) == {"10-12"}
        assert set(curve["windows"]["10-12"]) == {"psnr_db", "position_error", "object_recall"}
    assert (tmp_path / "d.png").exists() and (tmp_path / "d.gif").exists()
    one_step = models[str(folder)]["one_step_from_truth"]
    assert one_step["frames"] == 12 and one_step["maps"] == 2 and one_step["psnr_db"] > 0
    revisit = result["revisit"]
    assert revisit["model"] == str(folder) and revisit["revisit_frames"] == [14, 15, 16, 17, 18, 19]
    assert revisit["gain_db"] == round(revisit["with_memory_db"] - revisit["window_only_db"], 2)


def test_bench_stream_context_noise_reaches_the_drift_and_is_recorded(tmp_path, capsys):
    folder = checkpoints.save(tiny_world().float(), tmp_path / "w")
    base = ["bench", "stream", "--models", str(folder), "--drift-only", "--drift-episodes", "1", "--drift-frames", "4",
            "--plot", "", "--gif", ""]  # fmt: skip
    curves = {}
    for level in ("0", "0.3"):
        out = tmp_path / f"drift-{level}.json"
        assert main([*base, "--context-noise", level, "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        curves[level] = result["drift"]["models"][str(folder)]["psnr_db"]
        assert ("--context-noise 0.3" in result["command"]) == (level == "0.3")
    assert curves["0"] != curves["0.3"]
    assert main([*base, "--context-noise", "1.5"]) == 2
    assert "context_noise must be a noise level in [0, 1), got 1.5" in capsys.readouterr().err


# -- memory beyond the window ---------------------------------------------------------------------------------
def test_pose_memory_redraws_a_revisited_place_as_it_was():
    model = tiny_world()
    prompt, prompt_actions, _ = world.prompt_block([4], [world.STAY], 1)
    right, left = world.ACTIONS.index("R"), world.ACTIONS.index("L")

    def frames(memory):
        settings = StreamSettings(mode="kv-rolling", window=1, sinks=0, memory=memory)
        out = stream(model, prompt.double(), prompt_actions, [right, left], settings, frames=2)
        return [f.pixels[0] for f in out]

    rows = [*range(0, 9), *range(15, 24)]  # away from the agent marker, which is not map
    moved, back = frames("pose")
    # the camera is back at the prompt's place: what it drew there 1 and 2 frames ago, shifted by the 4-pixel move
    assert torch.equal(back[:, rows, 4:], moved[:, rows, :-4])
    assert torch.equal(back[:, rows, :4], prompt[0, 0][:, rows, :4].double())
    assert torch.equal(moved[:, rows, :-4], prompt[0, 0][:, rows, 4:].double())  # the prompt, seen moving right
    moved_plain, back_plain = frames(None)  # the window alone (1 frame, no sink) forgets the prompt
    assert not torch.equal(back_plain[:, rows, :4], prompt[0, 0][:, rows, :4].double())


def test_memory_settings_are_checked():
    model = tiny_world()
    prompt, prompt_actions, _ = world.prompt_block([4], [world.STAY], 1)
    with pytest.raises(ValueError, match="unknown memory 'rnn'; memories: pose"):
        next(stream(model, prompt.double(), prompt_actions, [1], StreamSettings(memory="rnn"), frames=1))
    with pytest.raises(ValueError, match=r"action\(s\) \[7\] have no known camera move"):
        next(stream(model, prompt.double(), prompt_actions, [7], StreamSettings(memory="pose"), frames=1))


@pytest.mark.parametrize("k,window", [(10, 8), (6, 3), (4, 8)])
def test_revisit_frames_are_the_places_last_seen_more_than_a_window_ago(k, window):
    from stretto.bench.drift import revisit_frames, revisit_paths

    path = revisit_paths(k)[0]
    episode = world.simulate(11, [world.STAY, *path])
    poses = [tuple(p) for p in episode.camera.tolist()]  # poses[0]: the prompt, poses[i + 1]: generated frame i
    expected = []
    for i in range(len(path)):
        last = max(j for j in range(i + 1) if poses[j] == poses[i + 1]) if poses[i + 1] in poses[: i + 1] else None
        if last is not None and (i + 1) - last > window:
            expected.append(i)
    assert revisit_frames(k, window) == expected
