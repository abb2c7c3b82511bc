"""Waiting for an answer while watching the client: a disconnect or the timeout cancels the request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import Request

from stretto.serve.errors import ApiError


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


async def disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read, so only the disconnect comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer_or_cancel(request: Request, answer: asyncio.Future, timeout_s: float, cancel: Callable[[], None]):
    """The answer's result; on a disconnect (ClientGone) or after timeout_s (504) call `cancel` first."""
    gone = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({answer, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if answer in done:
        return answer.result()
    cancel()
    answer.add_done_callback(_read_outcome)
    if gone in done:
        raise ClientGone()
    raise ApiError(504, f"the request was not answered within the server's timeout of {timeout_s:g} s")


def _read_outcome(future: asyncio.Future) -> None:
    """Read an abandoned answer's outcome, so its Cancelled is not logged as an exception never retrieved."""
    if not future.cancelled():
        future.exception()
