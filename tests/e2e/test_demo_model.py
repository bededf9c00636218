"""The shipped ossai-demo through a real `ossai serve` and the official openai SDK: the bundled archive
unpacks, loads through the normal path, reasons before it answers (right, for small sums), calls the
python built-in through the agent loop and answers with its result, and calls a function it never saw
in training with JSON arguments that match the schema (BENCHMARKS.md has its evaluation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ossai.store import demo
from tests.server.conftest import spawn_server

pytestmark = pytest.mark.skipif(not demo.bundled(), reason="this build bundles no ossai-demo")


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[openai.OpenAI]:
    home = tmp_path_factory.mktemp("demo-home")
    proc, url = spawn_server(["--kv-cache-mb", "64"], home)  # an empty store: the demo model is served
    try:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_the_empty_store_serves_the_demo_model(client):
    assert [m.id for m in client.models.list()] == [demo.NAME]


def test_it_reasons_then_answers(client):
    r = client.chat.completions.create(
        model=demo.NAME,
        messages=[{"role": "user", "content": "What is 12 plus 5?"}],
        temperature=0,
        reasoning_effort="low",
    )
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    assert message.model_extra["reasoning_content"].strip()  # the analysis channel, parsed
    assert "17" in message.content and "<|" not in message.content


def test_it_calls_python_through_the_agent_loop(client):
    response = client.responses.create(
        model=demo.NAME,
        input="What's the factorial of 19?",
        tools=[{"type": "code_interpreter"}],
        temperature=0,
        reasoning={"effort": "low"},
    )
    calls = [item for item in response.output if item.type == "code_interpreter_call"]
    assert calls and "factorial" in calls[0].code
    assert calls[0].status == "completed" and calls[0].outputs[0].logs.strip() == "121645100408832000"
    assert response.output[-1].type == "message" and "121645100408832000" in response.output_text


def test_effort_changes_the_reasoning(client):
    lengths = {}
    for effort in ("low", "high"):
        r = client.chat.completions.create(
            model=demo.NAME,
            messages=[{"role": "user", "content": "What is 7 times 6?"}],
            temperature=0,
            reasoning_effort=effort,
        )
        lengths[effort] = len(r.choices[0].message.model_extra["reasoning_content"])
    assert lengths["high"] > 2 * lengths["low"]


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required}
    spec = {"name": name, "description": description, "parameters": parameters}
    return {"type": "function", "function": spec}


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    assert len({k for k, _ in pairs}) == len(pairs), f"a key repeated: {pairs}"
    return dict(pairs)


def test_it_calls_an_unseen_function_with_arguments_that_match_its_schema(client):
    # names held out of training (training.tasks.heldout_name): schemas the model never saw
    tools = [
        _function("set_timer", "Set the timer.", {"minutes": {"type": "integer"}}, ["minutes"]),
        _function(
            "book_table",
            "Book a table.",
            {"city": {"type": "string"}, "guests": {"type": "integer", "description": "The guests"}},
            ["guests"],
        ),
        _function("cancel_taxi", "Cancel the taxi.", {"priority": {"enum": ["low", "high"]}}, ["priority"]),
    ]
    r = client.chat.completions.create(
        model=demo.NAME,
        messages=[{"role": "user", "content": "Please book the table with guests 4."}],
        tools=tools,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "book_table"
    assert json.loads(call.function.arguments, object_pairs_hook=_no_repeated_keys) == {"guests": 4}


def test_a_response_format_holds_its_answer_to_the_schema(client):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    r = client.chat.completions.create(
        model=demo.NAME,
        messages=[{"role": "user", "content": "What is 12 plus 5?"}],
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "sum", "schema": schema}},
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.model_extra["reasoning_content"].strip()  # reasoning stays free
    answer = json.loads(r.choices[0].message.content, object_pairs_hook=_no_repeated_keys)
    assert list(answer) == ["answer"] and isinstance(answer["answer"], int)
