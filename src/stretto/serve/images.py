"""`POST /v1/images/generations`: OpenAI's images format, answered from dynamically batched generations."""

from __future__ import annotations

import asyncio
import time

import torch
from fastapi import APIRouter, Request, Response

from stretto import checkpoints
from stretto.data.shapes import PromptError, parse_prompt
from stretto.pipelines.image import DEFAULT_GUIDANCE, check_prompts, generate
from stretto.serve.batching import ImageJob
from stretto.serve.encoding import png_b64
from stretto.serve.errors import ApiError
from stretto.serve.schemas import ImageRequest
from stretto.serve.settings import IMAGE_KIND
from stretto.serve.waiting import ClientGone, answer_or_cancel
from stretto.serve.worker import Cancelled, stop_when

router = APIRouter()
CLASSIFIER = "shapes-classifier"
CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection first


def load_classifier():
    """The shipped shapes classifier that scores prompt adherence (None if it is not installed)."""
    try:
        return checkpoints.load(CLASSIFIER)
    except checkpoints.CheckpointError:
        return None


def prompt_matches(classifier, images: torch.Tensor, prompts: list[str]) -> list[bool | None]:
    """Per image: does the classifier read back the prompt's scene? None for prompts the grammar cannot parse."""
    predicted = classifier.predict(images)
    out = []
    for scene, prompt in zip(predicted, prompts, strict=True):
        try:
            out.append(scene == parse_prompt(prompt))
        except PromptError:
            out.append(None)
    return out


def run_batch(model, classifier, jobs: list[ImageJob]) -> list[dict]:
    """On the model thread: one generation for every job still wanted; each job's answer, in order."""
    started = time.perf_counter()
    live = [j for j in jobs if not j.cancelled.is_set()]
    if not live:
        raise Cancelled()
    r = live[0].request  # the batch shares these settings (ImageJob.key)
    prompts = [j.request.prompt for j in live for _ in range(j.request.n)]
    seeds = [j.request.seed + i for j in live for i in range(j.request.n)]
    with stop_when(model, lambda: all(j.cancelled.is_set() for j in live)):
        result = generate(model, prompts, steps=r.steps, sampler=r.sampler, guidance=r.guidance, shift=r.shift,
                          seeds=seeds, cache=r.cache)  # fmt: skip
    matches = prompt_matches(classifier, result.images, prompts) if classifier is not None else [None] * len(prompts)
    s, b64 = result.stats, png_b64(result.images)
    cache = s.cache.totals() if s.cache is not None else None
    answers, start = {}, 0
    for job in live:
        rows = range(start, start + job.request.n)
        start += job.request.n
        answers[id(job)] = {
            "data": [{"b64_json": b64[i], "revised_prompt": prompts[i]} for i in rows],
            "stretto": {
                "sampler": s.sampler,  # what ran: the request's, or the model's own when it gave none
                "steps": s.steps,
                "model_calls": s.model_calls,  # of the whole batch: its requests share every call
                "block_evals": s.total_block_evals,
                "wall_s": s.wall_s,
                "batch_images": len(prompts),
                "batch_requests": len(live),
                "queue_s": started - job.arrived,
                "cache": {"policy": r.cache or "none", **cache} if cache else {"policy": "none"},
                "prompt_match": [matches[i] for i in rows],
                "seeds": [seeds[i] for i in rows],
            },
        }
    return [answers.get(id(j)) for j in jobs]


def batch_runner(app):
    """The batcher's `run`: the batch on the model thread, then every job's future resolved."""
    state = app.state

    async def run(jobs: list[ImageJob]) -> None:
        try:
            model = await state.registry.get(jobs[0].model, state.worker)
            answers = await state.worker.run(run_batch, model, state.classifier, jobs)
        except Exception as err:  # every job learns why its batch failed; the loop goes on
            for job in jobs:
                if not job.answer.done():
                    job.answer.set_exception(err)
            return
        m = state.metrics
        first = next(a for a in answers if a is not None)["stretto"]
        m.batch_images.observe(first["batch_images"])
        m.model_calls.labels(jobs[0].model).inc(first["model_calls"])
        m.block_evals.labels(jobs[0].model).inc(first["block_evals"])
        for job, answer in zip(jobs, answers, strict=True):
            if job.answer.done():
                continue  # its client left or timed out
            if answer is None:
                job.answer.set_exception(Cancelled())
            else:
                job.answer.set_result(answer)

    return run


@router.post("/v1/images/generations")
async def images_generations(body: ImageRequest, request: Request):
    """Generate `n` images for a prompt; the answer has OpenAI's `data` and a `stretto` block with the costs."""
    state = request.app.state
    settings = state.settings
    if body.n > settings.max_images:
        raise ApiError(422, f"n: at most {settings.max_images} images per request, got {body.n}", "n")
    if body.steps is not None and body.steps > settings.max_steps:
        raise ApiError(422, f"steps: at most {settings.max_steps} on this server, got {body.steps}", "steps")
    try:
        check_prompts([body.prompt], DEFAULT_GUIDANCE if body.guidance is None else body.guidance)
    except PromptError as err:
        raise ApiError(422, f"prompt: {err}", "prompt") from None
    model = state.registry.choose(body.model, (IMAGE_KIND,), "text-to-image")
    job = ImageJob(body, model, asyncio.get_running_loop().create_future())
    state.batcher.submit(job)

    def cancel():
        job.cancelled.set()
        job.answer.cancel()  # nobody reads it now
        state.batcher.withdraw(job)
        state.metrics.cancelled.labels("/v1/images/generations").inc()

    try:
        answer = await answer_or_cancel(request, job.answer, settings.timeout_s, cancel)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it; the metrics count it
    except Cancelled:
        raise ApiError(503, "the generation was cancelled") from None
    except ValueError as err:  # a setting the pipeline refused (e.g. a cache policy this model cannot run)
        raise ApiError(422, str(err)) from None
    return {"created": int(time.time()), **answer}
