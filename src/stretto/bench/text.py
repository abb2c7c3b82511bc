"""`stretto bench text`: every decoding rule x cache x sparse attention on the held-out text tasks, per text model.

Each row: exact-match accuracy (overall and per task), generated tokens per second, model calls per batch
(nfe), token positions run per row (the compute actually spent), the share of query-key pairs attended
(`attention`: 1 for dense attention, less under SparseD), the batch size and how rows were batched ("static": a
batch steps until its last row is done; "continuous": rows leave as they finish), and the speedup over the
baseline row of the same model and batch size (LLaDA's low-confidence remasking, one token per step, no cache,
dense attention, static batch). The rules include Learn2PD's learned filter ("learned"); SparseD rows run in
static batches only (its pattern is one per batch), so the batch-1 and continuous runs are dense.
With `continuous=N` (default 16) each model also gets, in the same run, every setting at batch 1 (static) and
under continuous batching at batch N, the static baseline at batch N, and a summary: the fastest continuous
setting against the batch-N baseline and against the fastest batch-1 setting ("fastest": the most tokens/s
among settings within one point of exact match of the baseline). Speeds are wall time in this one run.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from stretto import checkpoints
from stretto.bench.report import describe_machine, new_figure, print_table, save_figure, write_json
from stretto.data import text_tasks
from stretto.models.text_lm import TextLM
from stretto.pipelines.text import default_block_length, generate, generate_stream

BASELINE = ("lowconf:tokens=1", "none", "none")  # decode, cache, sparse attention
RULES = (
    "lowconf:tokens=1", "lowconf:tokens=2", "threshold:tau=0.9", "threshold:tau=0.7", "factor:f=1", "learned:tau=0.9",
)  # fmt: skip
SPARSE = ("none", "sparsed:keep=0.3")  # dense attention, and SparseD
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
    continuous: bool = False,
    sparse: str = "none",
) -> dict:
    """Decode the examples in batches (static, or one continuous batch of batch_size lanes); accuracy, speed, counts."""
    if continuous:
        return evaluate_continuous(model, examples, decode, cache, gen_length, block_length, batch_size)
    correct, by_task, seconds, tokens = 0, {}, 0.0, 0
    nfe = steps = positions = refreshes = 0
    attention = []
    for i in range(0, len(examples), batch_size):
        batch = examples[i : i + batch_size]
        res = generate(model, [e.prompt for e in batch], gen_length, block_length, decode, cache, sparse=sparse)
        seconds += res.seconds
        tokens += res.tokens
        nfe, steps = nfe + res.stats.nfe, steps + res.stats.steps
        positions, refreshes = positions + res.stats.positions * len(batch), refreshes + res.stats.refreshes
        attention.append(res.stats.attention)
        for e, out in zip(batch, res.texts, strict=True):
            ok = out == e.answer
            correct += ok
            hit, n = by_task.get(e.task, (0, 0))
            by_task[e.task] = (hit + ok, n + 1)
    n_batches = -(-len(examples) // batch_size)
    return {
        "accuracy": correct / len(examples),
        "accuracy_by_task": accuracy_by_task(by_task),
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "nfe": nfe / n_batches,
        "steps": steps / n_batches,
        "positions_per_sample": positions / len(examples),
        "refreshes": refreshes,
        "seconds": seconds,
        "attention": sum(attention) / len(attention),  # mean over the batches
    }


def accuracy_by_task(by_task: dict[str, tuple[int, int]]) -> dict[str, float]:
    return {t: hit / n for t, (hit, n) in by_task.items()}


def evaluate_continuous(
    model: TextLM,
    examples: list[text_tasks.Example],
    decode: str,
    cache: str,
    gen_length: int,
    block_length: int,
    batch_size: int,
) -> dict:
    """Decode the examples in one continuous batch of batch_size lanes; counts per batch_size prompts, as static."""
    correct, by_task = 0, {}
    run = generate_stream(model, [e.prompt for e in examples], gen_length, block_length, decode, cache,
                          batch_size=batch_size)  # fmt: skip
    tokens, t0 = 0, time.perf_counter()
    for i, res in run:
        tokens += res.tokens
        ok = res.texts[0] == examples[i].answer
        correct += ok
        hit, n = by_task.get(examples[i].task, (0, 0))
        by_task[examples[i].task] = (hit + ok, n + 1)
    seconds = time.perf_counter() - t0
    per_batch = batch_size / len(examples)  # the run's calls and ticks, per batch_size prompts
    return {
        "accuracy": correct / len(examples),
        "accuracy_by_task": accuracy_by_task(by_task),
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "nfe": run.stats.nfe * per_batch,
        "steps": run.stats.steps * per_batch,
        "positions_per_sample": run.stats.positions,
        "refreshes": run.stats.refreshes,
        "seconds": seconds,
        "attention": 1.0,
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
    continuous: int = 16,
    peers: dict | None = None,
    sparse: tuple[str, ...] | list[str] = SPARSE,
) -> dict:
    """Run the benchmark, write JSON (and a plot), return the result dict.

    The static sweep at batch_size is rules x caches (of the model's kind) x sparse; the baseline setting is
    always added. models may be empty (no sweep). peers: also run diffusers' and transformers' engines beside
    stretto on tiny published-layout models, `text_peers.run_text_peers(**peers)`, stored under the result's
    "peers" key.
    """
    if n_per_task < 1 or batch_size < 1 or continuous < 0:
        raise ValueError(
            f"n_per_task and batch_size must be >= 1 and continuous >= 0, got {n_per_task}, {batch_size}, {continuous}"
        )
    if not isinstance(models, dict):
        models = {name: checkpoints.load(name, device=device) for name in models}
    caches = caches or CACHES
    examples = text_tasks.held_out(n_per_task, tasks=tasks)
    rules = list(dict.fromkeys([BASELINE[0], *rules]))
    sparse = list(dict.fromkeys([BASELINE[2], *sparse]))
    rows, summary = [], {}
    for name, model in models.items():
        kind = model.kind
        bl = block_length or default_block_length(model)
        n_params = sum(p.numel() for p in model.parameters())
        cache_list = dict.fromkeys([BASELINE[1], *caches[kind]])
        settings = [(r, c, a) for a in sparse for c in cache_list for r in rules]
        dense = [s for s in settings if s[2] == "none"]
        generate(model, [examples[0].prompt], gen_length, bl, "threshold:tau=0.5", "none")  # warm-up
        # (batch size, continuous?, settings): the sweep, then the batch comparison's runs it does not hold yet
        runs = [(batch_size, False, settings)]
        if continuous:
            runs += [(1, False, dense)] * (batch_size != 1) + [(continuous, False, [BASELINE])] * (
                batch_size != continuous
            )
            runs.append((continuous, True, dense))
        model_rows = []
        for bs, cont, run_settings in runs:
            batching = "continuous" if cont else "static"
            for decode, cache, attn in tqdm(run_settings, desc=f"bench text {name} ({batching}, batch {bs})"):
                stats = evaluate(model, examples, decode, cache, gen_length, bl, bs, continuous=cont, sparse=attn)
                row = {"model": name, "kind": kind, "decode": decode, "cache": cache, "sparse": attn}
                row["params"] = n_params
                extra = {"gen_length": gen_length, "block_length": bl, "batch_size": bs, "batching": batching}
                model_rows.append(row | stats | extra)
        for r in model_rows:  # against the static baseline at the same batch size
            base = next(b for b in model_rows if is_baseline(b, r["batch_size"]))
            r["speedup"] = r["tokens_per_s"] / max(base["tokens_per_s"], 1e-9)
        if continuous:
            summary[name] = batch_summary(model_rows, continuous)
        rows += model_rows
    result = {
        "benchmark": "text",
        "models": list(models),
        "n_examples": len(examples),
        "tasks": list(tasks),
        "batch_size": batch_size,
        "baseline": {"decode": BASELINE[0], "cache": BASELINE[1], "sparse": BASELINE[2]},
        "machine": describe_machine(device),
        "command": f"stretto bench text --n-per-task {n_per_task} --batch-size {batch_size} --gen-length {gen_length}"
        f" --tasks {','.join(tasks)}"
        f" --continuous {continuous}" + _sweep_flags(list(models), rules, caches, sparse) + _peers_flags(peers),
        "rows": rows,
        "continuous": summary,
    }
    if peers is not None:
        from stretto.bench.text_peers import run_text_peers  # diffusers' pipelines load only when asked for

        result["peers"] = run_text_peers(**peers)
    if json_path:
        write_json(result, json_path)
    if plot_path and rows:
        plot_text_bench(result, plot_path)
    if rows:
        print_table(rows, TABLE)
    for name, s in summary.items():
        print(
            f"{name}: continuous batch {s['batch_size']} {s['best']['decode']} | {s['best']['cache']} "
            f"{s['best']['tokens_per_s']:.0f} tok/s = {s['vs_baseline']:.1f}x the static batch-{s['batch_size']} "
            f"baseline, {s['vs_batch1_fastest']:.2f}x the fastest batch-1 setting ({s['batch1_fastest']['decode']} "
            f"| {s['batch1_fastest']['cache']}, {s['batch1_fastest']['tokens_per_s']:.0f} tok/s); "
            f"{s['calls_vs_batch1_fastest']:.1f}x fewer model calls per prompt than that setting"
        )
    if peers is not None:
        from stretto.bench.text_peers import print_peers

        print_peers(result["peers"])
    return result


def is_baseline(row: dict, batch_size: int) -> bool:
    """The static LLaDA baseline row at this batch size."""
    setting = (row["decode"], row["cache"], row.get("sparse", "none"))
    return setting == BASELINE and row["batch_size"] == batch_size and row["batching"] == "static"


def fastest(rows: list[dict], baseline: dict) -> dict:
    """The most tokens/s among rows within one point of exact match of the baseline."""
    return max((r for r in rows if r["accuracy"] >= baseline["accuracy"] - 0.01), key=lambda r: r["tokens_per_s"])


def batch_summary(rows: list[dict], batch_size: int) -> dict:
    """Continuous batching at batch_size against the static baseline there and the fastest batch-1 setting."""
    batch1 = [r for r in rows if r["batch_size"] == 1 and r["batching"] == "static"]
    best_1 = fastest(batch1, next(r for r in batch1 if is_baseline(r, 1)))
    base = next(r for r in rows if is_baseline(r, batch_size))
    cont = [r for r in rows if r["batching"] == "continuous"]
    best = fastest(cont, base)
    pick = ("decode", "cache", "tokens_per_s", "accuracy", "nfe", "batch_size")
    return {
        "batch_size": batch_size,
        "best": {k: best[k] for k in pick},
        "baseline": {k: base[k] for k in pick},
        "batch1_fastest": {k: best_1[k] for k in pick},
        "vs_baseline": best["tokens_per_s"] / max(base["tokens_per_s"], 1e-9),
        "vs_batch1_fastest": best["tokens_per_s"] / max(best_1["tokens_per_s"], 1e-9),
        # counted, not timed: how many times fewer model calls per prompt than the fastest batch-1 setting (the
        # speedup where a call costs the same at batch 1 and batch N, as on a GPU with a small model)
        "calls_vs_batch1_fastest": calls_per_prompt(best_1) / max(calls_per_prompt(best), 1e-9),
    }


def calls_per_prompt(row: dict) -> float:
    """Model calls per prompt: a row's nfe counts the calls per batch of batch_size prompts."""
    return row["nfe"] / row["batch_size"]


TABLE = [
    ("model", "model", "<12"), ("decode", "decode", "<20"), ("cache", "cache", "<16"), ("sparse", "sparse", "<18"),
    ("attn", "attention", ">5.2f"), ("batch", "batch_size", ">5"), ("batching", "batching", "<10"),
    ("acc", "accuracy", ">6.3f"), ("tok/s", "tokens_per_s", ">8.1f"), ("nfe", "nfe", ">6.1f"),
    ("speedup", lambda r: f"{r['speedup']:.2f}x", ">7"),
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
    for r in result["rows"]:  # continuous batching: ringed in black
        ring = "k" if r.get("batching") == "continuous" else "none"
        marker = markers[r["cache"].split(":")[0]]
        ax.scatter(r["tokens_per_s"], r["accuracy"], c=colors[r["model"]], marker=marker, edgecolors=ring)
    for r in pareto_rows(result["rows"]):  # label only the best trade-offs, the rest would be unreadable
        label = f"{r['decode']} | {r['cache']} | {r.get('batching', 'static')} {r.get('batch_size', '')}"
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


def _sweep_flags(models: list[str], rules: list[str], caches: dict, sparse: list[str]) -> str:
    """The --models / --decode / --cache / --sparse flags of a sweep that is not the default one."""
    flags = ""
    if models and tuple(models) != DEFAULT_MODELS:
        flags += " --models " + ",".join(models)
    if rules != list(dict.fromkeys([BASELINE[0], *RULES])):
        flags += " --decode " + " ".join(rules)
    if caches != CACHES:
        flags += " --cache " + " ".join(dict.fromkeys(c for kind in caches.values() for c in kind))
    if sparse != list(dict.fromkeys([BASELINE[2], *SPARSE])):
        flags += " --sparse " + " ".join(sparse)
    return flags


def _peers_flags(peers: dict | None) -> str:
    """The --peers flags that reproduce a peers run (its models' size included)."""
    if peers is None:
        return ""
    size = peers.get("size")
    return " --peers" + (f" --peer-width {size.hidden} --peer-layers {size.layers}" if size is not None else "")
