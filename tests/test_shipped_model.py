"""The shipped model still does its job: it follows prompts, and the fast default stays close to full compute."""

import pytest

import stretto
from stretto.data.shapes import evaluation_prompts
from stretto.eval.classifier import prompt_accuracy
from stretto.eval.metrics import psnr_db


@pytest.fixture(scope="module")
def models():
    return stretto.load("shapes-flux"), stretto.load("shapes-classifier")


def test_fast_default_follows_prompts_and_matches_full_compute(models):
    model, classifier = models
    prompts = evaluation_prompts(32, seed=99)
    fast = stretto.generate(model, prompts, seeds=0)  # the defaults: dpm++2m, 8 steps
    full = stretto.generate(model, prompts, steps=32, sampler="euler", seeds=0)
    # Measured when shipped: 0.72 (one-object scenes ~1.0, two-object scenes ~0.6) and 36.3 dB.
    assert prompt_accuracy(classifier, fast.images, prompts) >= 0.65
    assert psnr_db(fast.images, full.images) > 30.0
