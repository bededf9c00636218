"""Ollama-compatible routes under /api: chat, generate, tags, show, ps, version.

Many local tools (Open WebUI, editors, agents, the `ollama` client libraries) speak only Ollama's API. Chat
and non-raw generate are translated into a `generation.ChatRequest` and run on the one generation path;
raw generate is a plain token completion on the engine, like /v1/completions. Responses follow Ollama's
JSON: NDJSON streaming unless `stream: false`, durations in nanoseconds, `thinking` beside the content,
tool calls with parsed arguments.

Where ossai differs from Ollama, on purpose:
- gpt-oss cannot stop reasoning: `think: false` (or none) means low effort with the thinking hidden.
- A tool call whose arguments are not a JSON object (cut off by num_predict, or malformed) comes back with
  `arguments: {}` and a logged warning, where Ollama fails the whole response.
- Raw prompts are tokenized with harmony's special tokens recognised (raw means "a full templated
  prompt"), and raw generation stops at `<|return|>` / `<|call|>`; /v1/completions does neither.
- `num_predict` larger than the room left in the context is clipped to it; a prompt that does not fit is
  a 400 (Ollama truncates the prompt). `format`, `suffix`, `template` and images are a 400.
- The model is loaded once by `ossai serve`: `keep_alive` is accepted and ignored, load_duration is 0,
  and no `context` is returned. Names match with or without the `:latest` tag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ossai import __version__, harmony
from ossai.config import RMS_NORM_EPS, SamplingParams
from ossai.engine import Request as EngineRequest
from ossai.engine import TokenLogprob
from ossai.errors import ContextLengthError
from ossai.server import generation as gen
from ossai.server import ollama_types as wire
from ossai.server.context import ServerContext, context
from ossai.server.metrics import RequestTimer
from ossai.server.streaming import ndjson, until_disconnect

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api")

ARCH = "gptoss"  # Ollama's name for the architecture; clients read model_info[f"{ARCH}.context_length"]
NDJSON = "application/x-ndjson"
NEVER = "2318-08-01T00:00:00Z"  # the `expires_at` Ollama reports for a model kept loaded forever

Piece = Callable[..., dict[str, Any]]  # (content, thinking, tool_calls) -> the message part of a chunk


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_model(ctx: ServerContext, name: str) -> None:
    """Ollama names carry a tag; `gpt-oss` and `gpt-oss:latest` are the same model."""
    if name.removesuffix(":latest") != ctx.model_name.removesuffix(":latest"):
        ctx.check_model(name)


class _Clock:
    """The TokenObserver of a generation: feeds the metrics and measures Ollama's durations."""

    def __init__(self, ctx: ServerContext):
        self.timer = RequestTimer(ctx.metrics)
        self.start = time.perf_counter_ns()
        self.first: int | None = None  # when the first token came: the end of the prompt's evaluation

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()
        self.timer.token()

    def done(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.timer.done(prompt_tokens, completion_tokens)

    def stats(self, done_reason: str, usage: gen.Usage) -> dict[str, Any]:
        end = time.perf_counter_ns()
        first = self.first or end
        return {
            "done_reason": "length" if done_reason == "length" else "stop",
            "total_duration": end - self.start,
            "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": first - self.start,
            "eval_count": usage.completion_tokens,
            "eval_duration": end - first,
        }


def _logprobs(lps: list[TokenLogprob]) -> list[dict[str, Any]]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        raw = harmony.token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return [{**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in lps]


def _arguments(call: gen.ToolCall) -> dict[str, Any]:
    text = call.arguments.strip()
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    log.warning("tool call %s: arguments are not a JSON object, sent as {}: %.200r", call.name, text)
    return {}


def _tool_calls(calls: list[gen.ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": _arguments(c)}}
        for i, c in enumerate(calls)
    ]


def _chat_piece(content: str, thinking: str | None = None, calls: list | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return {"message": message}


def _generate_piece(content: str, thinking: str | None = None, calls: list | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"response": content}
    if thinking:
        out["thinking"] = thinking
    return out


def _loaded(ctx: ServerContext, piece: Piece, keep_alive: float | str | None) -> dict[str, Any]:
    """Ollama's answer to a request with nothing to generate: it loads (or, keep_alive 0, unloads)."""
    unload = str(keep_alive).strip() in ("0", "0.0", "0s", "0m", "0h")
    reason = "unload" if unload else "load"
    return {"model": ctx.model_name, "created_at": _now(), **piece(""), "done": True, "done_reason": reason}


def _chat_request(ctx: ServerContext, body: wire.ChatRequest | wire.GenerateRequest) -> gen.ChatRequest:
    effort, _ = body.reasoning()
    tools = (body.tools or None) if isinstance(body, wire.ChatRequest) else None
    chat = gen.ChatRequest(
        messages=body.openai_messages(), sampling=body.sampling(), effort=effort, tools=tools
    )
    limit = body.options.max_tokens
    if limit is not None:  # Ollama never refuses num_predict: clip it to the room left in the context
        prompt, _ = gen.render(chat)
        chat.max_tokens = max(1, min(limit, ctx.engine.max_model_len - len(prompt)))
    return chat


async def _run_chat(
    ctx: ServerContext,
    request: Request,
    body: wire.ChatRequest | wire.GenerateRequest,
    piece: Piece,
) -> StreamingResponse | dict[str, Any]:
    """Chat and non-raw generate: the one generation path, shaped by `piece`."""
    _, show_thinking = body.reasoning()
    request_id = f"ollama-{uuid.uuid4().hex}"
    clock = _Clock(ctx)
    events = await gen.start_chat(ctx.engine, _chat_request(ctx, body), clock, request_id)
    with_calls = isinstance(body, wire.ChatRequest)

    def head() -> dict[str, Any]:
        return {"model": ctx.model_name, "created_at": _now()}

    if body.stream:

        async def chunks() -> AsyncIterator[dict]:
            async for event in events:
                match event:
                    case gen.ReasoningText(text=text) if show_thinking:
                        yield {**head(), **piece("", text), "done": False}
                    case gen.ContentText(text=text, logprobs=lps):
                        chunk = {**head(), **piece(text), "done": False}
                        if body.logprobs and lps:
                            chunk["logprobs"] = _logprobs(lps)
                        yield chunk
                    case gen.Done(tool_calls=calls, finish_reason=finish, usage=usage):
                        if calls and with_calls:
                            yield {**head(), **piece("", None, _tool_calls(calls)), "done": False}
                        yield {**head(), **piece(""), "done": True, **clock.stats(finish, usage)}

        return StreamingResponse(ndjson(chunks()), media_type=NDJSON)

    async def collect() -> tuple[gen.Done, list[TokenLogprob]]:
        lps: list[TokenLogprob] = []  # of the visible text, as streaming gives them
        async for event in events:
            if isinstance(event, gen.ContentText) and event.logprobs:
                lps += event.logprobs
            elif isinstance(event, gen.Done):
                return event, lps
        raise RuntimeError("generation ended without a result")

    done, lps = await until_disconnect(request, collect(), ctx.engine, request_id)
    calls = _tool_calls(done.tool_calls) if with_calls else None
    out = {**head(), **piece(done.content, done.reasoning if show_thinking else None, calls), "done": True}
    out |= clock.stats(done.finish_reason, done.usage)
    if body.logprobs:
        out["logprobs"] = _logprobs(lps)
    return out


@router.post("/chat")
async def chat(body: wire.ChatRequest, request: Request):
    ctx = context(request)
    _check_model(ctx, body.model)
    if not body.messages:
        return _loaded(ctx, _chat_piece, body.keep_alive)
    return await _run_chat(ctx, request, body, _chat_piece)


@router.post("/generate")
async def generate(body: wire.GenerateRequest, request: Request):
    ctx = context(request)
    _check_model(ctx, body.model)
    body.check_supported()
    if not body.prompt and not (body.system and not body.raw):
        return _loaded(ctx, _generate_piece, body.keep_alive)
    if body.raw:
        return await _raw_generate(ctx, request, body)
    return await _run_chat(ctx, request, body, _generate_piece)


async def _raw_generate(
    ctx: ServerContext, request: Request, body: wire.GenerateRequest
) -> StreamingResponse | dict[str, Any]:
    """The prompt as the model's whole input (harmony special tokens recognised), no parsing of the
    output: a plain completion that ends at an assistant stop token, num_predict or a stop string."""
    ids = harmony.load_encoding().encode(body.prompt, allowed_special="all")
    room = ctx.engine.max_model_len - len(ids)
    if room < 1:
        raise ContextLengthError(
            f"the prompt ({len(ids)} tokens) fills the context of {ctx.engine.max_model_len} tokens", "prompt"
        )
    limit = body.options.max_tokens
    params = SamplingParams(max_tokens=room if limit is None else min(limit, room), **body.sampling())
    params.stop_token_ids = frozenset(params.stop_token_ids | set(harmony.STOP_TOKENS))
    request_id = f"ollama-{uuid.uuid4().hex}"
    clock = _Clock(ctx)
    stream = ctx.engine.submit(EngineRequest(ids, params, request_id))

    def head() -> dict[str, Any]:
        return {"model": ctx.model_name, "created_at": _now()}

    async def pieces() -> AsyncIterator[tuple[str, list[TokenLogprob], str | None, gen.Usage]]:
        async for out in stream:
            if out.token_ids:
                clock.token()
            usage = gen.Usage(out.prompt_tokens, out.completion_tokens, out.cached_tokens)
            if out.finished:
                clock.done(usage.prompt_tokens, usage.completion_tokens)
            yield out.text, out.logprobs or [], out.finish_reason if out.finished else None, usage

    if body.stream:

        async def chunks() -> AsyncIterator[dict]:
            async for text, lps, finish, usage in pieces():
                if text or (body.logprobs and lps):
                    chunk = {**head(), "response": text, "done": False}
                    if body.logprobs:
                        chunk["logprobs"] = _logprobs(lps)
                    yield chunk
                if finish is not None:
                    yield {**head(), "response": "", "done": True, **clock.stats(finish, usage)}

        return StreamingResponse(ndjson(chunks()), media_type=NDJSON)

    async def collect() -> tuple[str, list[TokenLogprob], str, gen.Usage]:
        texts: list[str] = []
        all_lps: list[TokenLogprob] = []
        finish, usage = "stop", gen.Usage(len(ids))
        async for text, lps, end, latest in pieces():
            texts.append(text)
            all_lps += lps
            finish, usage = end or finish, latest
        return "".join(texts), all_lps, finish, usage

    text, lps, finish, usage = await until_disconnect(request, collect(), ctx.engine, request_id)
    out = {**head(), "response": text, "done": True, **clock.stats(finish, usage)}
    if body.logprobs:
        out["logprobs"] = _logprobs(lps)
    return out


# --- the model: list, show, ps, version -----------------------------------------------------------------


def _size(ctx: ServerContext) -> int:
    checkpoint = ctx.engine.checkpoint
    return checkpoint.size_bytes if checkpoint is not None else 0


def _modified_at(ctx: ServerContext) -> str:
    checkpoint = ctx.engine.checkpoint
    stamp = max((f.stat().st_mtime for f in checkpoint.files), default=None) if checkpoint else None
    moment = dt.datetime.fromtimestamp(stamp if stamp is not None else ctx.started, dt.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _human(count: int) -> str:
    """Ollama's parameter_size: 20.9B, 116.8B, 1.5M."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count)


def _details(ctx: ServerContext) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": ARCH,
        "families": [ARCH],
        "parameter_size": _human(ctx.engine.config.param_count()),
        "quantization_level": "MXFP4",
    }


def _card(ctx: ServerContext) -> dict[str, Any]:
    size = _size(ctx)
    digest = hashlib.sha256(f"{ctx.model_name}:{size}".encode()).hexdigest()
    return {"name": ctx.model_name, "model": ctx.model_name, "modified_at": _modified_at(ctx),
            "size": size, "digest": digest, "details": _details(ctx)}  # fmt: skip


@router.get("/tags")
async def tags(request: Request) -> dict:
    return {"models": [_card(context(request))]}


def _model_info(ctx: ServerContext) -> dict[str, Any]:
    c = ctx.engine.config
    info: dict[str, Any] = {"general.architecture": ARCH, "general.parameter_count": c.param_count()}
    for key, value in (
        ("context_length", c.max_context),
        ("block_count", c.num_hidden_layers),
        ("embedding_length", c.hidden_size),
        ("expert_count", c.num_experts),
        ("expert_used_count", c.experts_per_token),
        ("expert_feed_forward_length", c.intermediate_size),
        ("attention.head_count", c.num_attention_heads),
        ("attention.head_count_kv", c.num_key_value_heads),
        ("attention.key_length", c.head_dim),
        ("attention.value_length", c.head_dim),
        ("attention.sliding_window", c.sliding_window),
        ("attention.layer_norm_rms_epsilon", RMS_NORM_EPS),
        ("rope.freq_base", c.rope_theta),
        ("rope.scaling.factor", c.rope_scaling_factor),
        ("rope.scaling.original_context_length", c.initial_context_length),
    ):
        info[f"{ARCH}.{key}"] = value
    return info


@router.post("/show")
async def show(body: wire.ShowRequest, request: Request) -> dict:
    ctx = context(request)
    _check_model(ctx, body.model_name)
    checkpoint = ctx.engine.checkpoint
    parameters = f"temperature 1\nnum_ctx {ctx.engine.max_model_len}"
    source = str(checkpoint.root) if checkpoint is not None else ctx.model_name
    return {
        "license": "Apache-2.0",
        "modelfile": f"# served by ossai {__version__}\nFROM {source}\nPARAMETER "
        + parameters.replace("\n", "\nPARAMETER "),
        "parameters": parameters,
        "template": "harmony (rendered by ossai.harmony; raw=true on /api/generate takes a full prompt)",
        "details": _details(ctx),
        "model_info": _model_info(ctx),
        "capabilities": ["completion", "tools", "thinking"],
        "modified_at": _modified_at(ctx),
    }


@router.get("/ps")
async def ps(request: Request) -> dict:
    ctx = context(request)
    card = _card(ctx)
    del card["modified_at"]
    on_gpu = ctx.engine.device.type != "cpu"
    card |= {"expires_at": NEVER, "size_vram": card["size"] if on_gpu else 0,
             "context_length": ctx.engine.max_model_len}  # fmt: skip
    return {"models": [card]}


@router.get("/version")
async def version() -> dict:
    return {"version": __version__}
