"""Shared fixtures: tiny random models (seconds on a CPU), one thread for stable timings in CI."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from stretto.data.shapes import VOCAB
from stretto.models.shapes_flux import ShapesFlux, ShapesFluxConfig


def tiny_flux_config() -> ShapesFluxConfig:
    return ShapesFluxConfig(
        vocab=VOCAB,
        double_blocks=1,
        single_blocks=2,
        heads=2,
        head_dim=16,
        text_width=32,
        axes_dims_rope=[4, 6, 6],
    )


@pytest.fixture
def tiny_flux() -> ShapesFlux:
    torch.manual_seed(0)
    return ShapesFlux(tiny_flux_config()).eval()
