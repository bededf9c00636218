"""The Responses API through the official `openai` SDK against the real server: output items, stream
events, function calls across turns, the SQLite store (also across a restart) and 4xx on bad input.

Raw bodies and SSE frames are also validated strictly against the SDK's pydantic models, since the SDK
itself builds them without validation and would hide a missing field."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ossai import harmony
from tests.server.conftest import (
    ANSWER,
    CALL_REASONING,
    CHAT_TOOLS,
    MODEL,
    REASONED,
    REASONING,
    TOOL_CALL,
    WEATHER,
    start_server,
)

TOOLS = [{"type": "function", **WEATHER}]  # the flat Responses form
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0)


def final(text: str) -> str:
    return f"<|channel|>final<|message|>{text}<|return|>"


def n_tokens(harmony_text: str) -> int:
    return len(harmony.load_encoding().encode(harmony_text, allowed_special="all"))


def sse_frames(served, body: dict) -> list[tuple[str, dict]]:
    with httpx.stream("POST", served.v1 + "/responses", json=body | {"stream": True}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        blocks = r.read().decode().strip().split("\n\n")
    frames = []
    for block in blocks:
        event_line, data_line = block.split("\n")
        frames.append((event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return frames


def test_non_stream_reasoning_and_message(client, served):
    served.engine.script(REASONED)
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="What is 2+2?", reasoning={"effort": "low"}
    )
    Response.model_validate(raw.http_response.json())  # strict: every required field is there
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert [item.type for item in r.output] == ["reasoning", "message"]
    reasoning, message = r.output
    assert reasoning.id.startswith("rs_") and reasoning.summary == []
    assert [(c.type, c.text) for c in reasoning.content] == [("reasoning_text", REASONING)]
    assert message.id.startswith("msg_") and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].text == ANSWER
    assert r.output_text == ANSWER
    assert r.reasoning.effort == "low" and r.store is True and r.tools == []
    prompt = harmony.render_chat([{"role": "user", "content": "What is 2+2?"}], effort="low")
    assert r.usage.input_tokens == len(prompt)
    assert r.usage.output_tokens == n_tokens(REASONED)
    assert r.usage.output_tokens_details.reasoning_tokens == len(harmony.encode(REASONING))
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_stream_events_order_and_deltas(client, served):
    served.engine.script(REASONED)
    frames = sse_frames(served, {"model": MODEL, "input": "What is 2+2?"})
    for name, data in frames:
        assert name == data["type"]
        STREAM_EVENT.validate_python(data)  # strict, per event type
    assert [data["sequence_number"] for _, data in frames] == list(range(len(frames)))
    kinds = [name.removeprefix("response.") for name, _ in frames]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert collapsed == [
        "created", "in_progress",
        "output_item.added", "content_part.added", "reasoning_text.delta", "reasoning_text.done",
        "content_part.done", "output_item.done",
        "output_item.added", "content_part.added", "output_text.delta", "output_text.done",
        "content_part.done", "output_item.done",
        "completed",
    ]  # fmt: skip
    assert frames[0][1]["response"]["status"] == "in_progress"
    data = [d for _, d in frames]
    reasoning = "".join(d["delta"] for d in data if d["type"] == "response.reasoning_text.delta")
    text = "".join(d["delta"] for d in data if d["type"] == "response.output_text.delta")
    assert reasoning == REASONING and text == ANSWER
    done = next(d for d in data if d["type"] == "response.output_text.done")
    assert done["text"] == ANSWER and done["output_index"] == 1
    completed = data[-1]["response"]
    assert completed["output"][1]["content"][0]["text"] == ANSWER
    assert completed["output"][1]["id"] == done["item_id"]

    served.engine.script(REASONED)  # the SDK's stream helper accumulates the same events into a Response
    with client.responses.stream(model=MODEL, input="What is 2+2?") as stream:
        kinds = [event.type for event in stream]
        response = stream.get_final_response()
    assert kinds[-1] == "response.completed"
    assert response.output_text == ANSWER and response.output[0].content[0].text == REASONING


def test_function_call_then_result_with_previous_response_id(client, served):
    served.engine.script(TOOL_CALL)
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=TOOLS)
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    assert call.id.startswith("fc_") and call.call_id.startswith("call_") and call.status == "completed"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert first.tools[0].name == "get_weather" and first.tool_choice == "auto"

    served.engine.script(final("It is 21 °C in Paris."))
    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}],
        tools=TOOLS,
    )
    assert second.output_text == "It is 21 °C in Paris." and second.previous_response_id == first.id
    conversation = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": CALL_REASONING,  # the tool-calling turn's reasoning is kept
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp_c": 21}'},
    ]
    assert second.usage.input_tokens == len(harmony.render_chat(conversation, tools=CHAT_TOOLS))
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message", "reasoning", "function_call", "function_call_output"]


def test_function_call_stream_arguments_and_stable_ids(served):
    served.engine.script(TOOL_CALL)
    frames = sse_frames(served, {"model": MODEL, "input": "Weather in Paris?", "tools": TOOLS})
    data = [d for _, d in frames]
    for d in data:
        STREAM_EVENT.validate_python(d)
    added = [d["item"] for d in data if d["type"] == "response.output_item.added"]
    finished = [d["item"] for d in data if d["type"] == "response.output_item.done"]
    assert [i["type"] for i in added] == ["reasoning", "function_call"]
    assert (added[1]["id"], added[1]["call_id"]) == (finished[1]["id"], finished[1]["call_id"])
    deltas = [d for d in data if d["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) > 1 and all(d["item_id"] == added[1]["id"] for d in deltas)
    args_done = next(d for d in data if d["type"] == "response.function_call_arguments.done")
    assert "".join(d["delta"] for d in deltas) == args_done["arguments"] == '{"city":"Paris"}'
    assert data[-1]["response"]["output"][1]["arguments"] == '{"city":"Paris"}'


def test_tool_choice(client, served):
    served.engine.script('{"city":"Oslo"}<|call|>')  # the server prefills the named call's header
    r = client.responses.create(
        model=MODEL, input="hi", tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"}
    )
    assert r.output[0].type == "function_call" and json.loads(r.output[0].arguments) == {"city": "Oslo"}
    served.engine.script(final("No tools."))
    r = client.responses.create(model=MODEL, input="hi", tools=TOOLS, tool_choice="none")
    assert r.usage.input_tokens == len(harmony.render_chat([{"role": "user", "content": "hi"}]))


def test_retrieve_delete_and_incomplete(client):
    r = client.responses.create(model=MODEL, input="hi", max_output_tokens=3, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3
    got = client.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_store_false_is_not_kept(client):
    r = client.responses.create(model=MODEL, input="hi", max_output_tokens=2, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError, match="previous response"):
        client.responses.create(model=MODEL, input="again", previous_response_id=r.id)


def test_instructions_are_not_inherited(client, served):
    served.engine.script(final("Bonjour."))
    first = client.responses.create(model=MODEL, input="Say hi.", instructions="Answer in French.")
    said = [{"role": "user", "content": "Say hi."}]
    assert first.usage.input_tokens == len(
        harmony.render_chat([{"role": "system", "content": "Answer in French."}, *said])
    )
    served.engine.script(final("Bye."))
    second = client.responses.create(model=MODEL, input="Say bye.", previous_response_id=first.id)
    assert second.instructions is None
    conversation = [
        *said,
        {"role": "assistant", "content": "Bonjour."},
        {"role": "user", "content": "Say bye."},
    ]
    assert second.usage.input_tokens == len(harmony.render_chat(conversation))


def test_store_survives_a_restart(tiny, tmp_path):
    first = start_server(tiny, tmp_path)
    engine = first.engine
    try:
        engine.script(final("Kept."))
        sdk = openai.OpenAI(base_url=first.v1, api_key="unused", max_retries=0)
        r = sdk.responses.create(model=MODEL, input="Remember this.")
        first.server.should_exit = True  # stop the server (its store with it), keep the engine
        first.thread.join(timeout=30)
        second = start_server(tiny, tmp_path, engine=engine)
    except BaseException:
        engine.close()
        raise
    try:
        sdk = openai.OpenAI(base_url=second.v1, api_key="unused", max_retries=0)
        assert sdk.responses.retrieve(r.id).output_text == "Kept."
        engine.script(final("Still here."))
        follow = sdk.responses.create(model=MODEL, input="And now?", previous_response_id=r.id)
        assert follow.output_text == "Still here."
        conversation = [
            {"role": "user", "content": "Remember this."},
            {"role": "assistant", "content": "Kept."},
            {"role": "user", "content": "And now?"},
        ]
        assert follow.usage.input_tokens == len(harmony.render_chat(conversation))
    finally:
        second.stop()


def test_client_disconnect_aborts_generation(served):
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 3000, "temperature": 1.0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(served.v1 + "/responses", json=body, timeout=1.0)
    served.wait_idle(timeout=5)  # far sooner than 3000 tokens would take
    with httpx.stream("POST", served.v1 + "/responses", json=body | {"stream": True}, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(12):
            next(lines)
        assert served.engine.stats().running == 1
    served.wait_idle(timeout=5)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "hi", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
        ({"input": "hi", "reasoning": {"effort": "max"}}, 400, "reasoning.effort"),
        ({"input": "hi", "tools": [{"type": "web_search_preview"}]}, 400, "tools"),  # not offered here
        ({"input": "hi", "tools": [{"type": "mcp", "server_url": "http://x"}]}, 400, "tools[0].server_url"),
        ({"input": "hi", "tools": [{"type": "file_search"}]}, 400, "tools[0].type"),
        ({"input": "hi", "tools": [{"type": ["x"]}]}, 400, "tools"),
        ({"input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0].name"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, 400, "input[0].call_id"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, 400, "input[0]"),
        ({"input": [{"role": "robot", "content": "hi"}]}, 400, "input[0].role"),
        ({"input": [42]}, 400, "input[0]"),
        ({"input": 42}, 400, "input"),
        ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": "hi", "tool_choice": {"type": "function", "name": "nope"}, "tools": TOOLS}, 400, None),
        ({"input": "hi", "tool_choice": "sometimes"}, 400, "tool_choice"),
        ({"input": "hi", "max_output_tokens": 10**9}, 400, None),
        ({"input": "hi", "model": "gpt-5"}, 404, "model"),
    ],
)
def test_bad_requests(served, body, status, param):
    r = httpx.post(served.v1 + "/responses", json={"model": MODEL} | body, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error


def test_text_format_holds_the_sampled_answer_to_the_schema(client, served):
    """The script reaches the answer; random weights at temperature 1 write it, held by the mask only."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    served.engine.script(
        "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>"
    )
    r = client.responses.create(
        model=MODEL,
        input="hi",
        text={"format": {"type": "json_schema", "name": "verdict", "schema": schema}},
        temperature=1.0,
    )
    assert r.status == "completed" and isinstance(json.loads(r.output_text)["ok"], bool)
    with pytest.raises(openai.BadRequestError, match=r"text\.format"):
        client.responses.create(model=MODEL, input="hi", text={"format": {"type": "yaml"}})
