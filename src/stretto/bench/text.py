"""`stretto bench text`: every decoding rule x cache on the held-out text tasks, for each text model.

Each row: exact-match accuracy (overall and per task), generated tokens per second, model calls per batch
(nfe), token positions run per row (the compute actually spent), and the speedup over the baseline row of the
same model (LLaDA's low-confidence remasking, one token per step, no cache).
Speeds are wall time in this one run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from stretto import checkpoints
from stretto.bench.report import describe_machine, new_figure, print_table, save_figure, write_json
from stretto.data import text_tasks
from stretto.models.text_lm import TextLM
from stretto.pipelines.text import default_block_length, generate

BASELINE = ("lowconf:tokens=1", "none")
RULES = ("lowconf:tokens=1", "lowconf:tokens=2", "threshold:tau=0.9", "threshold:tau=0.7", "factor:f=1")
CACHES = {
    "masked-lm": ("none", "prefix", "dual", "prefix:delay", "dual:delay", "dual:every=4", "dual:drift=0.05"),
    "block-lm": ("none", "block", "block:fuse"),
}
DEFAULT_MODELS = ("text-masked", "text-block")


def evaluate(
    model: TextLM,
    examples: list[text_tasks.Example],
    decode: str,
    cache: str,
    gen_length: int,
    block_length: int,
    batch_size: int,
) -> dict:
    """Decode the examples in batches; accuracy, speed and counts."""
    correct, by_task, seconds, tokens = 0, {}, 0.0, 0
    nfe = steps = positions = refreshes = 0
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        res = generate(model, [e.prompt for e in batch], gen_length, block_length, decode, cache)
        seconds += res.seconds
        tokens += res.tokens
        nfe, steps = nfe + res.stats.nfe, steps + res.stats.steps
        positions, refreshes = positions + res.stats.positions * len(batch), refreshes + res.stats.refreshes
        for e, out in zip(batch, res.texts, strict=True):
            ok = out == e.answer
            correct += ok
            hit, n = by_task.get(e.task, (0, 0))
            by_task[e.task] = (hit + ok, n + 1)
    n_batches = -(-len(examples) // batch_size)
    return {
        "accuracy": correct / len(examples),
        "accuracy_by_task": {t: hit / n for t, (hit, n) in by_task.items()},
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "nfe": nfe / n_batches,
        "steps": steps / n_batches,
        "positions_per_sample": positions / len(examples),
        "refreshes": refreshes,
        "seconds": seconds,
    }


def run_text_bench(
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    models: dict[str, TextLM] | list[str] | tuple[str, ...] = DEFAULT_MODELS,
    n_per_task: int = 8,
    batch_size: int = 8,
    gen_length: int = 64,
    block_length: int | None = None,
    rules: tuple[str, ...] | list[str] = RULES,
    caches: dict[str, tuple[str, ...]] | None = None,
    tasks: tuple[str, ...] | list[str] = tuple(text_tasks.TASKS),
    device: str | torch.device = "cpu",
) -> dict:
    """Run the benchmark, write JSON (and a plot), return the result dict."""
    if n_per_task < 1 or batch_size < 1:
        raise ValueError(f"n_per_task and batch_size must be >= 1, got {n_per_task} and {batch_size}")
    if not isinstance(models, dict):
        models = {name: checkpoints.load(name, device=device) for name in models}
    caches = caches or CACHES
    examples = text_tasks.held_out(n_per_task, tasks=tasks)
    rules = list(dict.fromkeys([BASELINE[0], *rules]))
    rows = []
    for name, model in models.items():
        kind = model.kind
        bl = block_length or default_block_length(model)
        n_params = sum(p.numel() for p in model.parameters())
        settings = [(r, c) for c in dict.fromkeys([BASELINE[1], *caches[kind]]) for r in rules]
        generate(model, [examples[0].prompt], gen_length, bl, "threshold:tau=0.5", "none")  # warm-up
        model_rows = []
        for decode, cache in tqdm(settings, desc=f"bench text {name}"):
            stats = evaluate(model, examples, decode, cache, gen_length, bl, batch_size)
            row = {"model": name, "kind": kind, "decode": decode, "cache": cache, "params": n_params}
            model_rows.append(row | stats | {"gen_length": gen_length, "block_length": bl})
        base = next(r for r in model_rows if (r["decode"], r["cache"]) == BASELINE)
        for r in model_rows:
            r["speedup"] = r["tokens_per_s"] / max(base["tokens_per_s"], 1e-9)
        rows += model_rows
    result = {
        "benchmark": "text",
        "models": list(models),
        "n_examples": len(examples),
        "tasks": list(tasks),
        "batch_size": batch_size,
        "baseline": {"decode": BASELINE[0], "cache": BASELINE[1]},
        "machine": describe_machine(device),
        "command": f"stretto bench text --n-per-task {n_per_task} --batch-size {batch_size} --gen-length {gen_length}",
        "rows": rows,
    }
    if json_path:
        write_json(result, json_path)
    if plot_path:
        plot_text_bench(result, plot_path)
    print_table(rows, TABLE)
    return result


TABLE = [
    ("model", "model", "<12"), ("decode", "decode", "<18"), ("cache", "cache", "<16"), ("acc", "accuracy", ">6.3f"),
    ("tok/s", "tokens_per_s", ">8.1f"), ("nfe", "nfe", ">6.1f"), ("speedup", lambda r: f"{r['speedup']:.2f}x", ">7"),
]  # fmt: skip


def pareto_rows(rows: list[dict]) -> list[dict]:
    """Per model, the rows that no other row beats on both accuracy and tokens/s."""
    return [
        r
        for r in rows
        if not any(
            o["model"] == r["model"]
            and o["accuracy"] >= r["accuracy"]
            and o["tokens_per_s"] >= r["tokens_per_s"]
            and (o["accuracy"], o["tokens_per_s"]) != (r["accuracy"], r["tokens_per_s"])
            for o in rows
        )
    ]


def plot_text_bench(result: dict, plot_path: str | Path) -> None:
    """Accuracy vs tokens/s: one colour per model, one marker per cache."""
    _, fig, axes = new_figure(figsize=(8, 5))
    ax = axes[0][0]
    markers = dict(zip(dict.fromkeys(r["cache"].split(":")[0] for r in result["rows"]), "osD^v<>p", strict=False))
    colors = {m: f"C{i}" for i, m in enumerate(result["models"])}
    for r in result["rows"]:
        ax.scatter(r["tokens_per_s"], r["accuracy"], c=colors[r["model"]], marker=markers[r["cache"].split(":")[0]])
    for r in pareto_rows(result["rows"]):  # label only the best trade-offs, the rest would be unreadable
        label = f"{r['decode']} | {r['cache']}"
        ax.annotate(label, (r["tokens_per_s"], r["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for m, c in colors.items():
        ax.scatter([], [], c=c, label=m)
    for cache, mk in markers.items():
        ax.scatter([], [], c="gray", marker=mk, label=f"cache {cache}")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens / s (log)")
    ax.set_ylabel("exact-match accuracy (held-out)")
    ax.set_title(f"text decoding: rule x cache ({result['n_examples']} held-out examples)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, plot_path, dpi=130)
