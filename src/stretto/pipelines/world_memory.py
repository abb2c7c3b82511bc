"""Memory beyond the rolling window for an action-steered world: a pose-indexed canvas of what was drawn.

The rolling KV cache forgets a place once its frames leave the window, so a place revisited later is drawn
anew (and differently). Pose-indexed memories (WorldMem, Xiao et al. 2025, retrieves past frames by camera
pose) keep it: here the pose is dead reckoning from the actions (each action is a known camera move), every
generated frame is pasted onto a canvas at its pose, and when the camera comes back the canvas pixels it
already holds are imposed on each denoising step's x0 prediction (RePaint-style replacement, Lugmayr et al.
2022, without its resampling), so the model draws only what was never seen and blends it with what was.

Departures: the seeds' memories are learned (RELIC's compressed memory tokens; an SSM scan over blocks); this
one is training-free and works on any model of a world whose actions are camera translations, but not for
rotations, zoom or a moving scene. The canvas is a bounded torus (`size` pixels a side): paths that wander
further than that alias, with a fixed allocation instead of one that grows with the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from stretto.data import world

MEMORIES = ("pose",)  # StreamSettings.memory


class PoseMemory:
    """What the stream drew, by camera position: `begin` with the prompt, `guide` a block, `write` it."""

    def __init__(self, moves: Mapping[int, tuple[int, int]], keep: torch.Tensor | None = None, size: int = 512):
        """moves: action index -> (dx, dy) camera move in pixels; keep: (H, W) bool, the pixels of a frame that
        belong to the map (False where an overlay such as the agent marker sits); size: canvas side in pixels."""
        if size < 1:
            raise ValueError(f"memory canvas size must be >= 1, got {size}")
        self.moves, self.keep, self.size = dict(moves), keep, size
        self.canvas: torch.Tensor | None = None  # (B, C, size, size)
        self.known: torch.Tensor | None = None  # (B, size, size) bool
        self.pose: torch.Tensor | None = None  # (B, 2) camera (x, y) of the last frame
        self._block_poses: torch.Tensor | None = None  # (B, F, 2) of the block being generated

    def begin(self, first_block: torch.Tensor) -> None:
        """Start a stream: the given frames (B, F, C, H, W) sit at the origin (their own moves are not known)."""
        b, _, c, h, w = first_block.shape
        if h > self.size or w > self.size:
            raise ValueError(f"memory canvas size {self.size} is smaller than a frame ({h}x{w})")
        self.canvas = first_block.new_zeros(b, c, self.size, self.size)
        self.known = torch.zeros(b, self.size, self.size, dtype=torch.bool, device=first_block.device)
        self.pose = torch.zeros(b, 2, dtype=torch.long)
        self._block_poses = self.pose[:, None].expand(b, first_block.shape[1], 2)
        self.write(first_block)

    def _window(self, x: int, y: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = (torch.arange(h) + y) % self.size
        cols = (torch.arange(w) + x) % self.size
        return rows[:, None], cols[None, :]

    def guide(self, actions: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """For the next block (actions (B, F)): x0 (B, F, C, H, W) -> x0 with the remembered pixels imposed."""
        if self.canvas is None:
            raise RuntimeError("PoseMemory.guide before begin: the stream has no first block to start from")
        unknown = sorted({a for a in actions.flatten().tolist() if a not in self.moves})
        if unknown:
            raise ValueError(f"memory: action(s) {unknown} have no known camera move; known: {sorted(self.moves)}")
        steps = torch.tensor([[self.moves[a] for a in row] for row in actions.tolist()], dtype=torch.long)
        self._block_poses = self.pose[:, None] + steps.cumsum(dim=1)  # (B, F, 2)
        self.pose = self._block_poses[:, -1].clone()
        poses = self._block_poses

        def impose(x0: torch.Tensor) -> torch.Tensor:
            h, w = x0.shape[-2:]
            remembered, mask = torch.zeros_like(x0), torch.zeros(*x0.shape[:2], 1, h, w, dtype=torch.bool)
            for b in range(x0.shape[0]):
                for f in range(x0.shape[1]):
                    rows, cols = self._window(*poses[b, f].tolist(), h, w)
                    remembered[b, f] = self.canvas[b][:, rows, cols]
                    mask[b, f, 0] = self.known[b][rows, cols]
            if self.keep is not None:
                mask &= self.keep.to(mask.device)
            return torch.where(mask.to(x0.device), remembered, x0)

        return impose

    def write(self, block: torch.Tensor) -> None:
        """Paste a finished block (B, F, C, H, W) onto the canvas at the poses `guide` computed for it."""
        h, w = block.shape[-2:]
        keep = torch.ones(h, w, dtype=torch.bool) if self.keep is None else self.keep
        for b in range(block.shape[0]):
            for f in range(block.shape[1]):
                rows, cols = self._window(*self._block_poses[b, f].tolist(), h, w)
                target = self.canvas[b][:, rows, cols]
                target[:, keep] = block[b, f][:, keep].to(target.dtype)
                self.canvas[b][:, rows, cols] = target
                known = self.known[b][rows, cols]
                known |= keep.to(known.device)
                self.known[b][rows, cols] = known


def world_memory(size: int = 512) -> PoseMemory:
    """The memory for stretto's simulated world: its actions' camera moves; the agent marker is not map."""
    moves = {i: world.MOVES[a] for i, a in enumerate(world.ACTIONS)}
    return PoseMemory(moves, keep=~world.agent_marker(), size=size)
