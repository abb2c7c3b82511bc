"""`stretto bench distill`: the teacher at 50 Euler steps, its own few-step sampler, and every distilled student.

Same prompts and seeds for every row, one run. Quality: FID (shapes-classifier features, against procedural
data), prompt accuracy, PSNR against the teacher's 50-step image of the same seed. Speed: wall time in this run
and its ratio to the teacher's. A teacher step is one batched CFG call (two branch evaluations); a student step
is one conditional call, which is why `branch_evals` is reported next to `nfe`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

import stretto
from stretto.bench.report import describe_machine, new_figure, print_table, save_figure, write_json
from stretto.checkpoints import resolve
from stretto.data.shapes import evaluation_prompts, make_batch
from stretto.eval.classifier import prompt_accuracy
from stretto.eval.metrics import FeatureFID, psnr_db
from stretto.images import save_images
from stretto.pipelines.image import student_steps

TEACHER_STEPS = 50
SAMPLER_NFES = (4, 2, 1)
SAMPLER_SHIFTS = (1.0, 3.0)
STUDENT_STEPS = (1, 2, 4)
GRID_PROMPTS = 8


def run_distill_bench(
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    grid_path: str | Path | None = None,
    teacher: str = "shapes-flux",
    students: tuple[str, ...] | list[str] = ("shapes-flux-dmd4", "shapes-flux-dmd1", "shapes-flux-flowmap"),
    device: str | torch.device = "cpu",
    num_images: int = 256,
    guidance: float = 3.0,
) -> dict:
    """Run the benchmark, write JSON, a plot and a prompt x seed grid, return the result dict."""
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 (FID needs a covariance), got {num_images}")
    net = stretto.load(teacher, device=device, kind="shapes-flux")
    nets = {name: stretto.load(name, device=device, kind="shapes-flux") for name in students}
    for name, student in nets.items():
        if student.config.student is None:
            raise ValueError(f"{name!r} is not a distilled student (no 'student' entry in its config)")
    classifier = stretto.load("shapes-classifier", device=device)
    fid = FeatureFID(classifier)
    prompts = evaluation_prompts(num_images)
    seeds = list(range(num_images))

    # (method, model, sampler, steps, shift): the teacher's few-step rows at shift 1 and at the SD3/Flux shift 3,
    # its best few-step setting in benchmarks/results/samplers.json
    settings = [("teacher", teacher, "euler", TEACHER_STEPS, 1.0)]
    settings += [("dpm++2m", teacher, "dpm++2m", n, shift) for shift in SAMPLER_SHIFTS for n in SAMPLER_NFES]
    for name, student in nets.items():
        supported = [s for s in STUDENT_STEPS if _supports(student.config.student, s)]
        settings += [(student.config.student["method"], name, None, s, None) for s in supported]

    def run(model_name: str, sampler: str | None, steps: int, shift, some_prompts=prompts, some_seeds=seeds):
        if model_name != teacher:
            return stretto.generate(nets[model_name], some_prompts, steps=steps, seeds=some_seeds)
        return stretto.generate(
            net, some_prompts, steps=steps, sampler=sampler, guidance=guidance, shift=shift, seeds=some_seeds
        )

    for name, sampler in dict.fromkeys((s[1], s[2]) for s in settings):  # warm-up, untimed
        run(name, sampler, 1, 1.0 if name == teacher else None, prompts[:2], seeds[:2])
    rows, reference = [], None
    for method, name, sampler, steps, shift in tqdm(settings, desc="bench distill"):
        result = run(name, sampler, steps, shift)
        if reference is None:
            reference = result
        stats = result.stats
        branches = 2 if name == teacher and guidance not in (0.0, 1.0) else 1
        rows.append({
            "model": name, "method": method, "steps": steps, "shift": shift, "nfe": stats.model_calls,
            "branch_evals": stats.model_calls * branches,
            "fid": fid.score(result.images), "prompt_acc": prompt_accuracy(classifier, result.images, prompts),
            "psnr_db_vs_teacher": None if result is reference else psnr_db(result.images, reference.images),
            "wall_s": stats.wall_s, "speedup_vs_teacher": reference.stats.wall_s / stats.wall_s,
        })  # fmt: skip

    real, real_prompts, _ = make_batch(987_654, num_images)
    result = {
        "benchmark": "distill",
        "teacher": teacher,
        "num_images": num_images,
        "guidance": guidance,
        "fid_real_data": fid.score(real),
        "prompt_acc_real_data": prompt_accuracy(classifier, real, real_prompts),
        "students": {name: {**s.config.student, **_training(name)} for name, s in nets.items()},
        "machine": describe_machine(device),
        "command": f"stretto bench distill --num-images {num_images} --students {' '.join(students)}",
        "rows": rows,
    }
    if json_path:
        write_json(result, json_path)
    if plot_path:
        plot_distill_bench(result, plot_path)
    if grid_path:
        _save_grid(grid_path, settings, run, teacher)
    print_table(rows, TABLE)
    return result


def _supports(student: dict, steps: int) -> bool:
    supported = student_steps(student)
    return supported is None or steps in supported


def _training(name: str) -> dict:
    """How a student was made: its last command and, for one trained in stages, every stage."""
    meta = json.loads((resolve(name) / "config.json").read_text())
    return {k: meta[k] for k in ("train_command", "training_history") if k in meta}


def _save_grid(path, settings, run, teacher: str) -> None:
    """Rows: the teacher at 50 steps, DPM-Solver++ at 4, each student at each step count; columns: prompts."""
    prompts = evaluation_prompts(GRID_PROMPTS)
    seeds = list(range(GRID_PROMPTS))
    chosen = [s for s in settings if s[0] != "dpm++2m" or (s[3], s[4]) == (4, 3.0)]
    images = [run(name, sampler, steps, shift, prompts, seeds).images for _, name, sampler, steps, shift in chosen]
    labels = [
        f"teacher, {sampler} {steps}" + (f" shift {shift:g}" if shift != 1.0 else "")
        if name == teacher
        else f"{method} {steps} ({Path(name).name})"
        for method, name, sampler, steps, shift in chosen
    ]
    save_images(torch.cat(images), path, rows=len(chosen), row_labels=labels, col_labels=[p[:18] for p in prompts])


def label(row: dict) -> str:
    if row["method"] == "dpm++2m":
        return f"dpm++2m shift {row['shift']:g}"
    return row["method"] if row["method"] == "teacher" else f"{row['method']} ({Path(row['model']).name})"


TABLE = [
    ("method", label, "<34"), ("steps", "steps", ">5"), ("nfe", "nfe", ">4"), ("FID", "fid", ">7.2f"),
    ("prompt acc", "prompt_acc", ">10.3f"),
    ("PSNR dB", lambda r: "ref" if r["psnr_db_vs_teacher"] is None else f"{r['psnr_db_vs_teacher']:.1f}", ">8"),
    ("wall s", "wall_s", ">7.2f"), ("speedup", "speedup_vs_teacher", ">7.1f"),
]  # fmt: skip


def plot_distill_bench(result: dict, plot_path: str | Path) -> None:
    """FID and prompt accuracy against speedup, one line per method; the teacher as dashed lines."""
    _, fig, axes = new_figure(1, 2, figsize=(12, 4.4))
    ax_fid, ax_acc = axes[0]
    rows = result["rows"]
    teacher = rows[0]
    for name in dict.fromkeys(label(r) for r in rows[1:]):
        mine = sorted((r for r in rows[1:] if label(r) == name), key=lambda r: r["speedup_vs_teacher"])
        xs = [r["speedup_vs_teacher"] for r in mine]
        ax_fid.plot(xs, [r["fid"] for r in mine], "o-", label=name)
        ax_acc.plot(xs, [r["prompt_acc"] for r in mine], "o-", label=name)
        for r in mine:
            ax_fid.annotate(f"{r['steps']}", (r["speedup_vs_teacher"], r["fid"]), fontsize=7)
    ax_fid.axhline(teacher["fid"], color="k", ls="--", lw=1, label=f"teacher, Euler {teacher['steps']}")
    ax_fid.axhline(result["fid_real_data"], color="gray", ls=":", lw=1, label="real data (same n)")
    ax_acc.axhline(teacher["prompt_acc"], color="k", ls="--", lw=1)
    for ax, title in ((ax_fid, "FID, lower is better (labels: steps)"), (ax_acc, "prompt accuracy, higher is better")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("speedup over the teacher at 50 Euler steps (wall time, this run)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax_fid.set_yscale("log")
    ax_fid.legend(fontsize=8)
    fig.suptitle(f"few-step students of {result['teacher']} ({result['num_images']} prompts x 1 seed)", fontsize=11)
    save_figure(fig, plot_path, dpi=120)
