"""The figures of `stretto calibrate cache` and `stretto search cache`: a TeaCache fit, MagCache ratios, a front."""

from __future__ import annotations

from pathlib import Path

# (origin prefix, marker, colour, legend) of the search's seed masks (see stretto.tune.search.seed_masks)
SEED_FAMILIES = (
    ("fora", "^", "tab:orange", "seed: FORA-like, full step every N"),
    ("first+last", "s", "tab:green", "seed: first+last block always, middle every N"),
    ("delta", "D", "tab:purple", "seed: Delta-DiT-like, interval N"),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plot_path: str | Path, dpi: int = 120) -> None:
    Path(plot_path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(plot_path, dpi=dpi)
    _pyplot().close(fig)


def plot_teacache_fit(fit, plot_path: str | Path, setting: str) -> None:
    """The recorded (input change, output change) pairs coloured by step, and the fitted polynomial."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    points = ax.scatter(fit.x, fit.y, c=fit.index, s=8, cmap="viridis", alpha=0.7)
    fig.colorbar(points, ax=ax, label="step index")
    grid = np.linspace(min(fit.x), max(fit.x), 200)
    degree = len(fit.coefficients) - 1
    ax.plot(grid, np.polyval(fit.coefficients, grid), "r-", lw=1.5, label=f"degree {degree}, R² {fit.r2:.3f}")
    ax.set_xlabel("relative L1 change of block 0's modulated input")
    ax.set_ylabel("relative L1 change of the stack output residual")
    ax.set_title(f"TeaCache calibration: {setting}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, plot_path)


def plot_magcache_ratios(ratios: list[float], plot_path: str | Path, setting: str) -> None:
    """MagCache's residual magnitude ratio per step index."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(ratios)), ratios, "o-", ms=3)
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.set_xlabel("step index")
    ax.set_ylabel("residual magnitude ratio to the previous step")
    ax.set_title(f"MagCache calibration: {setting}", fontsize=10)
    ax.grid(alpha=0.3)
    _save(fig, plot_path)


def plot_search(result: dict, plot_path: str | Path) -> None:
    """PSNR vs ideal speedup: every evaluated schedule faint, seed masks marked, the front as a line."""
    plt = _pyplot()
    finite = [r for r in result["evaluated"] if r["psnr_db"] is not None]
    front = [r for r in result["front"] if r["psnr_db"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter(
        [r["speedup_ideal"] for r in finite], [r["psnr_db"] for r in finite],
        s=12, color="0.6", alpha=0.35, label=f"evaluated ({len(result['evaluated'])})",
    )  # fmt: skip
    for prefix, marker, color, family in SEED_FAMILIES:  # the hand-made starting masks, N next to each
        mine = [r for r in finite if r["origin"].startswith(prefix)]
        if not mine:
            continue
        ax.scatter([r["speedup_ideal"] for r in mine], [r["psnr_db"] for r in mine], s=34, marker=marker,
                   color=color, zorder=5, label=family)  # fmt: skip
        for r in mine:
            n = r["origin"].rstrip().split()[-1].split("=")[-1]
            ax.annotate(n, (r["speedup_ideal"], r["psnr_db"]), fontsize=7, xytext=(0, -11), ha="center",
                        textcoords="offset points", color=color)  # fmt: skip
    ax.plot(
        [r["speedup_ideal"] for r in front], [r["psnr_db"] for r in front],
        "o-", color="tab:blue", ms=5, lw=1.5, zorder=4, label=f"Pareto front ({len(result['front'])}, incl. full)",
    )  # fmt: skip
    ax.set_xlabel("ideal speedup (1 / compute fraction of block evaluations)")
    ax.set_ylabel("PSNR vs full compute (dB), higher is better")
    ax.set_title(
        f"cache schedule search (NSGA-II) on {result['model']}: {result['sampler']} {result['steps']} steps, "
        f"{result['num_prompts']} prompts\npopulation {result['population']}, {result['generations']} generations, "
        f"{result['model_runs']} runs; full compute = 1x, identical",
        fontsize=9,
    )
    ax.margins(x=0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    _save(fig, plot_path)
