"""Server-sent events and NDJSON writers, and aborting generation when the client goes away.

A streaming response's generator is cancelled by Starlette when the client disconnects, which ends the
engine stream's iteration and aborts the request. A non-streaming request has no such hook, so
`until_disconnect` polls the connection while the generation runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request

from ossai.engine import Engine
from ossai.errors import OssaiError
from ossai.server.errors import error_body
from ossai.server.generation import Done, Event

log = logging.getLogger(__name__)
T = TypeVar("T")
DISCONNECT_POLL_S = 0.25
KEEPALIVE_S = 15.0  # an SSE comment after this long without a frame: proxies close streams idle for ~60 s


class ClientDisconnected(OssaiError):
    """Nobody is listening any more; answered (to no one) with nginx's 499 so /metrics counts it."""

    status = 499
    code = "client_closed_request"


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _error(exc: Exception) -> dict:
    if isinstance(exc, OssaiError):
        return error_body(exc.status, str(exc), exc.param, exc.code)
    log.exception("error while streaming")
    return error_body(500, f"generation failed: {exc}")


async def with_keepalive(items: AsyncIterator[T], every: float = KEEPALIVE_S) -> AsyncIterator[T | None]:
    """The items, and None after each `every` seconds without one (a long prefill, a tool call waiting
    for the user's confirmation). Closing this closes the wait on `items` too."""
    iterator = aiter(items)
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


async def sse(chunks: AsyncIterator[dict], done_marker: bool = True) -> AsyncIterator[str]:
    """`data: {json}` frames, then `data: [DONE]`; an error mid-stream becomes an error frame; a comment
    line keeps a silent stream alive."""
    try:
        async with contextlib.aclosing(with_keepalive(chunks, KEEPALIVE_S)) as frames:
            async for chunk in frames:
                yield ": keep-alive\n\n" if chunk is None else f"data: {dumps(chunk)}\n\n"
    except Exception as exc:  # the status line is already sent: report in-band
        yield f"data: {dumps(_error(exc))}\n\n"
    if done_marker:
        yield "data: [DONE]\n\n"


async def sse_events(events: AsyncIterator[tuple[str, dict]]) -> AsyncIterator[str]:
    """Named SSE events (`event: type` + `data: json`), as the Responses API streams them; an error
    mid-stream becomes the API's `error` event."""
    sequence = 0
    try:
        async with contextlib.aclosing(with_keepalive(events, KEEPALIVE_S)) as frames:
            async for event in frames:
                if event is None:
                    yield ": keep-alive\n\n"
                    continue
                name, data = event
                sequence = data.get("sequence_number", sequence) + 1
                yield f"event: {name}\ndata: {dumps(data)}\n\n"
    except Exception as exc:
        error = _error(exc)["error"]
        data = {"type": "error", "code": error["code"], "message": error["message"], "param": error["param"],
                "sequence_number": sequence}  # fmt: skip
        yield f"event: error\ndata: {dumps(data)}\n\n"


async def ndjson(chunks: AsyncIterator[dict]) -> AsyncIterator[str]:
    """One JSON object per line (Ollama's streaming); an error mid-stream becomes {"error": ...}."""
    try:
        async for chunk in chunks:
            yield dumps(chunk) + "\n"
    except Exception as exc:
        yield dumps({"error": _error(exc)["error"]["message"]}) + "\n"


async def final_event(events: AsyncIterator[Event]) -> Done:
    async for event in events:
        if isinstance(event, Done):
            return event
    raise RuntimeError("generation ended without a result")


async def until_disconnect(request: Request, work: Awaitable[T], engine: Engine, request_id: str) -> T:
    """Await `work`; if the client disconnects first, abort the engine request and stop."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                engine.abort(request_id)
                task.cancel()
                raise ClientDisconnected("the client closed the connection")
    finally:
        if not task.done():
            task.cancel()
