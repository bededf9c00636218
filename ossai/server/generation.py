"""The one generation path behind every chat-style endpoint (OpenAI chat and responses, Ollama chat).

Each API translates its request into a `ChatRequest` at the edge; this module renders it in harmony,
runs it on the engine with the harmony parser, and yields API-neutral events: reasoning text, visible
text, tool calls (with stable ids, arguments streamed as they arrive) and one final `Done`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool

from ossai import harmony
from ossai.config import SamplingParams
from ossai.engine import Engine, Request, RequestStream, TokenLogprob
from ossai.errors import BadRequest, ContextLengthError
from ossai.server.confirm import DECLINED, ConfirmGate
from ossai.tools.agent import AgentLoop, Call, Run
from ossai.tools.base import ToolResult


@dataclass(slots=True, frozen=True)
class AnswerFormat:
    """A structured answer: the JSON schema its text must match, and the name (and description) the
    developer message's `# Response Formats` section gives it."""

    schema: dict[str, Any]
    name: str = "response"
    description: str | None = None
    param: str = "response_format"  # where the request gave it, for errors


ANY_OBJECT = AnswerFormat({"type": "object", "additionalProperties": True}, "json_object", "any JSON object")
_FORMAT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def answer_format(spec: Any, param: str) -> AnswerFormat | None:
    """OpenAI's `response_format` (chat: `json_schema` nested) or Responses' `text.format` (flat)."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise BadRequest(f"{param} must be an object with a type", param)
    kind = spec.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return dataclasses.replace(ANY_OBJECT, param=param)
    if kind != "json_schema":
        raise BadRequest(f"{param}.type must be text, json_object or json_schema, got {kind!r}", param)
    body = spec.get("json_schema", spec)
    schema = body.get("schema") if isinstance(body, dict) else None
    if not isinstance(schema, dict):
        raise BadRequest(f"{param} needs a JSON schema object under 'schema'", param)
    name = body.get("name", "response")
    if not isinstance(name, str) or not _FORMAT_NAME.fullmatch(name):
        raise BadRequest(f"{param} name must be 1-64 letters, digits, _ or -, got {name!r}", param)
    description = body.get("description")
    return AnswerFormat(schema, name, description if isinstance(description, str) else None, param)


@dataclass(slots=True)
class ChatRequest:
    messages: list[dict[str, Any]]  # OpenAI chat messages (system/developer/user/assistant/tool)
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields but max_tokens
    max_tokens: int | None = None  # None: up to the end of the context
    effort: str = "medium"
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools
    tool_choice: str | dict[str, Any] | None = None  # none | auto | required | {"type":"function",...}
    builtin_tools: tuple[Any, ...] = ()  # harmony namespaces (names or ToolNamespaceConfig)
    answer_format: AnswerFormat | None = None  # structured outputs: the final answer held to a schema


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    recipient: str
    arguments: str = ""


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ReasoningText:
    text: str


@dataclass(slots=True)
class ContentText:
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class ToolCallBegin:
    index: int
    call: ToolCall


@dataclass(slots=True)
class ToolCallArguments:
    index: int
    text: str


@dataclass(slots=True)
class ToolStarted:
    """The server starts running a tool call the model made (a built-in or MCP tool)."""

    call: ToolCall
    tool: str  # python, browser, or the MCP tools' name


@dataclass(slots=True)
class ToolAwaitingConfirmation:
    """A tool call the server will run once the user confirms it (`ossai.confirm`)."""

    call: ToolCall
    tool: str


@dataclass(slots=True)
class ToolFinished:
    call: ToolCall
    tool: str
    result: ToolResult
    seconds: float


@dataclass(slots=True)
class Done:
    finish_reason: str  # stop | length | tool_calls
    usage: Usage
    reasoning: str
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)  # for the client to run
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_runs: list[ToolFinished] = field(default_factory=list)  # what the server ran on the way


Event = (
    ReasoningText | ContentText | ToolCallBegin | ToolCallArguments | ToolAwaitingConfirmation | ToolStarted
    | ToolFinished | Done
)  # fmt: skip


TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # what may follow `functions.` in a harmony header


def render(req: ChatRequest) -> tuple[list[int], list[int]]:
    """(prompt tokens, prefill tokens): the prefill forces a tool call for tool_choice required/named."""
    choice = req.tool_choice
    tools = req.tools if choice != "none" else None
    prefill = ""
    if isinstance(choice, dict):
        function = choice.get("function") or {}
        name = function.get("name") if isinstance(function, dict) else None
        name = name or choice.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise BadRequest(f"tool_choice must name a function, got {choice!r}", "tool_choice")
        if name not in harmony.function_schemas(req.tools):
            raise BadRequest(f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
        prefill = f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
    elif choice == "required":
        if not harmony.function_schemas(req.tools):
            raise BadRequest("tool_choice 'required' needs at least one function tool", param="tool_choice")
        prefill = "<|channel|>commentary to=functions."
    elif choice not in (None, "auto", "none"):
        raise BadRequest(
            f"tool_choice must be none, auto, required or a function, got {choice!r}", "tool_choice"
        )
    answer = req.answer_format
    section = answer and harmony.response_format_section(answer.name, answer.schema, answer.description)
    try:
        prompt = harmony.render_chat(
            req.messages,
            effort=req.effort,
            tools=tools,
            builtin_tools=req.builtin_tools,
            response_format=section,
        )
    except ValueError as exc:  # harmony's input errors name the message and field
        raise BadRequest(str(exc), param="messages") from exc
    prefill_ids = harmony.load_encoding().encode(prefill, allowed_special="all") if prefill else []
    return prompt + prefill_ids, prefill_ids


async def check_answer_format(answer: AnswerFormat | None) -> None:
    """A 400 for a schema llguidance cannot compile; handlers call it before loading a model (bad input
    loads nothing). Compiling runs in a worker thread (the first one also builds the vocabulary)."""
    if answer is not None:
        error = await run_in_threadpool(harmony.schema_error, answer.schema)
        if error:
            raise BadRequest(f"{answer.param}: the schema cannot be enforced ({error})", answer.param)


def _constraint(req: ChatRequest) -> harmony.JsonConstraint | None:
    tools = req.tools if req.tool_choice != "none" else None
    return harmony.JsonConstraint.for_request(tools, req.answer_format.schema if req.answer_format else None)


def _tool_name(recipient: str) -> str:
    return recipient.removeprefix("functions.")


async def start_chat(
    engine: Engine, req: ChatRequest, timer: TokenObserver | None = None, request_id: str | None = None
) -> AsyncIterator[Event]:
    """Validate, render and submit now (so bad input raises before a response starts); the returned
    iterator yields the turn's events and ends with exactly one `Done`. Rendering (tokenizing a prompt
    of up to the body limit) runs in a worker thread, off the event loop."""
    prompt, prefill = await run_in_threadpool(render, req)
    await check_answer_format(req.answer_format)  # cached: free when the handler checked it already
    constraint = await run_in_threadpool(_constraint, req)  # the first builds llguidance's o200k: ~1 s
    max_tokens = req.max_tokens if req.max_tokens is not None else engine.max_model_len - len(prompt)
    if max_tokens < 1:
        raise ContextLengthError(
            f"the prompt ({len(prompt)} tokens) fills the context of {engine.max_model_len} tokens",
            param="messages",  # the caller's name for the input may differ (input, prompt)
        )
    params = SamplingParams(max_tokens=max_tokens, **req.sampling)
    params.stop_token_ids = frozenset(params.stop_token_ids | set(harmony.STOP_TOKENS))
    request = Request(prompt, params, parse_harmony=True, harmony_prefill=len(prefill), constraint=constraint)
    if request_id:
        request.request_id = request_id
    return _events(engine.submit(request), len(prompt), timer)


class TokenObserver(Protocol):
    def token(self) -> None: ...
    def done(self, prompt_tokens: int, completion_tokens: int) -> None: ...


async def _events(
    stream: RequestStream, prompt_tokens: int, timer: TokenObserver | None
) -> AsyncIterator[Event]:
    reasoning: list[str] = []
    content: list[str] = []
    calls: list[ToolCall] = []
    logprobs: list[TokenLogprob] = []
    finish = "stop"
    stop_token = None
    usage = Usage(prompt_tokens)
    async for output in stream:
        if timer is not None and output.token_ids:
            timer.token()
        token_logprobs = output.logprobs  # reported for the answer's tokens only
        for event in output.events:
            match event:
                case harmony.ReasoningDelta(text=text):
                    reasoning.append(text)
                    yield ReasoningText(text)
                case harmony.ContentDelta(text=text) | harmony.PreambleDelta(text=text):
                    content.append(text)
                    logprobs += token_logprobs or []
                    yield ContentText(text, token_logprobs)
                    token_logprobs = None  # a token's logprobs go with its first text
                case harmony.ToolCallStart(recipient=recipient):
                    calls.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", _tool_name(recipient), recipient))
                    yield ToolCallBegin(len(calls) - 1, calls[-1])
                case harmony.ToolCallDelta(text=text) if calls:
                    calls[-1].arguments += text
                    yield ToolCallArguments(len(calls) - 1, text)
        usage = Usage(output.prompt_tokens, output.completion_tokens, output.cached_tokens)
        if output.finished:
            if output.finish_reason == "error":
                raise RuntimeError(output.text or "engine error")
            finish = "length" if output.finish_reason == "length" else "stop"
            stop_token = output.token_ids[-1] if output.token_ids else None
    if calls and stop_token == harmony.CALL:
        finish = "tool_calls"
    if timer is not None:
        timer.done(usage.prompt_tokens, usage.completion_tokens)
    yield Done(finish, usage, "".join(reasoning), "".join(content), calls, logprobs)


# --- the agent loop: tool calls the server runs ---------------------------------------------------------


def tool_event(event: ToolAwaitingConfirmation | ToolStarted | ToolFinished) -> dict[str, Any]:
    """A tool call the server ran, as the chat APIs' extension (`ossai_tool` in stream chunks, and
    `ossai_tool_runs` on the final message): status running (after awaiting_confirmation when the request
    asked to confirm it), then completed or failed with its output."""
    call = event.call
    out: dict[str, Any] = {"id": call.id, "tool": event.tool, "name": call.name, "arguments": call.arguments}
    if isinstance(event, ToolAwaitingConfirmation):
        return out | {"status": "awaiting_confirmation"}
    if isinstance(event, ToolStarted):
        return out | {"status": "running"}
    result = event.result
    status = "failed" if result.error else "completed"
    seconds = round(event.seconds, 3)
    return out | {"status": status, "output": result.text, "data": result.data, "seconds": seconds}


async def start_agent(
    engine: Engine,
    req: ChatRequest,
    loop: AgentLoop | None,
    timer: TokenObserver | None = None,
    request_id: str | None = None,
    confirm: ConfirmGate | None = None,
) -> AsyncIterator[Event]:
    """`start_chat`, and with a loop: built-in and MCP tool calls are run here and the model continues
    until it answers (or calls a client function, or reaches the step limit). The client sees its own
    events, `ToolStarted`/`ToolFinished` for each call the server ran, and one `Done` for the whole.
    `max_tokens` bounds the whole loop's output, not each step's. With `confirm`, a call of the tools
    it names is announced (`ToolAwaitingConfirmation`) and waits for the user's answer first."""
    if loop is None:
        return await start_chat(engine, req, timer, request_id)
    tools = loop.tools
    clash = set(harmony.function_schemas(req.tools)) & tools.function_names()
    if clash:
        raise BadRequest(f"tools: {', '.join(sorted(clash))} is also a tool the server runs (MCP)", "tools")
    req = dataclasses.replace(
        req,
        builtin_tools=(*req.builtin_tools, *tools.builtin_namespaces),
        tools=[*(req.tools or []), *tools.functions()] or None,
    )
    request_id = request_id or f"agent-{uuid.uuid4().hex}"
    try:
        first = await start_chat(engine, req, timer, request_id)  # bad input raises before a response
    except BaseException:
        loop.end()
        raise
    return _agent_events(engine, req, loop, timer, request_id, first, confirm)


async def _agent_events(
    engine: Engine,
    req: ChatRequest,
    loop: AgentLoop,
    timer: TokenObserver | None,
    request_id: str,
    events: AsyncIterator[Event],
    confirm: ConfirmGate | None = None,
) -> AsyncIterator[Event]:
    messages = list(req.messages)
    usage = Usage()
    reasoning: list[str] = []
    content: list[str] = []
    runs: list[ToolFinished] = []
    try:
        while True:
            done: Done | None = None
            hidden: set[int] = set()  # indexes of this step's calls the server runs: not the client's
            step_reasoning = False
            shown = 0
            async for event in events:
                match event:
                    case ToolCallBegin(index=index, call=call) if loop.ours(call.recipient):
                        hidden.add(index)
                    case ToolCallBegin(call=call):
                        yield ToolCallBegin(shown, call)
                        shown += 1
                    case ToolCallArguments(index=index) if index in hidden:
                        pass
                    case ToolCallArguments(text=text):
                        yield ToolCallArguments(shown - 1, text)
                    case Done():
                        done = event
                    case ReasoningText() if reasoning and not step_reasoning:
                        step_reasoning = True  # the streamed reasoning reads as the final one: steps apart
                        yield ReasoningText("\n\n")
                        yield event
                    case ReasoningText():
                        step_reasoning = True
                        yield event
                    case _:
                        yield event
            assert done is not None
            usage = Usage(
                usage.prompt_tokens + done.usage.prompt_tokens,
                usage.completion_tokens + done.usage.completion_tokens,
                usage.cached_tokens + done.usage.cached_tokens,
            )
            reasoning += [done.reasoning] if done.reasoning else []
            content += [done.content] if done.content else []
            calls = [Call(c.id, c.recipient, c.arguments) for c in done.tool_calls]
            pending = loop.pending(done.finish_reason, calls)
            budget = None if req.max_tokens is None else req.max_tokens - usage.completion_tokens
            finish = "length" if loop.limit_hit else done.finish_reason
            step: ChatRequest | None = None
            if pending:
                step_runs = []
                by_id = {c.id: c for c in done.tool_calls}
                for call in pending:
                    tool = loop.tools.find(call.name)
                    name = tool.name if tool else call.name
                    approved = True
                    if confirm is not None and confirm.wants(tool):
                        answer = confirm.open(call.id)  # before the question goes out: it may come fast
                        try:
                            yield ToolAwaitingConfirmation(by_id[call.id], name)
                            approved = await confirm.wait(answer)
                        finally:  # also when the client went away: nobody can answer any more
                            confirm.close(call.id)
                    if approved:
                        yield ToolStarted(by_id[call.id], name)
                        run = await loop.arun(call)
                    else:
                        run = Run(call, name, ToolResult(DECLINED, error=True), 0.0)
                    finished = ToolFinished(by_id[call.id], run.tool, run.result, run.seconds)
                    runs.append(finished)
                    step_runs.append(run)
                    yield finished
                messages += loop.record(done.reasoning, done.content, step_runs)
                # later steps answer the results: no forced call or prefill, but "none" stays "none"
                choice = "none" if req.tool_choice == "none" else None
                step = dataclasses.replace(req, messages=messages, tool_choice=choice, max_tokens=budget)
                if budget is not None and budget < 1:
                    step, finish = None, "length"
            if step is not None:
                try:
                    events = await start_chat(engine, step, timer, f"{request_id}.{loop.steps}")
                    continue
                except ContextLengthError:  # the results filled the context: end with what there is
                    finish = "length"
            theirs = [c for c in done.tool_calls if not loop.ours(c.recipient)]
            if finish == "tool_calls" and not theirs:
                finish = "length"
            yield Done(finish, usage, "\n\n".join(reasoning), "".join(content), theirs, done.logprobs, runs)
            return
    finally:
        await asyncio.to_thread(loop.end)  # a session made up for this request ends with it
