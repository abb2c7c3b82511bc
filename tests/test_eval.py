"""The measuring stick: PSNR/SSIM conventions, the shipped classifier, feature FID, counting and timing."""

import math

import pytest
import torch
from torch import nn

from stretto import checkpoints
from stretto.data.shapes import make_batch
from stretto.eval.classifier import HELDOUT_SEED, ShapesClassifier, prompt_accuracy
from stretto.eval.metrics import FeatureFID, psnr_db, ssim
from stretto.eval.timing import BlockCounter, measure

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def classifier() -> ShapesClassifier:
    return checkpoints.load("shapes-classifier", kind=ShapesClassifier.kind)


def test_psnr_and_ssim_conventions():
    x, _, _ = make_batch(HELDOUT_SEED + 1, 8)
    assert psnr_db(x, x) == math.inf
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert psnr_db(x, noisy) == pytest.approx(20 * math.log10(2 / 0.1), abs=0.3)  # MSE = 0.01, range 2
    assert 0 < ssim(x, noisy) < 0.95


def test_shipped_classifier_reads_fresh_scenes(classifier):
    x, prompts, _ = make_batch(HELDOUT_SEED + 2, 400)
    assert prompt_accuracy(classifier, x, prompts) >= 0.95
    assert classifier.features(x[:4]).shape == (4, classifier.config.features)


def test_feature_fid_separates_real_from_noisy(classifier):
    fid = FeatureFID(classifier, n_reference=300)
    real, _, _ = make_batch(HELDOUT_SEED + 3, 300)
    noisy = real + 0.3 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    real_score, noisy_score = fid.score(real), fid.score(noisy)
    assert real_score < noisy_score / 3  # about 47 vs 222 at 300 images
    again = FeatureFID(classifier, n_reference=300)  # reuses the cached reference statistics
    assert again.score(real) == pytest.approx(real_score, rel=1e-4)


def test_block_counter_counts_and_removes_hooks():
    blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
    x = torch.randn(2, 4)
    with BlockCounter(blocks) as counter:
        for _ in range(2):
            for block in blocks:
                x = block(x)
        blocks[0](x)  # a block evaluated out of order still counts
    assert counter.counts == [3, 2, 2] and counter.total == 7
    assert all(not b._forward_hooks for b in blocks)
    blocks[1](x)  # after removal nothing is counted
    assert counter.counts == [3, 2, 2]


def test_measure_reports_time_and_memory():
    with measure() as m:
        buffer = torch.ones(16_000_000)  # 64 MB: above glibc's mmap threshold, so fresh pages
        del buffer
    assert m.seconds > 0 and m.memory_kind.startswith("cpu")
    if m.memory_kind == "cpu-peak-rss":
        assert m.peak_delta_bytes >= 48_000_000
