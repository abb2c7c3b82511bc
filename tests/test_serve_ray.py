"""`stretto serve --ray`: the same app as a Ray Serve deployment of 2 replicas on a local Ray (2 CPUs)."""

from __future__ import annotations

import json
import socket

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install -e '.[ray]')")

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from stretto.cli import main  # noqa: E402
from stretto.serve import ServeSettings  # noqa: E402
from stretto.serve.replicas import ReplicaSettings, application  # noqa: E402


@pytest.fixture(scope="module")
def ray_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServeSettings(models=("shapes-flux", "text-masked", "world-sf"), torch_threads=1, quality=False)
        serve.run(application(settings, ReplicaSettings(replicas=2, replica_cpus=0.5)), name="stretto",
                  route_prefix="/")  # fmt: skip
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_run_and_answer_images(ray_server):
    replicas = serve.status().applications["stretto"].deployments["stretto"].replica_states
    assert replicas.get("RUNNING") == 2
    health = httpx.get(ray_server + "/health", timeout=60).json()
    assert health["status"] == "ok" and health["models"]["shapes-flux"] == "shapes-flux"
    body = {"prompt": "a red circle", "n": 2, "steps": 2, "sampler": "euler"}
    r = httpx.post(ray_server + "/v1/images/generations", json=body, timeout=120)
    assert r.status_code == 200 and len(r.json()["data"]) == 2 and r.json()["stretto"]["batch_images"] == 2


def test_refusals_and_streams_pass_through_ray(ray_server):
    bad = httpx.post(ray_server + "/v1/images/generations", json={"prompt": "x", "steps": 0}, timeout=60)
    assert bad.status_code == 422 and "steps" in bad.text
    body = {"prompt": "dup:abc=", "max_tokens": 16, "stream": True}
    with httpx.stream("POST", ray_server + "/v1/completions", json=body, timeout=120) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] in ("stop", "length")
    with connect(ray_server.replace("http://", "ws://") + "/v1/world") as ws:
        assert json.loads(ws.recv(timeout=60))["type"] == "ready"
        ws.send("RR")
        assert [json.loads(ws.recv(timeout=60))["index"] for _ in range(2)] == [0, 1]


def test_replica_bounds_are_checked(capsys):
    assert main(["serve", "--ray", "--models", "shapes-flux", "--replicas", "5", "--max-replicas", "4"]) == 2
    assert "--replicas" in capsys.readouterr().err
    assert ReplicaSettings(2, 1, 4).options()["autoscaling_config"]["max_replicas"] == 4
    assert ReplicaSettings(2).options()["num_replicas"] == 2
    with pytest.raises(ValueError, match="replicas"):
        ReplicaSettings(5, 1, 4).check()
