"""The shapes classifier: reads a 32x32 image back into the Scene it shows.

It is the project's measuring stick for prompt adherence (`prompt_accuracy`) and, through its
penultimate features, the feature network of `metrics.FeatureFID`. Trained by `stretto.train.classifier`
on procedural data only; the shipped weights live in `stretto/weights/shapes-classifier/`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from stretto.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, Scene, ShapeObject, parse_prompt

HELDOUT_SEED = 3_000_000_000  # make_batch seeds from here on are never used for training
LAYOUTS = ("single", "horizontal", "vertical")
IGNORE = -100  # target of a head that does not apply to a scene (cross_entropy's ignore_index)
HEADS: dict[str, tuple[str, ...]] = {
    "layout": LAYOUTS,
    "color0": tuple(COLORS),
    "shape0": SHAPES,
    "color1": tuple(COLORS),  # pairs only
    "shape1": SHAPES,  # pairs only
    "size": tuple(SIZES),  # single objects only
    "position": tuple(POSITIONS),  # single objects only
}


@dataclass
class ShapesClassifierConfig:
    width: int = 32  # channels of the first stage; later stages use 1x and 2x this
    features: int = 128  # size of the penultimate features (used for FID)

    def __post_init__(self):
        for name in ("width", "features"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ShapesClassifier(nn.Module):
    """A small CNN with one head per scene attribute; objects are read in image order."""

    kind = "shapes-classifier"

    def __init__(self, config: ShapesClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            _conv(3, w),  # 32x32
            _conv(w, w, stride=2),  # 16x16
            _conv(w, w),
            _conv(w, 2 * w, stride=2),  # 8x8
            _conv(2 * w, 2 * w),
            nn.AdaptiveAvgPool2d(4),  # keep a 4x4 grid: where things are is part of the answer
            nn.Flatten(),
            nn.Linear(2 * w * 16, config.features),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(config.features, len(c)) for name, c in HEADS.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, features) of images (B, 3, 32, 32) in [-1, 1] (clipped to it first)."""
        # Clipping matches what a saved PNG shows, and keeps overshooting samples in the trained range.
        return self.body(x.clamp(-1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head, by head name."""
        f = self.features(x)
        return {name: head(f) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[Scene]:
        """The Scene each image shows, by the argmax of every head."""
        idx = {name: logits.argmax(-1).tolist() for name, logits in self(x).items()}
        pick = lambda name, i: HEADS[name][idx[name][i]]  # noqa: E731
        scenes = []
        for i in range(x.shape[0]):
            first = ShapeObject(pick("color0", i), pick("shape0", i))
            layout = pick("layout", i)
            if layout == "single":
                scenes.append(Scene((first,), size=pick("size", i), position=pick("position", i)))
            else:
                scenes.append(Scene((first, ShapeObject(pick("color1", i), pick("shape1", i))), layout=layout))
        return scenes


def scene_targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Class indices of every head for a list of scenes; IGNORE where a head does not apply."""
    rows = []
    for s in scenes:
        o = s.objects
        values = {
            "layout": s.layout or "single",
            "color0": o[0].color,
            "shape0": o[0].shape,
            "color1": o[1].color if s.is_pair else None,
            "shape1": o[1].shape if s.is_pair else None,
            "size": s.size,
            "position": s.position,
        }
        rows.append({k: IGNORE if v is None else HEADS[k].index(v) for k, v in values.items()})
    return {name: torch.tensor([r[name] for r in rows]) for name in HEADS}


@torch.no_grad()
def prompt_accuracy(
    classifier: ShapesClassifier, images: torch.Tensor, prompts: list[str], batch_size: int = 500
) -> float:
    """Fraction of images whose predicted Scene equals the prompt's Scene in every attribute."""
    if len(images) != len(prompts) or len(prompts) == 0:
        raise ValueError(f"need as many prompts as images (>= 1), got {len(prompts)} prompts, {len(images)} images")
    device = next(classifier.parameters()).device
    predicted = []
    for start in range(0, len(images), batch_size):
        predicted += classifier.predict(images[start : start + batch_size].to(device))
    return sum(p == parse_prompt(q) for p, q in zip(predicted, prompts, strict=True)) / len(prompts)
