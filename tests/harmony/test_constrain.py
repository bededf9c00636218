"""JsonConstraint: which tokens a function call's arguments may take, fed a reply token by token."""

from __future__ import annotations

import json

import pytest

from ossai import harmony
from ossai.harmony import CALL, JsonConstraint, function_schemas

TIMER = {
    "type": "object",
    "properties": {"minutes": {"type": "integer"}, "label": {"type": "string"}},
    "required": ["minutes"],
}


def ids(text: str) -> list[int]:
    return harmony.load_encoding().encode(text, allowed_special="all")


def allows(mask: bytes | None, token: int) -> bool:
    assert mask is not None
    return bool(mask[token // 8] >> (token % 8) & 1)


def feed(constraint: JsonConstraint, text: str) -> None:
    for token in ids(text):
        constraint.accept(token)


CALL_HEADER = "<|channel|>commentary to=functions.set_timer <|constrain|>json<|message|>"


def test_only_the_arguments_of_a_known_function_are_constrained():
    c = JsonConstraint({"set_timer": TIMER})
    assert c.allowed() is None  # the reply's first header
    feed(c, "<|channel|>analysis<|message|>Set a timer for 5 minutes.")
    assert c.allowed() is None  # reasoning is free
    feed(c, "<|end|><|start|>assistant" + CALL_HEADER)
    mask = c.allowed()  # the value must open an object with a key: the one token for `{"`
    assert allows(mask, ids('{"')[0]) and not allows(mask, ids("Sure")[0]) and not allows(mask, CALL)


def test_a_key_is_written_once_and_only_call_follows_a_complete_value():
    c = JsonConstraint({"set_timer": TIMER})
    feed(c, CALL_HEADER + '{"minutes":5')
    assert allows(c.allowed(), ids(",")[0]) and allows(c.allowed(), ids("}")[0])
    feed(c, ',"')
    mask = c.allowed()
    assert allows(mask, ids("label")[0]) and not allows(mask, ids("minutes")[0])
    feed(c, 'label":"tea"}')
    mask = c.allowed()
    assert allows(mask, CALL) and sum(bin(b).count("1") for b in mask) == 1
    c.accept(CALL)
    assert c.allowed() is None


def test_properties_in_the_schemas_order_and_undeclared_ones_only_where_allowed():
    c = JsonConstraint({"set_timer": TIMER})
    feed(c, CALL_HEADER + '{"')
    assert allows(c.allowed(), ids("label")[0]) is False  # minutes is declared first and required
    strict = JsonConstraint({"set_timer": TIMER})
    feed(strict, CALL_HEADER + '{"minutes":5,"label":"x"')
    assert not allows(strict.allowed(), ids(",")[0]) and allows(strict.allowed(), ids("}")[0])
    open_schema = JsonConstraint({"set_timer": {**TIMER, "additionalProperties": True}})
    feed(open_schema, CALL_HEADER + '{"minutes":5,"')
    assert allows(open_schema.allowed(), ids("colour")[0])


def test_unknown_functions_builtins_and_opted_out_functions_are_left_alone():
    c = JsonConstraint({"set_timer": TIMER})
    feed(c, "<|channel|>commentary to=functions.other <|constrain|>json<|message|>")
    assert c.allowed() is None
    c = JsonConstraint({"set_timer": TIMER})
    feed(c, "<|channel|>analysis to=python<|message|>")
    assert c.allowed() is None
    tools = [
        {"type": "function", "function": {"name": "a", "parameters": TIMER, "strict": False}},
        {"type": "function", "name": "b", "parameters": TIMER},  # the Responses API's flat shape
        {"type": "function", "function": {"name": "c"}},  # no parameters: any object
    ]
    assert function_schemas(tools) == {"a": None, "b": TIMER, "c": {"type": "object"}}
    opted_out = JsonConstraint.for_request([tools[0]])
    feed(opted_out, "<|channel|>commentary to=functions.a <|constrain|>json<|message|>")
    assert opted_out.allowed() is None  # its arguments are free (its name is still held)


def test_a_recipient_in_the_role_part_of_the_header_counts():
    c = JsonConstraint({"set_timer": TIMER})
    feed(c, "<|channel|>analysis<|message|>x<|end|><|start|>assistant to=functions.set_timer")
    feed(c, "<|channel|>commentary <|constrain|>json<|message|>")
    assert not allows(c.allowed(), ids("hello")[0])


def test_a_schema_that_cannot_be_compiled_leaves_the_arguments_free():
    c = JsonConstraint({"bad": {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}})
    assert c  # its name is still one a call may take
    feed(c, "<|channel|>commentary to=functions.bad <|constrain|>json<|message|>")
    assert c.allowed() is None


@pytest.mark.parametrize("value", ['{"minutes":12}', '{"minutes":3,"label":"a b"}'])
def test_every_token_of_a_valid_call_is_allowed(value):
    c = JsonConstraint({"set_timer": TIMER})
    feed(c, CALL_HEADER)
    for token in ids(value):
        assert allows(c.allowed(), token), harmony.decode([token])
        c.accept(token)
    assert allows(c.allowed(), CALL)
    assert json.loads(value)["minutes"]


ANSWER = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def test_a_structured_answer_is_held_to_its_schema_and_ends_with_return():
    c = harmony.JsonConstraint({}, answer=ANSWER)
    feed(c, "<|channel|>analysis<|message|>12 + 5 = 17.<|end|><|start|>assistant")
    assert c.allowed() is None
    feed(c, "<|channel|>final<|message|>")
    assert allows(c.allowed(), ids('{"')[0]) and not allows(c.allowed(), ids("It")[0])
    feed(c, '{"answer":17}')
    mask = c.allowed()
    assert allows(mask, harmony.RETURN) and not allows(mask, CALL)
    c.accept(harmony.RETURN)
    assert c.allowed() is None


def test_answers_are_free_without_a_format_and_calls_without_functions():
    c = harmony.JsonConstraint({"set_timer": TIMER})
    feed(c, "<|channel|>final<|message|>")
    assert c.allowed() is None
    c = harmony.JsonConstraint({}, answer=ANSWER)
    feed(c, CALL_HEADER)
    assert c.allowed() is None
    assert harmony.JsonConstraint.for_request(None) is None


def test_schema_errors_are_reported():
    assert harmony.schema_error(ANSWER) is None
    assert "nowhere" in harmony.schema_error({"properties": {"x": {"$ref": "#/nowhere"}}})


def test_the_response_format_reaches_the_developer_message():
    section = harmony.response_format_section("sum", ANSWER, "The result.")
    prompt = harmony.decode(harmony.render_chat([{"role": "user", "content": "hi"}], response_format=section))
    developer = prompt.split("<|start|>developer<|message|>")[1].split("<|end|>")[0]
    assert developer.endswith(
        "# Response Formats\n\n## sum\n\n// The result.\n" + json.dumps(ANSWER, separators=(",", ":"))
    )


def test_nested_objects_are_closed_but_composed_ones_are_left_open():
    nested = {
        "type": "object",
        "properties": {"o": {"type": "object", "properties": {"a": {"type": "integer"}}}},
    }
    closed = harmony.closed_objects(nested)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["o"]["additionalProperties"] is False
    composed = {"type": "object", "allOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]}]}
    assert harmony.closed_objects(composed) == composed and harmony.schema_error(composed) is None
    c = harmony.JsonConstraint({}, answer=nested)
    feed(c, '<|channel|>final<|message|>{"o":{"a":1')
    assert not allows(c.allowed(), ids(",")[0])  # no undeclared key after "a"


def test_names_match_exactly_and_a_new_header_is_read_after_an_interrupted_message():
    c = harmony.JsonConstraint({"a": TIMER, "a:b": ANSWER})
    feed(c, "<|channel|>commentary to=functions.a:b <|constrain|>json<|message|>")
    assert allows(c.allowed(), ids('{"answer')[0]) or allows(c.allowed(), ids('{"')[0])
    feed(c, '{"answer":1')
    assert not allows(c.allowed(), ids(',"')[0])
    c.accept(harmony.START)  # only a bypassed mask lets this through; the next header still counts
    feed(c, "assistant" + CALL_HEADER.replace("set_timer", "a"))
    feed(c, '{"minutes":1')
    assert allows(c.allowed(), ids(",")[0])


def test_a_call_names_one_of_the_functions():
    c = harmony.JsonConstraint({"set_timer": TIMER, "set": {"type": "object"}})
    feed(c, "<|channel|>commentary to=functions")
    mask = c.allowed()
    assert allows(mask, ids(".set")[0]) and not allows(mask, ids(".get")[0])
    feed(c, ".set")  # whole ("set") or the start of set_timer
    mask = c.allowed()
    assert allows(mask, ids("_timer")[0]) and allows(mask, ids(" ")[0]) and allows(mask, harmony.CONSTRAIN)
    assert not allows(mask, ids("_alarm")[0]) and not allows(mask, ids("ting")[0])
    feed(c, "_timer ")
    assert c.allowed() is None  # the name is written: the rest of the header is free
    required = harmony.JsonConstraint({"set_timer": TIMER})  # tool_choice "required" prefills the dot
    feed(required, "<|channel|>commentary to=functions.")
    assert allows(required.allowed(), ids("set")[0]) and not allows(required.allowed(), ids("get")[0])
    free = harmony.JsonConstraint({"set_timer": TIMER})
    feed(free, "<|channel|>commentary to=python")
    assert free.allowed() is None  # built-in tools are not ours to name
