"""`stretto bench serve` with tiny counts: its JSON keys, and that it tells complete answers from failed ones."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[test]')")

import httpx  # noqa: E402
from serve_helpers import served  # noqa: E402

from stretto.bench import serve_clients as clients  # noqa: E402
from stretto.bench.serve import run_serve_bench  # noqa: E402
from stretto.cli import main  # noqa: E402

TINY = dict(concurrency=(1, 2), requests=8, steps=1, max_tokens=16, blocks=1, leave_every=2, batch_clients=2,
            batch_images=2, settle_s=5.0)  # fmt: skip


@pytest.mark.slow  # starts three server processes: ~50 s on this machine
def test_tiny_load_completes_and_reports(tmp_path):
    result = run_serve_bench(tmp_path / "serve.json", tmp_path / "serve.png", **TINY)
    assert json.loads((tmp_path / "serve.json").read_text()) == result
    assert (tmp_path / "serve.png").stat().st_size > 0
    assert [r["concurrency"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["requests"] == 8 and row["failed"] == 0
        assert row["complete"] + row["disconnected"] + row["rejected"] == 8
        assert set(row["kinds"]) == {"image", "text", "world"}
        assert row["kinds"]["text"]["disconnected"] + row["kinds"]["world"]["disconnected"] >= 1
        assert row["image_batches"] >= 1 and row["latency_s_p95"] >= row["latency_s_p50"] > 0
    leaks = result["leaks"]
    assert leaks["all_complete"] and leaks["queue_depth_after"] == 0 and leaks["streams_after"] == 0
    assert {"rss_idle_mib", "rss_after_mib", "rss_back_within_10pct"} <= set(leaks)
    batching = result["batching"]
    assert batching["one_at_a_time"]["image_batch_mean"] == 1.0 and batching["batched"]["complete"] == 2
    assert batching["ratio"] > 0


def test_a_refused_or_cut_answer_is_not_complete():
    """The client judges by the answer: a refused completion (max_tokens 8 is not a multiple of the model's
    block of 16) is "failed", a valid one "complete", one left after its first event "disconnected"."""
    with served(models=("text-masked",), quality=False) as (base, _):

        async def three():
            async with httpx.AsyncClient(timeout=120) as client:
                return [await clients.text(client, base, tokens, leave) for tokens, leave in
                        ((8, False), (16, False), (16, True))]  # fmt: skip

        assert [o.status for o in asyncio.run(three())] == ["failed", "complete", "disconnected"]


def test_cli_refuses_a_bad_concurrency(capsys):
    assert main(["bench", "serve", "--concurrency", "0"]) == 2
    assert "--concurrency" in capsys.readouterr().err
