"""The load test's clients: one image request, one streamed completion, one world stream, each judged complete or not.

Every call returns an `Outcome`: "complete" (the whole answer arrived and checks out), "disconnected" (the client
left mid-stream on purpose), "rejected" (a 429, or a world socket closed with 1013 try-later), or "failed"
(anything else: an accepted request that did not get a complete answer).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

PROMPTS = ("a red circle left of a blue square", "a green triangle above a yellow circle", "a blue square")
TEXT_PROMPT = "dup:abc="
TRY_AGAIN_LATER = 1013


@dataclass
class Outcome:
    """How one request ended, its latency to the last byte, and the image batch it ran in (images only)."""

    kind: str
    status: str
    latency_s: float
    batch_images: int = 0


async def image(client: httpx.AsyncClient, base: str, i: int, steps: int) -> Outcome:
    """POST /v1/images/generations; complete when the one image asked for came back."""
    began = time.perf_counter()
    body = {"prompt": PROMPTS[i % len(PROMPTS)], "steps": steps, "sampler": "euler", "seed": i}
    r = await client.post(base + "/v1/images/generations", json=body)
    took = time.perf_counter() - began
    if r.status_code == 429:
        return Outcome("image", "rejected", took)
    ok = r.status_code == 200 and len(r.json()["data"]) == 1 and r.json()["data"][0]["b64_json"]
    batch = r.json()["stretto"]["batch_images"] if ok else 0
    return Outcome("image", "complete" if ok else "failed", took, batch)


async def text(client: httpx.AsyncClient, base: str, max_tokens: int, leave: bool) -> Outcome:
    """POST /v1/completions with stream: true; complete on a final event with finish_reason, then [DONE]."""
    began, final, done = time.perf_counter(), False, False
    body = {"prompt": TEXT_PROMPT, "max_tokens": max_tokens, "stream": True}
    async with client.stream("POST", base + "/v1/completions", json=body) as r:
        if r.status_code == 429:
            return Outcome("text", "rejected", time.perf_counter() - began)
        if r.status_code != 200:
            return Outcome("text", "failed", time.perf_counter() - began)
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if leave:  # closing the response mid-stream is the client vanishing
                return Outcome("text", "disconnected", time.perf_counter() - began)
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            choices = json.loads(data).get("choices") or [{}]
            final = final or choices[0].get("finish_reason") is not None
    return Outcome("text", "complete" if final and done else "failed", time.perf_counter() - began)


async def world(base: str, blocks: int, leave: bool) -> Outcome:
    """WS /v1/world: send `blocks` blocks of actions; complete when every frame arrived in order."""
    began, indices = time.perf_counter(), []
    try:
        async with connect(base.replace("http://", "ws://") + "/v1/world?format=raw", max_size=None) as ws:
            ready = json.loads(await ws.recv())
            if ready.get("type") == "error":
                await ws.recv()  # the close that follows: 1013 when all streams are taken
            if ready.get("type") != "ready":
                return Outcome("world", "failed", time.perf_counter() - began)
            frames = blocks * ready["frames_per_block"]
            await ws.send("R" * frames)
            while len(indices) < frames:
                head = json.loads(await ws.recv())
                await ws.recv()  # the raw RGB bytes of the frame
                indices.append(head["index"])
                if leave:
                    return Outcome("world", "disconnected", time.perf_counter() - began)
    except ConnectionClosed as closed:
        rejected = closed.rcvd is not None and closed.rcvd.code == TRY_AGAIN_LATER
        return Outcome("world", "rejected" if rejected else "failed", time.perf_counter() - began)
    complete = indices == list(range(len(indices))) and len(indices) > 0
    return Outcome("world", "complete" if complete else "failed", time.perf_counter() - began)
