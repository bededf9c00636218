"""Streaming parser for what gpt-oss generates after the prompt's `<|start|>assistant`.

It turns token ids into small events (reasoning, visible text, preamble, tool-call start/arguments/end)
as they arrive, and keeps the parsed harmony `Message`s so the agent loop can append them to the
conversation.

Why not `openai_harmony.StreamableParser`? It raises on many sequences a model can emit (text after
`<|end|>`, an unknown role, leftover header words, a header cut off by end of stream), after which its
state is unusable, and it buffers a header that never sees `<|message|>` until a stop token. Serving
random-weight or misbehaving models needs a parser that never raises, so this is a small state machine
over token ids that follows harmony's header rules (spec §3.7) for well-formed output and recovers from
everything else: unparseable text becomes final-channel text (`ContentDelta`), a warning is recorded,
and the parser waits for the next message.
"""

from __future__ import annotations

import codecs
import logging
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from openai_harmony import Message, Role

from ossai.harmony.tokenizer import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    FIRST_SPECIAL_ID,
    MESSAGE,
    RETURN,
    START,
    is_valid_id,
    token_bytes,
)

logger = logging.getLogger(__name__)

MAX_HEADER_TOKENS = 64  # real headers take < 30 tokens; past this the model forgot `<|message|>`
MAX_WARNINGS = 50  # garbage output would otherwise produce a warning per token
_CLOSERS = frozenset({END, RETURN, CALL})  # tokens that end a message (harmony `stop_tokens()`)
_CHANNEL_MARK = "<|channel|>"
_CONSTRAIN_MARK = "<|constrain|>"
_ROLE_WORDS = frozenset(role.value for role in Role)
# A recipient written without `to=` must look like a tool name, so stray header words are not calls.
_BARE_RECIPIENT = re.compile(r"python|[A-Za-z_][\w-]*(?:\.[\w-]+)+")
_LEADING_ROLE = re.compile(r"^\s*(?:" + "|".join(sorted(_ROLE_WORDS)) + r")(?=\s|$)")


# --- Events ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Chain-of-thought text (analysis channel, no recipient)."""

    text: str


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """User-visible answer text (final channel, and any text that could not be parsed)."""

    text: str


@dataclass(frozen=True, slots=True)
class PreambleDelta:
    """User-visible text on commentary with no recipient: the model's plan before it calls tools."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    recipient: str
    channel: str | None
    content_type: str | None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """More of the arguments of the open tool call."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """The model closed the call with a stop token; `arguments` is the whole argument text."""

    recipient: str
    channel: str | None
    content_type: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class MessageEnd:
    channel: str | None
    recipient: str | None


Event = (
    ReasoningDelta | ContentDelta | PreambleDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | MessageEnd
)


# --- Header parsing -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Header:
    """A parsed message header. `text` is header text that belongs to the content (recovered garbage)."""

    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    text: str = ""
    problem: str | None = None


def parse_header(raw: str, *, complete: bool = True) -> Header:
    """Parse header text (special tokens as their `<|…|>` strings) the way harmony does.

    `complete=False` is for a header that never reached `<|message|>`: only the channel is taken and the
    rest is content (harmony's non-strict rule). Never raises; `problem` says what was wrong.
    """
    header = Header()
    idx = raw.find(_CHANNEL_MARK)
    if idx >= 0:
        after = raw[idx + len(_CHANNEL_MARK) :]
        end = next((i for i, c in enumerate(after) if c.isspace() or c == "<"), len(after))
        name = after[:end]  # harmony: the channel name ends at whitespace or `<`
        if name:
            header.channel = name
        else:
            header.problem = "empty channel name"
        raw = raw[:idx] + " " + after[len(name) :]
    if not complete:
        text = _LEADING_ROLE.sub("", raw, count=1)
        header.text = text.replace(_CHANNEL_MARK, "").replace(_CONSTRAIN_MARK, "").strip()
        return header

    parts = raw.replace(_CONSTRAIN_MARK, " " + _CONSTRAIN_MARK).split()
    if parts and parts[0] in _ROLE_WORDS:
        role = parts.pop(0)
        if role != Role.ASSISTANT.value:
            header.problem = f"unexpected role {role!r} in the assistant's output"
    words = list(parts)
    if parts:
        last = parts.pop()
        recipient_word: str | None = None
        if last.startswith("to=") or (not parts and not last.startswith(_CONSTRAIN_MARK)):
            recipient_word = last
        else:
            header.content_type = last
            recipient_word = parts.pop() if parts else None
        if recipient_word is not None:
            explicit = recipient_word.startswith("to=")
            recipient = recipient_word[3:] if explicit else recipient_word
            if recipient and (explicit or _BARE_RECIPIENT.fullmatch(recipient)):
                header.recipient = recipient
            else:
                parts.append(recipient_word)  # a stray word, not a recipient
        if parts:
            header.problem = f"unparseable header words {' '.join(words)!r}"
            header.recipient = header.content_type = None
            header.text = " ".join(words).replace(_CHANNEL_MARK, "").replace(_CONSTRAIN_MARK, "")
    if header.recipient == "all":  # harmony's spelling of "no recipient"
        header.recipient = None
    return header


# --- The parser ---------------------------------------------------------------------------------------------


class _State(Enum):
    HEADER = "header"
    CONTENT = "content"
    EXPECT_START = "expect_start"


@dataclass(slots=True)
class _OpenMessage:
    channel: str | None
    recipient: str | None
    content_type: str | None
    parts: list[str]
    decoder: codecs.IncrementalDecoder

    def delta(self, text: str) -> Event:
        if self.recipient is not None:
            return ToolCallDelta(text)
        if self.channel == "analysis":
            return ReasoningDelta(text)
        if self.channel == "commentary":
            return PreambleDelta(text)
        return ContentDelta(text)


class StreamParser:
    """Incremental parser over completion tokens; `feed` and `finish` never raise.

    The stream starts inside an assistant header (the prompt ends with `<|start|>assistant`). `done`
    turns true at `<|return|>` or `<|call|>` (`stop_reason` says which); later tokens are ignored.
    """

    def __init__(self) -> None:
        self._state = _State.HEADER
        self._header: list[int] = []
        self._open: _OpenMessage | None = None
        self._messages: list[Message] = []
        self._finished = False
        self._ignored_after_stop = False
        self.warnings: list[str] = []
        self.done = False
        self.stop_reason: Literal["return", "call"] | None = None

    @property
    def messages(self) -> list[Message]:
        """The messages completed so far (an open message is added by `finish()`)."""
        return list(self._messages)

    def feed_all(self, tokens: Iterable[int]) -> list[Event]:
        """Feed every token, then `finish()`; returns all events."""
        events: list[Event] = []
        for token in tokens:
            events.extend(self.feed(token))
        events.extend(self.finish())
        return events

    def feed(self, token: int) -> list[Event]:
        """Consume one generated token and return the events it completes."""
        if self.done or self._finished:
            if not self._ignored_after_stop:
                self._ignored_after_stop = True
                where = f"<|{self.stop_reason}|>" if self.done else "finish()"
                self._warn(f"ignoring tokens after {where}")
            return []
        try:
            token = operator.index(token)
        except TypeError:
            self._warn(f"ignoring non-integer token {token!r}")
            return []
        if not is_valid_id(token):
            self._warn(f"ignoring unknown token id {token}")
            return []
        if self._state is _State.HEADER:
            return self._feed_header(token)
        if self._state is _State.CONTENT:
            return self._feed_content(token)
        return self._feed_between_messages(token)

    def finish(self) -> list[Event]:
        """End of stream: commit any open message (a cut-off tool call gets no ToolCallEnd)."""
        if self._finished or self.done:
            self._finished = True
            return []
        self._finished = True
        if self._state is _State.HEADER and self._header:
            self._warn("output ended inside a message header")
            return self._open_without_message(closed_by_stop=False)
        if self._state is _State.CONTENT:
            return self._close(closed_by_stop=False)
        return []

    # --- states -------------------------------------------------------------------------------------------

    def _feed_between_messages(self, token: int) -> list[Event]:
        if token == START:
            self._state = _State.HEADER
            return []
        if token == CHANNEL:
            self._warn("missing <|start|> before <|channel|>")
            self._state = _State.HEADER
            self._header.append(token)
            return []
        if token in (RETURN, CALL):
            self._stop(token)
            return []
        if token >= FIRST_SPECIAL_ID:
            self._warn(f"ignoring {_name(token)} between messages")
            return []
        self._warn("text outside a message; treating it as final text")
        self._begin(Header(channel="final"))
        return self._feed_content(token)

    def _feed_header(self, token: int) -> list[Event]:
        if token == MESSAGE:
            return self._open_from_header()
        if token in _CLOSERS:
            self._warn(f"message header ended by {_name(token)} without <|message|>")
            events = self._open_without_message(closed_by_stop=True)
            self._stop(token)
            return events
        if token == START:
            if self._header:
                self._warn("discarding an unfinished message header at <|start|>")
            self._header.clear()
            return []
        if token >= FIRST_SPECIAL_ID and token not in (CHANNEL, CONSTRAIN):
            self._warn(f"ignoring {_name(token)} in a message header")
            return []
        self._header.append(token)
        if len(self._header) > MAX_HEADER_TOKENS:
            self._warn(f"no <|message|> after {MAX_HEADER_TOKENS} header tokens; treating them as content")
            return self._open_without_message(closed_by_stop=False, keep_open=True)
        return []

    def _feed_content(self, token: int) -> list[Event]:
        if token in _CLOSERS:
            events = self._close(closed_by_stop=True)
            self._stop(token)
            return events
        if token in (START, CHANNEL):
            self._warn(f"{_name(token)} inside a message; closing it")
            events = self._close(closed_by_stop=False)
            self._state = _State.HEADER
            if token == CHANNEL:
                self._header.append(token)
            return events
        if token >= FIRST_SPECIAL_ID:
            self._warn(f"ignoring {_name(token)} inside a message")
            return []
        if self._open is None:  # cannot happen: CONTENT always has an open message
            return []
        return self._text(self._open.decoder.decode(token_bytes(token)))

    # --- helpers -----------------------------------------------------------------------------------------

    def _header_text(self) -> str:
        text = b"".join(token_bytes(t) for t in self._header).decode("utf-8", "replace")
        self._header.clear()
        return text

    def _open_from_header(self) -> list[Event]:
        header = parse_header(self._header_text())
        return self._begin(header)

    def _open_without_message(self, *, closed_by_stop: bool, keep_open: bool = False) -> list[Event]:
        header = parse_header(self._header_text(), complete=False)
        if not header.text and (header.channel is None or not closed_by_stop):
            self._state = _State.EXPECT_START
            return []
        events = self._begin(header)
        if not keep_open:
            events.extend(self._close(closed_by_stop=closed_by_stop))
        return events

    def _begin(self, header: Header) -> list[Event]:
        if header.problem:
            self._warn(header.problem)
        channel = header.channel
        if channel is None and header.recipient is None:
            self._warn("message without a channel; treating it as final")
            channel = "final"
        self._open = _OpenMessage(
            channel=channel,
            recipient=header.recipient,
            content_type=header.content_type,
            parts=[],
            decoder=codecs.getincrementaldecoder("utf-8")("replace"),
        )
        self._state = _State.CONTENT
        events: list[Event] = []
        if header.recipient is not None:
            events.append(ToolCallStart(header.recipient, channel, header.content_type))
        return events + self._text(header.text)

    def _text(self, text: str) -> list[Event]:
        if not text or self._open is None:
            return []
        self._open.parts.append(text)
        return [self._open.delta(text)]

    def _close(self, *, closed_by_stop: bool) -> list[Event]:
        message, self._open = self._open, None
        self._state = _State.EXPECT_START
        if message is None:
            return []
        events: list[Event] = []
        tail = message.decoder.decode(b"", final=True)  # an incomplete UTF-8 sequence becomes U+FFFD
        if tail:
            message.parts.append(tail)
            events.append(message.delta(tail))
        text = "".join(message.parts)
        parsed = Message.from_role_and_content(Role.ASSISTANT, text)
        if message.channel is not None:
            parsed = parsed.with_channel(message.channel)
        if message.recipient is not None:
            parsed = parsed.with_recipient(message.recipient)
        if message.content_type is not None:
            parsed = parsed.with_content_type(message.content_type)
        self._messages.append(parsed)
        if message.recipient is not None:
            if closed_by_stop:
                events.append(ToolCallEnd(message.recipient, message.channel, message.content_type, text))
            else:
                self._warn(f"tool call to {message.recipient} was cut off before <|call|>")
        events.append(MessageEnd(message.channel, message.recipient))
        return events

    def _stop(self, token: int) -> None:
        if token == RETURN:
            self.done, self.stop_reason = True, "return"
        elif token == CALL:
            self.done, self.stop_reason = True, "call"

    def _warn(self, message: str) -> None:
        logger.debug("harmony parser: %s", message)
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        elif len(self.warnings) == MAX_WARNINGS:
            self.warnings.append("too many warnings; dropping the rest")


def _name(token: int) -> str:
    return token_bytes(token).decode("utf-8", "replace") if token >= FIRST_SPECIAL_ID else f"token {token}"
