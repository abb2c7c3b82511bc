"""Error answers in the OpenAI shape (`{"error": {"message", "type", "param"}}`) and the handlers that make them."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """A request the server refuses: an HTTP status, a one-line message, the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


class QueueFull(ApiError):
    """The bounded queue has no room: 429 with Retry-After."""

    def __init__(self, depth: int, retry_after_s: int):
        super().__init__(
            429,
            f"the server's queue is full ({depth} requests waiting); retry after {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.message, err.param), err.status, headers=err.headers)


def field_name(loc: tuple) -> str:
    """('body', 'steps') -> 'steps'; ('body', 'prompt', 2) -> 'prompt[2]'."""
    name = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query") else loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def validation_message(err: dict) -> str:
    """One pydantic error as a line naming the field, what is allowed and what came."""
    where = field_name(tuple(err.get("loc", ())))
    if err.get("type") == "extra_forbidden":
        return f"{where}: unknown field"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {repr(got)[:80]})"
    return f"{where}: {msg}{shown}"


def install_error_handlers(app: FastAPI) -> None:
    """Every refusal answers with the same body shape; malformed JSON is a 400, a bad field a 422."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = list(err.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body(400, "the request body is not valid JSON"), 400)
        first = errors[0] if errors else {}
        body = error_body(422, "; ".join(validation_message(e) for e in errors[:5]), field_name(first.get("loc", ())))
        return JSONResponse(body, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(err.status_code, str(err.detail)), err.status_code, headers=err.headers)
