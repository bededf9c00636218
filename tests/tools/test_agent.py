"""The agent loop through the real server and the official clients: the model's choices are scripted
(real harmony tool-call tokens, which random weights never produce); rendering, parsing, the python
sandbox, the browser's index and the streaming are real."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import ResponseCodeInterpreterToolCall, ResponseFunctionWebSearch
from openai_harmony import (
    Author,
    Conversation,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    SystemContent,
)

from ossai.config import EngineConfig
from ossai.engine import Request as EngineRequest
from ossai.harmony import load_encoding
from ossai.testing.scripted import ScriptedEngine
from ossai.tools.browser import BrowserTool, LocalIndex
from ossai.tools.python import PythonTool
from tests.server.conftest import CHAT_TOOLS, MODEL, Served, record_submissions, start_server

THINK = "Compute it with python."
CODE = "print(6*7)"
PY_CALL = (
    f"<|channel|>analysis<|message|>{THINK}<|end|>"
    f"<|start|>assistant to=python<|channel|>analysis code<|message|>{CODE}<|call|>"
)
FINAL = "6 × 7 = 42."
ANSWER = (
    "<|channel|>analysis<|message|>The output is 42.<|end|>"
    f"<|start|>assistant<|channel|>final<|message|>{FINAL}<|return|>"
)
SEARCH_CALL = (
    "<|channel|>analysis<|message|>Look it up.<|end|>"
    "<|start|>assistant to=browser.search<|channel|>analysis code"
    '<|message|>{"query": "paged kv cache"}<|call|>'
)
ASK = [{"role": "user", "content": "What is 6 times 7?"}]
TOOLS = {"ossai": {"builtin_tools": ["python"]}}


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs")
    (root / "kv.md").write_text("# Paged KV cache\n\nThe paged KV cache stores keys and values in blocks.\n")
    (root / "other.md").write_text("# Sampling\n\nTemperature scales the logits.\n")
    return root


@pytest.fixture(scope="module")
def agent(tiny, docs, tmp_path_factory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("agent-home")
    engine = ScriptedEngine.load(tiny, config=EngineConfig(kv_cache_mb=64, max_num_seqs=8))
    tools = {
        "python": PythonTool(home / "python", timeout_s=3.0),
        "browser": BrowserTool(LocalIndex([docs], home / "index.sqlite3")),
    }
    handle = start_server(tiny, home, engine=engine, tools=tools, tool_max_steps=2)
    yield handle
    handle.stop()
    for tool in tools.values():
        tool.close()


@pytest.fixture
def submitted(agent, monkeypatch) -> list[EngineRequest]:
    return record_submissions(agent.engine, monkeypatch)


@pytest.fixture
def client(agent) -> openai.OpenAI:
    return openai.OpenAI(base_url=agent.v1, api_key="unused", max_retries=0)


def _system() -> SystemContent:
    today = dt.date.today().isoformat()
    content = SystemContent.new().with_reasoning_effort(ReasoningEffort.MEDIUM)
    return content.with_conversation_start_date(today).with_python_tool()


def test_chat_completions_runs_python_and_answers(client, agent, submitted):
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    r = client.chat.completions.create(model=MODEL, messages=ASK, extra_body=TOOLS)
    message = r.choices[0].message
    assert message.content == FINAL and r.choices[0].finish_reason == "stop"
    (run,) = message.model_extra["ossai_tool_runs"]
    assert (run["tool"], run["name"], run["arguments"], run["status"]) == (
        "python",
        "python",
        CODE,
        "completed",
    )
    assert run["output"].strip() == "42"
    assert not message.tool_calls  # the server ran it: nothing for the client to do
    assert r.usage.prompt_tokens == len(submitted[0].prompt) + len(submitted[1].prompt)

    # the second step's prompt is exactly openai-harmony's rendering of the conversation so far
    call = Message.from_role_and_content(Role.ASSISTANT, CODE).with_channel("analysis")
    call = call.with_recipient("python").with_content_type("code")
    result = Message.from_author_and_content(Author.new(Role.TOOL, "python"), run["output"])
    conversation = Conversation.from_messages(
        [
            Message.from_role_and_content(Role.SYSTEM, _system()),
            Message.from_role_and_content(Role.USER, ASK[0]["content"]),
            Message.from_role_and_content(Role.ASSISTANT, THINK).with_channel("analysis"),
            call,
            result.with_recipient("assistant").with_channel("analysis"),
        ]
    )
    config = RenderConversationConfig(auto_drop_analysis=False)
    expected = load_encoding().render_conversation_for_completion(conversation, Role.ASSISTANT, config)
    assert submitted[1].prompt == expected


def test_chat_completions_stream_shows_each_tool_call(client, agent):
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    stream = client.chat.completions.create(model=MODEL, messages=ASK, extra_body=TOOLS, stream=True)
    tool_events, content, reasoning = [], [], []
    for chunk in stream:
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        if "ossai_tool" in extra:
            tool_events.append(extra["ossai_tool"])
        content.append(delta.content or "")
        reasoning.append(extra.get("reasoning_content") or "")
        assert not delta.tool_calls
    assert [e["status"] for e in tool_events] == ["running", "completed"]
    assert tool_events[0]["arguments"] == CODE and tool_events[1]["output"].strip() == "42"
    assert "".join(content) == FINAL
    assert "".join(reasoning) == f"{THINK}\n\nThe output is 42."  # steps apart, as in the final message


def test_state_persists_across_requests_of_one_session(client, agent):
    session = {"ossai": {"builtin_tools": ["python"], "session": "conversation-1"}}
    for code, answer in (("x = 20", "Set."), ("print(x + 1)", "21")):
        agent.engine.script(PY_CALL.replace(CODE, code))
        agent.engine.script(ANSWER.replace(FINAL, answer))
        r = client.chat.completions.create(model=MODEL, messages=ASK, extra_body=session)
    (run,) = r.choices[0].message.model_extra["ossai_tool_runs"]
    assert run["output"].strip() == "21"


def test_a_failing_and_a_timed_out_tool_give_the_model_an_error(client, agent):
    agent.engine.script(PY_CALL.replace(CODE, "1/0"))
    agent.engine.script(PY_CALL.replace(CODE, "import time; time.sleep(30)"))
    agent.engine.script(ANSWER)
    r = client.chat.completions.create(model=MODEL, messages=ASK, extra_body=TOOLS)
    failed, timed_out = r.choices[0].message.model_extra["ossai_tool_runs"]
    assert "ZeroDivisionError" in failed["output"]
    assert timed_out["status"] == "failed" and "time" in timed_out["output"].lower()
    assert r.choices[0].message.content == FINAL  # the model read the errors and answered


def test_the_step_limit_stops_the_loop(client, agent):
    for _ in range(3):
        agent.engine.script(PY_CALL)
    r = client.chat.completions.create(model=MODEL, messages=ASK, extra_body=TOOLS)
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].message.model_extra["ossai_tool_runs"]) == 2  # tool_max_steps
    assert not r.choices[0].message.tool_calls
    agent.wait_idle()
    assert agent.engine.pending_scripts() == 0


def test_a_function_tool_goes_back_to_the_client(client, agent):
    agent.engine.script(
        "<|channel|>analysis<|message|>Ask the client.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>'
    )
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=CHAT_TOOLS, extra_body=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("get_weather", '{"city":"Paris"}')
    ]
    assert "ossai_tool_runs" not in (choice.message.model_extra or {})


def test_responses_code_interpreter(client, agent):
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    response = client.responses.create(
        model=MODEL, input=ASK[0]["content"], tools=[{"type": "code_interpreter"}]
    )
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "code_interpreter_call", "reasoning", "message"]
    call = response.output[1]
    assert isinstance(call, ResponseCodeInterpreterToolCall)
    assert call.code == CODE and call.status == "completed" and call.outputs[0].logs.strip() == "42"
    assert response.output_text == FINAL

    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    events = list(
        client.responses.create(
            model=MODEL, input=ASK[0]["content"], tools=[{"type": "code_interpreter"}], stream=True
        )
    )
    types = [e.type for e in events]
    for kind in ("in_progress", "interpreting", "completed"):
        assert f"response.code_interpreter_call.{kind}" in types
    assert "response.code_interpreter_call_code.done" in types
    final = events[-1].response
    assert [item.type for item in final.output] == kinds
    assert final.output[1].outputs[0].logs.strip() == "42"


def test_responses_web_search_uses_the_local_index(client, agent):
    agent.engine.script(SEARCH_CALL)
    agent.engine.script(ANSWER.replace(FINAL, "Blocks."))
    response = client.responses.create(model=MODEL, input="kv?", tools=[{"type": "web_search_preview"}])
    search = response.output[1]
    assert isinstance(search, ResponseFunctionWebSearch)
    assert search.action.type == "search" and search.action.query == "paged kv cache"
    assert search.status == "completed" and response.output_text == "Blocks."


def test_ollama_chat_streams_tool_events(agent):
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    body = {"model": MODEL, "messages": ASK, **TOOLS, "think": True}
    lines = [
        json.loads(line)
        for line in httpx.post(agent.url + "/api/chat", json=body, timeout=60).text.splitlines()
    ]
    tools = [line["ossai_tool"] for line in lines if "ossai_tool" in line]
    assert [t["status"] for t in tools] == ["running", "completed"]
    assert "".join(line["message"]["content"] for line in lines) == FINAL


def test_tools_the_server_does_not_offer_are_refused(agent):
    body = {"model": MODEL, "messages": ASK, "ossai": {"builtin_tools": ["mcp"]}}
    r = httpx.post(agent.v1 + "/chat/completions", json=body)
    assert r.status_code == 400 and "mcp tool is not enabled" in r.json()["error"]["message"]
    body["ossai"] = {"builtin_tools": ["shell"]}
    assert httpx.post(agent.v1 + "/chat/completions", json=body).status_code == 400


def test_a_client_function_named_like_a_builtin_is_the_clients(client, agent):
    """`functions.python` is the client's own function; only the recipient `python` is the sandbox."""
    mine = [{"type": "function", "function": {"name": "python", "description": "the client's own"}}]
    agent.engine.script("<|channel|>commentary to=functions.python <|constrain|>json<|message|>{}<|call|>")
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=mine, extra_body=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["python"]
    assert "ossai_tool_runs" not in (r.choices[0].message.model_extra or {})


def test_max_tokens_bounds_the_whole_loop(client, agent, submitted):
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    first = len(load_encoding().encode(PY_CALL, allowed_special="all"))
    r = client.chat.completions.create(model=MODEL, messages=ASK, extra_body=TOOLS, max_tokens=first + 3)
    assert submitted[1].params.max_tokens == 3  # what the first step left
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens <= first + 3
    agent.wait_idle()
    assert agent.engine.pending_scripts() == 0
