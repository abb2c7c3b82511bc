"""Image quality: error against the full-compute output (PSNR, SSIM) and distribution quality (FID).

All images are float (B, 3, H, W) in the model's data space [-1, 1].
- `psnr_db`: torchmetrics' PSNR with data_range 2.0, computed per image and averaged over the batch.
  Identical images give inf (no cap): a bit-identical result (a cache switched off) shows up as inf.
- `ssim`: torchmetrics' SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5), per image, averaged.
  Images are mapped to [0, 1] and use data_range 1.0: SSIM's luminance term assumes non-negative
  intensities, so it is not shift-invariant and would misbehave on [-1, 1] data directly.
- `FeatureFID`: Frechet distance (Heusel et al. 2017) of the shapes classifier's penultimate features,
  against procedural reference images. The numbers are on this project's own scale, not Inception FID's.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance

from stretto.data.shapes import make_batch
from stretto.eval.classifier import ShapesClassifier

REFERENCE_SEED = 2_000_000_000  # make_batch seed of the FID reference set; no training uses it


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR in dB of two image batches in [-1, 1] (inf where images are identical)."""
    return float(peak_signal_noise_ratio(a.float(), b.float(), data_range=2.0, dim=(1, 2, 3)))


def frame_psnr(frames: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per frame and row (N, B) for frames in [-1, 1]."""
    mse = (frames - truth).pow(2).flatten(2).mean(-1).clamp_min(1e-10)
    return 10 * torch.log10(4 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image SSIM of two image batches in [-1, 1] (1.0 for identical images)."""
    a, b = (a.double() + 1) / 2, (b.double() + 1) / 2  # float64: identical images give 1 to ~1e-12
    return float(structural_similarity_index_measure(a, b, data_range=1.0))


class _ClassifierFeatures(nn.Module):
    """The extractor torchmetrics wants: images -> (B, F), with `num_features` set (no dummy forward)."""

    def __init__(self, classifier: ShapesClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.config.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)


# Reference statistics per classifier object and (n_reference, seed), computed once per process.
_REFERENCE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class FeatureFID:
    """FID of generated images against n_reference procedural images, in shapes-classifier feature space.

    Images go to the classifier as they are, in [-1, 1] at 32x32 (it clips them to [-1, 1]; no resizing).
    FID is biased upwards at small sample sizes: compare scores computed from the same number of images.
    The reference statistics are cached per classifier object; do not modify its weights in place.
    """

    def __init__(
        self,
        classifier: ShapesClassifier,
        n_reference: int = 2000,
        seed: int = REFERENCE_SEED,
        batch_size: int = 500,
    ):
        if n_reference < 2:
            raise ValueError(f"n_reference must be >= 2, got {n_reference}")
        self.batch_size = batch_size
        self.device = next(classifier.parameters()).device
        self.metric = FrechetInceptionDistance(feature=_ClassifierFeatures(classifier), reset_real_features=False)
        self.metric.to(self.device)
        cache = _REFERENCE_CACHE.setdefault(classifier, {})
        names = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
        if (n_reference, seed) not in cache:
            self._update(make_batch(seed, n_reference)[0], real=True)
            cache[n_reference, seed] = tuple(getattr(self.metric, k).clone() for k in names)
        for name, value in zip(names, cache[n_reference, seed], strict=True):
            setattr(self.metric, name, value.to(self.device, copy=True))

    def _update(self, images: torch.Tensor, real: bool) -> None:
        for start in range(0, len(images), self.batch_size):
            self.metric.update(images[start : start + self.batch_size].to(self.device).float(), real=real)

    def score(self, images: torch.Tensor) -> float:
        """FID of a batch of generated images (at least 2) against the reference set."""
        if len(images) < 2:
            raise ValueError(f"FID needs at least 2 images, got {len(images)}")
        self.metric.reset()  # keeps the reference statistics (reset_real_features=False)
        self._update(images, real=False)
        return float(self.metric.compute())
