"""The one place where exceptions become HTTP responses, with a 4xx status.

OpenAI routes (and everything else) get `{"error": {"message", "type", "param", "code"}}`; Ollama routes
(/api/*) get Ollama's own `{"error": "message"}`, which its clients show as is. Nothing a client sends
may produce a 5xx or a traceback; a 500 here means a bug, and still comes as JSON.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ossai.errors import OssaiError

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
          413: "invalid_request_error", 429: "rate_limit_error", 499: "client_closed_request",
          503: "service_unavailable"}  # fmt: skip


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def is_ollama(path: str) -> bool:
    return path.startswith("/api/")


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, path: str = ""
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": message} if is_ollama(path) else error_body(status, message, param, code)
    return JSONResponse(body, status_code=status, headers=headers)  # also an ASGI app, for middlewares


def _location(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    @app.exception_handler(OssaiError)
    async def ossai_error(request: Request, exc: OssaiError) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.param, exc.code, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _location(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return error_response(
                400, "the request body is not valid JSON", None, "invalid_json", request.url.path
            )
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return error_response(400, message, param, "invalid_value", request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), path=request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug: logged, still JSON
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", path=request.url.path)
