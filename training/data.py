"""Synthetic training data for ossai-demo: OpenAI-style conversations rendered exactly as ossai renders them.

    for sample in samples(seed=0, split="train"):  # infinite, deterministic
        sample.tokens, sample.mask  # mask: True where the model is trained to produce the token

Each sample is one conversation whose last turn is the assistant's: reasoning on `analysis`, then a final
answer, or a tool call (`python`, `browser.*`, `functions.X`) that ends the sample with `<|call|>`, or a tool
loop (call, result, ... answer). The content comes from `training.tasks`; this module mixes categories,
renders and masks.

Rendering: the prompt of every step of the last turn is `ossai.harmony.render_chat` of the messages before
it (the very tokens the runtime sends), and the whole sample is openai-harmony's
`render_conversation_for_training` of `build_conversation(messages before the last assistant message)`
followed by that message's harmony messages. The last message cannot simply go through build_conversation:
its chain-of-thought dropping removes the reasoning of a turn that ends in a final answer (right for a
prompt, wrong for the target). `render_sample` asserts that every step's prompt is a prefix of the sample.

The mask covers what the model generates in the last turn: from the token after each step's
`<|start|>assistant` (the runtime's prompt ends there) through its `<|end|>`/`<|call|>`/`<|return|>`,
including the `<|start|>assistant...` headers of later messages of the same step. Tool results are not
masked.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from random import Random
from typing import Any

from openai_harmony import Conversation, RenderConversationConfig, ToolNamespaceConfig

from ossai.harmony import CALL, END, RETURN, build_conversation, load_encoding, render_chat
from ossai.harmony.encoding import _assistant_messages, _ToolCallLedger  # the runtime's own conversion
from training import tasks
from training.tasks import EFFORTS, INSTRUCTIONS, Ctx, Split, Turn

MAX_TOKENS = 768  # longest sample (browser answers after `open` need ~1000-1280: pass max_tokens to get them)
CATEGORIES = ("chat", "arithmetic", "python", "browser", "function", "multiturn")
WEIGHTS = (0.08, 0.37, 0.14, 0.14, 0.18, 0.09)  # arithmetic has the most right answers to learn
FIRST_DAY, LAST_DAY = dt.date(2024, 1, 1), dt.date(2026, 12, 31)
_NO_DROP = RenderConversationConfig(auto_drop_analysis=False)  # build_conversation already dropped old CoT
_CLOSERS = frozenset({END, CALL, RETURN})


@dataclass
class Sample:
    tokens: list[int]
    mask: list[bool]  # True = the model is trained to produce this token
    category: str


@dataclass
class Example:
    """One conversation before rendering, with what its last assistant message must do (for eval)."""

    category: str
    messages: list[dict[str, Any]]
    effort: str
    tools: list[dict[str, Any]] | None
    builtin_tools: tuple[str | ToolNamespaceConfig, ...]  # as render_chat takes them
    date: str
    expect: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    sample: Sample | None = None

    @property
    def prompt_messages(self) -> list[dict[str, Any]]:
        """The messages before the last assistant message: what the runtime renders for the last step."""
        return self.messages[:-1]

    def render(self) -> Sample:
        if self.sample is None:
            self.sample = render_sample(
                self.messages, self.effort, self.tools, self.builtin_tools, self.date, category=self.category
            )
        return self.sample

    def prompt(self) -> list[int]:
        """The runtime's prompt for the last step (ends with `<|start|>assistant`)."""
        return render_chat(
            self.prompt_messages,
            effort=self.effort,
            tools=self.tools,
            builtin_tools=self.builtin_tools,
            date=self.date,
        )


# --- Rendering ----------------------------------------------------------------------------------------------


def render_sample(
    messages: Sequence[Mapping[str, Any]],
    effort: str,
    tools: Sequence[Mapping[str, Any]] | None,
    builtin_tools: Sequence[str | ToolNamespaceConfig],
    date: str,
    *,
    category: str = "custom",
) -> Sample:
    """Tokens and mask of a conversation whose last message is the assistant's (see the module docstring)."""
    messages = list(messages)
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users or messages[-1].get("role") != "assistant":
        raise ValueError("a sample needs a user message and must end with an assistant message")
    steps = [i for i in range(users[-1] + 1, len(messages)) if messages[i].get("role") == "assistant"]
    options: dict[str, Any] = {"effort": effort, "tools": tools, "builtin_tools": builtin_tools, "date": date}
    head = build_conversation(messages[: steps[-1]], **options)
    tail = _assistant_messages(messages[-1], f"messages[{len(messages) - 1}]", _ToolCallLedger())
    conversation = Conversation.from_messages([*head.messages, *tail])
    tokens = load_encoding().render_conversation_for_training(conversation, _NO_DROP)
    mask = [False] * len(tokens)
    for k in steps:
        prompt = render_chat(messages[:k], **options)
        if tokens[: len(prompt)] != prompt:
            raise AssertionError(f"step {k}: the sample does not start with the runtime's prompt")
        # The step produces as many harmony messages as its assistant dict holds, each ending in a closer.
        remaining = len(_assistant_messages(messages[k], f"messages[{k}]", _ToolCallLedger()))
        i = len(prompt)
        while remaining:
            mask[i] = True
            remaining -= tokens[i] in _CLOSERS
            i += 1
    return Sample(tokens, mask, category)


# --- Building conversations ---------------------------------------------------------------------------------


def _builtin(rng: Random, category: str) -> tuple[str, ...]:
    """Which built-in tools the conversation offers (the runtime lists them in `--tools` order)."""
    if category == "python":
        return rng.choice([("python",), ("python",), ("python", "browser"), ("browser", "python")])
    if category == "browser":
        return rng.choice([("browser",)] * 4 + [("python", "browser")])
    if category == "function":
        return rng.choice([()] * 6 + [("python",)])
    return rng.choice([(), (), (), ("python",), ("python",), ("browser",), ("python", "browser")])


def _namespaces(builtin: Sequence[str]) -> tuple[str | ToolNamespaceConfig, ...]:
    # The browser's namespace says which sources it has, as BrowserTool.namespace() does at runtime.
    return tuple(tasks.browser().namespace if name == "browser" else name for name in builtin)


def _strip_reasoning(messages: list[dict[str, Any]], rng: Random) -> list[dict[str, Any]]:
    """Earlier turns as clients send them back: with or without reasoning (dropped at render either way)."""
    if rng.random() < 0.5:
        return messages
    return [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]


def _multiturn(ctx: Ctx) -> list[Turn]:
    rng = ctx.rng
    functions = None
    if rng.random() < 0.3:
        functions = tasks.make_functions(rng, ctx.split, rng.randint(1, 3))
        ctx.tools = [f.spec() for f in functions]
    kinds = ["chat", "arithmetic", "arithmetic"]
    kinds += ["python"] if "python" in ctx.builtin else []
    kinds += ["function"] if functions else []
    turns = []
    n = rng.choice([2, 2, 3])
    for t in range(n):
        kind = rng.choice(kinds)
        stage = "answer" if t < n - 1 else None  # earlier turns are finished
        if kind == "chat":
            turns.append(tasks.chat_turn(ctx))
        elif kind == "arithmetic":
            turns.append(tasks.arithmetic_turn(ctx))
        elif kind == "python":
            turns.append(tasks.python_turn(ctx, stage))
        else:
            turns.append(tasks.function_turn(ctx, stage, functions))
    return turns


def _date(rng: Random) -> str:
    return (FIRST_DAY + dt.timedelta(days=rng.randint(0, (LAST_DAY - FIRST_DAY).days))).isoformat()


def make_example(rng: Random, category: str, split: Split) -> Example:
    """One conversation of `category` (not yet length-checked)."""
    builtin = _builtin(rng, category)
    ctx = Ctx(rng, split, rng.choice(EFFORTS), _date(rng), builtin)
    if category in ("chat", "arithmetic") and rng.random() < 0.2:  # functions on offer that do not fit
        ctx.tools = [f.spec() for f in tasks.make_functions(rng, split, rng.randint(1, 3))]
    head: list[dict[str, Any]] = []
    if rng.random() < 0.15:
        head.append(
            {"role": rng.choice(["system", "system", "developer"]), "content": rng.choice(INSTRUCTIONS)}
        )
    if category == "multiturn":
        turns = _multiturn(ctx)
    else:
        make = {
            "chat": tasks.chat_turn,
            "arithmetic": tasks.arithmetic_turn,
            "python": tasks.python_turn,
            "browser": tasks.browser_turn,
            "function": tasks.function_turn,
        }[category]
        turns = [make(ctx)]
    messages = head + [m for t in turns[:-1] for m in _strip_reasoning(t.messages, rng)] + turns[-1].messages
    info = dict(turns[-1].info, builtin=builtin, turns=len(turns))
    return Example(
        category, messages, ctx.effort, ctx.tools, _namespaces(builtin), ctx.date, turns[-1].expect, info
    )


def examples(
    seed: int, split: Split, *, category: str | None = None, max_tokens: int = MAX_TOKENS
) -> Iterator[Example]:
    """Rendered examples (`.sample` set), categories mixed by WEIGHTS unless `category` fixes one.

    An example longer than `max_tokens` is replaced by another of the same category, so the mix holds."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = Random(f"ossai-demo/{split}/{seed}/{category or '*'}")  # str seeds hash with sha512: stable
    while True:
        kind = category or rng.choices(CATEGORIES, WEIGHTS)[0]
        for _ in range(1000):
            example = make_example(rng, kind, split)
            if len(example.render().tokens) <= max_tokens:
                yield example
                break
        else:
            raise RuntimeError(f"no {kind} example fits in {max_tokens} tokens")


def samples(seed: int, split: Split, *, max_tokens: int = MAX_TOKENS) -> Iterator[Sample]:
    """The infinite, deterministic stream of training samples."""
    for example in examples(seed, split, max_tokens=max_tokens):
        assert example.sample is not None
        yield example.sample


# --- Vocabulary ---------------------------------------------------------------------------------------------

COMMON_WORDS = [
    "the",
    "be",
    "to",
    "of",
    "and",
    "a",
    "in",
    "that",
    "have",
    "i",
    "it",
    "for",
    "not",
    "on",
    "with",
    "he",
    "as",
    "you",
    "do",
    "at",
    "this",
    "but",
    "his",
    "by",
    "from",
    "they",
    "we",
    "say",
    "her",
    "she",
    "or",
    "an",
    "will",
    "my",
    "one",
    "all",
    "would",
    "there",
    "their",
    "what",
    "so",
    "up",
    "out",
    "if",
    "about",
    "who",
    "get",
    "which",
    "go",
    "me",
    "when",
    "make",
    "can",
    "like",
    "time",
    "no",
    "just",
    "him",
    "know",
    "take",
    "people",
    "into",
    "year",
    "your",
    "good",
    "some",
    "could",
    "them",
    "see",
    "other",
    "than",
    "then",
    "now",
    "look",
    "only",
    "come",
    "its",
    "over",
    "think",
    "also",
    "back",
    "after",
    "use",
    "two",
    "how",
    "our",
    "work",
    "first",
    "well",
    "way",
    "even",
    "new",
    "want",
    "because",
    "any",
    "these",
    "give",
    "day",
    "most",
    "us",
    "is",
    "are",
    "was",
    "were",
    "has",
    "had",
    "did",
    "does",
    "done",
    "said",
    "made",
    "yes",
    "hello",
    "hi",
    "thanks",
    "thank",
    "please",
    "sorry",
    "help",
    "question",
    "answer",
    "number",
    "result",
    "sum",
    "difference",
    "product",
    "total",
    "plus",
    "minus",
    "times",
    "divided",
    "equals",
    "check",
    "correct",
    "right",
    "wrong",
    "sure",
    "okay",
    "great",
    "today",
    "date",
    "name",
    "model",
    "tool",
    "tools",
    "python",
    "browser",
    "search",
    "open",
    "find",
    "page",
    "line",
    "lines",
    "file",
    "code",
    "run",
    "print",
    "value",
    "list",
    "sort",
    "order",
    "small",
    "large",
    "big",
    "long",
    "short",
    "more",
    "less",
    "many",
    "much",
    "few",
    "every",
    "each",
    "both",
    "same",
    "different",
    "next",
    "last",
    "again",
    "here",
    "where",
    "why",
    "what",
    "while",
    "before",
    "after",
    "between",
    "under",
    "above",
    "high",
    "low",
    "medium",
    "effort",
    "reasoning",
    "step",
    "steps",
    "let",
    "me",
    "user",
    "assistant",
    "message",
    "function",
    "call",
    "arguments",
    "json",
    "data",
    "text",
    "string",
    "word",
    "words",
    "letter",
    "letters",
    "characters",
    "meters",
    "kilometers",
    "grams",
    "kilograms",
    "hours",
    "minutes",
    "seconds",
    "days",
    "weeks",
    "liters",
    "celsius",
    "fahrenheit",
    "degrees",
]


def number_tokens(ids: Iterable[int]) -> dict[int, int]:
    """{token id: value} for the ids that spell an integer (o200k: 1-3 digits each, "007" included)."""
    enc = load_encoding()
    out = {}
    for i in ids:
        try:
            text = enc.decode([i])
        except Exception:  # special and reserved ids do not decode as text
            continue
        if text.isascii() and text.isdigit():
            out[i] = int(text)
    return out


def vocabulary(seed: int, n: int, *, max_tokens: int = MAX_TOKENS) -> set[int]:
    """Token ids the first `n` training samples use, plus what the model may need beyond them: every
    number below 1000 and its zero-padded forms (longer numbers are made of these 3-digit pieces),
    printable ASCII, common English words, the words of both function word banks in every position they
    take (so later samples and the heldout split stay inside, and an export that zeroes unused rows does
    not make the heldout eval impossible by construction), every browser output of the QA bank, and the
    named harmony special tokens."""
    enc = load_encoding()
    ids: set[int] = set()
    for sample in itertools.islice(samples(seed, "train", max_tokens=max_tokens), n):
        ids.update(sample.tokens)
    for sample in itertools.islice(samples(seed, "heldout", max_tokens=max_tokens), max(20, n // 20)):
        ids.update(sample.tokens)
    pieces = (
        [str(i) for i in range(1000)] + [f"{i:03d}" for i in range(100)] + [chr(c) for c in range(32, 127)]
    )
    words = [*COMMON_WORDS, *tasks.WORDS, *tasks.MONTHS]
    for bank in tasks.WORDS_BY_SPLIT.values():  # function words in every spot: `.get`, `_weather`, `"city`
        words += [*bank.verbs, *bank.nouns]
        words += [p.name for p in bank.params] + [str(v) for p in bank.params for v in p.values]
    words = [part for w in words for part in re.split(r"[_ ]", w)]
    pieces += [form for w in words for form in (w, w.capitalize(), w.lower())]
    for piece in pieces:
        for prefix in ("", " ", "\n", "-", "_", ".", '"', "("):
            ids.update(enc.encode(prefix + piece, disallowed_special=()))
    for text in tasks.browser_outputs():  # the pages a search can lead to, whichever the samples showed
        ids.update(enc.encode(text, disallowed_special=()))
    for name in enc.special_tokens_set:
        if not name.startswith("<|reserved"):
            ids.update(enc.encode(name, allowed_special={name}))
    return ids
