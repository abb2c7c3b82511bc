"""`stretto bench serve`: a bounded load test of `stretto serve` on loopback, against servers it starts itself.

Mixed phase: one server (`stretto serve` in a subprocess, so its RSS is its own) gets a mix of image requests,
streamed completions and world streams at each concurrency in turn; a fixed share of the streams leave after
their first event or frame. Each level stops after `requests` requests or `duration_s`, whichever comes first.
Rows per level: `{"concurrency", "requests", "complete", "disconnected", "rejected", "failed", "wall_s",
"requests_per_s", "latency_s_p50", "latency_s_p95", "image_batch_mean", "image_batch_max", "kinds": {kind: ...}}`.
Then every accepted request must have completed or been left by its client (`all_complete`), the queue and the
streams must be empty, and RSS must come back within 10% of the idle level (measured after one warm-up request of
each kind, so first-use allocations count as idle).
Batching phase: image-only at `batch_clients` concurrent clients against a fresh server with `--max-batch
batch_clients` and one with `--max-batch 1`, in the same run: `batching.ratio` is images/s batched over images/s
one at a time (the issue's target is >= 3 at 16 clients).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from stretto.bench import serve_clients as clients
from stretto.bench.report import describe_machine, new_figure, print_table, save_figure, write_json

MODELS = "shapes-flux,text-masked,world-sf"
RSS_TOLERANCE = 0.10
START_TIMEOUT_S = 120.0


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@contextmanager
def server(models: str, max_batch: int, queue_size: int, max_streams: int, threads: int):
    """(base URL, pid) of `stretto serve` in a subprocess on a free loopback port; stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "stretto.cli", "serve", "--port", str(port), "--models", models,
           "--max-batch", str(max_batch), "--max-images", "1", "--queue-size", str(queue_size),
           "--max-streams", str(max_streams), "--torch-threads", str(threads), "--no-quality",
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"stretto serve exited with {proc.returncode} before answering: {' '.join(cmd)}")
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"stretto serve did not answer within {START_TIMEOUT_S:g} s")
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def batch_histogram(base: str) -> dict:
    """The image-batch histogram of /metrics: {"count", "sum", "buckets": {le: cumulative count}}."""
    out = {"count": 0.0, "sum": 0.0, "buckets": {}}
    for line in httpx.get(base + "/metrics").text.splitlines():
        if m := re.match(r'stretto_image_batch_images_bucket\{le="([^"]+)"\} (\S+)', line):
            out["buckets"][m[1]] = float(m[2])
        elif m := re.match(r"stretto_image_batch_images_(count|sum) (\S+)", line):
            out[m[1]] = float(m[2])
    return out


def batches_between(before: dict, after: dict) -> dict:
    """Image batches formed between two histogram snapshots: how many, mean size, largest bucket reached."""
    count = after["count"] - before["count"]
    grew = [le for le, c in after["buckets"].items() if c - before["buckets"].get(le, 0.0) == count and count]
    largest = min((float(le) for le in grew), default=0.0)  # the smallest bucket holding every new batch
    mean = (after["sum"] - before["sum"]) / count if count else 0.0
    return {"image_batches": int(count), "image_batch_mean": round(mean, 2), "image_batch_max_le": largest}


def pick(i: int, mix: tuple[str, ...]) -> str:
    return mix[i % len(mix)]


async def load(base: str, concurrency: int, requests: int, duration_s: float, mix: tuple[str, ...],
               leave_every: int, steps: int, max_tokens: int, blocks: int) -> tuple[list, float]:  # fmt: skip
    """`concurrency` clients share `requests` requests; none starts after `duration_s`. (outcomes, wall s)."""
    counter, outcomes = iter(range(requests)), []
    began = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:

        async def one_client():
            for i in counter:
                if time.perf_counter() - began > duration_s:
                    return
                kind = pick(i, mix)
                leave = leave_every > 0 and (i // len(mix)) % leave_every == leave_every - 1
                if kind == "image":
                    outcomes.append(await clients.image(client, base, i, steps))
                elif kind == "text":
                    outcomes.append(await clients.text(client, base, max_tokens, leave))
                else:
                    outcomes.append(await clients.world(base, blocks, leave))

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - began


def summarize(outcomes: list, wall_s: float) -> dict:
    """Counts by status, throughput and latency percentiles of finished requests."""
    row = {s: sum(o.status == s for o in outcomes) for s in ("complete", "disconnected", "rejected", "failed")}
    done = [o.latency_s for o in outcomes if o.status == "complete"]
    row.update(requests=len(outcomes), wall_s=round(wall_s, 2), requests_per_s=round(row["complete"] / wall_s, 3),
               latency_s_p50=round(float(np.percentile(done, 50)), 3) if done else None,
               latency_s_p95=round(float(np.percentile(done, 95)), 3) if done else None)  # fmt: skip
    return row


def settle(base: str, pid: int, idle: int, settle_s: float) -> dict:
    """Wait up to settle_s for RSS within tolerance of idle and an empty queue; what was left."""
    deadline = time.monotonic() + settle_s
    while True:
        health, rss = httpx.get(base + "/health").json(), rss_bytes(pid)
        back = rss <= idle * (1 + RSS_TOLERANCE)
        if (back and not health["queue_depth"] and not health["streams"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return {"rss_idle_mib": round(idle / 2**20, 1), "rss_after_mib": round(rss / 2**20, 1),
            "rss_ratio": round(rss / idle, 3), "rss_back_within_10pct": back,
            "queue_depth_after": health["queue_depth"], "streams_after": health["streams"]}  # fmt: skip


def mixed_phase(cfg: dict) -> tuple[list[dict], dict]:
    """Rows per concurrency level and the leak check, on one server."""
    rows = []
    with server(MODELS, cfg["max_batch"], cfg["queue_size"], cfg["max_streams"], cfg["threads"]) as (base, pid):
        kw = {k: cfg[k] for k in ("steps", "max_tokens", "blocks")}
        asyncio.run(load(base, 1, 3, 600.0, ("image", "text", "world"), 0, **kw))  # warm-up: first-use allocations
        time.sleep(1.0)
        idle = rss_bytes(pid)
        for c in cfg["concurrency"]:
            before = batch_histogram(base)
            outcomes, wall = asyncio.run(load(base, c, cfg["requests"], cfg["duration_s"], cfg["mix"],
                                              cfg["leave_every"], **kw))  # fmt: skip
            row = {"concurrency": c, **summarize(outcomes, wall), **batches_between(before, batch_histogram(base))}
            row["kinds"] = {k: summarize([o for o in outcomes if o.kind == k], wall) for k in sorted(set(cfg["mix"]))}
            rows.append(row)
        leaks = settle(base, pid, idle, cfg["settle_s"])
    leaks["all_complete"] = all(r["failed"] == 0 for r in rows)
    return rows, leaks


def images_per_s(max_batch: int, cfg: dict) -> dict:
    """Image-only load at batch_clients clients against a fresh image server with this --max-batch."""
    clients_n = cfg["batch_clients"]
    with server("shapes-flux", max_batch, max(32, clients_n), 1, cfg["threads"]) as (base, _):
        asyncio.run(load(base, 1, 1, 600.0, ("image",), 0, cfg["steps"], 1, 1))  # warm-up
        before = batch_histogram(base)
        outcomes, wall = asyncio.run(load(base, clients_n, cfg["batch_images"], 600.0, ("image",), 0,
                                          cfg["steps"], 1, 1))  # fmt: skip
        row = {"max_batch": max_batch, **summarize(outcomes, wall), **batches_between(before, batch_histogram(base))}
    row["images_per_s"] = row.pop("requests_per_s")
    return row


def plot(rows: list[dict], batching: dict, path: str | Path) -> None:
    """Throughput and p95 latency per kind vs concurrency; images/s batched vs one at a time."""
    plt, fig, axes = new_figure(1, 3, figsize=(14, 4.2))
    levels = [r["concurrency"] for r in rows]
    for kind in rows[0]["kinds"]:
        axes[0, 0].plot(levels, [r["kinds"][kind]["requests_per_s"] for r in rows], "o-", label=kind)
        axes[0, 1].plot(levels, [r["kinds"][kind]["latency_s_p95"] or np.nan for r in rows], "o-", label=kind)
    axes[0, 0].set(xscale="log", xlabel="concurrent clients", ylabel="complete requests / s", title="throughput")
    axes[0, 1].set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="p95 latency (s)",
                   title="p95 latency to the last byte")  # fmt: skip
    one, many = batching["one_at_a_time"], batching["batched"]
    axes[0, 2].bar(["--max-batch 1", f"--max-batch {many['max_batch']}"], [one["images_per_s"], many["images_per_s"]])
    axes[0, 2].set(ylabel="images / s", title=f"{batching['clients']} image clients: x{batching['ratio']:.2f}")
    for ax in axes[0, :2]:
        ax.legend()
    save_figure(fig, path)


def run_serve_bench(json_path: str | Path, plot_path: str | Path | None, *, concurrency=(1, 4, 16),
                    requests: int = 48, duration_s: float = 60.0, steps: int = 8, max_tokens: int = 32,
                    blocks: int = 2, leave_every: int = 4, max_batch: int = 16, queue_size: int = 8,
                    max_streams: int = 4, batch_clients: int = 16, batch_images: int = 64,
                    settle_s: float = 15.0, threads: int | None = None) -> dict:  # fmt: skip
    """Run both phases; write the JSON (and the plot); return the result."""
    cfg = dict(concurrency=tuple(concurrency), requests=requests, duration_s=duration_s, steps=steps,
               max_tokens=max_tokens, blocks=blocks, leave_every=leave_every, max_batch=max_batch,
               queue_size=queue_size, max_streams=max_streams, batch_clients=batch_clients,
               batch_images=batch_images, settle_s=settle_s, threads=threads or len(os.sched_getaffinity(0)),
               mix=("image", "text", "image", "world"))  # fmt: skip
    rows, leaks = mixed_phase(cfg)
    print_table(rows, [("clients", "concurrency", ">7"), ("req", "requests", ">4"), ("ok", "complete", ">4"),
                       ("left", "disconnected", ">4"), ("429", "rejected", ">4"), ("fail", "failed", ">4"),
                       ("req/s", "requests_per_s", ">7.2f"), ("p50 s", lambda r: r["latency_s_p50"] or 0, ">7.2f"),
                       ("p95 s", lambda r: r["latency_s_p95"] or 0, ">7.2f"),
                       ("batch", "image_batch_mean", ">6.2f")])  # fmt: skip
    print(f"leaks: {leaks}")
    one, many = images_per_s(1, cfg), images_per_s(batch_clients, cfg)
    ratio = many["images_per_s"] / one["images_per_s"] if one["images_per_s"] else 0.0
    batching = {"clients": batch_clients, "batched": many, "one_at_a_time": one, "ratio": round(ratio, 2)}
    print(f"batching: {many['images_per_s']:.2f} images/s at --max-batch {batch_clients} vs "
          f"{one['images_per_s']:.2f} at --max-batch 1: x{ratio:.2f} (p95 {many['latency_s_p95']} s vs "
          f"{one['latency_s_p95']} s)")  # fmt: skip
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    result = {"benchmark": "serve", "machine": describe_machine(), "settings": settings, "rows": rows,
              "leaks": leaks, "batching": batching}  # fmt: skip
    write_json(result, json_path)
    if plot_path:
        plot(rows, batching, plot_path)
    return result
