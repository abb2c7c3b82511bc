"""Counting what a cache saved: block evaluations computed, reused or forecast, per model call and CFG branch."""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("computed", "reused", "forecast")  # column order of the per-row count tensors


@dataclass
class StepRecord:
    """Block evaluations of one model call for one branch (averaged over the branch's rows)."""

    call: int
    branch: str
    sigma: float
    computed: float
    reused: float
    forecast: float


@dataclass
class CacheSummary:
    """Per-call, per-branch counts of computed / reused / forecast block evaluations."""

    policy: str
    num_blocks: int
    records: list[StepRecord] = field(default_factory=list)
    # per block, the calls that returned stored features: a mechanism that still calls its blocks (the UNet's
    # swapped forwards) reports them so that counters hooked on the blocks can subtract them
    reused_calls: list[int] | None = None

    def totals(self) -> dict[str, float]:
        """Computed, reused and forecast block evaluations summed over all records."""
        return {k: sum(getattr(r, k) for r in self.records) for k in KINDS}

    @property
    def compute_fraction(self) -> float:
        """Computed block evaluations over all block evaluations the model would have made."""
        t = self.totals()
        whole = sum(t.values())
        return t["computed"] / whole if whole else 1.0

    def __str__(self) -> str:
        lines = [f"cache {self.policy}: {self.num_blocks} blocks", "call branch    sigma  computed reused forecast"]
        for r in self.records:
            lines.append(
                f"{r.call:4d} {r.branch:8s} {r.sigma:6.3f} {r.computed:8.2f} {r.reused:6.2f} {r.forecast:8.2f}"
            )
        t = self.totals()
        lines.append(
            f"total: computed {t['computed']:g}, reused {t['reused']:g}, forecast {t['forecast']:g} "
            f"({self.compute_fraction:.1%} computed)"
        )
        return "\n".join(lines)
