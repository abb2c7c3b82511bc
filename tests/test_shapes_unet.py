"""The shapes UNet (UNet2DConditionModel): it generates through the shared pipeline, DeepCache and Faster Diffusion
attach to it through the model, caching off is the plain model bit for bit, and the cache bench counts its MACs."""

import pytest
import torch

import stretto
from stretto import checkpoints
from stretto.bench.cache import run_cache_bench
from stretto.data import shapes
from stretto.eval.timing import MacCounter
from stretto.models.shapes_unet import ShapesUNet, ShapesUNetConfig
from stretto.train.image import ImageTrainConfig

torch.set_num_threads(1)

PROMPTS = ["red circle", "small blue square left of green triangle"]
KW = dict(steps=8, sampler="euler", guidance=3.0, seeds=[0, 1])


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return ShapesUNet(ShapesUNetConfig(vocab=shapes.VOCAB, widths=[8, 16, 16], head_dim=8, text_width=16)).eval()


def test_caching_off_is_the_plain_unet_bit_for_bit(unet):
    plain = stretto.generate(unet, PROMPTS, **KW)
    off = stretto.generate(unet, PROMPTS, cache="none", **KW)
    assert torch.equal(plain.images, off.images)
    assert plain.stats.total_block_evals == off.stats.total_block_evals == 8 * len(unet.blocks)


@pytest.mark.parametrize("policy", ["deepcache:interval=3", "fasterdiffusion:interval=2"])
def test_unet_policies_skip_blocks_and_stay_close(unet, policy):
    plain = stretto.generate(unet, PROMPTS, **KW)
    cached = stretto.generate(unet, PROMPTS, cache=policy, **KW)
    summary = cached.stats.cache
    assert 0 < summary.compute_fraction < 1
    # the pipeline's block count (per batched CFG call) subtracts the calls that returned stored features; the
    # summary counts per branch
    assert 2 * cached.stats.total_block_evals == summary.totals()["computed"]
    assert cached.stats.total_block_evals < plain.stats.total_block_evals
    assert torch.isfinite(cached.images).all()
    assert (cached.images - plain.images).abs().mean() < 0.2
    again = stretto.generate(unet, PROMPTS, cache=policy, **KW)  # state does not leak across generations
    assert torch.equal(again.images, cached.images)


def test_transformer_policies_are_refused_naming_the_unet_policies(unet):
    with pytest.raises(ValueError, match="UNet2DConditionModel is a UNet: its cache policies are deepcache"):
        stretto.generate(unet, PROMPTS, cache="fora:interval=2", **KW)


def test_mac_counter_sees_skipped_blocks(unet):
    with MacCounter(unet.unet) as full:
        stretto.generate(unet, PROMPTS, **KW)
    with MacCounter(unet.unet) as cached:
        stretto.generate(unet, PROMPTS, cache="deepcache:interval=2", **KW)
    assert 0 < cached.macs < full.macs


def test_checkpoint_round_trip_is_exact(unet, tmp_path):
    checkpoints.save(unet, tmp_path / "u")
    loaded = stretto.load(str(tmp_path / "u"))
    assert isinstance(loaded, ShapesUNet)
    assert torch.equal(stretto.generate(loaded, PROMPTS, **KW).images, stretto.generate(unet, PROMPTS, **KW).images)


def test_cache_bench_on_a_unet_runs_its_policies_only(unet, tmp_path):
    checkpoints.save(unet, tmp_path / "u")
    result = run_cache_bench(None, None, model=str(tmp_path / "u"), num_images=2, setups=(("euler", 6),))
    policies = {r["policy"] for r in result["rows"]}
    assert policies == {"none", "deepcache", "fasterdiffusion"}
    assert {r["engine"] for r in result["rows"]} == {"stretto"}
    skipping = [r for r in result["rows"] if r["policy"] != "none"]
    assert all(0 < r["compute_fraction"] < 1 for r in skipping)


def test_train_config_refuses_unet_options_it_cannot_take():
    with pytest.raises(ValueError, match="arch must be one of flux, unet"):
        ImageTrainConfig(arch="dit")
    with pytest.raises(ValueError, match="--arch unet trains from scratch"):
        ImageTrainConfig(arch="unet", init_from="shapes-flux")


def test_config_names_a_bad_patch_or_width():
    with pytest.raises(ValueError, match="patch must be a positive divisor of image_size 32, got 3"):
        ShapesUNetConfig(vocab=shapes.VOCAB, patch=3)
    with pytest.raises(ValueError, match="widths must be >= 2 positive multiples of 8"):
        ShapesUNetConfig(vocab=shapes.VOCAB, widths=[12, 16])
