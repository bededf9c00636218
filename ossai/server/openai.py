"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions.

Requests are translated into the engine's terms at the edge; chat goes through the one generation path
(`generation.start_chat`). Reasoning is returned as both `reasoning_content` (vLLM, DeepSeek clients)
and `reasoning` (OpenRouter, newer clients) on messages and deltas, and accepted back on assistant
messages for multi-turn tool use.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ossai import harmony
from ossai.config import SamplingParams
from ossai.engine import Request as EngineRequest
from ossai.engine import TokenLogprob
from ossai.errors import BadRequest, ContextLengthError
from ossai.server import generation as gen
from ossai.server.context import context
from ossai.server.metrics import RequestTimer
from ossai.server.openai_types import ChatCompletionRequest, CompletionRequest
from ossai.server.pool import Entry
from ossai.server.streaming import final_event, sse, until_disconnect

router = APIRouter(prefix="/v1")
EOS_TOKENS = (199999, 200002, 200012)  # <|endoftext|>, <|return|>, <|call|>: gpt-oss's generation_config


def _model_card(entry: Entry) -> dict:
    return {"id": entry.name, "object": "model", "created": int(entry.modified), "owned_by": "ossai"}


@router.get("/models")
async def list_models(request: Request) -> dict:
    entries = await run_in_threadpool(context(request).pool.entries)
    return {"object": "list", "data": [_model_card(e) for e in entries]}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    return _model_card(await run_in_threadpool(context(request).pool.entry, model_id))


def _logprob_entry(lp: TokenLogprob) -> dict:
    def token(t: int) -> tuple[str, list[int]]:
        raw = harmony.token_bytes(t)
        return raw.decode("utf-8", errors="replace"), list(raw)

    text, raw = token(lp.token)
    top = []
    for t, value in lp.top:
        top_text, top_raw = token(t)
        top.append({"token": top_text, "logprob": value, "bytes": top_raw})
    return {"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top}


def _usage(usage: gen.Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _tool_call(call: gen.ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    ctx = context(request)
    sampling = body.sampling()
    if body.logprobs:
        sampling |= {"logprobs": True, "top_logprobs": body.top_logprobs or 0}
    chat = gen.ChatRequest(
        messages=body.messages,
        sampling=sampling,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        effort=body.effort(),
        tools=body.tools,
        tool_choice=body.tool_choice,
        answer_format=gen.answer_format(body.response_format, "response_format"),
    )
    await gen.check_answer_format(chat.answer_format)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    gate = ctx.confirm_gate(request, body.ossai, body.stream)
    loop = ctx.agent_for(request, body.ossai)
    model = await ctx.use(request, body.model)  # after the checks above: bad input loads nothing
    timer = RequestTimer(ctx.metrics)
    events = await gen.start_agent(model.engine, chat, loop, timer, request_id=completion_id, confirm=gate)
    created = int(time.time())
    if body.stream:
        return StreamingResponse(
            sse(_chat_chunks(events, completion_id, created, model.name, body.include_usage, body.logprobs)),
            media_type="text/event-stream",
        )
    done = await until_disconnect(request, final_event(events), model.engine, completion_id)
    message: dict[str, Any] = {"role": "assistant", "content": done.content or None}
    if done.reasoning:
        message["reasoning_content"] = message["reasoning"] = done.reasoning
    if done.tool_calls:
        message["tool_calls"] = [_tool_call(c) for c in done.tool_calls]
    if done.tool_runs:
        message["ossai_tool_runs"] = [gen.tool_event(run) for run in done.tool_runs]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": done.finish_reason,
        "logprobs": None,
    }
    if body.logprobs:
        choice["logprobs"] = {"content": [_logprob_entry(lp) for lp in done.logprobs]}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model.name,
        "choices": [choice],
        "usage": _usage(done.usage),
    }


async def _chat_chunks(
    events: AsyncIterator[gen.Event],
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    logprobs: bool,
) -> AsyncIterator[dict]:
    def chunk(delta: dict, finish: str | None = None, lps: list[TokenLogprob] | None = None) -> dict:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        if logprobs and lps:
            choice["logprobs"] = {"content": [_logprob_entry(lp) for lp in lps]}
        out = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        out["choices"] = [choice]
        if include_usage:
            out["usage"] = None
        return out

    yield chunk({"role": "assistant", "content": ""})
    async for event in events:
        match event:
            case gen.ReasoningText(text=text):
                yield chunk({"reasoning_content": text, "reasoning": text})
            case gen.ContentText(text=text, logprobs=lps):
                yield chunk({"content": text}, lps=lps)
            case gen.ToolCallBegin(index=index, call=call):
                call_delta = {"index": index, "id": call.id, "type": "function"}
                call_delta["function"] = {"name": call.name, "arguments": ""}
                yield chunk({"tool_calls": [call_delta]})
            case gen.ToolCallArguments(index=index, text=text):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
            case gen.ToolAwaitingConfirmation() | gen.ToolStarted() | gen.ToolFinished():
                yield chunk({"ossai_tool": gen.tool_event(event)})
            case gen.Done(finish_reason=finish, usage=usage):
                yield chunk({}, finish)
                if include_usage:
                    final = chunk({})
                    final["choices"] = []
                    final["usage"] = _usage(usage)
                    yield final


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    ctx = context(request)
    if body.echo or body.suffix:
        raise BadRequest("echo and suffix are not supported", param="echo" if body.echo else "suffix")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise BadRequest("only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = await run_in_threadpool(harmony.encode, prompt)  # off the event loop
    else:
        ids = list(prompt)  # type: ignore[arg-type]
    if not ids:
        raise BadRequest("the prompt is empty", param="prompt")
    model = await ctx.use(request, body.model)
    engine = model.engine
    room = engine.max_model_len - len(ids)
    max_tokens = body.max_tokens if body.max_tokens is not None else room
    if room < 1:
        raise ContextLengthError(
            f"the prompt ({len(ids)} tokens) fills the context of {engine.max_model_len}"
        )
    sampling = body.sampling()
    if body.logprobs:
        sampling |= {"logprobs": True, "top_logprobs": body.logprobs}
    if not body.ignore_eos:  # the checkpoint's generation_config eos ids
        sampling["stop_token_ids"] = frozenset(EOS_TOKENS)
    params = SamplingParams(max_tokens=max_tokens, **sampling)
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    stream = engine.submit(EngineRequest(ids, params, completion_id))
    created = int(time.time())
    timer = RequestTimer(ctx.metrics)

    def chunk(text: str, finish: str | None, lps: list[TokenLogprob] | None) -> dict:
        logprob_block = None
        if body.logprobs is not None and lps:
            entries = [_logprob_entry(lp) for lp in lps]
            logprob_block = {
                "tokens": [e["token"] for e in entries],
                "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": [],
            }
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": logprob_block}
        return {"id": completion_id, "object": "text_completion", "created": created, "model": model.name,
                "choices": [choice]}  # fmt: skip

    async def pieces() -> AsyncIterator[tuple[str, str | None, list[TokenLogprob] | None, gen.Usage]]:
        async for out in stream:
            if out.token_ids:
                timer.token()
            if out.finish_reason == "error":
                raise RuntimeError(out.text or "engine error")
            usage = gen.Usage(out.prompt_tokens, out.completion_tokens, out.cached_tokens)
            finish = "stop" if out.finish_reason == "abort" else out.finish_reason
            if out.finished:
                timer.done(usage.prompt_tokens, usage.completion_tokens)
            yield out.text, finish, out.logprobs, usage

    if body.stream:

        async def chunks() -> AsyncIterator[dict]:
            usage = gen.Usage(len(ids))
            async for piece in pieces():
                text, finish, lps, usage = piece
                if text or finish or lps:
                    out = chunk(text, finish, lps)
                    if body.include_usage:
                        out["usage"] = None
                    yield out
            if body.include_usage:
                yield {**chunk("", None, None), "choices": [], "usage": _usage(usage)}

        return StreamingResponse(sse(chunks()), media_type="text/event-stream")

    async def collect() -> tuple[str, str | None, list[TokenLogprob], gen.Usage]:
        texts: list[str] = []
        lps_all: list[TokenLogprob] = []
        finish, usage = None, gen.Usage(len(ids))
        async for piece in pieces():
            text, finish, lps, usage = piece
            texts.append(text)
            lps_all += lps or []
        return "".join(texts), finish, lps_all, usage

    text, finish, lps_all, usage = await until_disconnect(request, collect(), engine, completion_id)
    result = chunk(text, finish, lps_all)
    result["usage"] = _usage(usage)
    return JSONResponse(result)
