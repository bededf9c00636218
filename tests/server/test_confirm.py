"""Confirm before running (`"ossai": {"confirm": ["python"]}`) through the real server: the model's python
calls are scripted (random weights never make them); the sandbox, the stream and the waiting are real."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from ossai.config import EngineConfig
from ossai.server.confirm import DECLINED
from ossai.testing.scripted import ScriptedEngine
from ossai.tools.python import PythonTool
from tests.server.conftest import MODEL, Served, start_server

CODE = "print(6*7)"
PY_CALL = (
    "<|channel|>analysis<|message|>Compute it with python.<|end|>"
    f"<|start|>assistant to=python<|channel|>analysis code<|message|>{CODE}<|call|>"
)
FINAL = "6 × 7 = 42."
ANSWER = (
    "<|channel|>analysis<|message|>Done.<|end|>"
    f"<|start|>assistant<|channel|>final<|message|>{FINAL}<|return|>"
)
ASK = [{"role": "user", "content": "What is 6 times 7?"}]
KEY, OTHER_KEY = "key-one", "key-two"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIRM = {"ossai": {"builtin_tools": ["python"], "confirm": ["python"]}}


@pytest.fixture(scope="module")
def agent(tiny, tmp_path_factory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("confirm-home")
    engine = ScriptedEngine.load(tiny, config=EngineConfig(kv_cache_mb=64, max_num_seqs=8))
    python = PythonTool(home / "python", timeout_s=5.0)
    handle = start_server(tiny, home, engine=engine, tools={"python": python}, api_keys=(KEY, OTHER_KEY))
    yield handle
    handle.stop()
    python.close()


def _confirm(agent: Served, call_id: str, approve: bool, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{agent.url}/ossai/tool-calls/{call_id}/confirm", json={"approve": approve},
                      headers=AUTH if headers is None else headers, timeout=10)  # fmt: skip


def _chat_stream(agent: Served, answer) -> tuple[list[dict], str]:
    """Stream a chat request that asks to confirm python; `answer(call_id)` is called when the stream
    asks. Returns the ossai_tool events and the answer's text."""
    body = {"model": MODEL, "messages": ASK, "stream": True, **CONFIRM}
    tools, content = [], []
    with httpx.stream("POST", agent.v1 + "/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            content.append(delta.get("content") or "")
            if "ossai_tool" in delta:
                tools.append(delta["ossai_tool"])
                if delta["ossai_tool"]["status"] == "awaiting_confirmation":
                    answer(delta["ossai_tool"]["id"])
    return tools, "".join(content)


def test_approved_the_call_runs(agent):
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    answers = []

    def approve(call_id: str) -> None:
        r = _confirm(agent, call_id, True)
        answers.append(r)
        assert r.status_code == 200 and r.json() == {"id": call_id, "approved": True}
        assert _confirm(agent, call_id, True).status_code == 404  # answered already

    tools, content = _chat_stream(agent, approve)
    assert [t["status"] for t in tools] == ["awaiting_confirmation", "running", "completed"]
    waiting = tools[0]
    assert set(waiting) == {"id", "tool", "name", "arguments", "status"}
    assert (waiting["tool"], waiting["name"], waiting["arguments"]) == ("python", "python", CODE)
    assert len({t["id"] for t in tools}) == 1 and tools[2]["output"].strip() == "42"
    assert content == FINAL and len(answers) == 1


def test_declined_the_model_is_told(agent):
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    tools, content = _chat_stream(agent, lambda call_id: _confirm(agent, call_id, False).raise_for_status())
    assert [t["status"] for t in tools] == ["awaiting_confirmation", "failed"]
    assert tools[1]["output"] == DECLINED == "The user declined to run this code."
    assert content == FINAL  # the model read the refusal and answered


def test_only_the_same_api_key_can_answer(agent):
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)

    def answer(call_id: str) -> None:
        other = _confirm(agent, call_id, True, {"Authorization": f"Bearer {OTHER_KEY}"})
        assert other.status_code == 404 and other.json()["error"]["type"] == "not_found_error"
        assert _confirm(agent, call_id, True, {}).status_code == 401
        assert _confirm(agent, call_id, True).status_code == 200

    tools, _ = _chat_stream(agent, answer)
    assert tools[-1]["status"] == "completed"


def test_unanswered_calls_time_out_as_declined(agent, monkeypatch):
    app = agent.server.config.app
    monkeypatch.setattr(app.state.ctx.config, "confirm_timeout_s", 0.3)
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    started = time.monotonic()
    tools, content = _chat_stream(agent, lambda call_id: None)
    assert [t["status"] for t in tools] == ["awaiting_confirmation", "failed"]
    assert tools[1]["output"] == DECLINED and content == FINAL and time.monotonic() - started < 30


def test_a_client_that_goes_away_leaves_nothing_waiting(agent):
    registry = agent.server.config.app.state.ctx.confirmations
    agent.engine.script(PY_CALL)
    body = {"model": MODEL, "messages": ASK, "stream": True, **CONFIRM}
    call_id = None
    with httpx.stream("POST", agent.v1 + "/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        for line in r.iter_lines():
            if "awaiting_confirmation" in line:
                call_id = json.loads(line.removeprefix("data: "))["choices"][0]["delta"]["ossai_tool"]["id"]
                break
    assert call_id is not None
    deadline = time.monotonic() + 10
    while len(registry) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(registry) == 0
    assert _confirm(agent, call_id, True).status_code == 404
    agent.wait_idle()
    assert agent.engine.pending_scripts() == 0


def test_ollama_chat_asks_too(agent):
    agent.engine.script(PY_CALL)
    agent.engine.script(ANSWER)
    body = {"model": MODEL, "messages": ASK, "think": True, **CONFIRM}  # Ollama streams by default
    tools, content = [], []
    with httpx.stream("POST", agent.url + "/api/chat", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            chunk = json.loads(line)
            content.append(chunk["message"]["content"])
            if "ossai_tool" in chunk:
                tools.append(chunk["ossai_tool"])
                if chunk["ossai_tool"]["status"] == "awaiting_confirmation":
                    assert _confirm(agent, chunk["ossai_tool"]["id"], True).status_code == 200
    assert [t["status"] for t in tools] == ["awaiting_confirmation", "running", "completed"]
    assert "".join(content) == FINAL


def test_confirm_needs_a_stream(agent):
    body = {"model": MODEL, "messages": ASK, **CONFIRM}
    r = httpx.post(agent.v1 + "/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 400 and "stream" in r.json()["error"]["message"]
    r = httpx.post(agent.url + "/api/chat", json=body | {"stream": False}, headers=AUTH, timeout=30)
    assert r.status_code == 400 and "stream" in r.json()["error"]
    body["ossai"] = {"builtin_tools": ["python"], "confirm": ["shell"]}
    r = httpx.post(agent.v1 + "/chat/completions", json=body | {"stream": True}, headers=AUTH, timeout=30)
    assert r.status_code == 400 and "confirm" in r.json()["error"]["message"]
    assert agent.engine.pending_scripts() == 0


def test_unknown_calls_are_404(agent):
    r = _confirm(agent, "call_unknown", True)
    assert r.status_code == 404 and "call_unknown" in r.json()["error"]["message"]
    r = httpx.post(f"{agent.url}/ossai/tool-calls/call_x/confirm", json={"approve": "maybe"}, headers=AUTH)
    assert r.status_code == 400
    r = httpx.post(f"{agent.url}/ossai/tool-calls/call_x/confirm", json={}, headers=AUTH)
    assert r.status_code == 400
