"""`WS /v1/world` on a real server: frames per action, raw bytes, the KV cache freed on close, and bad input."""

from __future__ import annotations

import base64
import io
import json
import socket

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("websockets", reason="websockets is not installed (pip install -e '.[test]')")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from serve_helpers import ModelGate, metric, served, wait_until  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


@pytest.fixture(scope="module")
def server():
    with served(models=("world-sf",), max_streams=2, quality=False) as (base, app):
        yield base, app


def ws_url(base: str, query: str = "") -> str:
    return base.replace("http://", "ws://") + "/v1/world" + (f"?{query}" if query else "")


def frames(ws, count: int) -> list[dict]:
    return [json.loads(ws.recv(timeout=60)) for _ in range(count)]


def closed_with(ws) -> tuple[list[dict], int, str]:
    """The messages until the server closes, its close code and reason."""
    messages = []
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=60)))
    except ConnectionClosed as closed:
        return messages, closed.rcvd.code, closed.rcvd.reason


def test_each_action_brings_a_frame_with_its_latency(server):
    base, _ = server
    with connect(ws_url(base)) as ws:
        ready = json.loads(ws.recv(timeout=60))
        assert ready["type"] == "ready" and ready["frame_size"] == 24 and ready["actions"] == "NLRUD"
        ws.send("RRU")
        got = frames(ws, 3)
        ws.send(json.dumps({"actions": "L"}))
        got += frames(ws, 1)
    assert [f["index"] for f in got] == [0, 1, 2, 3] and [f["action"] for f in got] == list("RRUL")
    assert all(f["latency_ms"] > 0 and f["kv_bytes"] > 0 for f in got)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(got[0]["png"]))))
    assert image.shape == (24, 24, 3)


def test_raw_format_sends_rgb_bytes_after_each_header(server):
    base, _ = server
    with connect(ws_url(base, "format=raw&seed=3")) as ws:
        json.loads(ws.recv(timeout=60))
        ws.send("D")
        head, pixels = json.loads(ws.recv(timeout=60)), ws.recv(timeout=60)
    assert head["bytes"] == 24 * 24 * 3 and isinstance(pixels, bytes) and len(pixels) == head["bytes"]


def test_closing_the_socket_stops_the_stream_and_frees_its_kv_cache(server):
    base, app = server
    with connect(ws_url(base)) as ws:
        json.loads(ws.recv(timeout=60))
        ws.send("RR")
        frames(ws, 2)
        (stream,) = app.state.streams.values()
        assert stream.kv_bytes > 0 and metric(base, "stretto_world_kv_bytes") == stream.kv_bytes
        generator = stream.frames
    wait_until(lambda: not app.state.streams, "the stream to be dropped")
    assert generator.gi_frame is None  # closed: its `finally` released the KV cache
    assert metric(base, "stretto_world_kv_bytes") == 0 and metric(base, "stretto_world_streams") == 0


def test_a_client_that_vanishes_mid_stream_stops_its_stream(server):
    base, app = server
    cancelled = metric(base, 'stretto_cancelled_total{route="/v1/world"}')
    with connect(ws_url(base)) as ws:
        json.loads(ws.recv(timeout=60))
        ws.send("R" * 64)
        frames(ws, 1)
        generator = next(iter(app.state.streams.values())).frames
        with ModelGate(app.state.registry.models["world-sf"]) as gate:
            assert gate.entered.wait(60)  # frame 1 is being made
            ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame, 63 frames still asked for
            wait_until(lambda: metric(base, 'stretto_cancelled_total{route="/v1/world"}') > cancelled,
                       "the server to notice the client is gone")  # fmt: skip
            gate.release()
            wait_until(lambda: not app.state.streams, "the stream to be dropped")
            assert gate.calls <= 4 + 1  # the block in flight (4 steps, its commit), no further frame
    assert generator.gi_frame is None  # closed: its `finally` released the KV cache
    with connect(ws_url(base)) as again:  # the server goes on
        json.loads(again.recv(timeout=60))
        again.send("N")
        assert frames(again, 1)[0]["index"] == 0


@pytest.mark.parametrize(
    ("query", "message", "words"),
    [
        ("", "XYZ", "unknown action symbol(s) 'X', 'Y', 'Z'"),
        ("", b"\x00\x01", "not binary data"),
        ("", "", "an empty message"),
        ("", '{"actions": 5}', 'a JSON message is {"actions": "<symbols>"}'),
        ("", '{"actions": "R"', "not valid JSON"),
        ("", "R" * 300, "more than 256 actions waiting"),
        ("steps=0", None, "steps: Input should be greater than or equal to 1"),
        ("speed=9", None, "speed: unknown field"),
        ("sinks=9", None, "sink count 9 must be in [0, window=8]"),
        ("model=/etc", None, "refused unless the operator allows"),
    ],
)
def test_bad_input_gets_an_error_and_a_clean_close(server, query, message, words):
    base, app = server
    with connect(ws_url(base, query)) as ws:
        if message is not None:
            assert json.loads(ws.recv(timeout=60))["type"] == "ready"
            ws.send(message)
        messages, code, reason = closed_with(ws)
    assert code == 1008 and words in messages[-1]["message"] and reason
    wait_until(lambda: not app.state.streams, "the stream to be dropped")
    assert httpx.get(base + "/health").json()["streams"] == 0  # and the server goes on


def test_streams_past_the_limit_are_told_to_come_back_later(server):
    base, _ = server
    with connect(ws_url(base)) as first, connect(ws_url(base)) as second:
        for ws in (first, second):
            json.loads(ws.recv(timeout=60))
        with connect(ws_url(base)) as third:
            messages, code, _ = closed_with(third)
    assert code == 1013 and "world streams are open" in messages[-1]["message"]


def test_a_socket_that_sends_nothing_is_closed_when_idle():
    with served(models=("world-sf",), idle_s=0.3, quality=False) as (base, app):
        with connect(ws_url(base)) as ws:
            messages, code, reason = closed_with(ws)
        assert messages[0]["type"] == "ready" and code == 1001 and "no action for 0.3 s" in reason
        wait_until(lambda: not app.state.streams, "the stream to be dropped")
