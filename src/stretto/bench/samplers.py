"""`stretto bench samplers`: every sampler at a range of NFE, against a 100-step Euler reference.

Quality is measured three ways on the same prompts and seeds: FID (features of stretto's shapes classifier,
against procedural data), prompt accuracy (the classifier parses the image into the prompt's scene), and
PSNR/SSIM against the 100-step Euler output of the same seed. Speed is wall time in this one run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

import stretto
from stretto.bench.report import describe_machine, new_figure, print_table, save_figure, write_json
from stretto.data.shapes import evaluation_prompts, make_batch
from stretto.eval.classifier import prompt_accuracy
from stretto.eval.metrics import FeatureFID, psnr_db, ssim
from stretto.pipelines.image import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_SHIFT
from stretto.sampling import SAMPLERS, nfe_per_sampler

REFERENCE_STEPS = 100
VARIANT_SHIFT = 3.0  # SD3/Flux-style shift tried against the default
VARIANTS = ("shift3", "time-shift")


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """The most steps whose denoiser calls fit in `nfe` (at least one step)."""
    steps = 1
    while nfe_per_sampler(sampler, steps + 1) <= nfe:
        steps += 1
    return steps


def run_sampler_bench(
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    model: str = "shapes-flux",
    device: str | torch.device = "cpu",
    num_images: int = 256,
    guidance: float = DEFAULT_GUIDANCE,
    shift: float = DEFAULT_SHIFT,
    nfes: tuple[int, ...] | list[int] = (2, 4, 8, 16, 32),
    samplers: tuple[str, ...] | list[str] | None = None,
) -> dict:
    """Run the benchmark, write JSON (and a plot), return the result dict."""
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 (FID needs a covariance), got {num_images}")
    samplers = list(samplers or SAMPLERS)
    net = stretto.load(model, device=device)
    classifier = stretto.load("shapes-classifier", device=device)
    fid = FeatureFID(classifier)
    prompts = evaluation_prompts(num_images)
    seeds = list(range(num_images))

    def run(sampler: str, steps: int, variant: str = ""):
        return stretto.generate(
            net, prompts, steps=steps, sampler=sampler, guidance=guidance, seeds=seeds,
            shift=VARIANT_SHIFT if variant == "shift3" else shift, time_shift=variant == "time-shift",
        )  # fmt: skip

    run("euler", 1)  # warm-up, so that the first timed row does not pay one-off costs
    settings = [("euler", 50, "")] + [(s, steps_for_nfe(s, n), "") for s in samplers for n in nfes]
    # Timestep-shift variants of the default sampler, at the NFE where they could matter.
    settings += [(DEFAULT_SAMPLER, n, v) for v in VARIANTS for n in nfes if 4 <= n <= 16]
    settings = list(dict.fromkeys(settings))  # Heun maps two NFE budgets to one step count at the low end
    bar = tqdm(total=1 + len(settings), desc="bench samplers")
    reference = run("euler", REFERENCE_STEPS)
    bar.update()

    def row(sampler: str, steps: int, variant: str, result) -> dict:
        return {
            "sampler": sampler,
            "steps": steps,
            "nfe": result.stats.sampler_nfe,
            "fid": fid.score(result.images),
            "prompt_acc": prompt_accuracy(classifier, result.images, prompts),
            "psnr_db": None if result is reference else psnr_db(result.images, reference.images),
            "ssim": None if result is reference else ssim(result.images, reference.images),
            "wall_s": result.stats.wall_s,
            "variant": variant or None,
            "shift": VARIANT_SHIFT if variant == "shift3" else shift,
            "time_shift": variant == "time-shift",
            "model_calls": result.stats.model_calls,
            "block_evals": result.stats.total_block_evals,
            "peak_mem_mb": round(result.stats.peak_mem_bytes / 2**20, 1),
        }

    rows = [dict(row("euler", REFERENCE_STEPS, "", reference), reference=True)]
    for sampler, steps, variant in settings:
        bar.set_postfix_str(f"{sampler} {variant} {steps} steps")
        rows.append(row(sampler, steps, variant, run(sampler, steps, variant)))
        bar.update()
    bar.close()

    real, real_prompts, _ = make_batch(987_654, num_images)  # fresh procedural images: the FID floor at this n
    result = {
        "benchmark": "samplers",
        "model": model,
        "num_images": num_images,
        "guidance": guidance,
        "shift": shift,
        "reference": {"sampler": "euler", "steps": REFERENCE_STEPS},
        "fid_real_data": fid.score(real),
        "prompt_acc_real_data": prompt_accuracy(classifier, real, real_prompts),
        "machine": describe_machine(device),
        "command": f"stretto bench samplers --num-images {num_images} --guidance {guidance} --shift {shift}",
        "rows": rows,
    }
    if json_path:
        write_json(result, json_path)
    if plot_path:
        plot_sampler_bench(result, plot_path)
    print_table(rows, TABLE)
    return result


def label(row: dict) -> str:
    """A row's sampler name with its timestep variant, e.g. "dpm++2m shift3"."""
    return f"{row['sampler']} {row['variant']}" if row.get("variant") else row["sampler"]


def psnr_cell(row: dict) -> str:
    """PSNR against the reference, 'ref' for the reference itself."""
    return "ref" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"


TABLE = [
    ("sampler", label, "<20"), ("steps", "steps", ">5"), ("nfe", "nfe", ">4"), ("FID", "fid", ">7.2f"),
    ("prompt acc", "prompt_acc", ">10.3f"), ("PSNR dB", psnr_cell, ">8"), ("wall s", "wall_s", ">7.2f"),
]  # fmt: skip


def plot_sampler_bench(result: dict, plot_path: str | Path) -> None:
    """FID vs NFE and PSNR vs NFE, one line per sampler; the reference's FID as a dashed line."""
    _, fig, axes = new_figure(1, 3, figsize=(16, 4.4))
    ax_fid, ax_acc, ax_psnr = axes[0]
    rows = [r for r in result["rows"] if not r.get("reference")]
    for name in dict.fromkeys(label(r) for r in rows):
        mine = sorted((r for r in rows if label(r) == name), key=lambda r: r["nfe"])
        style = "o--" if " " in name else "o-"
        ax_fid.plot([r["nfe"] for r in mine], [r["fid"] for r in mine], style, label=name)
        ax_acc.plot([r["nfe"] for r in mine], [r["prompt_acc"] for r in mine], style, label=name)
        ax_psnr.plot([r["nfe"] for r in mine], [r["psnr_db"] for r in mine], style, label=name)
    ref = result["rows"][0]
    ax_fid.axhline(ref["fid"], color="k", ls="--", lw=1, label=f"Euler {ref['steps']} steps")
    ax_fid.axhline(result["fid_real_data"], color="gray", ls=":", lw=1, label="real data (same n)")
    ax_acc.axhline(ref["prompt_acc"], color="k", ls="--", lw=1)
    for ax, name in (
        (ax_fid, "FID (shapes-classifier features), lower is better"),
        (ax_acc, "prompt accuracy, higher is better"),
        (ax_psnr, f"PSNR vs Euler {ref['steps']} steps (dB), higher is better"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE (denoiser calls, CFG batched)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    ax_fid.set_yscale("log")
    ax_fid.legend(fontsize=8)
    n = result["num_images"]
    fig.suptitle(
        f"stretto samplers on {result['model']} ({n} prompts x 1 seed, guidance {result['guidance']})",
        fontsize=11,
    )
    save_figure(fig, plot_path, dpi=120)
