"""`stretto serve` over real HTTP: images (batched), completions (streamed), health, metrics, and bad input."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[test]')")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from serve_helpers import ModelGate, idle, metric, served, wait_until  # noqa: E402

from stretto import checkpoints  # noqa: E402
from stretto.cache import get_handle  # noqa: E402
from stretto.checkpoints import SHIPPED_DIR  # noqa: E402
from stretto.data.text_tasks import held_out  # noqa: E402

IMAGES, COMPLETIONS = "/v1/images/generations", "/v1/completions"
PROMPT = "a red circle left of a blue square"
QUEUE = 4
FAST = {"steps": 2, "sampler": "euler"}  # two model calls per generation: enough to see batching and stopping


@pytest.fixture(scope="module")
def server():
    with served(models=("shapes-flux", "text-masked"), queue_size=QUEUE, batch_window_ms=5.0) as (base, app):
        yield base, app


def post(base: str, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(base + path, json=body, timeout=120, **kwargs)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def in_threads(calls) -> list:
    """Run each call in its own thread at once; their results in order."""
    results = [None] * len(calls)

    def run(i, call):
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    return threads, results


def test_health_models_and_page(server):
    base, _ = server
    health = httpx.get(base + "/health").json()
    assert health["status"] == "ok" and health["models"] == {"shapes-flux": "shapes-flux", "text-masked": "masked-lm"}
    models = httpx.get(base + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["shapes-flux", "text-masked"] and "taylor" in models["cache_policies"]
    image, text = models["data"]
    assert "gen_length" not in image and text["gen_length"] == 64  # the canvas text-masked was trained on
    assert text["example_prompt"] == held_out(1, tasks=checkpoints.trained_tasks("text-masked")[:1])[0].prompt
    page = httpx.get(base + "/")
    assert page.status_code == 200 and "/static/page.js" in page.text
    assert "new WebSocket" in httpx.get(base + "/static/page.js").text


def test_image_generation_answers_in_openai_shape_with_costs(server):
    base, _ = server
    r = post(base, IMAGES, {"prompt": PROMPT, "n": 2, "seed": 7, **FAST})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["data"]) == 2 and all(pixels(d["b64_json"]).shape == (32, 32, 3) for d in body["data"])
    s = body["stretto"]
    assert s["model_calls"] == 2 and s["block_evals"] > 0 and s["wall_s"] > 0
    assert s["seeds"] == [7, 8] and s["batch_images"] == 2 and len(s["prompt_match"]) == 2
    again = post(base, IMAGES, {"prompt": PROMPT, "n": 1, "seed": 8, **FAST}).json()
    assert (pixels(again["data"][0]["b64_json"]) == pixels(body["data"][1]["b64_json"])).all()  # same seed


def test_requests_that_arrive_together_run_as_one_batch(server):
    base, app = server
    batches = metric(base, "stretto_image_batch_images_count")
    model = app.state.registry.models["shapes-flux"]
    cached = {"prompt": PROMPT, "cache": "fora:interval=2", **FAST}
    with ModelGate(model) as gate:
        first, _ = in_threads([lambda: post(base, IMAGES, {"prompt": PROMPT, **FAST})])
        assert gate.entered.wait(60)  # the first batch holds the model thread
        calls = [lambda s=s: post(base, IMAGES, {"prompt": PROMPT, "seed": s, **FAST}) for s in range(3)]
        calls += [lambda s=s: post(base, IMAGES, {**cached, "seed": s}) for s in range(1)]
        threads, results = in_threads(calls)
        wait_until(lambda: app.state.admission.depth == 4, "four requests waiting")
        gate.release()
        for t in first + threads:
            t.join()
    plain = [r.json()["stretto"] for r in results[:3]]
    assert all(s["batch_requests"] == 3 and s["batch_images"] == 3 for s in plain)
    assert results[3].json()["stretto"]["batch_requests"] == 1  # another cache policy: its own batch
    assert results[3].json()["stretto"]["cache"]["policy"].startswith("fora:interval=2")
    assert metric(base, "stretto_image_batch_images_count") == batches + 3
    alone = post(base, IMAGES, {"prompt": PROMPT, "seed": 2, **FAST}).json()["data"][0]["b64_json"]
    batched = results[2].json()["data"][0]["b64_json"]
    assert np.abs(pixels(alone).astype(int) - pixels(batched).astype(int)).max() <= 1  # rows do not mix


def test_a_full_queue_answers_429_with_retry_after(server):
    base, app = server
    with ModelGate(app.state.registry.models["shapes-flux"]) as gate:
        running, _ = in_threads([lambda: post(base, IMAGES, {"prompt": PROMPT, **FAST})])
        assert gate.entered.wait(60)
        threads, results = in_threads(
            [lambda s=s: post(base, IMAGES, {"prompt": PROMPT, "seed": s, **FAST}) for s in range(QUEUE)]
        )
        wait_until(lambda: app.state.admission.depth == QUEUE, "a full queue")
        refused = post(base, IMAGES, {"prompt": PROMPT, **FAST})
        text = post(base, COMPLETIONS, {"prompt": "rev:abc=", "max_tokens": 16})
        gate.release()
        for t in running + threads:
            t.join()
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "queue is full" in refused.json()["error"]["message"]
    assert text.status_code == 429  # one queue for all model work
    assert [r.status_code for r in results] == [200] * QUEUE  # every admitted request is answered


def raw_request(base: str, path: str, body: dict) -> socket.socket:
    """Send a POST on a plain socket (so the test can vanish without reading)."""
    host, port = base.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    sock.sendall(head.encode() + b"\r\n" + data)
    return sock


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_a_client_that_disconnects_stops_its_image_work(server):
    base, app = server
    cancelled = metric(base, 'stretto_cancelled_total{route="/v1/images/generations"}')
    model = app.state.registry.models["shapes-flux"]
    hooks = hook_count(model)
    with ModelGate(model) as gate:
        sock = raw_request(base, IMAGES, {"prompt": PROMPT, "steps": 20, "cache": "fora:interval=2"})
        assert gate.entered.wait(60)  # its batch is running: 1 of 20 model calls started
        sock.close()
        wait_until(lambda: metric(base, 'stretto_cancelled_total{route="/v1/images/generations"}') > cancelled,
                   "the server to notice the disconnect")  # fmt: skip
        gate.release()
        idle(app)
        assert gate.calls == 1  # the held call was the last: the other 19 never ran
        assert hook_count(model) == hooks + 1  # only the gate: the stop hook and the block counter are gone
    assert get_handle(model) is None  # and so is the feature cache the stopped generation had applied
    assert app.state.admission.depth == 0
    assert post(base, IMAGES, {"prompt": PROMPT, **FAST}).status_code == 200  # and the server goes on


def test_a_request_past_the_timeout_is_answered_504_and_stopped(server):
    base, app = server
    settings = app.state.settings
    with ModelGate(app.state.registry.models["shapes-flux"]) as gate:
        settings.timeout_s, saved = 0.2, settings.timeout_s
        try:
            r = post(base, IMAGES, {"prompt": PROMPT, "steps": 20})
        finally:
            settings.timeout_s = saved
        gate.release()
        idle(app)
        assert gate.calls <= 1
    assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]


def test_completion_answers_with_text_usage_and_costs(server):
    base, _ = server
    r = post(base, COMPLETIONS, {"prompt": "dup:tlovoviqihdub=", "max_tokens": 32})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] > 0 and body["stretto"]["model_calls"] > 0
    assert body["stretto"]["tokens_per_s"] > 0


def test_max_tokens_defaults_to_the_models_trained_canvas(server):
    base, _ = server
    prompt = {"prompt": "dup:abcdefghijklmnop="}  # a 32-character answer: it fits in 64 slots, not in 32
    default, wide, narrow = (post(base, COMPLETIONS, {**prompt, **extra}).json()
                             for extra in ({}, {"max_tokens": 64}, {"max_tokens": 32}))  # fmt: skip
    assert checkpoints.trained_gen_length("text-masked") == 64
    assert default["choices"] == wide["choices"] and default["stretto"]["model_calls"] == wide["stretto"]["model_calls"]
    assert default["choices"][0]["finish_reason"] == "stop" and narrow["choices"][0]["finish_reason"] == "length"


def sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_a_streamed_completion_sends_each_steps_committed_tokens(server):
    base, _ = server
    request = {"prompt": "dup:tlovoviqihdub=", "max_tokens": 32}
    whole = post(base, COMPLETIONS, request).json()["choices"][0]["text"]
    with httpx.stream("POST", base + COMPLETIONS, json={**request, "stream": True}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    final, steps = events[-2], events[:-2]
    assert final["stretto"]["tokens_per_s"] > 0 and final["stretto"]["model_calls"] == steps[-1]["model_calls"]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert "".join(e["choices"][0]["text"] for e in steps) == whole  # the left-to-right deltas add up
    placed = {t["position"]: t["text"] for e in steps for t in e["choices"][0]["tokens"]}
    assert "".join(placed[i] for i in range(len(whole))) == whole  # and so do the unmasked tokens
    assert len(steps) < len(whole)  # parallel decoding: some steps committed several tokens


def test_a_client_that_leaves_a_stream_stops_the_generation(server):
    base, app = server
    cancelled = metric(base, 'stretto_cancelled_total{route="/v1/completions"}')
    request = {"prompt": "dup:tlovoviqihdub=", "max_tokens": 64, "decode": "lowconf:tokens=1", "early_stop": False}
    with ModelGate(app.state.registry.models["text-masked"], free=1) as gate:
        with httpx.stream("POST", base + COMPLETIONS, json={**request, "stream": True}, timeout=120) as r:
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["model_calls"] == 1
        wait_until(lambda: metric(base, 'stretto_cancelled_total{route="/v1/completions"}') > cancelled,
                   "the server to notice the disconnect")  # fmt: skip
        gate.release()
        idle(app)
        assert gate.calls == 2  # of the 64 the whole answer needs
    assert app.state.admission.depth == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        (IMAGES, b'{"prompt": "a red', 400, "not valid JSON"),
        (IMAGES, {"prompt": PROMPT, "colour": "red"}, 422, "colour: unknown field"),
        (IMAGES, {"prompt": PROMPT, "guidance": 50}, 422, "guidance: Input should be less than or equal to 20"),
        (IMAGES, {"prompt": PROMPT, "steps": 0}, 422, "steps: Input should be greater than or equal to 1"),
        (IMAGES, {"prompt": PROMPT, "n": 9}, 422, "n: at most 8"),
        (IMAGES, {"prompt": PROMPT, "size": "1024x1024"}, 422, "size: Input should be '32x32'"),
        (IMAGES, {"prompt": PROMPT, "sampler": "ddim"}, 422, "unknown sampler; allowed"),
        (IMAGES, {"prompt": PROMPT, "cache": "fora:interval=0"}, 422, "interval"),
        (IMAGES, {"prompt": "a golden dragon"}, 422, "unknown prompt word(s) ['golden', 'dragon']"),
        (IMAGES, {"prompt": PROMPT, "model": "/etc"}, 422, "refused unless the operator allows"),
        (IMAGES, {"prompt": PROMPT, "model": "text-masked"}, 422, "not a text-to-image model"),
        (IMAGES, {"prompt": PROMPT, "seed": -1}, 422, "seed: Input should be greater than or equal to 0"),
        (IMAGES, [PROMPT], 422, "body"),
        (COMPLETIONS, {"prompt": "héllo"}, 422, "prompt: characters not in the vocabulary"),
        (COMPLETIONS, {"prompt": "rev:abc=", "max_tokens": 10}, 422, "must be a multiple of block_length"),
        (COMPLETIONS, {"prompt": "rev:abc=", "max_tokens": 512}, 422, "exceeds the model's context"),
        (COMPLETIONS, {"prompt": "rev:abc=", "decode": "greedy"}, 422, "decode:"),
        (COMPLETIONS, {"prompt": "", "max_tokens": 16}, 422, "at least one character"),
        (COMPLETIONS, {"prompt": "rev:abc=", "temperature": 0.7}, 422, "temperature: unknown field"),
    ],
)
def test_bad_input_gets_a_clear_4xx_naming_the_field(server, path, body, status, words):
    base, _ = server
    if isinstance(body, bytes):
        r = httpx.post(base + path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = post(base, path, body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"], r.json()


def test_a_10_mb_body_is_refused_with_413(server):
    base, _ = server
    prompt = "a " * (5 * 1024 * 1024)
    r = post(base, IMAGES, {"prompt": prompt})
    assert r.status_code == 413 and "limit is 1048576 bytes" in r.json()["error"]["message"]
    chunks = (b"x" * 65536 for _ in range(160))  # 10 MiB with no Content-Length: chunked
    r = httpx.post(base + IMAGES, content=chunks, headers={"Content-Type": "application/json"}, timeout=120)
    assert r.status_code == 413 and "limit is 1048576 bytes" in r.json()["error"]["message"]
    assert httpx.get(base + "/health").status_code == 200  # the server goes on


def test_metrics_count_requests_latencies_queue_and_model_calls(server):
    base, _ = server
    assert post(base, IMAGES, {"prompt": PROMPT, **FAST}).status_code == 200
    assert post(base, IMAGES, {"prompt": "a golden dragon"}).status_code == 422
    text = httpx.get(base + "/metrics").text
    for sample in (
        'stretto_requests_total{route="/v1/images/generations",status="200"}',
        'stretto_requests_total{route="/v1/images/generations",status="422"}',
        'stretto_request_seconds_bucket{le="0.01",route="/v1/images/generations"}',
        "stretto_queue_depth 0.0",
        'stretto_model_calls_total{model="shapes-flux"}',
        'stretto_block_evals_total{model="shapes-flux"}',
    ):
        assert sample in text, sample
    assert metric(base, 'stretto_model_calls_total{model="shapes-flux"}') >= 2


def test_a_client_may_name_a_checkpoint_folder_only_under_an_allowed_one():
    with served(models=("world-sf",), allow_model_dirs=(str(SHIPPED_DIR),), quality=False) as (base, app):
        folder = str(SHIPPED_DIR / "shapes-flux")
        r = post(base, IMAGES, {"prompt": PROMPT, "model": folder, **FAST})
        assert r.status_code == 200 and folder in app.state.registry.models  # loaded on first use
        outside = post(base, IMAGES, {"prompt": PROMPT, "model": str(SHIPPED_DIR.parent), **FAST})
        assert outside.status_code == 422 and "under" in outside.json()["error"]["message"]
        wrong = post(base, IMAGES, {"prompt": PROMPT, "model": str(SHIPPED_DIR / "text-masked"), **FAST})
        assert wrong.status_code == 422 and "masked-lm model, not a text-to-image model" in wrong.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "0"], "--timeout: timeout_s must be a number in [0.001, 86400], got 0.0"),
        (["--max-images", "20", "--max-batch", "4"], "max_images (20) must be <= max_batch (4)"),
        (["--port", "70000"], "--port must be an integer in [0, 65535]"),
        (["--models", "shapes-flux,nosuch"], "no checkpoint at 'nosuch'"),
    ],
)
def test_serve_command_refuses_bad_flags_in_one_line(args, message, capsys):
    from stretto.cli import main

    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stretto: error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers: 5-15 s here
def test_the_serve_command_starts_a_server_and_stops_on_interrupt():
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["--port", str(port), "--models", "world-sf", "--no-quality", "--torch-threads", "1"]
    args += ["--log-level", "warning"]
    proc = subprocess.Popen([sys.executable, "-m", "stretto.cli", "serve", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health").json()["models"] == {"world-sf": "world-dit"}
            except httpx.TransportError:
                return False

        wait_until(healthy, "`stretto serve` to answer /health")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.endswith("stretto: interrupted\n"), err  # Ctrl-C, as every command
    assert f"http://127.0.0.1:{port}/" in out


def test_a_distilled_student_serves_with_its_own_sampler_steps_and_guidance():
    with served(models=("shapes-flux-flowmap",), quality=False) as (base, app):
        r = httpx.post(f"{base}/v1/images/generations", json={"prompt": PROMPT}, timeout=60)
        assert r.status_code == 200, r.text
        block = r.json()["stretto"]
        assert (block["sampler"], block["steps"], block["model_calls"]) == ("flowmap", 2, 2)
        r = httpx.post(f"{base}/v1/images/generations", json={"prompt": PROMPT, "sampler": "euler"}, timeout=60)
        assert r.status_code in (400, 422) and "samples with 'flowmap', not 'euler'" in r.text
