"""The Ollama API through the official `ollama` client (and raw HTTP where the client hides the wire)
against the real server; scripted completions give the thinking and tool calls random weights never do.

`submitted` records the engine requests a test causes, so tests can check the exact prompt and
sampling settings the server derived from Ollama's fields."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import ollama
import pytest

from ossai import __version__, harmony
from ossai.engine import Request as EngineRequest
from tests.server.conftest import (
    ANSWER,
    CHAT_TOOLS,
    MODEL,
    REASONED,
    REASONING,
    TOOL_CALL,
    record_submissions,
)

TOOLS = CHAT_TOOLS
ASK = [{"role": "user", "content": "What is 2+2?"}]
WEATHER_PARIS = {"name": "get_weather", "arguments": '{"city":"Paris"}'}
PNG = [b"\x89PNG"]


def n_tokens(harmony_text: str) -> int:
    return len(harmony.load_encoding().encode(harmony_text, allowed_special="all"))


@pytest.fixture
def client(served) -> ollama.Client:
    return ollama.Client(host=served.url, timeout=60)


@pytest.fixture
def submitted(served, monkeypatch) -> list[EngineRequest]:
    return record_submissions(served.engine, monkeypatch)


# --- chat -----------------------------------------------------------------------------------------------


def test_chat_think_non_stream(client, served):
    served.engine.script(REASONED)
    r = client.chat(model=MODEL, messages=ASK, think=True)
    assert r.model == MODEL and r.done and r.done_reason == "stop"
    assert r.message.role == "assistant"
    assert r.message.thinking == REASONING and r.message.content == ANSWER
    assert r.eval_count == n_tokens(REASONED)
    assert r.prompt_eval_count == len(harmony.render_chat(ASK, effort="medium"))
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0
    assert dt.datetime.fromisoformat(r.created_at).tzinfo is not None


def test_chat_think_stream(client, served):
    served.engine.script(REASONED)
    chunks = list(client.chat(model=MODEL, messages=ASK, think=True, stream=True))
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.message.thinking or "" for c in chunks) == REASONING
    assert "".join(c.message.content or "" for c in chunks) == ANSWER
    assert all(not (c.message.thinking and c.message.content) for c in chunks)
    last = chunks[-1]
    assert last.done_reason == "stop" and last.message.content == ""
    assert last.eval_count == n_tokens(REASONED)
    assert last.prompt_eval_count == len(harmony.render_chat(ASK, effort="medium"))


@pytest.mark.parametrize("think", [False, None])
def test_no_think_hides_thinking_at_low_effort(client, served, submitted, think):
    served.engine.script(REASONED)
    r = client.chat(model=MODEL, messages=ASK, think=think)
    assert r.message.content == ANSWER and r.message.thinking is None
    assert submitted[0].prompt == harmony.render_chat(ASK, effort="low")

    served.engine.script(REASONED)
    chunks = list(client.chat(model=MODEL, messages=ASK, think=think, stream=True))
    assert not any(c.message.thinking for c in chunks)
    assert "".join(c.message.content or "" for c in chunks) == ANSWER


@pytest.mark.parametrize("level", ["low", "medium", "high"])
def test_think_level_sets_reasoning_effort(client, served, submitted, level):
    served.engine.script(REASONED)
    r = client.chat(model=MODEL, messages=ASK, think=level)
    assert r.message.thinking == REASONING
    rendered = harmony.decode(submitted[0].prompt)
    assert f"Reasoning: {level}" in rendered
    assert submitted[0].prompt == harmony.render_chat(ASK, effort=level)


def test_tool_call_and_tool_result_round_trip(client, served, submitted):
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    served.engine.script(TOOL_CALL)
    r = client.chat(model=MODEL, messages=ask, tools=TOOLS, think=True)
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert r.done_reason == "stop" and r.message.thinking == "Need the weather; call the tool."

    served.engine.script(TOOL_CALL)
    chunks = list(client.chat(model=MODEL, messages=ask, tools=TOOLS, stream=True))
    calls = [tc for c in chunks for tc in (c.message.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert chunks[-1].done and not chunks[-1].message.tool_calls

    followup = [*ask, r.message, {"role": "tool", "content": '{"temp_c": 21}', "tool_name": "get_weather"}]
    served.engine.script("<|channel|>final<|message|>It is 21 °C in Paris.<|return|>")
    again = client.chat(model=MODEL, messages=followup, tools=TOOLS, think=True)
    assert again.message.content == "It is 21 °C in Paris."
    as_openai = [
        *ask,
        {
            "role": "assistant",
            "content": None,
            "reasoning": "Need the weather; call the tool.",
            "tool_calls": [{"id": "c1", "type": "function", "function": WEATHER_PARIS}],
        },
        {"role": "tool", "name": "get_weather", "content": '{"temp_c": 21}'},
    ]
    assert submitted[-1].prompt == harmony.render_chat(as_openai, tools=TOOLS, effort="medium")


def test_tool_call_with_broken_arguments_gets_empty_object(client, served):
    served.engine.script(TOOL_CALL.replace('{"city":"Paris"}', '{"city":"Pa'))
    r = client.chat(model=MODEL, messages=ASK, tools=TOOLS)
    assert [(c.function.name, c.function.arguments) for c in r.message.tool_calls] == [("get_weather", {})]


def test_stream_is_the_default_and_nothing_to_do_loads(served):
    served.engine.script(REASONED)
    response = httpx.post(served.url + "/api/chat", json={"model": MODEL, "messages": ASK}, timeout=60)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) > 2 and lines[-1]["done"] is True and lines[0]["done"] is False
    assert "".join(line["message"]["content"] for line in lines) == ANSWER

    loaded = httpx.post(served.url + "/api/chat", json={"model": MODEL, "messages": []}).json()
    assert loaded["done"] is True and loaded["done_reason"] == "load" and loaded["model"] == MODEL
    loaded = httpx.post(served.url + "/api/generate", json={"model": MODEL}).json()
    assert loaded["done_reason"] == "load" and loaded["response"] == ""
    unloaded = httpx.post(served.url + "/api/generate", json={"model": MODEL, "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"


# --- generate -------------------------------------------------------------------------------------------


def test_generate_harmony(client, served, submitted):
    served.engine.script(REASONED)
    r = client.generate(model=MODEL, prompt="What is 2+2?", system="Be brief.", think=True)
    assert r.response == ANSWER and r.thinking == REASONING and r.done_reason == "stop"
    expected = [{"role": "system", "content": "Be brief."}, *ASK]
    assert submitted[0].prompt == harmony.render_chat(expected, effort="medium")
    assert r.prompt_eval_count == len(submitted[0].prompt) and r.eval_count == n_tokens(REASONED)

    served.engine.script(REASONED)
    chunks = list(client.generate(model=MODEL, prompt="What is 2+2?", stream=True))
    assert "".join(c.response for c in chunks) == ANSWER and not any(c.thinking for c in chunks)
    assert chunks[-1].done and chunks[-1].eval_count == n_tokens(REASONED)


def test_generate_raw_matches_completions(client, served):
    greedy = {"temperature": 0, "num_predict": 6}
    r = client.generate(model=MODEL, prompt="Hello there", raw=True, options=greedy)
    plain = httpx.post(
        served.v1 + "/completions",
        json={"model": MODEL, "prompt": "Hello there", "max_tokens": 6, "temperature": 0},
        timeout=60,
    ).json()
    assert r.response == plain["choices"][0]["text"]
    assert r.eval_count == plain["usage"]["completion_tokens"] == 6 and r.done_reason == "length"
    assert r.prompt_eval_count == len(harmony.encode("Hello there"))
    streamed = list(client.generate(model=MODEL, prompt="Hello there", raw=True, options=greedy, stream=True))
    assert "".join(c.response for c in streamed) == r.response and streamed[-1].eval_count == 6


def test_raw_prompt_keeps_special_tokens(client):
    prompt = "<|start|>user<|message|>hi<|end|><|start|>assistant"
    r = client.generate(model=MODEL, prompt=prompt, raw=True, options={"num_predict": 2})
    assert r.prompt_eval_count == n_tokens(prompt) < len(harmony.encode(prompt))


# --- options --------------------------------------------------------------------------------------------


def test_num_predict_seed_and_stop(client, submitted):
    r = client.chat(model=MODEL, messages=ASK, options={"num_predict": 3, "seed": 11, "stop": ["zz"]})
    assert r.eval_count == 3 and r.done_reason == "length"
    params = submitted[0].params
    assert params.max_tokens == 3 and params.seed == 11 and params.stop == ("zz",)

    seeded = {"temperature": 1.0, "seed": 1234, "num_predict": 8}
    first = client.generate(model=MODEL, prompt="Once", raw=True, options=seeded).response
    assert client.generate(model=MODEL, prompt="Once", raw=True, options=seeded).response == first
    other = client.generate(model=MODEL, prompt="Once", raw=True, options={**seeded, "seed": 99}).response
    assert other != first

    full = client.generate(
        model=MODEL, prompt="Hello", raw=True, options={"temperature": 0, "num_predict": 16}
    )
    text = full.response
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip()
    cut = client.generate(
        model=MODEL, prompt="Hello", raw=True, options={"temperature": 0, "num_predict": 16, "stop": [stop]}
    )
    assert cut.response == text[: text.find(stop)] and cut.done_reason == "stop"


def test_options_map_onto_sampling(client, submitted):
    options = {"temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
               "presence_penalty": 0.5, "frequency_penalty": 0.25, "num_ctx": 8192, "num_thread": 4,
               "seed": -1, "num_predict": -1}  # fmt: skip
    client.generate(model=MODEL, prompt="Hi", raw=True, options={**options, "num_predict": 1})
    p = submitted[0].params
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.5, 0.9, 40, 0.05)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.1, 0.5, 0.25)
    assert p.seed is None and p.max_tokens == 1


# --- the model ------------------------------------------------------------------------------------------


def test_list_show_ps_version(client, served):
    checkpoint, config = served.engine.checkpoint, served.engine.config
    (card,) = client.list().models
    assert card.model == MODEL and card.size == checkpoint.size_bytes > 0
    assert len(card.digest) == 64 and card.modified_at is not None
    assert card.details.family == "gptoss" and card.details.quantization_level == "MXFP4"
    millions = config.param_count() / 1e6
    assert card.details.parameter_size == f"{millions:.1f}M"

    shown = client.show(MODEL)
    assert {"completion", "tools", "thinking"} <= set(shown.capabilities)
    assert shown.modelinfo["general.architecture"] == "gptoss"
    assert shown.modelinfo["gptoss.context_length"] == config.max_context
    assert shown.modelinfo["gptoss.block_count"] == config.num_hidden_layers
    assert shown.modelinfo["gptoss.expert_count"] == config.num_experts
    assert f"num_ctx {served.engine.max_model_len}" in shown.parameters
    assert client.show(MODEL + ":latest").details.family == "gptoss"
    legacy = httpx.post(served.url + "/api/show", json={"name": MODEL}).json()
    assert legacy["model_info"]["gptoss.embedding_length"] == config.hidden_size

    (loaded,) = client.ps().models
    assert loaded.model == MODEL and loaded.context_length == served.engine.max_model_len
    assert loaded.size == checkpoint.size_bytes and loaded.size_vram == 0
    assert loaded.expires_at.year > 2100

    assert httpx.get(served.url + "/api/version").json() == {"version": __version__}


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "status", "word"),
    [
        (lambda c: c.chat(model="nope", messages=ASK), 404, "nope"),
        (lambda c: c.generate(model="nope", prompt="hi"), 404, "nope"),
        (lambda c: c.show("nope"), 404, "nope"),
        (lambda c: c.chat(model=MODEL, messages=ASK, options={"temperature": "hot"}), 400, "temperature"),
        (lambda c: c.chat(model=MODEL, messages=ASK, options={"num_predict": "many"}), 400, "num_predict"),
        (lambda c: c.chat(model=MODEL, messages=ASK, think="max"), 400, "think"),
        (lambda c: c.chat(model=MODEL, messages=ASK, format={"$ref": "#/nowhere"}), 400, "format"),
        (lambda c: c.generate(model=MODEL, prompt="hi", raw=True, format="json"), 400, "format"),
        (lambda c: c.chat(model=MODEL, messages=[{"role": "bot", "content": "x"}]), 400, "role"),
        (
            lambda c: c.chat(model=MODEL, messages=[{"role": "user", "content": "x", "images": PNG}]),
            400,
            "images",
        ),
        (lambda c: c.generate(model=MODEL, prompt="hi", images=PNG), 400, "images"),
        (lambda c: c.generate(model=MODEL, prompt="hi", suffix="end"), 400, "suffix"),
        (lambda c: c.generate(model=MODEL, prompt="hi", options={"top_p": 0}), 400, "top_p"),
        (
            lambda c: c.chat(model=MODEL, messages=ASK, tools=[{"function": {"name": "two words"}}]),
            400,
            "name",
        ),
    ],
)
def test_bad_requests_raise_response_error(client, call, status, word):
    with pytest.raises(ollama.ResponseError) as caught:
        call(client)
    assert caught.value.status_code == status
    assert word in caught.value.error


def test_context_limits(client, served, submitted):
    """num_predict beyond the context is clipped (Ollama never refuses it); a prompt that does not fit
    is a 400."""
    served.engine.script(REASONED)
    r = client.chat(model=MODEL, messages=ASK, options={"num_predict": 10**9})
    assert r.message.content == ANSWER
    assert submitted[0].params.max_tokens == served.engine.max_model_len - r.prompt_eval_count
    too_long = "word " * (served.engine.max_model_len + 10)
    for call in (
        lambda: client.generate(model=MODEL, prompt=too_long),
        lambda: client.generate(model=MODEL, prompt=too_long, raw=True),
        lambda: client.chat(model=MODEL, messages=[{"role": "user", "content": too_long}]),
    ):
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 400 and "context" in caught.value.error


def test_raw_http_errors_are_ollama_shaped(served):
    url = served.url + "/api/chat"
    for body, status in (
        (b"{not json", 400),
        (b'{"model": "tiny-gpt-oss", "messages": "hi"}', 400),
        (b'{"messages": []}', 400),
    ):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status and isinstance(r.json()["error"], str) and r.json()["error"]
    r = httpx.post(served.url + "/api/show", json={})
    assert r.status_code == 400 and "model" in r.json()["error"]


# --- disconnects ----------------------------------------------------------------------------------------


def _blocks_all_free(served) -> bool:
    b = served.engine.runner.blocks
    return b.full.num_free == b.full.num_blocks and b.sliding.num_free == b.sliding.num_blocks


def test_disconnects_abort_and_free_kv(served):
    body = {"model": MODEL, "prompt": "Hello", "raw": True, "options": {"num_predict": 3000}}
    with httpx.stream("POST", served.url + "/api/generate", json=body, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert served.engine.stats().running == 1
    served.wait_idle(timeout=5)
    assert _blocks_all_free(served)

    chat = {"model": MODEL, "messages": ASK, "stream": False, "options": {"num_predict": 3000}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served.url + "/api/chat", json=chat, timeout=1.0)
    served.wait_idle(timeout=5)  # far sooner than 3000 tokens would take
    assert _blocks_all_free(served)


def test_format_holds_the_sampled_answer_to_json_or_a_schema(client, served):
    """The script reaches the answer; random weights at temperature 1 write it, held by the mask only."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    to_the_answer = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>"
    served.engine.script(to_the_answer)
    r = client.chat(model=MODEL, messages=ASK, format=schema, options={"temperature": 1.0, "seed": 1})
    assert r.done_reason == "stop" and isinstance(json.loads(r.message.content)["ok"], bool)
    served.engine.script(to_the_answer)
    r = client.chat(model=MODEL, messages=ASK, format="json", options={"temperature": 1.0, "num_predict": 30})
    assert r.message.content.startswith("{")
