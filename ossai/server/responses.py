"""OpenAI Responses API: POST/GET/DELETE /v1/responses and GET /v1/responses/{id}/input_items.

Stateful like OpenAI's: a response created with `store` (the default) is kept in SQLite under the ossai
home, and `previous_response_id` continues from its inputs and outputs, across restarts. `instructions`
are not inherited from the previous response, as OpenAI documents.

A request becomes chat messages (reasoning items ride along as `reasoning_content` of the assistant turn
that follows them, so the chain of thought of a tool-calling turn reaches the model) and goes through
the one generation path, `generation.start_chat`. `_OutputBuilder` turns its events into output items
and the stream events that build them; the non-streaming route runs the same builder and keeps only the
final response, so both forms always agree.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from ossai import harmony
from ossai.errors import BadRequest, NotFound
from ossai.server import generation as gen
from ossai.server.context import context
from ossai.server.metrics import RequestTimer
from ossai.server.responses_store import ResponseStore
from ossai.server.responses_types import ResponsesRequest, new_id
from ossai.server.streaming import sse_events, until_disconnect

router = APIRouter(prefix="/v1")
StreamEvent = tuple[str, dict[str, Any]]  # (SSE event name = the event's type, its data)


def response_store(request: Request) -> ResponseStore:
    """The app's store, opened (and migrated) on first use."""
    state = request.app.state
    store = getattr(state, "responses_store", None)
    if store is None:
        store = state.responses_store = ResponseStore(context(request).config.home / "responses.db")
    return store


# --- Items → chat messages ------------------------------------------------------------------------------


def _text(parts: list[dict[str, Any]]) -> str:
    return "\n".join(p["text"] for p in parts)


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """OpenAI chat messages for normalized input items, `instructions` first as a system message."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    reasoning: list[str] = []  # reasoning items waiting for the assistant turn they belong to
    call_ids: set[str] = set()

    def assistant(**fields: Any) -> dict[str, Any]:
        message = {"role": "assistant", **fields}
        if reasoning:
            message["reasoning_content"] = "\n".join(reasoning)
            reasoning.clear()
        messages.append(message)
        return message

    for item in items:
        match item["type"]:
            case "reasoning":
                text = _text(item["content"] or item["summary"])
                if text:
                    reasoning.append(text)
            case "message" if item["role"] == "assistant":
                assistant(content=_text(item["content"]))
            case "message":
                if reasoning:
                    assistant()
                messages.append({"role": item["role"], "content": _text(item["content"])})
            case "function_call":
                call_ids.add(item["call_id"])
                call = {"id": item["call_id"], "type": "function"}
                call["function"] = {"name": item["name"], "arguments": item["arguments"]}
                last = messages[-1] if messages else {}
                if not reasoning and last.get("role") == "assistant":  # a preamble or a parallel call
                    last.setdefault("tool_calls", []).append(call)
                else:
                    assistant(content=None, tool_calls=[call])
            case "function_call_output":
                if item["call_id"] not in call_ids:
                    raise BadRequest(
                        f"function_call_output with call_id {item['call_id']!r} answers no function_call "
                        "in the input or the previous response",
                        param="input",
                    )
                if reasoning:
                    assistant()
                messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    if reasoning:
        assistant()
    return messages


# --- Generation events → output items and stream events ------------------------------------------------


class _OutputBuilder:
    """Output items in the order the model writes them: consecutive reasoning text is one `reasoning`
    item, consecutive visible text one `message`, each tool call one `function_call`."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.sequence = 0
        self.kind: str | None = None  # the type of the open item (the last in `items`), if any
        self.text: list[str] = []

    def event(self, kind: str, **fields: Any) -> StreamEvent:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return kind, data

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.items[-1]["id"], "output_index": len(self.items) - 1}

    def _open(self, item: dict[str, Any], part: dict[str, Any] | None) -> Iterator[StreamEvent]:
        yield from self.close()
        self.items.append(item)
        self.kind = item["type"]
        self.text = []
        yield self.event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item))
        if part is not None:
            yield self.event("response.content_part.added", **self._where(), content_index=0, part=part)

    def close(self, status: str = "completed") -> Iterator[StreamEvent]:
        if self.kind is None:
            return
        item, text, where = self.items[-1], "".join(self.text), self._where()
        item["status"] = status
        match self.kind:
            case "reasoning":
                part = {"type": "reasoning_text", "text": text}
                item["content"] = [part]
                yield self.event("response.reasoning_text.done", **where, content_index=0, text=text)
                yield self.event("response.content_part.done", **where, content_index=0, part=part)
            case "message":
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                item["content"] = [part]
                yield self.event(
                    "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
                )
                yield self.event("response.content_part.done", **where, content_index=0, part=part)
            case "function_call":
                item["arguments"] = text
                yield self.event("response.function_call_arguments.done", **where, arguments=text)
        self.kind = None
        yield self.event("response.output_item.done", output_index=where["output_index"], item=item)

    def add(self, event: gen.Event) -> Iterator[StreamEvent]:
        match event:
            case gen.ReasoningText(text=text) if text.strip() or (text and self.kind == "reasoning"):
                if self.kind != "reasoning":  # (the blank line between agent steps opens no item)
                    item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": []}
                    yield from self._open(
                        item | {"status": "in_progress"}, {"type": "reasoning_text", "text": ""}
                    )
                self.text.append(text)
                yield self.event(
                    "response.reasoning_text.delta", **self._where(), content_index=0, delta=text
                )
            case gen.ContentText(text=text) if text:
                if self.kind != "message":
                    item = {"id": new_id("msg"), "type": "message", "role": "assistant", "content": []}
                    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                    yield from self._open(item | {"status": "in_progress"}, part)
                self.text.append(text)
                yield self.event(
                    "response.output_text.delta", **self._where(), content_index=0, delta=text, logprobs=[]
                )
            case gen.ToolCallBegin(call=call):
                item = {"id": new_id("fc"), "type": "function_call", "call_id": call.id, "name": call.name}
                yield from self._open(item | {"arguments": "", "status": "in_progress"}, None)
            case gen.ToolCallArguments(text=text) if text and self.kind == "function_call":
                self.text.append(text)
                yield self.event("response.function_call_arguments.delta", **self._where(), delta=text)
            case gen.ToolStarted():
                yield from self._tool_started(event)
            case gen.ToolFinished():
                yield from self._tool_finished(event)

    # Server-run tools become the Responses API's own items: web_search_call (browser),
    # code_interpreter_call (python) and mcp_call (MCP tools), with their stream events.
    def _tool_started(self, event: gen.ToolStarted) -> Iterator[StreamEvent]:
        call = event.call
        match event.tool:
            case "browser":
                item = {"id": new_id("ws"), "type": "web_search_call", "status": "in_progress",
                        "action": _web_action(call.name, call.arguments, {})}  # fmt: skip
                yield from self._open(item, None)
                yield self.event("response.web_search_call.in_progress", **self._where())
                yield self.event("response.web_search_call.searching", **self._where())
            case "python":
                item = {"id": new_id("ci"), "type": "code_interpreter_call", "status": "in_progress",
                        "code": call.arguments, "container_id": "ossai-python", "outputs": None}  # fmt: skip
                yield from self._open(item, None)
                where = self._where()
                yield self.event("response.code_interpreter_call.in_progress", **where)
                yield self.event("response.code_interpreter_call_code.delta", **where, delta=call.arguments)
                yield self.event("response.code_interpreter_call_code.done", **where, code=call.arguments)
                yield self.event("response.code_interpreter_call.interpreting", **where)
            case _:
                server, _, name = call.name.partition("__")
                item = {"id": new_id("mcp"), "type": "mcp_call", "server_label": server, "name": name,
                        "arguments": call.arguments, "output": None, "error": None,
                        "status": "in_progress"}  # fmt: skip
                yield from self._open(item, None)
                where = self._where()
                yield self.event("response.mcp_call.in_progress", **where)
                yield self.event("response.mcp_call_arguments.delta", **where, delta=call.arguments)
                yield self.event("response.mcp_call_arguments.done", **where, arguments=call.arguments)
        self.kind = None  # closed by _tool_finished, not by the next item

    def _tool_finished(self, event: gen.ToolFinished) -> Iterator[StreamEvent]:
        item, where = self.items[-1], self._where()
        result = event.result
        status = "failed" if result.error else "completed"
        match item["type"]:
            case "web_search_call":  # the API has no failed event here: the item's status says it
                item["action"] = _web_action(event.call.name, event.call.arguments, result.data)
                item["status"] = status
                yield self.event("response.web_search_call.completed", **where)
            case "code_interpreter_call":
                item["outputs"] = [{"type": "logs", "logs": result.text}]
                item["status"] = status
                yield self.event("response.code_interpreter_call.completed", **where)
            case _:
                if result.error:
                    item["error"] = {
                        "type": "mcp_tool_execution_error",
                        "content": [{"type": "text", "text": result.text}],
                    }
                else:
                    item["output"] = result.text
                item["status"] = status
                yield self.event(f"response.mcp_call.{status}", **where)
        yield self.event("response.output_item.done", output_index=where["output_index"], item=item)


def _web_action(name: str, arguments: str, data: dict[str, Any]) -> dict[str, Any]:
    """The web_search_call action: what the browser tool reports, else read from the call itself."""
    if isinstance(data.get("action"), dict):
        return data["action"]
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        args = {}
    args = args if isinstance(args, dict) else {}
    match name.removeprefix("browser."):
        case "search":
            return {"type": "search", "query": str(args.get("query", ""))}
        case "open":
            return {"type": "open_page", "url": str(args.get("id", ""))}
        case _:
            return {"type": "find_in_page", "pattern": str(args.get("pattern", "")), "url": ""}


def _usage(usage: gen.Usage, reasoning: str) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": len(harmony.encode(reasoning)) if reasoning else 0},
        "total_tokens": usage.total_tokens,
    }


def _response(body: ResponsesRequest, response_id: str, created: int, model: str) -> dict[str, Any]:
    """The Response object in progress (no output or usage yet), echoing the request's settings."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": body.effort, "summary": None},
        "store": body.store,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
        "tool_choice": body.tool_choice or "auto",
        "tools": body.echo_tools(),
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": body.user,
        "metadata": body.metadata or {},
    }


async def _run(
    events: AsyncIterator[gen.Event],
    response: dict[str, Any],
    input_items: list[dict[str, Any]],
    store: ResponseStore | None,
) -> AsyncIterator[StreamEvent]:
    """The whole stream of one response; the last event carries the finished Response object, which is
    stored (when `store` is given) before that event is sent."""
    out = _OutputBuilder()
    yield out.event("response.created", response=dict(response))
    yield out.event("response.in_progress", response=dict(response))
    async for event in events:
        if isinstance(event, gen.Done):
            done = event
            break
        for stream_event in out.add(event):
            yield stream_event
    else:
        raise RuntimeError("generation ended without a result")
    truncated = done.finish_reason == "length"
    for stream_event in out.close("incomplete" if truncated else "completed"):
        yield stream_event
    response |= {"output": out.items, "usage": _usage(done.usage, done.reasoning)}
    if truncated:
        response |= {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    else:
        response |= {"status": "completed", "completed_at": int(time.time())}
    if store is not None:
        await store.save(response, input_items)
    yield out.event("response.incomplete" if truncated else "response.completed", response=response)


async def _final(stream: AsyncIterator[StreamEvent]) -> dict[str, Any]:
    response: dict[str, Any] = {}
    async for _, data in stream:
        response = data.get("response", response)
    return response


# --- Routes ---------------------------------------------------------------------------------------------


@router.post("/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> StreamingResponse | dict[str, Any]:
    ctx = context(request)
    store = response_store(request)
    items = body.input_items()
    previous = None
    if body.previous_response_id is not None:
        previous = await store.get(body.previous_response_id)
        if previous is None:
            raise NotFound(
                f"previous response {body.previous_response_id!r} not found; it was never created, was "
                "deleted, or was created with store=false",
                "previous_response_id",
            )
        items = previous.conversation + items
    if not items:
        raise BadRequest("input is empty: give input or a previous_response_id", param="input")
    chat = gen.ChatRequest(
        messages=chat_messages(items, body.instructions),
        sampling=body.sampling(),
        max_tokens=body.max_output_tokens,
        effort=body.effort,
        tools=body.chat_tools(),
        tool_choice=body.chat_tool_choice(),
        answer_format=gen.answer_format((body.text or {}).get("format"), "text.format"),
    )
    await gen.check_answer_format(chat.answer_format)
    response_id = new_id("resp")
    # a chain of responses shares the tools' state (python variables); one not stored ends with itself
    session = ((previous.response.get("ossai") or {}).get("session") if previous else None) or response_id
    loop = ctx.agent(request, body.builtin_tools(), session if body.store else None)
    model = await ctx.use(request, body.model)
    timer = RequestTimer(ctx.metrics)
    events = await gen.start_agent(model.engine, chat, loop, timer, request_id=response_id)
    response = _response(body, response_id, int(time.time()), model.name)
    if loop is not None:  # later responses in the chain share the tools' state (python variables)
        response["ossai"] = {"session": session}
    stream = _run(events, response, items, store if body.store else None)
    if body.stream:
        return StreamingResponse(sse_events(stream), media_type="text/event-stream")
    return await until_disconnect(request, _final(stream), model.engine, response_id)


@router.get("/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    stored = await response_store(request).get(response_id)
    if stored is None:
        raise NotFound(f"response {response_id!r} not found", "response_id")
    return stored.response


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    if not await response_store(request).delete(response_id):
        raise NotFound(f"response {response_id!r} not found", "response_id")
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    order: str = Query("desc", pattern="^(asc|desc)$"),
    limit: int = Query(20, ge=1, le=100),
    after: str | None = None,
) -> dict[str, Any]:
    """Every item the response was generated from (earlier turns included), newest first by default."""
    stored = await response_store(request).get(response_id)
    if stored is None:
        raise NotFound(f"response {response_id!r} not found", "response_id")
    items = stored.input_items[::-1] if order == "desc" else stored.input_items
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise BadRequest(f"after: no input item {after!r} in this response", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
