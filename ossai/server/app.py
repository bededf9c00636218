"""`create_app(engine_or_pool, config)`: the FastAPI app behind `ossai serve`.

Pure-ASGI middlewares, outermost first: request counting (by route and status, for /metrics), the body
size limit (413), API-key auth (401 on every API route but /health, and the web client's page and files,
which ask for the key themselves), CORS, and the model leases (a request's model stays loaded until its
response has been sent).
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ossai import __version__
from ossai.engine import Engine
from ossai.server import confirm, conversations, errors, ollama, openai, responses, stats, web
from ossai.server.context import ServerConfig, ServerContext, context
from ossai.server.metrics import Metrics
from ossai.server.pool import LeaseMiddleware, ModelPool

PROTECTED = ("/v1", "/api", "/metrics", "/ossai")


async def _send_error(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await errors.error_response(status, message, path=scope["path"])(scope, receive, send)


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: tuple[str, ...]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if not any(path == p or path.startswith(p + "/") for p in PROTECTED):
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and any(hmac.compare_digest(token.strip(), k) for k in self.keys):
            return await self.app(scope, receive, send)
        await _send_error(
            scope, receive, send, 401, "missing or invalid API key (send Authorization: Bearer KEY)"
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(
                scope, receive, send, 413, f"request body larger than {self.limit} bytes"
            )
        received = 0
        rejected = False

        async def limited() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # a body without (or lying about) content-length
                rejected = True
                await _send_error(scope, receive, send, 413, f"request body larger than {self.limit} bytes")
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not rejected:  # once the 413 is out, whatever the app answers is dropped
                await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not rejected:
                raise


class CurlJsonMiddleware:
    """`curl -d '{...}'` labels its JSON `application/x-www-form-urlencoded`; Ollama (and most people's
    muscle memory) accept that, and no route here takes a form, so such bodies are read as JSON.

    Only without an `Origin` header: a web page may send a form-encoded POST to any site without asking
    (a "simple" CORS request), and must not be able to drive this server (and its tools) that way."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            form = b"application/x-www-form-urlencoded"
            from_page = any(k == b"origin" for k, _ in headers)
            if not from_page and any(
                k == b"content-type" and v.split(b";")[0].strip() == form for k, v in headers
            ):
                json = b"application/json"
                scope["headers"] = [(k, json if k == b"content-type" else v) for k, v in headers]
        await self.app(scope, receive, send)


class CountingMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, str(status)).inc()


def create_app(served: Engine | ModelPool, config: ServerConfig) -> FastAPI:
    """The app over a pool of models, or over one engine (pinned as `config.model_name`)."""
    if isinstance(served, Engine):
        if not config.model_name:
            raise ValueError("a single engine needs ServerConfig.model_name")
        served = ModelPool.fixed(config.model_name, served)
    pool = served

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await pool.close()  # unload what was loaded on demand; a pinned engine is its caller's

    app = FastAPI(
        title="ossai",
        version=__version__,
        description="OpenAI- and Ollama-compatible gpt-oss server",
        lifespan=lifespan,
    )
    metrics = Metrics(pool)
    app.state.ctx = ServerContext(pool, config, metrics)
    errors.install(app)
    app.include_router(openai.router)
    app.include_router(responses.router)
    app.include_router(ollama.router)
    app.include_router(conversations.router)
    app.include_router(stats.router)
    app.include_router(confirm.router)
    app.include_router(web.router)
    stats.prime()  # psutil's CPU percentages need a first sample to compare with

    @app.get("/health")
    async def health(request: Request) -> dict:
        loaded = [m.name for m in pool.loaded()]
        return {"status": "ok", "model": pool.default_name, "loaded": loaded, "version": __version__}

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        return Response(context(request).metrics.render(), media_type="text/plain; version=0.0.4")

    app.add_middleware(LeaseMiddleware, pool=pool)
    app.add_middleware(CurlJsonMiddleware)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(AuthMiddleware, keys=config.api_keys)
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes)
    app.add_middleware(CountingMiddleware, metrics=metrics)
    return app
