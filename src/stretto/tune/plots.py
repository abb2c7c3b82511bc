"""The figures of the tuning runs, drawn from their result dicts: a TeaCache fit, MagCache ratios, a search front."""

from __future__ import annotations

from pathlib import Path

from stretto.bench.report import new_figure, save_figure

# (origin prefix, marker, colour, legend) of the search's seed masks (see stretto.tune.search.seed_masks)
SEED_FAMILIES = (
    ("fora", "^", "tab:orange", "seed: FORA-like, full step every N"),
    ("first+last", "s", "tab:green", "seed: first+last block always, middle every N"),
    ("delta", "D", "tab:purple", "seed: Delta-DiT-like, interval N"),
)


def _setting(result: dict) -> str:
    s = result["settings"]
    return f"{result['model']}, {s['sampler']} {s['steps']} steps"


def plot_teacache_calibration(result: dict, plot_path: str | Path) -> None:
    """The recorded (input change, output change) pairs coloured by step, and the fitted polynomial."""
    import numpy as np

    _, fig, axes = new_figure(figsize=(6, 4.5))
    ax, pairs = axes[0][0], result["pairs"]
    points = ax.scatter(pairs["x"], pairs["y"], c=pairs["index"], s=8, cmap="viridis", alpha=0.7)
    fig.colorbar(points, ax=ax, label="step index")
    grid = np.linspace(min(pairs["x"]), max(pairs["x"]), 200)
    fitted = np.polyval(result["coefficients"], grid)
    ax.plot(grid, fitted, "r-", lw=1.5, label=f"degree {result['degree']}, R² {result['r2']:.3f}")
    ax.set_xlabel("relative L1 change of block 0's modulated input")
    ax.set_ylabel("relative L1 change of the stack output residual")
    ax.set_title(f"TeaCache calibration: {_setting(result)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, plot_path)


def plot_magcache_calibration(result: dict, plot_path: str | Path) -> None:
    """MagCache's residual magnitude ratio per step index."""
    _, fig, axes = new_figure(figsize=(6, 4))
    ax, ratios = axes[0][0], result["ratios"]
    ax.plot(range(len(ratios)), ratios, "o-", ms=3)
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.set_xlabel("step index")
    ax.set_ylabel("residual magnitude ratio to the previous step")
    ax.set_title(f"MagCache calibration: {_setting(result)}", fontsize=10)
    ax.grid(alpha=0.3)
    save_figure(fig, plot_path)


def plot_schedule_search(result: dict, plot_path: str | Path) -> None:
    """PSNR vs ideal speedup: every evaluated schedule faint, seed masks marked, the front as a line."""
    _, fig, axes = new_figure(figsize=(7.5, 5))
    ax = axes[0][0]
    finite = [r for r in result["evaluated"] if r["psnr_db"] is not None]
    front = [r for r in result["front"] if r["psnr_db"] is not None]
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
    save_figure(fig, plot_path)
