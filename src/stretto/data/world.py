"""A world the project simulates itself: a camera moving over a procedural wrap-around map, steered by actions.

Each episode draws a map (MAP x MAP pixels, a torus): a dark background with a faint grid and a few bright
objects (squares, discs, diamonds, rings). The camera shows a FRAME x FRAME window of it with a marker at the
centre (the agent). Actions move the camera by STEP pixels; the map wraps, so objects that leave the view come
back when the agent walks on or turns around, and a model only draws them right if it remembers them.

Everything is a function of (seed, actions), so the simulator gives the exact ground-truth frames for any
action sequence: that is the quality measure of the world model. Pixels are floats in [-1, 1], (3, FRAME, FRAME).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FRAME = 24  # view size in pixels
MAP = 48  # map size in pixels (the map wraps around)
STEP = 4  # pixels the camera moves per action (one patch of the world model)
ACTIONS = "NLRUD"  # N: stay; L/R/U/D: move the camera left/right/up/down
MOVES = {"N": (0, 0), "L": (-STEP, 0), "R": (STEP, 0), "U": (0, -STEP), "D": (0, STEP)}
STAY = ACTIONS.index("N")
ACTION_NAMES = {"N": "stay", "L": "left", "R": "right", "U": "up", "D": "down"}


def parse_actions(text: str) -> list[int]:
    """'RRUL..' -> action indices; unknown symbols raise a ValueError that lists the allowed ones."""
    bad = sorted({c for c in text.upper() if c not in ACTIONS})
    if bad:
        allowed = ", ".join(f"{a} ({name})" for a, name in ACTION_NAMES.items())
        raise ValueError(f"unknown action symbol(s) {', '.join(map(repr, bad))}; allowed: {allowed}")
    return [ACTIONS.index(c) for c in text.upper()]


def make_map(seed: int) -> torch.Tensor:
    """The episode's map (3, MAP, MAP) in [-1, 1], deterministic in `seed`."""
    return draw_map(seed)[0]


def draw_map(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The map and where each object ended up: (K, MAP, MAP) bool, a later object covering an earlier one."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    world = (0.05 + 0.25 * rand(3, 1, 1)).expand(3, MAP, MAP).clone()
    grid = 0.15 + 0.2 * rand(3, 1, 1)
    world[:, ::12, :] = grid
    world[:, :, ::12] = grid
    ys, xs = torch.meshgrid(torch.arange(MAP), torch.arange(MAP), indexing="ij")
    masks: list[torch.Tensor] = []
    for _ in range(4 + int(rand(1) * 3)):
        cy, cx = (rand(2) * MAP).tolist()
        r = 3 + 3 * rand(1).item()
        dy = (ys - cy + MAP / 2) % MAP - MAP / 2  # torus distances
        dx = (xs - cx + MAP / 2) % MAP - MAP / 2
        shape = int(rand(1) * 4)
        if shape == 0:
            inside = (dy.abs() <= r) & (dx.abs() <= r)
        elif shape == 1:
            inside = dy**2 + dx**2 <= r**2
        elif shape == 2:
            inside = dy.abs() + dx.abs() <= r * 1.3
        else:
            inside = (dy**2 + dx**2 <= r**2) & (dy**2 + dx**2 >= (r - 2) ** 2)
        colour = torch.rand(3, generator=gen)
        colour[int(rand(1) * 3)] = 1.0  # bright and saturated
        world[:, inside] = colour[:, None]
        masks = [m & ~inside for m in masks] + [inside]
    return world * 2 - 1, torch.stack(masks)


def view(world: torch.Tensor, x: int, y: int) -> torch.Tensor:
    """The camera's FRAME x FRAME view with its top-left corner at map pixel (x, y), agent marker drawn."""
    frame = crop(world, x, y).clone()
    frame[:, agent_marker()] = 1.0
    return frame


def crop(layers: torch.Tensor, x: int, y: int) -> torch.Tensor:
    """(..., MAP, MAP) -> the (..., FRAME, FRAME) window with its top-left corner at (x, y), wrapping around."""
    rows = (torch.arange(FRAME) + y) % MAP
    cols = (torch.arange(FRAME) + x) % MAP
    return layers[..., rows, :][..., cols]


def agent_marker() -> torch.Tensor:
    """(FRAME, FRAME) bool: the agent, a small white cross at the centre of every view."""
    marker = torch.zeros(FRAME, FRAME, dtype=torch.bool)
    c = FRAME // 2
    marker[c - 1 : c + 1, c - 3 : c + 3] = True
    marker[c - 3 : c + 3, c - 1 : c + 1] = True
    return marker


@dataclass
class Episode:
    """Ground truth for one action sequence: frames (N, 3, FRAME, FRAME), camera (N, 2) as (x, y)."""

    frames: torch.Tensor
    camera: torch.Tensor
    actions: torch.Tensor
    world: torch.Tensor


def simulate(seed: int, actions: list[int] | torch.Tensor) -> Episode:
    """Frame i is the view after action i; action 0 moves from the start position (drawn from the seed)."""
    world = make_map(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x, y = (torch.randint(0, MAP // STEP, (2,), generator=gen) * STEP).tolist()
    actions = torch.as_tensor(actions, dtype=torch.long)
    frames, camera = [], []
    for a in actions.tolist():
        dx, dy = MOVES[ACTIONS[a]]
        x, y = (x + dx) % MAP, (y + dy) % MAP
        frames.append(view(world, x, y))
        camera.append((x, y))
    return Episode(torch.stack(frames), torch.tensor(camera), actions, world)


def prompt_block(
    seeds: list[int], actions: list[int], frames_per_block: int
) -> tuple[torch.Tensor, torch.Tensor, list[Episode]]:
    """Episodes for these map seeds along `actions`; their first block of frames is a stream's prompt.

    Returns the prompt (B, frames_per_block, C, H, W), its actions (B, frames_per_block) and the episodes.
    """
    if len(actions) < frames_per_block:
        raise ValueError(f"need at least {frames_per_block} action(s) for the prompt block, got {len(actions)}")
    episodes = [simulate(s, actions) for s in seeds]
    prompt = torch.stack([e.frames[:frames_per_block] for e in episodes])
    return prompt, torch.stack([e.actions[:frames_per_block] for e in episodes]), episodes


def random_actions(n: int, gen: torch.Generator, keep: float = 0.75) -> list[int]:
    """A random walk that mostly keeps going (so it explores) and sometimes turns or stops; action 0 is N."""
    actions = [STAY]
    for _ in range(n - 1):
        if torch.rand(1, generator=gen).item() < keep and actions[-1] != STAY:
            actions.append(actions[-1])
        else:
            actions.append(int(torch.randint(0, len(ACTIONS), (1,), generator=gen)))
    return actions


def batch(seeds: list[int], frames: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training clips: (B, frames, 3, FRAME, FRAME) and their actions (B, frames)."""
    episodes = [simulate(s, random_actions(frames, gen)) for s in seeds]
    return torch.stack([e.frames for e in episodes]), torch.stack([e.actions for e in episodes])


def position_error(frames: torch.Tensor, world: torch.Tensor, camera: torch.Tensor, tol: float = 0.01) -> torch.Tensor:
    """Per frame (N,): pixels from the true camera (N, 2) to the nearest position that explains the frame best.

    Every offset of the map is tried; positions whose view is within `tol` (relative) of the best match count
    as equally good, since plain stretches of the map look the same from several places.
    """
    views = torch.stack([view(world, x, y) for y in range(MAP) for x in range(MAP)])  # (MAP*MAP, 3, F, F)
    err = torch.cdist(frames.flatten(1).float(), views.flatten(1))  # (N, MAP*MAP)
    best = err <= err.min(dim=1, keepdim=True).values * (1 + tol) + 1e-6
    grid = torch.stack([torch.arange(MAP * MAP) % MAP, torch.arange(MAP * MAP) // MAP], dim=1)
    dist = torus_distance(grid[None], camera[:, None])  # (N, MAP*MAP)
    return dist.masked_fill(~best, float("inf")).min(dim=1).values


def torus_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance in pixels between camera positions on the wrap-around map."""
    d = (a - b).abs() % MAP
    d = torch.minimum(d, MAP - d).float()
    return d.norm(dim=-1)


def visible_objects(masks: torch.Tensor, camera: torch.Tensor, min_pixels: int = 8) -> torch.Tensor:
    """(K,) bool: the objects some view from `camera` (N, 2) shows with >= min_pixels pixels (agent excluded)."""
    free = ~agent_marker()
    shown = torch.zeros(len(masks), dtype=torch.bool)
    for x, y in camera.tolist():
        shown |= (crop(masks, x, y) & free).flatten(1).sum(1) >= min_pixels
    return shown


def object_recall(
    frames: torch.Tensor,
    truth: torch.Tensor,
    masks: torch.Tensor,
    camera: torch.Tensor,
    known: torch.Tensor | None = None,
    min_pixels: int = 8,
    tol: float = 0.35,
) -> torch.Tensor:
    """Per frame (N,): the share of the objects the simulator shows that the generated frame draws, in place.

    An object counts as visible with >= `min_pixels` pixels in the true view (the agent marker excluded) and
    as drawn when the generated frame's mean absolute error over those pixels is below `tol` (pixels in
    [-1, 1]; a missing bright object errs by ~1). `known` (K,) bool restricts the count to objects the model
    could know (those its prompt showed: an object entering from a never-seen part of the map cannot be
    predicted). NaN for a frame showing no counted object.
    """
    free = ~agent_marker()
    counted = torch.ones(len(masks), dtype=torch.bool) if known is None else known
    recall = torch.full((len(frames),), float("nan"))
    for i, (x, y) in enumerate(camera.tolist()):
        seen = crop(masks, x, y) & free  # (K, F, F)
        visible = (seen.flatten(1).sum(1) >= min_pixels) & counted
        if not visible.any():
            continue
        err = (frames[i].float() - truth[i].float()).abs().mean(0)  # (F, F)
        drawn = [(err[seen[k]].mean() < tol).item() for k in torch.nonzero(visible).flatten().tolist()]
        recall[i] = sum(drawn) / len(drawn)
    return recall
