"""The request size limit, enforced before the app reads a body (ASGI middleware)."""

from __future__ import annotations

import json

from stretto.serve.errors import error_body

# A body over the limit is still read (and dropped) up to this size so the client can read the 413 instead of
# a reset connection; past it the connection is simply closed.
DRAIN_LIMIT = 64 * 1024 * 1024


class BodyLimit:
    """Refuse HTTP request bodies larger than `max_bytes` with 413, whether sized or chunked."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await _refuse(send, 400, f"Content-Length {declared.decode(errors='replace')!r} is not a number")
        if declared is not None and int(declared) > DRAIN_LIMIT:
            return await _refuse(send, 413, self._too_large(int(declared)))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            if size <= self.max_bytes:
                chunks.append(body)
            elif size > DRAIN_LIMIT:
                break
            if not message.get("more_body", False):
                break
        if size > self.max_bytes:
            return await _refuse(send, 413, self._too_large(size))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        return await self.app(scope, replay, send)

    def _too_large(self, size: int) -> str:
        return f"the request body has {size} bytes; the limit is {self.max_bytes} bytes"


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps(error_body(status, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + [(b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
