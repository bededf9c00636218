"""StreamParser on hand-written harmony streams, cross-checked against openai-harmony's own parser, plus
property tests that it never raises on arbitrary token ids (random-weight models emit anything)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_harmony import Role

from ossai.harmony import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    MESSAGE,
    RETURN,
    START,
    ContentDelta,
    Event,
    MessageEnd,
    PreambleDelta,
    ReasoningDelta,
    StreamParser,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    encode,
    load_encoding,
)
from ossai.harmony.parser import MAX_HEADER_TOKENS, parse_header

TEXT_EVENTS = (ReasoningDelta, ContentDelta, PreambleDelta, ToolCallDelta)


def toks(text: str) -> list[int]:
    """Harmony text (special tokens spelled out) as token ids."""
    return load_encoding().encode(text, allowed_special="all")


def parse(tokens: Sequence[int]) -> tuple[StreamParser, list[Event]]:
    parser = StreamParser()
    events = parser.feed_all(tokens)
    return parser, events


def harmony_messages(tokens: Sequence[int], strict: bool = True) -> list[dict]:
    messages = load_encoding().parse_messages_from_completion_tokens(tokens, Role.ASSISTANT, strict=strict)
    return [m.to_dict() for m in messages]


def texts(events: Sequence[Event], kind: type) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))  # type: ignore[attr-defined]


def test_reasoning_then_final() -> None:
    tokens = toks(
        "<|channel|>analysis<|message|>User says hi.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello!<|return|>"
    )
    parser, events = parse(tokens)
    assert texts(events, ReasoningDelta) == "User says hi."
    assert texts(events, ContentDelta) == "Hello!"
    ends = [e for e in events if isinstance(e, MessageEnd)]
    assert ends == [MessageEnd("analysis", None), MessageEnd("final", None)]
    assert events.index(ends[0]) < next(i for i, e in enumerate(events) if isinstance(e, ContentDelta))
    assert parser.done and parser.stop_reason == "return" and not parser.warnings
    assert [m.to_dict() for m in parser.messages] == harmony_messages(tokens)


ARGS = '{"location":"San Francisco","unit":"c"}'


@pytest.mark.parametrize(
    "header",
    [
        "<|channel|>commentary to=functions.get_weather <|constrain|>json",  # model's usual order
        " to=functions.get_weather<|channel|>commentary <|constrain|>json",  # the renderer's order
        "<|channel|>commentary to=functions.get_weather<|constrain|>json",  # constrain adjacent
        " to=functions.get_weather<|channel|>commentary<|constrain|>json",
    ],
)
def test_tool_call_header_orders(header: str) -> None:
    tokens = toks(
        "<|channel|>analysis<|message|>Need weather.<|end|>"
        f"<|start|>assistant{header}<|message|>{ARGS}<|call|>"
    )
    parser, events = parse(tokens)
    start = ToolCallStart("functions.get_weather", "commentary", "<|constrain|>json")
    end = ToolCallEnd("functions.get_weather", "commentary", "<|constrain|>json", ARGS)
    assert events[events.index(start) :] == [
        start,
        *[e for e in events if isinstance(e, ToolCallDelta)],
        end,
        MessageEnd("commentary", "functions.get_weather"),
    ]
    assert texts(events, ToolCallDelta) == ARGS
    assert texts(events, ReasoningDelta) == "Need weather."
    assert parser.done and parser.stop_reason == "call" and not parser.warnings
    assert [m.to_dict() for m in parser.messages] == harmony_messages(tokens)


def test_tool_call_without_constrain_and_builtin_call() -> None:
    tokens = toks("<|channel|>commentary to=functions.f json<|message|>{}<|call|>")
    _, events = parse(tokens)
    assert ToolCallStart("functions.f", "commentary", "json") in events
    tokens = toks('<|channel|>analysis to=browser.search code<|message|>{"query":"x"}<|call|>')
    parser, events = parse(tokens)
    assert events[0] == ToolCallStart("browser.search", "analysis", "code")
    assert not [e for e in events if isinstance(e, ReasoningDelta)]
    assert [m.to_dict() for m in parser.messages] == harmony_messages(tokens)


def test_preamble_is_not_a_tool_call() -> None:
    tokens = toks(
        "<|channel|>commentary<|message|>Let me check the weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
        "<|message|>{}<|call|>"
    )
    parser, events = parse(tokens)
    first_end = events.index(MessageEnd("commentary", None))
    assert all(not isinstance(e, ToolCallStart | ToolCallDelta) for e in events[:first_end])
    assert texts(events, PreambleDelta) == "Let me check the weather."
    assert not texts(events, ContentDelta)
    assert isinstance(events[first_end + 1], ToolCallStart)
    assert [m.to_dict() for m in parser.messages] == harmony_messages(tokens)


def test_end_then_more_messages_and_text_after_stop() -> None:
    tokens = toks(
        "<|channel|>final<|message|>One.<|end|><|start|>assistant<|channel|>final<|message|>Two.<|return|>"
        "<|start|>assistant<|channel|>final<|message|>ignored"
    )
    parser, events = parse(tokens)
    assert texts(events, ContentDelta) == "One.Two."
    assert [m.content[0].text for m in parser.messages] == ["One.", "Two."]  # type: ignore[attr-defined]
    assert parser.done and parser.stop_reason == "return"
    assert parser.warnings == ["ignoring tokens after <|return|>"]


def test_truncated_final_and_finish_is_idempotent() -> None:
    parser = StreamParser()
    events = [e for t in toks("<|channel|>final<|message|>Once upon a") for e in parser.feed(t)]
    assert texts(events, ContentDelta) == "Once upon a"
    assert not parser.messages and not parser.done
    assert parser.finish() == [MessageEnd("final", None)]
    assert parser.finish() == []
    assert parser.stop_reason is None
    assert parser.messages[0].content[0].text == "Once upon a"  # type: ignore[attr-defined]
    assert parser.feed(encode("more")[0]) == []


def test_truncated_tool_call_has_no_end() -> None:
    parser, events = parse(toks('<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a": '))
    assert events[0] == ToolCallStart("functions.f", "commentary", "<|constrain|>json")
    assert not [e for e in events if isinstance(e, ToolCallEnd)]
    assert events[-1] == MessageEnd("commentary", "functions.f")
    assert any("cut off" in w for w in parser.warnings)


def test_truncated_inside_header() -> None:
    parser, events = parse(toks("<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>fin"))
    assert events == [ReasoningDelta("x"), MessageEnd("analysis", None)]
    assert any("header" in w for w in parser.warnings)
    parser, events = parse([])
    assert events == [] and parser.messages == [] and parser.warnings == []


def test_utf8_split_across_tokens() -> None:
    unicorn = encode("🦄")
    assert len(unicorn) == 3  # the emoji's 4 bytes are spread over 3 byte-level tokens
    parser = StreamParser()
    for t in toks("<|channel|>final<|message|>Hi "):
        parser.feed(t)
    assert parser.feed(unicorn[0]) == []
    assert parser.feed(unicorn[1]) == []
    assert parser.feed(unicorn[2]) == [ContentDelta("🦄")]
    events = parser.feed(RETURN)
    assert events == [MessageEnd("final", None)]
    assert parser.messages[0].content[0].text == "Hi 🦄"  # type: ignore[attr-defined]

    parser, events = parse(toks("<|channel|>final<|message|>Hi ") + unicorn[:2])  # cut mid-character
    assert texts(events, ContentDelta) == "Hi \ufffd"


def test_missing_message_token() -> None:
    tokens = toks("<|channel|>final Hello there<|return|>")
    parser, events = parse(tokens)
    assert events == [ContentDelta("Hello there"), MessageEnd("final", None)]
    assert parser.done and parser.warnings
    assert [m.to_dict() for m in parser.messages] == harmony_messages(tokens, strict=False)


def test_header_that_never_ends_becomes_streaming_content() -> None:
    words = encode(" word" * (MAX_HEADER_TOKENS + 10))
    parser = StreamParser()
    events = [e for t in [*toks("<|channel|>final"), *words] for e in parser.feed(t)]
    assert events and all(isinstance(e, ContentDelta) for e in events)
    assert not parser.done
    events += parser.finish()
    assert texts(events, ContentDelta) == ("word" + " word" * (MAX_HEADER_TOKENS + 9))


def test_garbage_header_words_become_final_text() -> None:
    parser, events = parse(toks("<|channel|>final I think so<|message|>, yes.<|return|>"))
    assert texts(events, ContentDelta) == "I think so, yes."
    assert not [e for e in events if isinstance(e, ToolCallStart)]
    assert parser.warnings


def test_recovers_from_missing_start_and_stray_text() -> None:
    tokens = toks(
        "<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>b<|end|>stray<|end|>"
        "<|start|>assistant<|channel|>final<|message|>c<|start|>assistant<|channel|>final<|message|>d<|return|>"
    )
    parser, events = parse(tokens)
    assert texts(events, ReasoningDelta) == "a"
    assert texts(events, ContentDelta) == "bstraycd"
    assert [m.channel for m in parser.messages] == ["analysis", "final", "final", "final", "final"]
    assert len(parser.warnings) == 3 and parser.done


def test_unknown_and_reserved_tokens_are_ignored() -> None:
    parser = StreamParser()
    for t in [-1, 201089, 10**12, 200013, 199999]:
        assert parser.feed(t) == []
    parser.feed("x")  # type: ignore[arg-type]
    for t in toks("<|channel|>final<|message|>ok"):
        parser.feed(t)
    assert parser.feed(200000) == []
    assert parser.feed(CONSTRAIN) == []
    assert parser.feed(MESSAGE) == []
    events = parser.feed(CALL)
    assert events == [MessageEnd("final", None)]
    assert parser.stop_reason == "call"
    assert len(parser.warnings) == 9


def test_other_roles_and_channel_less_messages() -> None:
    parser, events = parse(toks("<|channel|>final<|message|>a<|end|><|start|>user<|message|>hi<|end|>"))
    assert texts(events, ContentDelta) == "ahi"
    assert all(m.author.role == Role.ASSISTANT for m in parser.messages)
    assert any("unexpected role 'user'" in w for w in parser.warnings)
    parser, events = parse([RETURN])
    assert events == [] and parser.done and parser.messages == []


@pytest.mark.parametrize(
    ("raw", "channel", "recipient", "content_type", "text"),
    [
        ("<|channel|>final", "final", None, None, ""),
        ("assistant<|channel|>analysis", "analysis", None, None, ""),
        (
            "<|channel|>commentary to=functions.x <|constrain|>json",
            "commentary",
            "functions.x",
            "<|constrain|>json",
            "",
        ),
        (
            " to=functions.x<|channel|>commentary<|constrain|>json",
            "commentary",
            "functions.x",
            "<|constrain|>json",
            "",
        ),
        ("<|channel|>analysis to=python code", "analysis", "python", "code", ""),
        ("<|channel|>commentary functions.x", "commentary", "functions.x", None, ""),
        ("<|channel|>commentary to=all", "commentary", None, None, ""),
        ("<|channel|>final <|constrain|>json", "final", None, "<|constrain|>json", ""),
        ("<|channel|>final Hello", "final", None, None, "Hello"),
        ("<|channel|>final a b c", "final", None, None, "a b c"),
        ("hello there", None, None, None, "hello there"),
    ],
)
def test_parse_header(
    raw: str, channel: str | None, recipient: str | None, content_type: str | None, text: str
) -> None:
    header = parse_header(raw)
    assert (header.channel, header.recipient, header.content_type, header.text) == (
        channel,
        recipient,
        content_type,
        text,
    )


# --- Properties ---------------------------------------------------------------------------------------------

COMMON = [
    START,
    END,
    MESSAGE,
    CHANNEL,
    CONSTRAIN,
    RETURN,
    CALL,
    *toks("assistant analysis final commentary to=functions.f json"),
]
SNIPPETS = ["Hello", " world", "🦄", "é", "<|end|>", "functions.get_weather", ' {"a": 1}', "\n", "犇"]

token_ids = st.one_of(
    st.integers(min_value=200000, max_value=200013),  # special tokens, including reserved ones
    st.sampled_from(COMMON),
    st.integers(min_value=0, max_value=201087),
    st.sampled_from([t for s in SNIPPETS for t in encode(s)]),  # byte-level pieces of multi-byte text
)


def check_consistent(parser: StreamParser, events: list[Event]) -> None:
    """Deltas between MessageEnds spell exactly each committed message; tool events pair up."""
    messages = parser.messages
    assert len([e for e in events if isinstance(e, MessageEnd)]) == len(messages)
    k, buffer, open_call = 0, [], None
    for event in events:
        if isinstance(event, TEXT_EVENTS):
            assert isinstance(event.text, str) and event.text
            event.text.encode("utf-8")  # no lone surrogates
            assert isinstance(event, ToolCallDelta) == (open_call is not None)
            buffer.append(event.text)
        elif isinstance(event, ToolCallStart):
            assert open_call is None and not buffer
            open_call = event
        elif isinstance(event, ToolCallEnd):
            assert open_call is not None and event.recipient == open_call.recipient
            assert event.arguments == "".join(buffer)
        elif isinstance(event, MessageEnd):
            message = messages[k]
            assert message.content[0].text == "".join(buffer)  # type: ignore[attr-defined]
            assert (event.channel, event.recipient) == (message.channel, message.recipient)
            assert (open_call is not None) == (message.recipient is not None)
            k, buffer, open_call = k + 1, [], None
    assert not buffer and open_call is None
    assert parser.done == (parser.stop_reason is not None)
    assert len(parser.warnings) <= 51


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(token_ids, max_size=80))
def test_random_tokens_never_raise(tokens: list[int]) -> None:
    parser = StreamParser()
    events: list[Event] = []
    for token in tokens:
        events.extend(parser.feed(token))
    events.extend(parser.finish())
    check_consistent(parser, events)


WORDS = st.text(alphabet=st.sampled_from("abcxyz .,:!?\n{}\"'é🦄"), min_size=1, max_size=30)
RECIPIENTS = st.sampled_from(["functions.get_weather", "functions.f", "browser.search", "python"])


@st.composite
def harmony_messages_text(draw: st.DrawFn) -> str:
    """Well-formed completions: messages on every channel, tool calls in both header orders."""
    parts = []
    for i in range(draw(st.integers(1, 4))):
        channel = draw(st.sampled_from(["analysis", "commentary", "final"]))
        recipient = draw(st.one_of(st.none(), RECIPIENTS))
        role = "" if i == 0 else "<|start|>assistant"
        if recipient is None:
            header = f"{role}<|channel|>{channel}"
        else:
            ctype = draw(st.sampled_from([" <|constrain|>json", "<|constrain|>json", " json", " code"]))
            if draw(st.booleans()):
                header = f"{role}<|channel|>{channel} to={recipient}{ctype}"
            else:
                header = f"{role} to={recipient}<|channel|>{channel}{ctype}"
        stop = "<|call|>" if recipient else "<|end|>"
        parts.append(f"{header}<|message|>{draw(WORDS)}{stop}")
        if recipient:
            break
    text = "".join(parts)
    return text[: -len("<|end|>")] + "<|return|>" if text.endswith("<|end|>") else text


@settings(max_examples=150, deadline=None)
@given(harmony_messages_text())
def test_well_formed_streams_match_harmony(text: str) -> None:
    tokens = toks(text)
    parser, events = parse(tokens)
    assert [m.to_dict() for m in parser.messages] == harmony_messages(tokens)
    assert not parser.warnings and parser.done
    check_consistent(parser, events)
