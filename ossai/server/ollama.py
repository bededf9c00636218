"""Ollama-compatible routes under /api: chat, generate, tags, show, ps, pull, delete, version.

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
  a 400 (Ollama truncates the prompt). `suffix`, `template` and images are a 400. `format` ("json" or a
  JSON schema) holds the answer to it, sampled under a mask; with `raw` it is a 400.
- `keep_alive` works as in Ollama when the server serves the store (`ossai serve` with no MODEL); a
  model named on the command line stays loaded. No `context` is returned. Names match with or without
  the `:latest` tag.
- /api/pull fetches from the Hugging Face Hub (`gpt-oss:20b` or `owner/repo[@revision]`, one layout,
  `layout: "hf"` as an extension) and reports each file as a "layer" (`digest` is its sha256); a client
  that closes a streamed pull stops it, and pulling again resumes it. /api/delete refuses a model that a
  request or another ossai server is using (409).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ossai import __version__, harmony
from ossai.config import RMS_NORM_EPS, ModelConfig, SamplingParams
from ossai.engine import Engine, TokenLogprob
from ossai.engine import Request as EngineRequest
from ossai.errors import BadRequest, ContextLengthError
from ossai.model.weights import Checkpoint
from ossai.server import generation as gen
from ossai.server import ollama_types as wire
from ossai.server.context import ServerContext, context
from ossai.server.metrics import RequestTimer
from ossai.server.pool import Entry, Loaded, parse_keep_alive
from ossai.server.streaming import ndjson, until_disconnect
from ossai.store import hub

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api")

ARCH = "gptoss"  # Ollama's name for the architecture; clients read model_info[f"{ARCH}.context_length"]
NDJSON = "application/x-ndjson"
NEVER = "2318-08-01T00:00:00Z"  # the `expires_at` Ollama reports for a model kept loaded forever
PULL_PROGRESS_S = 0.1  # at most one progress line per this many seconds of a file's download

Piece = Callable[..., dict[str, Any]]  # (content, thinking, tool_calls) -> the message part of a chunk


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _Clock:
    """The TokenObserver of a generation: feeds the metrics and measures Ollama's durations."""

    def __init__(self, ctx: ServerContext, load_ns: int = 0):
        self.timer = RequestTimer(ctx.metrics)
        self.start = time.perf_counter_ns()  # after the load: prompt evaluation starts here
        self.first: int | None = None  # when the first token came: the end of the prompt's evaluation
        self.load = load_ns  # spent loading the model for this request (Ollama's load_duration)

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
            "total_duration": end - self.start + self.load,
            "load_duration": self.load,
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


async def _use(
    ctx: ServerContext, request: Request, body: wire.ChatRequest | wire.GenerateRequest
) -> tuple[Loaded, int]:
    """The request's model, and the nanoseconds it took to load (0 when it was loaded already)."""
    started = time.perf_counter_ns()
    model = await ctx.use(request, body.model, body.keep_alive)
    return model, time.perf_counter_ns() - started


async def _loaded(
    ctx: ServerContext, request: Request, body: wire.ChatRequest | wire.GenerateRequest, piece: Piece
) -> dict[str, Any]:
    """Ollama's answer to a request with nothing to generate: it loads the model, or with keep_alive 0
    unloads it (a pinned model stays)."""
    if parse_keep_alive(body.keep_alive, None) == 0:
        name = ctx.pool.resolve(body.model)
        await ctx.pool.unload(name, when_idle=True)
        reason = "unload"
    else:
        name = (await ctx.use(request, body.model, body.keep_alive)).name
        reason = "load"
    return {"model": name, "created_at": _now(), **piece(""), "done": True, "done_reason": reason}


def _chat_request(engine: Engine, body: wire.ChatRequest | wire.GenerateRequest) -> gen.ChatRequest:
    effort, _ = body.reasoning()
    tools = (body.tools or None) if isinstance(body, wire.ChatRequest) else None
    chat = gen.ChatRequest(
        messages=body.openai_messages(),
        sampling=body.sampling(),
        effort=effort,
        tools=tools,
        answer_format=body.answer_format(),
    )
    limit = body.options.max_tokens
    if limit is not None:  # Ollama never refuses num_predict: clip it to the room left in the context
        prompt, _ = gen.render(chat)
        chat.max_tokens = max(1, min(limit, engine.max_model_len - len(prompt)))
    return chat


async def _run_chat(
    ctx: ServerContext,
    request: Request,
    body: wire.ChatRequest | wire.GenerateRequest,
    piece: Piece,
) -> StreamingResponse | dict[str, Any]:
    """Chat and non-raw generate: the one generation path, shaped by `piece`."""
    _, show_thinking = body.reasoning()
    body.sampling()  # bad options and formats are a 400 before a model is loaded
    await gen.check_answer_format(body.answer_format())
    request_id = f"ollama-{uuid.uuid4().hex}"
    gate = ctx.confirm_gate(request, body.ossai, body.stream)
    loop = ctx.agent_for(request, body.ossai)
    model, load_ns = await _use(ctx, request, body)
    clock = _Clock(ctx, load_ns)
    engine = model.engine
    events = await gen.start_agent(engine, _chat_request(engine, body), loop, clock, request_id, gate)
    with_calls = isinstance(body, wire.ChatRequest)

    def head() -> dict[str, Any]:
        return {"model": model.name, "created_at": _now()}

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
                    case gen.ToolAwaitingConfirmation() | gen.ToolStarted() | gen.ToolFinished():
                        yield {**head(), **piece(""), "done": False, "ossai_tool": gen.tool_event(event)}
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

    done, lps = await until_disconnect(request, collect(), engine, request_id)
    calls = _tool_calls(done.tool_calls) if with_calls else None
    out = {**head(), **piece(done.content, done.reasoning if show_thinking else None, calls), "done": True}
    if done.tool_runs:
        runs = [gen.tool_event(run) for run in done.tool_runs]
        out.get("message", out)["ossai_tool_runs"] = runs
    out |= clock.stats(done.finish_reason, done.usage)
    if body.logprobs:
        out["logprobs"] = _logprobs(lps)
    return out


@router.post("/chat")
async def chat(body: wire.ChatRequest, request: Request):
    ctx = context(request)
    if not body.messages:
        return await _loaded(ctx, request, body, _chat_piece)
    return await _run_chat(ctx, request, body, _chat_piece)


@router.post("/generate")
async def generate(body: wire.GenerateRequest, request: Request):
    ctx = context(request)
    body.check_supported()
    if not body.prompt and not (body.system and not body.raw):
        return await _loaded(ctx, request, body, _generate_piece)
    if body.raw:
        return await _raw_generate(ctx, request, body)
    return await _run_chat(ctx, request, body, _generate_piece)


async def _raw_generate(
    ctx: ServerContext, request: Request, body: wire.GenerateRequest
) -> StreamingResponse | dict[str, Any]:
    """The prompt as the model's whole input (harmony special tokens recognised), no parsing of the
    output: a plain completion that ends at an assistant stop token, num_predict or a stop string."""
    if body.answer_format() is not None:
        raise BadRequest("format does not apply to a raw prompt (there is no answer to hold)", "format")
    model, load_ns = await _use(ctx, request, body)
    clock = _Clock(ctx, load_ns)
    engine = model.engine
    ids = harmony.load_encoding().encode(body.prompt, allowed_special="all")
    room = engine.max_model_len - len(ids)
    if room < 1:
        raise ContextLengthError(
            f"the prompt ({len(ids)} tokens) fills the context of {engine.max_model_len} tokens", "prompt"
        )
    limit = body.options.max_tokens
    params = SamplingParams(max_tokens=room if limit is None else min(limit, room), **body.sampling())
    params.stop_token_ids = frozenset(params.stop_token_ids | set(harmony.STOP_TOKENS))
    request_id = f"ollama-{uuid.uuid4().hex}"
    stream = engine.submit(EngineRequest(ids, params, request_id))

    def head() -> dict[str, Any]:
        return {"model": model.name, "created_at": _now()}

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

    text, lps, finish, usage = await until_disconnect(request, collect(), engine, request_id)
    out = {**head(), "response": text, "done": True, **clock.stats(finish, usage)}
    if body.logprobs:
        out["logprobs"] = _logprobs(lps)
    return out


# --- the models: list, show, ps, pull, delete, version ----------------------------------------------------


def _iso(epoch: float | None) -> str:
    """An ISO 8601 UTC time; None (or a time past year 9999) is Ollama's "never"."""
    try:
        return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return NEVER


def _human(count: int) -> str:
    """Ollama's parameter_size: 20.9B, 116.8B, 1.5M."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count)


def _details(config: ModelConfig) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "safetensors",
        "family": ARCH,
        "families": [ARCH],
        "parameter_size": _human(config.param_count()),
        "quantization_level": "MXFP4",
    }


def _card(entry: Entry) -> dict[str, Any]:
    digest = hashlib.sha256(f"{entry.name}:{entry.size}".encode()).hexdigest()
    return {"name": entry.name, "model": entry.name, "modified_at": _iso(entry.modified),
            "size": entry.size, "digest": digest, "details": _details(entry.config)}  # fmt: skip


@router.get("/tags")
async def tags(request: Request) -> dict:
    entries = await run_in_threadpool(context(request).pool.entries)
    return {"models": [_card(e) for e in entries]}


def _model_info(c: ModelConfig) -> dict[str, Any]:
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
    pool = context(request).pool
    entry = await run_in_threadpool(pool.entry, body.model_name)
    loaded = next((m for m in pool.loaded() if m.name == entry.name), None)
    context_length = loaded.engine.max_model_len if loaded is not None else entry.config.max_context
    parameters = f"temperature 1\nnum_ctx {context_length}"
    return {
        "license": "Apache-2.0",
        "modelfile": f"# served by ossai {__version__}\nFROM {entry.directory}\nPARAMETER "
        + parameters.replace("\n", "\nPARAMETER "),
        "parameters": parameters,
        "template": "harmony (rendered by ossai.harmony; raw=true on /api/generate takes a full prompt)",
        "details": _details(entry.config),
        "model_info": _model_info(entry.config),
        "capabilities": ["completion", "tools", "thinking"],
        "modified_at": _iso(entry.modified),
    }


@router.get("/ps")
async def ps(request: Request) -> dict:
    """Ollama's list of loaded models: `size` is the memory it holds, `size_vram` the part on a GPU."""
    cards = []
    for model in context(request).pool.loaded():
        card = _card(model.entry)
        del card["modified_at"]
        status = model.to_json()
        card |= {"size": status["memory_bytes"], "size_vram": status["vram_bytes"],
                 "expires_at": _iso(status["expires_at"]), "context_length": status["context_length"],
                 "device": model.device}  # fmt: skip
        cards.append(card)
    return {"models": cards}


@router.delete("/delete")
async def delete(body: wire.ModelRequest, request: Request) -> Response:
    """Remove a model from the store, unloading it first if it is idle (Ollama: 200, empty body)."""
    await context(request).pool.delete(body.model_name)
    return Response(status_code=200)


class _PullProgress:
    """hub.pull's progress (called in its thread) as Ollama's NDJSON statuses on an asyncio queue.

    Setting `cancelled` stops the download at its next chunk, leaving the partial file to resume."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict[str, Any] | None]):
        self.loop, self.queue = loop, queue
        self.cancelled = False
        self.status: dict[str, Any] = {}
        self.sent = 0.0

    def emit(self, status: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, status)

    def start(self, path: str, total: int, done: int, sha256: str | None = None) -> None:
        digest = f"sha256:{sha256}" if sha256 else path
        self.status = {"status": f"pulling {path}", "digest": digest, "total": total, "completed": done}
        self.emit(dict(self.status))

    def advance(self, nbytes: int) -> None:
        if self.cancelled:
            raise PullCancelled("the client went away")
        self.status["completed"] += nbytes
        now = time.monotonic()
        if now - self.sent >= PULL_PROGRESS_S:  # a status per chunk would be thousands a second
            self.sent = now
            self.emit(dict(self.status))

    def finish(self, path: str) -> None:
        self.emit(dict(self.status))
        self.emit({"status": "verifying sha256 digest", "digest": self.status.get("digest", path)})


class PullCancelled(Exception):
    pass


@router.post("/pull")
async def pull(body: wire.PullRequest, request: Request):
    """Download a model into the store (as `ossai pull`), with Ollama's NDJSON progress."""
    name = body.model_name
    hub.parse_ref(name)  # a bad name is a 400 before any streaming starts
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    progress = _PullProgress(loop, queue)

    def run() -> None:
        try:
            manifest = hub.pull(name, layout=body.layout, validate=Checkpoint.open, progress=progress)
            progress.emit({"status": "writing manifest"})
            progress.emit({"status": "success", "model": manifest.name})
        finally:
            progress.emit(None)

    progress.emit({"status": "pulling manifest"})
    task = asyncio.ensure_future(asyncio.to_thread(run))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a cancelled pull's error is expected

    async def statuses() -> AsyncIterator[dict]:
        try:
            while (status := await queue.get()) is not None:
                yield status
            await task  # raises what the pull raised: ndjson() turns it into an {"error"} line
        finally:
            progress.cancelled = True  # the client left (or the stream ended): stop downloading

    if body.stream:
        return StreamingResponse(ndjson(statuses()), media_type=NDJSON)
    last: dict[str, Any] = {}
    async for status in statuses():  # a client that leaves does not stop a pull it did not stream
        last = status
    return last


@router.get("/version")
async def version() -> dict:
    return {"version": __version__}
