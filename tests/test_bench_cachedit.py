"""cache-dit as the cache benchmark's third engine, on the shipped Flux model (skipped without cache-dit)."""

import json

import pytest
import torch

import stretto
from stretto.bench import cachedit_caches
from stretto.eval.metrics import psnr_db
from stretto.eval.timing import ComputeCounter

pytestmark = pytest.mark.skipif(not cachedit_caches.available(), reason="cache-dit is not installed ([compare] extra)")

torch.set_num_threads(1)

PROMPTS = ["red circle", "small blue square left of green triangle"]
KW = dict(steps=8, sampler="euler", guidance=3.0, seeds=[0, 1])
DBCACHE = {"residual_diff_threshold": 0.5, "Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "max_warmup_steps": 2}
STATIC = {**DBCACHE, "steps_computation_policy": "static"}  # masked steps always cached


@pytest.fixture(scope="module")
def shapes():
    return stretto.load("shapes-flux")


@pytest.fixture(scope="module")
def plain(shapes):
    with ComputeCounter(shapes.blocks) as counter:
        images = stretto.generate(shapes, PROMPTS, **KW).images
    return images, counter.tokens


def test_no_cache_through_cachedit_adapter_is_the_plain_model(shapes, plain):
    images = cachedit_caches.generate_with(shapes, PROMPTS, "none", {}, **KW).images
    assert torch.equal(images, plain[0])


@pytest.mark.parametrize(
    "name,params",
    [
        ("dbcache", DBCACHE),
        ("dbcache+taylorseer", {**DBCACHE, "taylorseer_order": 1}),
        ("stepmask+taylorseer", {"compute_every": 3, "taylorseer_order": 1, **STATIC}),
    ],
)  # fmt: skip
def test_cachedit_cache_skips_work_and_stays_close(shapes, plain, name, params):
    with ComputeCounter(shapes.blocks) as counter:
        images = cachedit_caches.generate_with(shapes, PROMPTS, name, params, **KW).images
    assert counter.tokens < plain[1]
    assert not torch.equal(images, plain[0]) and psnr_db(images, plain[0]) > 20
    # removed afterwards: the plain model again
    assert torch.equal(stretto.generate(shapes, PROMPTS, **KW).images, plain[0])


def test_cachedit_context_refresh_makes_generations_identical(shapes):
    with cachedit_caches.applied(shapes, "dbcache", DBCACHE, KW["steps"]):
        first = cachedit_caches.generate(shapes, PROMPTS, **KW).images
        second = cachedit_caches.generate(shapes, PROMPTS, **KW).images
    assert torch.equal(first, second)


def test_cachedit_without_refresh_would_reuse_the_old_state(shapes):
    """Why `generate` refreshes: a second generation through the bare persistent context starts from the
    first one's cached residuals (cache-dit refreshes only past num_inference_steps calls)."""
    with cachedit_caches.applied(shapes, "dbcache", DBCACHE, KW["steps"]):
        first = cachedit_caches.generate(shapes, PROMPTS, **KW).images
        second = stretto.generate(shapes, PROMPTS, **KW).images
    assert not torch.equal(first, second)


def test_step_masks_compute_every_kth_step_after_warmup():
    mask = cachedit_caches.steps_mask({"compute_every": 3, "max_warmup_steps": 4}, 14)
    assert mask == [1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1]  # the final step always computes


def test_cachedit_config_errors_name_the_cache():
    with pytest.raises(ValueError, match="unknown cache-dit cache 'nope'"):
        cachedit_caches.make_configs("nope", {}, 8)
    with pytest.raises(ValueError, match="taylorseer_order"):
        cachedit_caches.make_configs("dbcache+taylorseer", DBCACHE, 8)


def test_tiny_bench_has_cachedit_rows(tmp_path):
    from stretto.bench.cache import run_cache_bench

    run_cache_bench(
        tmp_path / "cache.json", None, num_images=2, setups=(("euler", 6),), policies=["dbcache"],
        engines=("stretto", "cache-dit"), calibrate=False,
    )  # fmt: skip
    rows = json.loads((tmp_path / "cache.json").read_text())["rows"]
    ours = [r for r in rows if r["engine"] == "stretto" and r["policy"] == "dbcache"]
    theirs = [r for r in rows if r["engine"] == "cache-dit"]
    assert len(theirs) == 4 and {r["cfg"] for r in theirs} == {"cache-dit"}
    assert set(theirs[0]) == set(ours[0])
    assert min(r["compute_fraction"] for r in theirs) < 1
