"""A request as the scheduler sees it (tokens, progress, blocks) and the output it streams back.

Legend: a sequence's `tokens` are its prompt followed by what it generated; `num_computed` of them have
their keys and values in the cache. A step computes the next chunk; when it reaches the end of `tokens`
the step's logits give the next token.
"""

from __future__ import annotations

import codecs
import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ossai import harmony
from ossai.config import SamplingParams
from ossai.engine.block_manager import BlockTables


class TokenConstraint(Protocol):
    """Limits what a request may sample next (`ossai.harmony.JsonConstraint` is the one we have)."""

    def allowed(self) -> bytes | None:
        """None: any token; else a bitmask over token ids, bit t of little-endian 32-bit words."""
        ...

    def accept(self, token: int) -> None:
        """Every token of the reply, in order (a forced prefill's first)."""
        ...


@dataclass(slots=True)
class Request:
    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex}")
    parse_harmony: bool = False  # run the harmony parser over the output: `Output.events`
    # trailing prompt tokens that already belong to the assistant's reply (a forced tool-call header):
    # the parser reads them first, and their events come with the first output
    harmony_prefill: int = 0
    constraint: TokenConstraint | None = None  # consulted before each token is sampled


@dataclass(slots=True)
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # (token, logprob) of the most likely tokens


@dataclass(slots=True)
class Output:
    """What one engine step produced for a request (the increments, not the totals)."""

    request_id: str
    token_ids: list[int]
    text: str
    events: list[harmony.Event]
    logprobs: list[TokenLogprob] | None
    finished: bool
    finish_reason: str | None  # "stop" (stop token or string), "length", "abort"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens served from the prefix cache
    created: float = field(default_factory=time.perf_counter)  # when the engine produced it


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request: Request):
        self.request = request
        self.params = request.params
        self.tokens = list(request.prompt)
        self.num_prompt = len(request.prompt)
        self.num_computed = 0
        self.cached_tokens = 0
        self.counted = False  # prefix-cache statistics recorded
        self.status = Status.WAITING
        self.tables = BlockTables()
        self.generator = torch.Generator()
        seed = self.params.seed if self.params.seed is not None else int(torch.randint(2**62, ()).item())
        self.generator.manual_seed(seed)
        self.counts: dict[int, int] = {}  # generated token -> times, for the penalties
        self.finish_reason: str | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""  # decoded output text not yet emitted (held back while it may start a stop string)
        self._holdback = max((len(s) for s in self.params.stop), default=1) - 1
        self._stopped_by_string = False
        self.parser = harmony.StreamParser() if request.parse_harmony else None
        self._pending_events: list = []
        self.constraint = request.constraint
        for token in request.prompt[len(request.prompt) - request.harmony_prefill :]:
            if self.parser is not None:
                self._pending_events += self.parser.feed(token)
            if self.constraint is not None:
                self.constraint.accept(token)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - self.num_prompt

    @property
    def remaining(self) -> int:
        """Tokens still to compute before the next sample."""
        return len(self.tokens) - self.num_computed

    def append(self, token: int) -> Output:
        """Record a sampled token and work out what becomes visible and whether the request is done."""
        if self.constraint is not None:
            self.constraint.accept(token)
        self.tokens.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        events, self._pending_events = self._pending_events, []
        if self.parser is not None:
            events += self.parser.feed(token)
        if token in self.params.stop_token_ids:
            self.finish_reason = "stop"
            text = self._decoder.decode(b"", final=True)  # the stop token itself is not emitted
        else:
            if self.num_generated >= self.params.max_tokens:
                self.finish_reason = "length"
            text = self._decoder.decode(harmony.token_bytes(token), final=self.finish_reason is not None)
        return self._emit(text, [token], events)

    def _emit(self, text: str, token_ids: list[int], events: list) -> Output:
        if self.parser is None:
            text = self._stop_strings(text)
        else:  # chat: stop strings apply to the visible answer, not to reasoning or message headers
            events = self._stop_strings_in_events(events)
            if self.finish_reason:
                events += self._stop_strings_in_events(self.parser.finish())
        return self.output(text, token_ids, events)

    def _stop_strings(self, text: str) -> str:
        """Append `text`, cut at a stop string, and return what can be shown: the tail that might still
        become a stop string is held back until it cannot."""
        self._text += text
        hits = [i for i in (self._text.find(s) for s in self.params.stop) if i >= 0]
        if hits:
            self.finish_reason = "stop"
            self._stopped_by_string = True
            self._text = self._text[: min(hits)]
        cut = len(self._text) - (0 if self.finish_reason else self._holdback)
        visible, self._text = self._text[:cut], self._text[cut:]
        return visible

    def _stop_strings_in_events(self, events: list) -> list:
        """Stop strings in chat mode: they cut the final answer (ContentDelta), whose text is held back
        while it may still become one; reasoning, preambles and tool calls pass through untouched, until
        a stop string ends the request."""
        if not self.params.stop:
            return events
        out: list = []
        for event in events:
            if isinstance(event, harmony.ContentDelta):
                visible = "" if self._stopped_by_string else self._stop_strings(event.text)
                if visible:
                    out.append(harmony.ContentDelta(visible))
            elif not self._stopped_by_string:
                out.append(event)
        if self.finish_reason and not self._stopped_by_string and self._text:  # flush what was held back
            out.append(harmony.ContentDelta(self._stop_strings("")))
        return out

    def output(
        self, text: str = "", token_ids: list[int] | None = None, events: list | None = None
    ) -> Output:
        return Output(
            request_id=self.request_id,
            token_ids=token_ids or [],
            text=text,
            events=events or [],
            logprobs=None,
            finished=self.finish_reason is not None,
            finish_reason=self.finish_reason,
            prompt_tokens=self.num_prompt,
            completion_tokens=self.num_generated,
            cached_tokens=self.cached_tokens,
        )

    def abort(self) -> Output:
        self.finish_reason = "abort"
        return self._emit("", [], [])
