"""`POST /v1/completions` for the diffusion LMs; with `stream: true` as server-sent events, step by step.

Streamed, every decoding step is one event, `{"object": "text_completion.chunk", "step", "model_calls",
"choices": [{"index", "text", "tokens": [{"position", "text"}, ...]}]}` (`Unmasking` says what `text` and
`tokens` hold); then a final event whose choices carry `finish_reason` and which has `usage` and `stretto`
(tokens/s, model calls, steps, seconds); then `data: [DONE]`. A refusal after the stream started (the
timeout) is an event `{"error": {...}}`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from stretto import checkpoints
from stretto.pipelines.text import DEFAULT_GEN_LENGTH, default_block_length, default_cache, generate, make_canvas
from stretto.pipelines.text.caches import parse_cache
from stretto.pipelines.text.decode import check_blocks
from stretto.pipelines.text.rules import parse_rule
from stretto.serve.errors import ApiError
from stretto.serve.images import CLIENT_CLOSED
from stretto.serve.schemas import CompletionRequest
from stretto.serve.settings import TEXT_KINDS
from stretto.serve.unmasking import Unmasking
from stretto.serve.waiting import ClientGone, answer_or_cancel
from stretto.serve.worker import Cancelled, stop_when

router = APIRouter()
ROUTE = "/v1/completions"


def check_completion(model, body: CompletionRequest) -> None:
    """The pipeline's own checks, before any work is queued: a bad field is a 422 naming it."""
    checks = [
        ("decode", lambda: parse_rule(body.decode)),
        ("cache", lambda: parse_cache(default_cache(model) if body.cache is None else body.cache).check_model(model)),
        ("max_tokens", lambda: check_blocks(model, body.max_tokens, body.block_length or default_block_length(model))),
        ("prompt", lambda: make_canvas(model, body.prompts, body.max_tokens)),
    ]
    for field, check in checks:
        try:
            check()
        except ValueError as err:
            note = " (max_tokens is the pipeline's gen_length)" if field == "max_tokens" else ""
            raise ApiError(422, f"{field}: {err}{note}", field) from None


def run_completion(model, body: CompletionRequest, on_step: Callable[[list[dict], dict], None] | None, stop):
    """The one place the endpoint calls the text pipeline (continuous batching will swap in here)."""
    cfg = model.config
    unmasking = None

    def callback(canvas, info):
        nonlocal unmasking
        if unmasking is None:  # the canvas is the prompt(s) followed by max_tokens slots
            unmasking = Unmasking(model.tokenizer, canvas.shape[1] - body.max_tokens, canvas.shape[0],
                                  cfg.mask_id, cfg.eot_id)  # fmt: skip
        on_step(unmasking.step(canvas, info["block"], info["committed"]), info)

    with stop_when(model, stop):
        return generate(model, body.prompts, gen_length=body.max_tokens, block_length=body.block_length,
                        decode=body.decode, cache=body.cache, early_stop=body.early_stop,
                        callback=callback if on_step is not None else None)  # fmt: skip


class TextJob:
    """One admitted completion: it leaves the queue once, when it starts or is cancelled first."""

    def __init__(self, admission):
        self.admission = admission
        self.cancelled = threading.Event()
        self._queued, self._lock = True, threading.Lock()

    def start(self) -> bool:
        """On the model thread: leave the queue; False if the client already went away."""
        self._leave()
        return not self.cancelled.is_set()

    def cancel(self) -> None:
        self.cancelled.set()
        self._leave()

    def _leave(self) -> None:
        with self._lock:
            if self._queued:
                self._queued = False
                self.admission.leave()


def final_fields(res, body: CompletionRequest) -> dict:
    """usage and the stretto block (tokens/s, model calls) of a finished generation."""
    prompt_tokens = sum(len(t) for t in body.prompts)  # character-level models; a published tokenizer counts more
    return {
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": res.tokens,
            "total_tokens": prompt_tokens + res.tokens,
        },  # fmt: skip
        "stretto": {
            "tokens_per_s": res.tokens_per_s,
            "model_calls": res.stats.nfe,
            "steps": res.stats.steps,
            "seconds": res.seconds,
            "tokens": res.tokens,
            "cache_bytes": res.stats.cache_bytes,
        },  # fmt: skip
    }


def finish_reason(text: str, body: CompletionRequest) -> str:
    return "length" if len(text) >= body.max_tokens else "stop"


@router.post(ROUTE)
async def completions(body: CompletionRequest, request: Request):
    """Complete the prompt(s); `stream: true` sends each step's committed tokens as a server-sent event."""
    state = request.app.state
    name = state.registry.choose(body.model, TEXT_KINDS, "text")
    model = await state.registry.get(name, state.worker)
    if body.max_tokens is None:
        body = body.model_copy(update={"max_tokens": checkpoints.trained_gen_length(name) or DEFAULT_GEN_LENGTH})
    check_completion(model, body)
    state.admission.enter()
    job = TextJob(state.admission)
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name}
    if body.stream:
        # The work is queued here, not when the body starts: a client gone before then leaves nothing queued.
        events: asyncio.Queue = asyncio.Queue()
        done = start_streamed(state, model, body, job, head, events)
        return StreamingResponse(stream_events(state, body, job, head, events, done), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    def work():
        return run_completion(model, body, None, job.cancelled.is_set) if job.start() else None

    def cancel():
        job.cancel()
        state.metrics.cancelled.labels(ROUTE).inc()

    try:
        res = await answer_or_cancel(request, asyncio.ensure_future(state.worker.run(work)), state.settings.timeout_s,
                                     cancel)  # fmt: skip
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    except Cancelled:
        raise ApiError(503, "the completion was cancelled") from None
    except ValueError as err:  # a setting the pipeline refused past the checks above
        raise ApiError(422, str(err)) from None
    state.metrics.model_calls.labels(name).inc(res.stats.nfe)
    state.metrics.tokens.inc(res.tokens)
    choices = [{"index": i, "text": t, "finish_reason": finish_reason(t, body), "logprobs": None}
               for i, t in enumerate(res.texts)]  # fmt: skip
    return {**head, "object": "text_completion", "choices": choices, **final_fields(res, body)}


def sse(data) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def start_streamed(state, model, body: CompletionRequest, job: TextJob, head: dict, events: asyncio.Queue):
    """Queue the generation; each step's event, then None, lands in `events`. Returns the work's future."""
    loop = asyncio.get_running_loop()

    def on_step(choices, info):
        event = {**head, "object": "text_completion.chunk", "step": info["step"], "model_calls": info["nfe"],
                 "choices": choices}  # fmt: skip
        loop.call_soon_threadsafe(events.put_nowait, event)

    def work():
        return run_completion(model, body, on_step, job.cancelled.is_set) if job.start() else None

    def ended(future: asyncio.Future) -> None:
        if not future.cancelled():
            future.exception()  # read here, so an abandoned stream's error is not logged as never retrieved
        events.put_nowait(None)

    done = asyncio.ensure_future(state.worker.run(work))
    done.add_done_callback(ended)
    return done


async def stream_events(state, body: CompletionRequest, job: TextJob, head: dict, events: asyncio.Queue, done):
    """The SSE body: one event per decoding step, a final event with tokens/s and model calls, then [DONE].

    Starlette cancels this generator when the client disconnects; the `finally` then stops the generation at
    its next model call.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.timeout_s
    finished = False
    try:
        while (event := await asyncio.wait_for(events.get(), max(deadline - loop.time(), 0))) is not None:
            yield sse(event)
        res = done.result()
        state.metrics.model_calls.labels(head["model"]).inc(res.stats.nfe)
        state.metrics.tokens.inc(res.tokens)
        choices = [{"index": i, "text": "", "tokens": [], "finish_reason": finish_reason(t, body)}
                   for i, t in enumerate(res.texts)]  # fmt: skip
        yield sse({**head, "object": "text_completion.chunk", "choices": choices, **final_fields(res, body)})
        yield sse("[DONE]")
        finished = True
    except TimeoutError:
        message = f"the completion was not finished within the server's timeout of {state.settings.timeout_s:g} s"
        yield sse({"error": {"message": message, "type": "server_error", "code": 504}})
    except ValueError as err:
        yield sse({"error": {"message": str(err), "type": "invalid_request_error", "code": 422}})
    finally:
        if not finished:
            job.cancel()
            state.metrics.cancelled.labels(ROUTE).inc()
