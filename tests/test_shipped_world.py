"""The shipped world models: they load as what they are, follow the simulator at first, and their cache is exact."""

import pytest
import torch

from stretto import checkpoints
from stretto.bench.stream import run_episode
from stretto.eval.metrics import frame_psnr
from stretto.models.kv_cache import DEFAULT_BUDGET_BYTES, cache_bytes
from stretto.pipelines.world import StreamSettings

torch.set_num_threads(1)
MAPS = [10**6 + 100 + i for i in range(4)]  # held out: training maps are drawn below 10**6


@pytest.fixture(scope="module")
def models():
    names = ("world-tf", "world-sf", "world-sf1", "world-score", "world-sf-dmd", "world-sf-dmd1")
    return {name: checkpoints.load(name, kind="world-dit") for name in names}


def test_shipped_world_models_say_how_they_were_trained(models):
    modes = {name: checkpoints.read_config(name)["train_mode"] for name in models}
    assert modes == {"world-tf": "teacher-forcing", "world-sf": "self-forcing", "world-sf1": "self-forcing",
                     "world-score": "clip-score",
                     "world-sf-dmd": "self-forcing-dmd", "world-sf-dmd1": "self-forcing-dmd"}  # fmt: skip
    assert models["world-tf"].config == models["world-sf"].config
    # the Self Forcing students stream with the steps they were trained for; the others with the default 4
    steps = {name: m.config.sampling_steps for name, m in models.items()}
    assert steps == {
        "world-tf": None,
        "world-sf": None,
        "world-sf1": 1,
        "world-score": None,
        "world-sf-dmd": 4,
        "world-sf-dmd1": 1,
    }
    for name in ("world-sf-dmd", "world-sf-dmd1"):
        assert checkpoints.read_config(name)["teacher"] == "world-score"


@pytest.mark.parametrize("name", ["world-tf", "world-sf", "world-sf1", "world-sf-dmd1"])
def test_shipped_models_follow_the_simulator_early_on(models, name):
    run = run_episode(models[name], MAPS, 4, StreamSettings(mode="kv-rolling"), seed=3)
    psnr = frame_psnr(run.frames, run.truth)
    # Measured when shipped: ~17-20 dB over the first frames (benchmarks/results/stream.json); noise is ~5 dB.
    assert psnr[0].mean() > 15, psnr


def test_cache_is_exact_on_the_shipped_weights(models):
    model = models["world-sf"]
    n = 8
    kv = run_episode(model, MAPS[:2], n, StreamSettings(mode="kv", window=None, max_frames=n + 1), seed=0)
    recompute = run_episode(model, MAPS[:2], n, StreamSettings(mode="recompute", window=None), seed=0)
    torch.testing.assert_close(kv.frames, recompute.frames, rtol=0, atol=1e-4)


def test_default_kv_budget_holds_long_streams_and_refuses_typos(models):
    model = models["world-sf"]
    c, dtype = model.config, next(model.parameters()).dtype

    def mib(frames):
        return cache_bytes(c.n_layer, 1, c.n_head, c.head_dim, frames * c.tokens_per_frame, dtype) / 2**20

    assert 280 < mib(2001) < DEFAULT_BUDGET_BYTES / 2**20  # `--mode kv --frames 2000`: the whole stream kept
    cache = model.new_cache(1, 2001)
    assert cache.nbytes == cache_bytes(c.n_layer, 1, c.n_head, c.head_dim, 2001 * c.tokens_per_frame, dtype)
    del cache
    for frames in (100_001, 20_001):  # `--window 100000` (~14 GB) and `--mode kv --frames 20000` (~3 GB)
        with pytest.raises(ValueError, match=rf"needs {mib(frames):,.1f} MiB .* over its budget of 1,024.0 MiB"):
            model.new_cache(1, frames)
