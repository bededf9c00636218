"""Function-call arguments held to the function's JSON schema while they are sampled.

A harmony tool call is a header naming the function (`to=functions.NAME ... <|constrain|>json`) and a
JSON message ended by `<|call|>`. `FunctionArguments` watches the tokens a request generates; while it
is inside the message of a call to a function it knows, `allowed()` gives the tokens that keep the text a
prefix of a JSON value matching that function's `parameters` (llguidance computes the mask over the
whole o200k vocabulary in ~0.1 ms), and once the value is complete only `<|call|>`. Everything else the
model writes (reasoning, answers, headers, calls to built-in tools) is left alone.

What the schema gets: compact JSON (no whitespace); the declared properties in the schema's order,
each at most once, optional ones skippable (as OpenAI's strict mode writes them); undeclared ones only
where the schema sets `additionalProperties` (strict mode reads a missing value the same way), after
the declared; unknown keywords ignored. A function whose tool spec says
`"strict": false`, or whose schema llguidance cannot compile, is left unconstrained.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import llguidance

from ossai.harmony.tokenizer import (
    CALL,
    END,
    FIRST_SPECIAL_ID,
    LAST_TOKEN_ID,
    MESSAGE,
    RETURN,
    START,
    encode,
    token_bytes,
)

log = logging.getLogger(__name__)

_RECIPIENT = re.compile(r"\bto=functions\.([A-Za-z0-9_.-]+)")
_JSON_OPTIONS = {"whitespace_flexible": False, "lenient": True}
_lock = threading.Lock()


class _Vocab:
    """o200k as llguidance's TokenizerWrapper reads it; `<|call|>` ends a constrained message."""

    eos_token_id = CALL
    bos_token_id = None

    def __init__(self) -> None:
        self.special_token_ids = list(range(FIRST_SPECIAL_ID, LAST_TOKEN_ID + 1))
        self.tokens = [token_bytes(t) for t in range(LAST_TOKEN_ID + 1)]

    def __call__(self, text: str | bytes) -> list[int]:
        return encode(text.decode("utf-8", "surrogateescape") if isinstance(text, bytes) else text)


@functools.cache
def _tokenizer() -> llguidance.LLTokenizer:
    """Built once per process (~1 s: every token's bytes); callers build it off the engine's thread."""
    with _lock:
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocab()))


@functools.lru_cache(maxsize=256)
def _grammar(schema_json: str) -> str | None:
    schema = json.loads(schema_json)
    if schema.get("type", "object") == "object" and "additionalProperties" not in schema:
        schema = {**schema, "additionalProperties": False}
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        log.warning("function arguments left unconstrained: %s", exc)
        return None
    error = llguidance.LLMatcher.validate_grammar(grammar, _tokenizer())
    if error and not error.startswith("WARNING"):
        log.warning("function arguments left unconstrained: %s", error)
        return None
    return grammar


def function_schemas(tools: Iterable[Any] | None) -> dict[str, dict[str, Any]]:
    """name -> parameters schema of the function tools to constrain (OpenAI's nested `function` or the
    flat Responses shape); `strict: false` opts a function out."""
    schemas = {}
    for tool in tools or ():
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec.get("strict") is False:
            continue
        parameters = spec.get("parameters")
        schemas[spec["name"]] = parameters if isinstance(parameters, dict) else {"type": "object"}
    return schemas


class FunctionArguments:
    """Per request: feed it every token of the reply (`accept`), ask it before sampling (`allowed`)."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]]):
        tokenizer = _tokenizer()
        self._matchers: dict[str, llguidance.LLMatcher] = {}
        for name, schema in schemas.items():
            grammar = _grammar(json.dumps(schema))  # key order kept: it is the properties' order
            if grammar is not None:
                self._matchers[name] = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        self._header: list[int] | None = []  # the reply starts in a header (`<|start|>assistant` is prompt)
        self._active: llguidance.LLMatcher | None = None

    @classmethod
    def for_tools(cls, tools: Iterable[Any] | None) -> FunctionArguments | None:
        schemas = function_schemas(tools)
        return cls(schemas) if schemas else None

    def __bool__(self) -> bool:
        return bool(self._matchers)

    def allowed(self) -> bytes | None:
        """A bitmask over token ids (bit t of little-endian 32-bit words), or None: anything goes."""
        if self._active is None:
            return None
        return self._active.compute_bitmask()

    def accept(self, token: int) -> None:
        if self._active is not None:
            if token in (CALL, END, RETURN, START) or not self._active.consume_token(token):
                self._active = None  # the message ended, or the matcher refused it: stop constraining
            return
        if token == START:
            self._header = []
        elif token in (END, CALL, RETURN):
            self._header = None
        elif self._header is not None:
            if token != MESSAGE:
                self._header.append(token)
                return
            header = b"".join(token_bytes(t) for t in self._header).decode("utf-8", "replace")
            self._header = None
            match = _RECIPIENT.search(header)
            matcher = self._matchers.get(match[1]) if match else None
            if matcher is not None:
                matcher.reset()
                self._active = matcher
