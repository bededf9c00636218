"""Function-call arguments, and structured answers, held to a JSON schema while they are sampled.

A harmony tool call is a header naming the function (`to=functions.NAME ... <|constrain|>json`) and a
JSON message ended by `<|call|>`; an answer is a message on the `final` channel ended by `<|return|>`.
`JsonConstraint` watches the tokens a request generates; inside the message of a call to a function it
knows (or of the answer, when the request asked for a response format) `allowed()` gives the tokens that
keep the text a prefix of a JSON value matching the schema (llguidance computes the mask over the whole
o200k vocabulary in ~0.1 ms), and once the value is complete only the message's end token. In a header,
once `to=functions` is written, only the request's function names may follow. Everything else the model
writes (reasoning, the rest of headers, calls to built-in tools, answers without a format) is left
alone.

What the schema gets: compact JSON (no whitespace); the declared properties in the schema's order,
each at most once, optional ones skippable (as OpenAI's strict mode writes them); undeclared ones only
where an object sets `additionalProperties` (strict mode reads a missing value the same way,
`closed_objects`), after the declared; keywords llguidance does not implement (`not`, `if`/`then`,
`uniqueItems`, unknown `format`s) are ignored rather than refused. A function whose tool spec says
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
    CHANNEL,
    CONSTRAIN,
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

_RECIPIENT = re.compile(r"\bto=functions\.([^\s<]+)")
_FINAL = re.compile(r"<\|channel\|>final\b")
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


_built: llguidance.LLTokenizer | None = None
_ids: dict[bytes, int] = {}  # a text token's bytes -> its id


def _tokenizer() -> llguidance.LLTokenizer:
    """Built once per process (~1 s: every token's bytes); callers build it off the engine's thread."""
    global _built
    with _lock:  # two first requests at once must not both build it
        if _built is None:
            vocab = _Vocab()
            _ids.update((b, t) for t, b in enumerate(vocab.tokens[:FIRST_SPECIAL_ID]) if b)
            _built = llguidance.LLTokenizer(llguidance.TokenizerWrapper(vocab))
        return _built


_MASK_BYTES = (LAST_TOKEN_ID + 32) // 32 * 4  # llguidance's mask size: whole 32-bit words
_NAME_ENDS = (CHANNEL, CONSTRAIN, MESSAGE)  # what may follow a recipient (besides one space)
_CALLING = re.compile(r"to=functions(\.[^\s<]*)?$")


def _name_mask(partial: str, names: Iterable[str]) -> bytes | None:
    """After `to=functions` and `partial` of a name: the tokens that continue it into one of `names`,
    and once it is whole, a space or the header's next special token. None if no name fits."""
    allowed = set()
    for name in names:
        target = "." + name
        if not target.startswith(partial):
            continue
        rest = target[len(partial) :].encode()
        allowed.update(_ids[rest[:k]] for k in range(1, len(rest) + 1) if rest[:k] in _ids)
        if not rest:
            allowed.update((_ids[b" "], *_NAME_ENDS))
    if not allowed:
        return None
    mask = bytearray(_MASK_BYTES)
    for t in allowed:
        mask[t // 8] |= 1 << (t % 8)
    return bytes(mask)


_COMPOSED = ("allOf", "anyOf", "oneOf", "$ref")
_NESTED_ONE = ("items", "additionalItems")
_NESTED_MANY = ("properties", "patternProperties", "$defs", "definitions")


def closed_objects(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object that declares `properties` and says
    nothing of the rest (OpenAI's strict reading). Not where `allOf`/`anyOf`/`oneOf`/`$ref` compose the
    object (closing a part would refuse the other parts' keys), nor inside `allOf` members."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _NESTED_ONE:
        if key in out:
            out[key] = closed_objects(out[key])
    for key in ("anyOf", "oneOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = closed_objects(out[key])
    for key in _NESTED_MANY:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(sub) for name, sub in out[key].items()}
    open_keys = ("additionalProperties", "patternProperties", *_COMPOSED)
    if "properties" in out and not any(k in out for k in open_keys):
        out["additionalProperties"] = False
    return out


def _compile(schema_json: str) -> tuple[str | None, str | None]:
    """(llguidance grammar, None) or (None, why it cannot be compiled); small schemas are cached."""
    return _compile_cached(schema_json) if len(schema_json) <= 1 << 16 else _compile_now(schema_json)


def _compile_now(schema_json: str) -> tuple[str | None, str | None]:
    schema = closed_objects(json.loads(schema_json))
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        return None, str(exc)
    error = llguidance.LLMatcher.validate_grammar(grammar, _tokenizer())
    if error and not error.startswith("WARNING"):
        return None, error
    return grammar, None


_compile_cached = functools.lru_cache(maxsize=256)(_compile_now)


def schema_error(schema: Mapping[str, Any]) -> str | None:
    """Why `schema` cannot be enforced, or None when it can."""
    return _compile(json.dumps(schema))[1]


def function_schemas(tools: Iterable[Any] | None) -> dict[str, dict[str, Any] | None]:
    """name -> parameters schema of every function tool (OpenAI's nested `function` or the flat
    Responses shape); None for one whose spec says `strict: false` (its arguments stay free)."""
    schemas: dict[str, dict[str, Any] | None] = {}
    for tool in tools or ():
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue
        parameters = spec.get("parameters")
        schema = parameters if isinstance(parameters, dict) else {"type": "object"}
        schemas[spec["name"]] = None if spec.get("strict") is False else schema
    return schemas


class JsonConstraint:
    """Per request: feed it every token of the reply (`accept`), ask it before sampling (`allowed`).

    `functions`: name -> parameters schema (None: arguments free) of the functions a call may name;
    `answer`: a schema for the final answer (structured outputs: `response_format`, Ollama's `format`),
    or None to leave answers free."""

    def __init__(
        self, functions: Mapping[str, Mapping[str, Any] | None], answer: Mapping[str, Any] | None = None
    ):
        self._names = list(functions)  # every call names one of them, even where the arguments are free
        self._matchers = {n: m for n, s in functions.items() if s is not None and (m := _matcher(s))}
        self._answer = _matcher(answer) if answer is not None else None
        self._header: list[int] | None = []  # the reply starts in a header (`<|start|>assistant` is prompt)
        self._active: llguidance.LLMatcher | None = None

    @classmethod
    def for_request(
        cls, tools: Iterable[Any] | None, answer: Mapping[str, Any] | None = None
    ) -> JsonConstraint | None:
        """None when there is nothing to hold (no function tools, no answer schema)."""
        constraint = cls(function_schemas(tools), answer)
        return constraint if constraint else None

    def __bool__(self) -> bool:
        return bool(self._names) or self._answer is not None

    def allowed(self) -> bytes | None:
        """A bitmask over token ids (bit t of little-endian 32-bit words), or None: anything goes."""
        if self._active is None:
            if self._header and self._names:  # a header naming a function names one of ours
                calling = _CALLING.search(_text(self._header))
                if calling:
                    return _name_mask(calling[1] or "", self._names)
            return None
        mask = self._active.compute_bitmask()
        if self._active is self._answer and mask[CALL // 8] >> (CALL % 8) & 1:
            ended = bytearray(mask)  # llguidance ends every value with our tokenizer's <|call|>
            ended[CALL // 8] &= ~(1 << (CALL % 8)) & 0xFF
            ended[RETURN // 8] |= 1 << (RETURN % 8)
            return bytes(ended)
        return mask

    def accept(self, token: int) -> None:
        if self._active is not None:
            if token in (CALL, END, RETURN, START) or not self._active.consume_token(token):
                self._active = None  # the message ended, or the matcher refused it: stop constraining
                self._header = [] if token == START else None
            return
        if token == START:
            self._header = []
        elif token in (END, CALL, RETURN):
            self._header = None
        elif self._header is not None:
            if token != MESSAGE:
                self._header.append(token)
                return
            header = _text(self._header)
            self._header = None
            match = _RECIPIENT.search(header)
            if match:
                matcher = self._matchers.get(match[1])
            elif _FINAL.search(header) and "to=" not in header:
                matcher = self._answer
            else:
                matcher = None
            if matcher is not None:
                matcher.reset()
                self._active = matcher


def _text(tokens: list[int]) -> str:
    """A header's text so far, special tokens spelled out."""
    return b"".join(token_bytes(t) for t in tokens).decode("utf-8", "replace")


def _matcher(schema: Mapping[str, Any]) -> llguidance.LLMatcher | None:
    grammar, error = _compile(json.dumps(schema))  # key order kept: it is the properties' order
    if grammar is None:
        log.warning("left unconstrained, the schema cannot be compiled: %s", error)
        return None
    return llguidance.LLMatcher(_tokenizer(), grammar, log_level=0)
