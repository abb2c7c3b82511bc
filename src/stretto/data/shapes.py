"""Procedural "shapes" scenes: 32x32 RGB images of coloured shapes, each with a prompt that describes it.

Two kinds of scene, drawn with equal probability:
- one object:  "a small red circle on the left"      (colour x shape x size x position)
- two objects: "a red circle left of a blue square"  (colour x shape for each, and their relation)

Everything is a pure function of a seed, so the same seed gives the same pixels and prompts.
Shapes are drawn 4x larger with PIL and box-filtered down, which gives anti-aliased edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
_SUPERSAMPLE = 4

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 175, 70),
    "blue": (50, 90, 225),
    "yellow": (235, 210, 50),
    "purple": (155, 65, 195),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 5.0, "large": 9.0}
POSITIONS = {  # object centre in pixels (x, y) and the words that name it
    "left": ((9.0, 16.0), "on the left"),
    "right": ((23.0, 16.0), "on the right"),
    "top": ((16.0, 9.0), "at the top"),
    "bottom": ((16.0, 23.0), "at the bottom"),
    "center": ((16.0, 16.0), "in the center"),
}
RELATIONS = ("left of", "right of", "above", "below")
PAIR_RADIUS = 6.5
BACKGROUND = (28, 30, 36)

VOCAB = sorted(
    {"a", "on", "the", "at", "in", "of"}
    | set(COLORS)
    | set(SHAPES)
    | set(SIZES)
    | {w for _, words in POSITIONS.values() for w in words.split()}
    | {w for r in RELATIONS for w in r.split()}
)
MAX_PROMPT_WORDS = 8


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for. One object has size and position; two objects have a layout.

    Two-object scenes are stored in image order (left-to-right or top-to-bottom), so that
    "a red circle left of a blue square" and "a blue square right of a red circle" are the same scene.
    """

    objects: tuple[ShapeObject, ...]
    size: str | None = None  # one object only
    position: str | None = None  # one object only
    layout: str | None = None  # two objects: "horizontal" or "vertical"

    @property
    def is_pair(self) -> bool:
        return len(self.objects) == 2


class PromptError(ValueError):
    """A prompt that uses words outside the vocabulary or cannot be parsed into a scene."""


def check_vocabulary(prompt: str) -> list[str]:
    """Split a prompt into words, raising PromptError naming any word outside the vocabulary."""
    words = prompt.lower().split()
    unknown = [w for w in words if w not in VOCAB]
    if unknown:
        raise PromptError(f"unknown prompt word(s) {unknown}; the vocabulary is: {' '.join(VOCAB)}")
    if len(words) > MAX_PROMPT_WORDS:
        raise PromptError(f"prompt has {len(words)} words; at most {MAX_PROMPT_WORDS} are allowed")
    return words


def parse_prompt(prompt: str) -> Scene:
    """Parse a prompt of the shapes grammar into the Scene it describes."""
    words = check_vocabulary(prompt)
    text = " ".join(words)
    for position, (_, phrase) in POSITIONS.items():
        if text.endswith(" " + phrase):
            head = text[: -len(phrase) - 1].split()
            if len(head) == 4 and head[0] == "a" and head[1] in SIZES and head[2] in COLORS and head[3] in SHAPES:
                return Scene((ShapeObject(head[2], head[3]),), size=head[1], position=position)
    for relation in RELATIONS:
        parts = text.split(f" {relation} ")
        if len(parts) == 2:
            a, b = (p.split() for p in parts)
            if all(len(p) == 3 and p[0] == "a" and p[1] in COLORS and p[2] in SHAPES for p in (a, b)):
                first, second = ShapeObject(a[1], a[2]), ShapeObject(b[1], b[2])
                if relation in ("right of", "below"):
                    first, second = second, first
                layout = "horizontal" if relation in ("left of", "right of") else "vertical"
                return Scene((first, second), layout=layout)
    raise PromptError(
        f"cannot parse prompt {prompt!r}; use 'a <size> <colour> <shape> <position phrase>' "
        "(e.g. 'a small red circle on the left') or 'a <colour> <shape> <relation> a <colour> <shape>' "
        "(e.g. 'a red circle left of a blue square')"
    )


def scene_prompt(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """The canonical prompt for a scene; with an rng, pairs are randomly phrased in either order."""
    if not scene.is_pair:
        obj = scene.objects[0]
        return f"a {scene.size} {obj.color} {obj.shape} {POSITIONS[scene.position][1]}"
    first, second = scene.objects
    forward, backward = ("left of", "right of") if scene.layout == "horizontal" else ("above", "below")
    if rng is not None and rng.random() < 0.5:
        return f"a {second.color} {second.shape} {backward} a {first.color} {first.shape}"
    return f"a {first.color} {first.shape} {forward} a {second.color} {second.shape}"


def random_scene(rng: np.random.Generator, pair_fraction: float = 0.5) -> Scene:
    """Draw a scene: one object, or (with probability `pair_fraction`) two distinct objects; uniform otherwise."""

    def obj() -> ShapeObject:
        return ShapeObject(str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)))

    if rng.random() < 1.0 - pair_fraction:  # (draw order kept: 0.5 reproduces the shipped data exactly)
        return Scene((obj(),), size=str(rng.choice(list(SIZES))), position=str(rng.choice(list(POSITIONS))))
    first = obj()
    second = obj()
    while second == first:
        second = obj()
    return Scene((first, second), layout=str(rng.choice(["horizontal", "vertical"])))


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, cx: float, cy: float, r: float) -> None:
    s = _SUPERSAMPLE
    cx, cy, r = cx * s, cy * s, r * s
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        h = r * 0.86  # a square of the same visual weight as the circle
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r * 1.05, cy + r * 0.8), (cx + r * 1.05, cy + r * 0.8)], fill=fill)


def render_scene(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Render a scene to a uint8 (32, 32, 3) array, with small random jitter of place, size and colour."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    jitter = lambda amount: float(rng.uniform(-amount, amount))  # noqa: E731
    if scene.is_pair:
        if scene.layout == "horizontal":
            centres = [(9.0, 16.0), (23.0, 16.0)]
        else:
            centres = [(16.0, 9.0), (16.0, 23.0)]
        for obj, (cx, cy) in zip(scene.objects, centres, strict=True):
            _draw(draw, obj, cx + jitter(1.5), cy + jitter(1.5), PAIR_RADIUS + jitter(0.7))
    else:
        (cx, cy), _ = POSITIONS[scene.position]
        _draw(draw, scene.objects[0], cx + jitter(1.5), cy + jitter(1.5), SIZES[scene.size] + jitter(0.7))
    small = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the model's data space."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3); values outside [-1, 1] are clipped."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def make_batch(seed: int, batch_size: int, pair_fraction: float = 0.5) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """A deterministic batch: images in [-1, 1] (N, 3, 32, 32), their prompts and their scenes."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, pair_fraction) for _ in range(batch_size)]
    prompts = [scene_prompt(s, rng) for s in scenes]
    images = np.stack([render_scene(s, rng) for s in scenes])
    return to_tensor(images), prompts, scenes


def all_prompts() -> list[str]:
    """Every canonical prompt of the grammar (one phrasing per scene)."""
    prompts = []
    for size in SIZES:
        for color in COLORS:
            for shape in SHAPES:
                for position in POSITIONS:
                    prompts.append(scene_prompt(Scene((ShapeObject(color, shape),), size=size, position=position)))
    objs = [ShapeObject(c, s) for c in COLORS for s in SHAPES]
    for layout in ("horizontal", "vertical"):
        for a in objs:
            for b in objs:
                if a != b:
                    prompts.append(scene_prompt(Scene((a, b), layout=layout)))
    return prompts


def evaluation_prompts(n: int, seed: int = 1234) -> list[str]:
    """A fixed, deterministic sample of n prompts (half one-object, half two-object) for benchmarks."""
    rng = np.random.default_rng(seed)
    return [scene_prompt(random_scene(rng), rng) for _ in range(n)]
