"""Learn2PD (Bao et al. 2025, "Learning to Parallel: Accelerating Diffusion Large Language Models via Learnable
Parallel Decoding"): commit the positions a small learned filter judges final, and stop at a final end-of-text.

The paper's oracle ("extremely greedy parallel") commits a position as soon as its argmax equals the token it
ends up with; a lightweight filter, trained after the fact on decoding traces, approximates that oracle, and
End-of-Text Prediction (EoTP) stops decoding the padding after the answer's end. Here: every step, the
filter (`models.unmask_filter`, trained by `stretto train unmask-filter` on traces of the baseline decoder on
train-split prompts) rates each masked position of the block; the rule commits every position rated at least
`tau`, and at least the one it rates highest (so the progress guard holds). With `eot`, a committed end-of-text
fills every later mask of the row with end-of-text at once (`decode.finish_at_eot(eager=True)`).

Where this departs from the paper: the filter reads a handful of per-position numbers (`FEATURES`) rather than
the block's raw confidence vector, so one filter serves any block length; and its labels come from stretto's
baseline decoder (LLaDA's one token per step, no cache) on the shipped model, not from LLaDA-8B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from stretto import checkpoints
from stretto.models.unmask_filter import UnmaskFilter
from stretto.pipelines.text.rules import Rule, _ranks, register
from stretto.spec import bounded

DEFAULT_FILTER = "text-masked-filter"  # shipped: trained on text-masked's traces
FEATURES = (
    "confidence", "margin", "entropy", "rank", "place", "step", "open_share", "is_eot", "left_settled",
    "right_settled",
)  # fmt: skip


def position_features(
    conf: torch.Tensor, step: int, probs: torch.Tensor, x0: torch.Tensor, eot_id: int
) -> torch.Tensor:
    """(B, n, len(FEATURES)) numbers in [0, 1] per position of the block; zeros where already committed.

    conf (B, n): confidences, -inf where committed; probs (B, n, V); x0 (B, n) argmax. Rank, place and step are
    scaled by the block length, entropy by log V, so one filter reads blocks of any length and any vocabulary.
    """
    b, n, v = probs.shape
    open_ = torch.isfinite(conf)
    top = probs.topk(2, dim=-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1) / math.log(v)
    n_open = open_.sum(-1, keepdim=True)
    settled = (~open_).float()
    columns = [
        top[..., 0],
        top[..., 0] - top[..., 1],
        entropy,
        _ranks(conf).float() / n_open.clamp(min=1),
        (torch.arange(n, device=conf.device) / n).expand(b, n),
        torch.full((b, n), min(step / n, 1.0), device=conf.device),
        (n_open / n).expand(b, n),
        (x0 == eot_id).float(),
        torch.cat([torch.ones(b, 1, device=conf.device), settled[:, :-1]], 1),  # the slot before a block is settled
        torch.cat([settled[:, 1:], torch.zeros(b, 1, device=conf.device)], 1),  # the one after it is not
    ]
    return torch.stack(columns, -1).float().masked_fill(~open_[..., None], 0.0)


@register
@dataclass
class Learned(Rule):
    """Learn2PD (Bao et al. 2025): commit every position the learned filter rates final, at least one."""

    tau: float = bounded(0.9, 0.0, 1.0, "commit every position the filter rates at least this likely final; > 0")
    eot: bool = bounded(False, 0, 1, "End-of-Text Prediction: a committed end-of-text ends the answer at once")
    filter: str = field(default=DEFAULT_FILTER, metadata={"doc": "the filter checkpoint (shipped name or folder)"})
    name: ClassVar[str] = "learned"
    positive: ClassVar[tuple[str, ...]] = ("tau",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.net: UnmaskFilter = checkpoints.load(self.filter, kind=UnmaskFilter.kind)
        if self.net.config.n_features != len(FEATURES):
            raise ValueError(
                f"filter {self.filter!r} reads {self.net.config.n_features} features; this rule gives {len(FEATURES)}"
            )

    def choose(self, conf: torch.Tensor, step: int, probs: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        open_ = torch.isfinite(conf)
        with torch.no_grad():
            p = torch.sigmoid(self.net(position_features(conf, step, probs, x0, self.net.config.eot_id)))
        p = p.masked_fill(~open_, -1.0)
        best = torch.zeros_like(open_).scatter_(-1, p.argmax(-1, keepdim=True), True)
        return ((p >= self.tau) | best) & open_

    @property
    def ends_at_eot(self) -> bool:
        return self.eot

    def __str__(self) -> str:
        """'learned:tau=0.9', with eot and a non-default filter when set."""
        text = f"{self.name}:tau={self.tau:g}" + (",eot" if self.eot else "")
        return text + (f",filter={self.filter}" if self.filter != DEFAULT_FILTER else "")
