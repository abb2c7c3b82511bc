"""`WS /v1/world`: the client sends actions, the server streams each frame as soon as its block is denoised.

Protocol. Query: `WorldParams` (model, world, seed, steps, window, sinks, format). The server first sends
`{"type": "ready", ...}`. The client sends actions as text, bare symbols ("R", "RRUL") or `{"actions": "RRUL"}`:
one action per frame, a short last block padded by repeating its last action (holding the key). For every
frame the server sends `{"type": "frame", "index", "action", "latency_ms", "kv_bytes", "png"}` (base64 PNG);
with format=raw the JSON has no png and is followed by one binary message of H*W*3 RGB bytes. Frames are
made only for actions sent: a client that sends nothing costs nothing, and is closed once it has been
idle (no action waiting, no frame being made) for the idle time.
Bad input (not text, an unknown symbol, an unknown field, too many actions waiting) gets an error message
and a close with 1008. Closing the socket (or any close) stops the stream and frees its KV cache.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from stretto.data.world import ACTIONS, parse_actions
from stretto.pipelines.world import StreamSettings, stream_world
from stretto.serve.encoding import png_b64, raw_rgb
from stretto.serve.errors import ApiError, validation_message
from stretto.serve.schemas import WorldParams
from stretto.serve.settings import WORLD_KIND

router = APIRouter()
MAX_WAITING_ACTIONS = 256
CLIENT_GONE, GOING_AWAY, POLICY_VIOLATION, INTERNAL_ERROR, TRY_AGAIN_LATER = 1000, 1001, 1008, 1011, 1013


class BadMessage(ValueError):
    """A client message that is not a list of actions."""


@dataclass
class OpenStream:
    """A world stream the server holds: its generator (closing it frees the KV cache) and its cache size."""

    frames: Iterator
    kv_bytes: int = 0


def parse_message(message: dict) -> list[int]:
    """A client's WebSocket message -> action indices, or BadMessage saying what is wrong."""
    text = message.get("text")
    if text is None:
        raise BadMessage(f'send actions as text ({ACTIONS} symbols or {{"actions": ...}}), not binary data')
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise BadMessage("the message is not valid JSON") from None
        if set(data) != {"actions"} or not isinstance(data["actions"], str):
            raise BadMessage(f'a JSON message is {{"actions": "<symbols>"}}, got fields {sorted(data)}')
        text = data["actions"]
    if not text.strip():
        raise BadMessage(f"an empty message; send action symbols ({ACTIONS})")
    try:
        return parse_actions(text.strip())
    except ValueError as err:
        raise BadMessage(str(err)) from None


def taking(actions: deque, used: list[int]) -> Iterator[int]:
    """The stream's action iterator: frames are only asked for once their block's actions are queued."""
    while True:
        used.append(actions.popleft())
        yield used[-1]


async def close(websocket: WebSocket, code: int, message: str | None = None) -> None:
    """Send the reason as an error message (if any), then close; a client already gone is fine."""
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    try:
        if message is not None:
            await websocket.send_json({"type": "error", "message": message})
        await websocket.close(code, (message or "")[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


@router.websocket("/v1/world")
async def world_stream(websocket: WebSocket):
    """Stream the world model steered by the client's actions, one frame per action."""
    state = websocket.app.state
    await websocket.accept()
    try:
        params = WorldParams(**websocket.query_params)
        name = state.registry.choose(params.model, (WORLD_KIND,), "world")
        model = await state.registry.get(name, state.worker)
        settings = {"mode": "kv-rolling", "steps": params.steps, "window": params.window, "sinks": params.sinks}
        StreamSettings(**settings).check(model)
    except ValidationError as err:
        return await close(websocket, POLICY_VIOLATION, "; ".join(validation_message(e) for e in err.errors()))
    except ApiError as err:
        return await close(websocket, POLICY_VIOLATION, err.message)
    except ValueError as err:
        return await close(websocket, POLICY_VIOLATION, str(err))
    if len(state.streams) >= state.settings.max_streams:
        return await close(websocket, TRY_AGAIN_LATER, f"{len(state.streams)} world streams are open; try later")
    fpb = model.config.frames_per_block
    actions, used, wake, producing = deque(), [], asyncio.Event(), asyncio.Event()
    stream = OpenStream(stream_world(model, taking(actions, used), world=params.world, seed=params.seed, **settings))
    state.streams[id(stream)] = stream
    state.metrics.streams.inc()
    size = model.config.frame_size
    await websocket.send_json({"type": "ready", "model": name, "frames_per_block": fpb, "frame_size": size,
                               "actions": ACTIONS, "format": params.format})  # fmt: skip

    async def receive() -> tuple[int, str | None]:
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), state.settings.idle_s)
            except TimeoutError:
                if actions or producing.is_set():
                    continue  # idle means nothing to do: a client waiting for its frames is not
                return GOING_AWAY, f"no action for {state.settings.idle_s:g} s; closing"
            if message["type"] == "websocket.disconnect":
                return CLIENT_GONE, None
            try:
                new = parse_message(message)
            except BadMessage as err:
                return POLICY_VIOLATION, str(err)
            new += new[-1:] * (-len(new) % fpb)  # whole blocks: the last action is held
            if len(actions) + len(new) > MAX_WAITING_ACTIONS:
                return POLICY_VIOLATION, f"more than {MAX_WAITING_ACTIONS} actions waiting; wait for frames"
            actions.extend(new)
            wake.set()

    async def produce() -> tuple[int, str | None]:
        left = 0  # frames of the current block still to hand out
        while True:
            if left == 0:
                while len(actions) < fpb:
                    wake.clear()
                    await wake.wait()
                left = fpb
            producing.set()
            try:
                frame = await state.worker.run(next, stream.frames)
            finally:
                producing.clear()
            left -= 1
            stream.kv_bytes = frame.kv_bytes
            state.metrics.frames.inc()
            state.metrics.frame_latency.observe(frame.latency_s)
            head = {"type": "frame", "index": frame.index, "action": ACTIONS[used[frame.index]],
                    "latency_ms": frame.latency_s * 1000, "kv_bytes": frame.kv_bytes}  # fmt: skip
            if params.format == "png":
                await websocket.send_json({**head, "png": png_b64(frame.pixels)[0]})
            else:
                await websocket.send_json({**head, "bytes": size * size * 3})
                await websocket.send_bytes(raw_rgb(frame.pixels))

    tasks = [asyncio.ensure_future(receive()), asyncio.ensure_future(produce())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        ended = next(iter(done))
        err = ended.exception()
        if err is None:
            code, reason = ended.result()
        elif isinstance(err, WebSocketDisconnect | OSError):  # a send to a client that has gone
            code, reason = CLIENT_GONE, None
        else:
            code, reason = INTERNAL_ERROR, f"the stream failed: {err}"
        if code == CLIENT_GONE and (actions or producing.is_set()):
            state.metrics.cancelled.labels("/v1/world").inc()  # it left frames unmade
        await close(websocket, code, reason)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # After any frame still being made on the model thread: the generator's `finally` frees the KV cache.
        await state.worker.run(stream.frames.close)
        del state.streams[id(stream)]
        state.metrics.streams.dec()
