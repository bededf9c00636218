"""The OpenAI API through the official `openai` SDK against the real server."""

from __future__ import annotations

import json

import openai
import pytest

from tests.server.conftest import CHAT_TOOLS, MODEL, REASONED, TOOL_CALL

TOOLS = CHAT_TOOLS


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0)


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_non_stream_with_reasoning(client, served):
    served.engine.script(REASONED)
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}], reasoning_effort="low"
    )
    message = r.choices[0].message
    assert message.content == "2 + 2 = **4**."
    extra = message.model_extra
    assert extra["reasoning_content"] == extra["reasoning"] == "The user asks 2+2. That is 4."
    assert r.choices[0].finish_reason == "stop"
    from ossai import harmony

    prompt = harmony.render_chat([{"role": "user", "content": "What is 2+2?"}], effort="low")
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.completion_tokens == len(harmony.load_encoding().encode(REASONED, allowed_special="all"))


def test_chat_stream_deltas_and_usage(client, served):
    served.engine.script(REASONED)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is 2+2?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == "The user asks 2+2. That is 4."
    assert content == "2 + 2 = **4**."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_tool_call_non_stream_and_stream(client, served):
    served.engine.script(TOOL_CALL)
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")

    served.engine.script(TOOL_CALL)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS, stream=True
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == call.id or deltas[0].id.startswith("call_")
    assert deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == '{"city":"Paris"}'
    assert all(d.index == 0 for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]


def test_tool_result_round_trip_keeps_reasoning(client, served):
    """The second turn sends back the tool call with its reasoning and the tool result; the prompt the
    server renders is the harmony rendering of that conversation."""
    from ossai import harmony

    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Need the weather; call the tool.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    served.engine.script("<|channel|>final<|message|>It is 21 °C in Paris.<|return|>")
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert r.choices[0].message.content == "It is 21 °C in Paris."
    assert r.usage.prompt_tokens == len(harmony.render_chat(messages, tools=TOOLS))


def test_named_tool_choice_forces_the_call(client, served):
    served.engine.script('{"city":"Oslo"}<|call|>')
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert r.choices[0].finish_reason == "tool_calls"


def test_length_finish_and_max_tokens(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_completions_raw(client):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0, logprobs=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert len(r.choices[0].logprobs.tokens) == 5
    again = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0)
    assert again.choices[0].text == r.choices[0].text
    streamed = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert content is not None and all(len(e.top_logprobs) == 3 for e in content)
    assert all(e.logprob <= 0 for e in content)


def test_stop_strings_apply_to_the_answer_only(client, served):
    served.engine.script(REASONED)  # the reasoning contains "4" too; the answer is "2 + 2 = **4**."
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "2+2?"}], stop=["**4"]
    )
    assert r.choices[0].message.content == "2 + 2 = "
    assert r.choices[0].message.model_extra["reasoning_content"] == "The user asks 2+2. That is 4."
    assert r.choices[0].finish_reason == "stop"


def test_huge_seed_is_a_400(client):
    with pytest.raises(openai.BadRequestError, match="seed"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], seed=2**70)


PICK = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green"]}, "on": {"type": "boolean"}},
    "required": ["color", "on"],
}
TO_THE_ANSWER = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>"


def _picked(text: str) -> bool:
    value = json.loads(text)
    return value["color"] in ("red", "green") and isinstance(value["on"], bool) and len(value) == 2


def test_response_format_holds_the_sampled_answer_to_the_schema(client, served):
    """The script reaches the answer; random weights at temperature 1 write it, held by the mask only."""
    for kind in ("json_schema", "json_object"):
        served.engine.script(TO_THE_ANSWER)
        fmt = {"type": "json_schema", "json_schema": {"name": "pick", "schema": PICK}}
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "pick"}],
            response_format=fmt if kind == "json_schema" else {"type": "json_object"},
            temperature=1.0,
            max_tokens=60 if kind == "json_schema" else 30,
            seed=3,
        )
        if kind == "json_schema":
            assert r.choices[0].finish_reason == "stop" and _picked(r.choices[0].message.content)
        else:  # any object (random keys may run on to the token limit, but it opens like one)
            content = r.choices[0].message.content
            assert content.startswith("{")
            assert r.choices[0].finish_reason == "length" or isinstance(json.loads(content), dict)


def test_function_arguments_are_sampled_under_the_schema(client, served):
    served.engine.script("<|channel|>commentary to=functions.paint <|constrain|>json<|message|>")
    tool = {"type": "function", "function": {"name": "paint", "parameters": PICK}}
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "paint"}], tools=[tool], temperature=1.0, seed=5
    )
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and _picked(call.function.arguments)


@pytest.mark.parametrize(
    ("response_format", "word"),
    [
        ({"type": "xml"}, "json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema"),
        ({"type": "json_schema", "json_schema": {"name": "two words", "schema": PICK}}, "name"),
        ({"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}}, "cannot be enforced"),
    ],
)
def test_bad_response_formats_are_a_400(client, response_format, word):
    with pytest.raises(openai.BadRequestError, match=word):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], response_format=response_format
        )


def test_logprobs_under_a_response_format_are_the_models_own(client, served):
    served.engine.script(TO_THE_ANSWER)
    fmt = {"type": "json_schema", "json_schema": {"name": "pick", "schema": PICK}}
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "pick"}],
        response_format=fmt,
        logprobs=True,
        top_logprobs=5,
        temperature=1.0,
        seed=3,
    )
    entries = r.choices[0].logprobs.content
    assert _picked(r.choices[0].message.content) and entries
    assert all(len(e.top_logprobs) == 5 and all(t.logprob > -1e30 for t in e.top_logprobs) for e in entries)
