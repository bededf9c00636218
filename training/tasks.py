"""What the synthetic conversations say: one generator per category, each writing one turn (a user message
and the assistant's reply, with tool calls and tool results) as OpenAI-style chat messages.

`training.data` mixes the categories, renders the turns exactly as the runtime does and masks them; this
module only decides the words. Every generator takes a `Ctx` (the random stream, the split, the effort, the
tools on offer) and returns a `Turn` whose `expect` says what the last assistant message must do, so
`training.eval` can score a model on the same prompts.

Tool results are the real thing: browser pages come from `ossai.tools.browser.BrowserTool` over the bundled
docs, python results are computed here with the exact text the python tool prints for a one-line `print`
(the value and a newline; tests/training checks this against the real tool).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from random import Random
from typing import Any, Literal

from openai_harmony import ToolNamespaceConfig

from ossai.tools.browser import BrowserTool, LocalIndex, bundled_docs, strip_links

Split = Literal["train", "heldout"]
Message = dict[str, Any]
EFFORTS = ("low", "medium", "high")


@dataclass
class Ctx:
    rng: Random
    split: Split
    effort: str
    date: str  # ISO, as the system message shows it
    builtin: tuple[str, ...] = ()  # "python", "browser" in the order the runtime lists them
    tools: list[dict[str, Any]] | None = None  # function tools in the developer message
    calls: int = 0  # call ids handed out in this conversation

    def call_id(self) -> str:
        self.calls += 1
        return f"call_{self.rng.getrandbits(40):010x}{self.calls}"

    def pick(self, low: Sequence[str] | str, medium: Sequence[str] | str, high: Sequence[str] | str) -> str:
        """The reasoning for the current effort: one of the given options."""
        options = {"low": low, "medium": medium, "high": high}[self.effort]
        return options if isinstance(options, str) else self.rng.choice(options)


@dataclass
class Turn:
    messages: list[Message]  # the user message, then assistant and tool messages
    expect: dict[str, Any]  # what the last assistant message does (see training.eval)
    info: dict[str, Any] = field(default_factory=dict)


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def final(reasoning: str, content: str) -> Message:
    return {"role": "assistant", "reasoning_content": reasoning, "content": content}


def call(ctx: Ctx, reasoning: str, name: str, arguments: str) -> Message:
    tool_call = {"id": ctx.call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "reasoning_content": reasoning, "content": None, "tool_calls": [tool_call]}


def result(call_message: Message, text: str) -> Message:
    tool_call = call_message["tool_calls"][0]
    return {
        "role": "tool",
        "tool_call_id": tool_call["id"],
        "name": tool_call["function"]["name"],
        "content": text,
    }


def compact(obj: Any) -> str:
    """JSON as the model writes it: no spaces (fewer tokens), non-ASCII kept."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def vary(rng: Random, text: str) -> str:
    """Surface noise users add: lower case, a dropped final mark, a leading interjection."""
    if rng.random() < 0.15:
        text = text[0].lower() + text[1:]
    if rng.random() < 0.15 and text[-1] in "?.!":
        text = text[:-1]
    if rng.random() < 0.1:
        text = (
            rng.choice(["Hey, ", "Quick question: ", "Hi! ", "Please tell me: "]) + text[0].lower() + text[1:]
        )
    return text


def held(items: Sequence[str], split: Split) -> Sequence[str]:
    """Paraphrase lists keep their last entry for the heldout split (when there are at least three)."""
    if len(items) < 3:
        return items
    return items[-1:] if split == "heldout" else items[:-1]


# --- 1. Greetings, small talk and questions about ossai ----------------------------------------------------


@dataclass(frozen=True)
class Fact:
    topic: str  # for the reasoning: "The user asks {topic}."
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    note: str = ""  # one more sentence of reasoning at medium and high effort


FACTS: tuple[Fact, ...] = (
    Fact(
        "for a greeting",
        ("Hi", "Hello!", "Hey there", "Good morning!", "Hi there!", "Hello", "Hey!", "Good evening"),
        ("Hello! How can I help you today?", "Hi! What can I do for you?", "Hey! How can I help?"),
        "A friendly greeting back is enough.",
    ),
    Fact(
        "how I am doing",
        ("How are you?", "How's it going?", "How are you doing today?", "What's up?"),
        ("I'm doing well, thanks for asking! How can I help you?", "All good here! What can I do for you?"),
        "Small talk: answer kindly and offer help.",
    ),
    Fact(
        "nothing in particular; they are thanking me",
        ("Thanks!", "Thank you.", "Thanks a lot", "Thank you so much!", "thx"),
        ("You're welcome!", "Happy to help!", "Anytime! Let me know if you need anything else."),
        "Just acknowledge the thanks.",
    ),
    Fact(
        "nothing; they are saying goodbye",
        ("Bye!", "Goodbye", "See you later", "That's all for now, bye."),
        ("Goodbye! Have a great day.", "Bye! Come back anytime."),
        "Say goodbye politely.",
    ),
    Fact(
        "who I am",
        (
            "Who are you?",
            "What are you?",
            "What model are you?",
            "What's your name?",
            "Are you a real model?",
        ),
        (
            "I'm ossai-demo, a tiny model with the gpt-oss architecture that ships with ossai, so it works "
            "offline right after install. For real answers, pull gpt-oss-20b with `ossai pull gpt-oss:20b`.",
            "I'm ossai-demo: a small demo model built like gpt-oss. I know the chat format, small arithmetic "
            "and how to call tools. For serious work, use gpt-oss-20b or gpt-oss-120b.",
        ),
        "I am the small demo model bundled with ossai, not a full gpt-oss.",
    ),
    Fact(
        "what I can do",
        ("What can you do?", "How can you help me?", "What are you good at?", "What can I ask you?"),
        (
            "I can chat, do small arithmetic and unit conversions, and use tools: python for bigger "
            "calculations, the browser to look things up in the ossai docs, and any functions you give me.",
        ),
        "List my skills briefly: chat, arithmetic, tools.",
    ),
    Fact(
        "for a joke",
        ("Tell me a joke.", "Make me laugh", "Do you know any jokes?", "Say something funny."),
        (
            "Why did the computer go to the doctor? It had a virus.",
            "Why do programmers prefer dark mode? Because light attracts bugs.",
            "I would tell you a UDP joke, but you might not get it.",
        ),
        "A short, friendly joke.",
    ),
    Fact(
        "what ossai is",
        ("What is ossai?", "Tell me about ossai.", "What does ossai do?", "Can you explain what ossai is?"),
        (
            "ossai is a local runtime for OpenAI's open-weight gpt-oss models: it runs gpt-oss-20b and "
            "gpt-oss-120b on your own machine, offline.",
            "ossai runs OpenAI's gpt-oss models locally. It has a batching engine, a server with the OpenAI "
            "and Ollama APIs, a model store, a terminal chat and tools for the model.",
        ),
        "ossai is the local runtime I run in.",
    ),
    Fact(
        "how to install or start ossai",
        ("How do I install ossai?", "How do I get started with ossai?", "How do I set up ossai?"),
        (
            "From a clone of the repository, run `make run`: it creates `.venv`, installs everything and "
            "starts a server on http://127.0.0.1:8000.",
        ),
        "The docs say `make run` does the whole install.",
    ),
    Fact(
        "how to run the tests",
        ("How do I run the tests?", "How do I test ossai?", "Which command runs the test suite?"),
        ("Run `make test`: it installs what the tests need and runs ruff and pytest.",),
        "That is `make test`.",
    ),
    Fact(
        "which APIs ossai serves",
        (
            "Which APIs does ossai support?",
            "Does ossai have an OpenAI-compatible API?",
            "Can I use Ollama clients?",
        ),
        (
            "`ossai serve` answers both the OpenAI API under `/v1` and the Ollama API under `/api`, so "
            "clients of either work.",
        ),
        "One server speaks both OpenAI and Ollama.",
    ),
    Fact(
        "which commands ossai has",
        ("What commands does ossai have?", "List the ossai commands.", "Which ossai subcommands exist?"),
        (
            "ossai serve, ossai chat, ossai generate, ossai pull, ossai import, ossai list, ossai show, "
            "ossai rm, ossai ps, ossai bench and ossai tool.",
        ),
        "Name the CLI commands.",
    ),
    Fact(
        "how to download a model",
        ("How do I download a model?", "How do I get gpt-oss-20b?", "How can I pull a real model?"),
        ("Run `ossai pull gpt-oss:20b` (about 13 GB); `ossai pull gpt-oss:120b` gets the larger one.",),
        "Models come from `ossai pull`.",
    ),
    Fact(
        "how to chat in the terminal",
        (
            "How do I chat with a model in the terminal?",
            "How do I start a chat?",
            "Is there a terminal chat?",
        ),
        ("Run `ossai chat gpt-oss:20b`; add `--tools python,browser` to let the model use tools.",),
        "That is `ossai chat`.",
    ),
    Fact(
        "which tools the model can use",
        ("What tools can the model use?", "Which tools does ossai have?", "Can the model run code?"),
        (
            "Built-in tools: python (a sandboxed interpreter) and a browser over local docs; plus MCP "
            "servers "
            "and any function tools a client passes.",
        ),
        "Built-ins are python and browser, plus functions and MCP.",
    ),
    Fact(
        "which sizes gpt-oss comes in",
        (
            "What sizes does gpt-oss come in?",
            "How big are the gpt-oss models?",
            "Which gpt-oss models exist?",
        ),
        (
            "Two: gpt-oss-20b (about 21B parameters, 3.6B active per token) and gpt-oss-120b (about 117B, "
            "5.1B active).",
        ),
        "Two mixture-of-experts sizes.",
    ),
    Fact(
        "how much memory gpt-oss needs",
        (
            "How much memory does gpt-oss-20b need?",
            "Can gpt-oss-120b run on one GPU?",
            "What hardware do I need?",
        ),
        ("gpt-oss-20b runs within 16 GB of memory, and gpt-oss-120b fits on a single 80 GB GPU.",),
        "The MXFP4 experts keep memory small.",
    ),
    Fact(
        "the context length",
        (
            "What is the context length of gpt-oss?",
            "How many tokens of context can I use?",
            "How long can prompts be?",
        ),
        ("gpt-oss handles up to 131,072 tokens of context (prompt plus output).",),
        "That is 131,072 tokens.",
    ),
    Fact(
        "whether ossai needs the internet",
        ("Does ossai need internet?", "Can I use ossai offline?", "Does ossai work without a network?"),
        ("No: once a model is downloaded, ossai works fully offline, and the server binds to 127.0.0.1.",),
        "It is offline by design.",
    ),
    Fact(
        "how to set the reasoning effort",
        (
            "How do I set the reasoning effort?",
            "Can I make you think harder?",
            "What reasoning efforts exist?",
        ),
        (
            "Effort is low, medium (the default) or high: `reasoning_effort` in the OpenAI API, `think` in "
            "the Ollama API, or `--effort high` in `ossai chat`.",
        ),
        "Three levels, set per request.",
    ),
    Fact(
        "the gpt-oss license",
        ("What license does gpt-oss have?", "Is gpt-oss open source?", "Can I use gpt-oss commercially?"),
        ("gpt-oss is released with open weights under the Apache 2.0 license.",),
        "Apache 2.0.",
    ),
)

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
DATE_QUESTIONS = (
    "What's the date today?",
    "What is today's date?",
    "Do you know what day it is?",
    "What date is it?",
)


def chat_turn(ctx: Ctx) -> Turn:
    rng = ctx.rng
    if rng.random() < 0.1:  # today's date, read from the system message
        day = dt.date.fromisoformat(ctx.date)
        long = f"{MONTHS[day.month - 1]} {day.day}, {day.year}"
        reasoning = ctx.pick(
            f"The system message says the date is {ctx.date}.",
            f"The user asks for today's date. The system message says the current date is {ctx.date}, "
            f"which is {long}.",
            f"The user wants today's date. I cannot look at a clock, but the system message gives the "
            f"current date: {ctx.date}. Written out, that is {long}. Answer with that date.",
        )
        answer = rng.choice([f"Today is {long}.", f"Today's date is {ctx.date}.", f"It's {long}."])
        question = vary(rng, rng.choice(held(DATE_QUESTIONS, ctx.split)))
        return Turn([user(question), final(reasoning, answer)], {"kind": "final", "text": str(day.year)})
    fact = rng.choice(FACTS)
    question = vary(rng, rng.choice(held(fact.questions, ctx.split)))
    reasoning = ctx.pick(
        [f"The user asks {fact.topic}.", f"User asks {fact.topic}; answer briefly."],
        f"The user asks {fact.topic}. {fact.note} Keep it short.",
        f"The user asks {fact.topic}. {fact.note} No tool is needed for this; I know it. I should answer in "
        "one or two sentences, clearly and without extra detail, and stay friendly.",
    )
    return Turn(
        [user(question), final(reasoning, rng.choice(fact.answers))], {"kind": "final"}, {"task": "fact"}
    )


# --- 2. Arithmetic and unit conversions (the trained range) -----------------------------------------------

ADD_MAX = 20  # operands of + and - are 0..ADD_MAX
MUL_MAX = 12  # operands of x are 0..MUL_MAX
OPS = {
    "+": (
        ("{a} + {b}", "{a}+{b}", "{a} plus {b}"),
        (
            "What is {x}?",
            "Compute {x}.",
            "{x} = ?",
            "What's {x}?",
            "How much is {x}?",
            "Calculate {x}.",
            "Add {a} and {b}.",
            "What is the sum of {a} and {b}?",
        ),
    ),
    "-": (
        ("{a} - {b}", "{a}-{b}", "{a} minus {b}"),
        (
            "What is {x}?",
            "Compute {x}.",
            "{x} = ?",
            "What's {x}?",
            "How much is {x}?",
            "Calculate {x}.",
            "Subtract {b} from {a}.",
            "What do you get if you take {b} from {a}?",
        ),
    ),
    "*": (
        ("{a} * {b}", "{a} x {b}", "{a} × {b}", "{a} times {b}"),
        (
            "What is {x}?",
            "Compute {x}.",
            "{x} = ?",
            "What's {x}?",
            "How much is {x}?",
            "Calculate {x}.",
            "Multiply {a} by {b}.",
            "What is the product of {a} and {b}?",
        ),
    ),
}


def _count_chain(a: int, b: int, op: str) -> str:
    """`a op b` as a chain where every step moves a ten or a one from the right operand onto the left:
    "14 + 7 = 15 + 6 = ... = 20 + 1 = 21". A tiny model cannot recall 441 sums as facts, but each step
    here is a successor, a predecessor or a copy, which the number-aware embedding makes one linear map."""
    parts = [f"{a} {op} {b}"]
    sign = 1 if op == "+" else -1
    if b == 0:
        parts.append(str(a))
    while b:
        move = 10 if b >= 10 else 1
        a, b = a + sign * move, b - move
        parts.append(f"{a} {op} {b}" if b else str(a))
    return " = ".join(parts)


def _add_steps(a: int, b: int) -> str:
    if a >= b:
        return _count_chain(a, b, "+")
    return f"{a} + {b} = " + _count_chain(b, a, "+")  # count from the bigger: fewer steps


def _sub_steps(a: int, b: int) -> str:
    if b > a:
        chain = _count_chain(b, a, "-")
        return f"{b} is bigger than {a}, so the result is negative: {chain}, so {a} - {b} = {a - b}"
    return _count_chain(a, b, "-")


def _mul_steps(a: int, b: int) -> str:
    if a == 0 or b == 0:
        return "Anything times 0 is 0"
    big, small = max(a, b), min(a, b)
    if big > 10:
        part = big - 10
        return (
            f"{big} = 10 + {part}, so {small} * 10 = {small * 10} and {small} * {part} = {small * part}; "
            f"{small * 10} + {small * part} = {a * b}"
        )
    if small <= 3:
        return f"{' + '.join([str(big)] * small)} = {a * b}"
    return f"From the times table, {small} * {big} = {a * b}"


def _arith_reasoning(ctx: Ctx, op: str, a: int, b: int, r: int) -> str:
    name = {"+": "sum", "-": "difference", "*": "product"}[op]
    steps = {"+": _add_steps, "-": _sub_steps, "*": _mul_steps}[op](a, b)
    if op == "*":
        check = f"Check: {r} / {b} = {a}, which matches." if b else f"Check: {a} * 0 is 0 for any {a}."
        low = [f"{a} {op} {b} = {r}.", f"Easy: {a} {op} {b} = {r}."]
    else:  # the check runs the inverse chain: more steps to learn from, and a real check
        inverse = _sub_steps(r, b) if op == "+" else _add_steps(r, b) if r >= 0 else None
        check = f"Check: {inverse}, which matches." if inverse else f"Check: {a} < {b}, so it is negative."
        low = f"{steps}."
    return ctx.pick(
        low,
        f"The user wants the {name} of {a} and {b}. {steps}. So the answer is {r}.",
        f"The user asks for the {name} of {a} and {b}. These are small numbers, so I can work it out "
        f"step by step without a tool. {steps}. {check} Let me restate: {a} {op} {b} = {r}. "
        f"I'm confident the answer is {r}.",
    )


@dataclass(frozen=True)
class Unit:
    source: str  # plural names, as a user writes them
    target: str
    factor: int  # target per source (a division when `divide`)
    one: str  # "1 kilometer = 1000 meters"
    divide: bool = False


UNITS = (
    Unit("kilometers", "meters", 1000, "1 kilometer = 1000 meters"),
    Unit("meters", "kilometers", 1000, "1000 meters = 1 kilometer", True),
    Unit("kilograms", "grams", 1000, "1 kilogram = 1000 grams"),
    Unit("grams", "kilograms", 1000, "1000 grams = 1 kilogram", True),
    Unit("hours", "minutes", 60, "1 hour = 60 minutes"),
    Unit("minutes", "hours", 60, "60 minutes = 1 hour", True),
    Unit("minutes", "seconds", 60, "1 minute = 60 seconds"),
    Unit("meters", "centimeters", 100, "1 meter = 100 centimeters"),
    Unit("days", "hours", 24, "1 day = 24 hours"),
    Unit("weeks", "days", 7, "1 week = 7 days"),
    Unit("liters", "milliliters", 1000, "1 liter = 1000 milliliters"),
)
UNIT_QUESTIONS = (
    "How many {target} are in {v} {source}?",
    "Convert {v} {source} to {target}.",
    "What is {v} {source} in {target}?",
    "{v} {source} is how many {target}?",
    "Please convert {v} {source} into {target}.",
)
CELSIUS = tuple(range(-20, 105, 5))
CELSIUS_QUESTIONS = (
    "What is {c} °C in Fahrenheit?",
    "Convert {c} degrees Celsius to Fahrenheit.",
    "{c}°C in °F?",
    "How much is {c} Celsius in Fahrenheit?",
)


def _unit_turn(ctx: Ctx) -> tuple[str, str, str, int]:
    rng = ctx.rng
    if rng.random() < 0.2:
        c = rng.choice(CELSIUS)
        f = c * 9 // 5 + 32
        question = rng.choice(CELSIUS_QUESTIONS).format(c=c)
        reasoning = ctx.pick(
            f"F = C * 9/5 + 32 = {c} * 9/5 + 32 = {f}.",
            f"Celsius to Fahrenheit: F = C * 9/5 + 32. {c} * 9 = {c * 9}, divided by 5 is {c * 9 // 5}, "
            f"plus 32 gives {f}.",
            f"The user wants {c} degrees Celsius in Fahrenheit. The formula is F = C * 9/5 + 32. First "
            f"{c} * 9 = {c * 9}. Then {c * 9} / 5 = {c * 9 // 5}. Then {c * 9 // 5} + 32 = {f}. Check the "
            "other "
            f"way: ({f} - 32) * 5/9 = {f - 32} * 5/9 = {c}, which matches. So {c} °C is {f} °F.",
        )
        return question, reasoning, f"{c} °C is {f} °F.", f
    unit = rng.choice(UNITS)
    r = rng.randint(1, 20)
    v, r = (r * unit.factor, r) if unit.divide else (r, r * unit.factor)
    op = "/" if unit.divide else "*"
    question = rng.choice(UNIT_QUESTIONS).format(v=v, source=unit.source, target=unit.target)
    reasoning = ctx.pick(
        f"{unit.one}, so {v} {unit.source} = {r} {unit.target}.",
        f"Convert {unit.source} to {unit.target}: {unit.one}. So {v} {op} {unit.factor} = {r}. "
        f"The answer is {r} {unit.target}.",
        f"The user wants {v} {unit.source} in {unit.target}. The conversion: {unit.one}. So I compute "
        f"{v} {op} {unit.factor} = {r}. Check the other way: {r} {'*' if unit.divide else '/'} {unit.factor} "
        f"= {v}, which matches. So {v} {unit.source} is {r} {unit.target}.",
    )
    return question, reasoning, f"{v} {unit.source} is {r} {unit.target}.", r


def arithmetic_turn(ctx: Ctx) -> Turn:
    rng = ctx.rng
    if rng.random() < 0.25:
        question, reasoning, answer, number = _unit_turn(ctx)
        expect = {"kind": "final", "number": number}
        return Turn([user(vary(rng, question)), final(reasoning, answer)], expect, {"task": "unit"})
    op = rng.choice("+-*")
    top = MUL_MAX if op == "*" else ADD_MAX
    a, b = rng.randint(0, top), rng.randint(0, top)
    r = {"+": a + b, "-": a - b, "*": a * b}[op]
    forms, questions = OPS[op]
    expr = rng.choice(forms).format(a=a, b=b)
    question = rng.choice(questions).format(x=expr, a=a, b=b)
    sym = {"+": "+", "-": "-", "*": rng.choice(["*", "×"])}[op]
    # no bare "{r}": from the final channel's first token a tiny model copies the wrong number (run 6)
    answer = rng.choice(
        [f"{a} {sym} {b} = {r}.", f"The answer is {r}.", f"It's {r}.", f"{a} {sym} {b} = {r}"]
    )
    messages = [user(vary(rng, question)), final(_arith_reasoning(ctx, op, a, b, r), answer)]
    return Turn(messages, {"kind": "final", "number": r}, {"task": op})


# --- 3. The python tool -----------------------------------------------------------------------------------

WORDS = [
    "apple",
    "river",
    "mountain",
    "green",
    "quick",
    "brown",
    "fox",
    "lazy",
    "dog",
    "summer",
    "winter",
    "music",
    "garden",
    "window",
    "coffee",
    "orange",
    "silver",
    "ocean",
    "forest",
    "bright",
    "little",
    "yellow",
    "planet",
    "rocket",
    "paper",
    "candle",
    "bridge",
    "castle",
    "dragon",
    "pencil",
    "rabbit",
    "thunder",
    "valley",
    "whisper",
]


def _python_task(rng: Random) -> tuple[str, str, str, str, str]:
    """(question, what it asks for, code, the printed value, a final answer) for something worth computing
    in python rather than in the head."""
    kind = rng.choice(["mul", "mul", "add", "pow", "range", "sort", "len", "fact", "mod"])
    if kind == "mul":
        a, b = rng.randint(100, 9999), rng.randint(13, 9999)
        q = rng.choice(
            ["What is {a} * {b}?", "Calculate {a} times {b}.", "Multiply {a} by {b}.", "{a} x {b} = ?"]
        )
        return (
            q.format(a=a, b=b),
            f"the product of {a} and {b}",
            f"print({a} * {b})",
            str(a * b),
            f"{a} × {b} = {a * b}.",
        )
    if kind == "add":
        a, b = rng.randint(1000, 99999), rng.randint(1000, 99999)
        q = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}."])
        return (
            q.format(a=a, b=b),
            f"the sum of {a} and {b}",
            f"print({a} + {b})",
            str(a + b),
            f"{a} + {b} = {a + b}.",
        )
    if kind == "pow":
        b, e = rng.randint(2, 9), rng.randint(8, 30)
        q = rng.choice(["What is {b} to the power of {e}?", "Compute {b}^{e}.", "What's {b}**{e}?"])
        return (
            q.format(b=b, e=e),
            f"{b} to the power of {e}",
            f"print({b} ** {e})",
            str(b**e),
            f"{b} to the power of {e} is {b**e}.",
        )
    if kind == "range":
        n = rng.randint(50, 5000)
        q = rng.choice(
            ["What is the sum of all integers from 1 to {n}?", "Add up the numbers from 1 to {n}."]
        )
        r = n * (n + 1) // 2
        return (
            q.format(n=n),
            f"the sum of 1 to {n}",
            f"print(sum(range(1, {n + 1})))",
            str(r),
            f"The sum of 1 to {n} is {r}.",
        )
    if kind == "sort":
        values = [rng.randint(0, 999) for _ in range(rng.randint(5, 8))]
        shown = ", ".join(map(str, values))
        q = rng.choice(["Sort these numbers: {v}.", "Put {v} in ascending order.", "Can you sort {v}?"])
        ordered = sorted(values)
        return (
            q.format(v=shown),
            f"{len(values)} numbers sorted",
            f"print(sorted([{shown}]))",
            str(ordered),
            f"Sorted: {', '.join(map(str, ordered))}.",
        )
    if kind == "len":
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
        q = rng.choice(['How many characters are in "{t}"?', 'What is the length of the string "{t}"?'])
        return (
            q.format(t=text),
            "the length of a string",
            f'print(len("{text}"))',
            str(len(text)),
            f'"{text}" has {len(text)} characters.',
        )
    if kind == "fact":
        n = rng.randint(8, 20)
        q = rng.choice(["What is {n} factorial?", "Compute {n}!", "What's the factorial of {n}?"])
        r = math.factorial(n)
        return (
            q.format(n=n),
            f"{n} factorial",
            f"import math\nprint(math.factorial({n}))",
            str(r),
            f"{n}! = {r}.",
        )
    a, b = rng.randint(1000, 99999), rng.randint(7, 97)
    q = rng.choice(["What is the remainder of {a} divided by {b}?", "Compute {a} mod {b}."])
    return q.format(a=a, b=b), f"{a} mod {b}", f"print({a} % {b})", str(a % b), f"{a} mod {b} is {a % b}."


def python_turn(ctx: Ctx, stage: str | None = None) -> Turn:
    rng = ctx.rng
    question, what, code, value, answer = _python_task(rng)
    stage = stage or rng.choice(["call", "answer"])
    reasoning = ctx.pick(
        ["Use python.", f"Compute {what} with python."],
        f"The user wants {what}. That is easy to get wrong by hand, so I'll run it in python.",
        f"The user wants {what}. Doing this by hand is slow and error-prone, and I have the python tool. "
        "I'll print the result with a line of code, then report exactly what it prints.",
    )
    calling = call(ctx, reasoning, "python", code)
    if stage == "call":
        return Turn(
            [user(vary(rng, question)), calling], {"kind": "call", "recipient": "python"}, {"stage": stage}
        )
    after = ctx.pick(
        f"Python printed {value}.",
        f"The tool printed {value}. That is {what}.",
        f"The python output is {value}. The code printed exactly {what}, so I can report it directly in the "
        "answer.",
    )
    messages = [user(vary(rng, question)), calling, result(calling, value + "\n"), final(after, answer)]
    return Turn(messages, {"kind": "final", "text": value}, {"stage": stage})


# --- 4. The browser over the bundled docs -----------------------------------------------------------------

TOPN = 2  # results per search: the browser's system prompt already takes ~450 tokens of the budget


@dataclass(frozen=True)
class QA:
    questions: tuple[str, ...]
    queries: tuple[str, ...]
    doc: str  # file name in ossai/tools/docs
    phrase: str  # text of the page that answers (as displayed, links stripped)
    answer: str  # the final answer, without its citation
    pattern: str = ""  # a word for browser.find


QAS: tuple[QA, ...] = (
    QA(
        (
            "How big is a KV cache block in ossai?",
            "What block size does the KV cache use?",
            "How many tokens fit in one KV cache block?",
        ),
        ("kv cache block size", "kv cache blocks"),
        "kv-cache.md",
        "blocks of 16 tokens",
        "ossai's KV cache is paged in blocks of 16 tokens",
        "block",
    ),
    QA(
        (
            "How much memory does the KV cache take by default?",
            "What is the default KV cache size?",
            "By default how much RAM goes to the KV cache?",
        ),
        ("kv cache default size", "kv cache pool RAM"),
        "kv-cache.md",
        "10% of RAM",
        "By default the KV cache pool is 10% of RAM (set it with `--kv-cache-mb`)",
        "RAM",
    ),
    QA(
        ("What is MXFP4?", "Explain the MXFP4 format.", "What kind of number format is MXFP4?"),
        ("MXFP4 format", "MXFP4"),
        "mxfp4.md",
        "MXFP4 is a 4-bit floating-point format",
        "MXFP4 is a 4-bit floating-point format from the Open Compute Project's microscaling (MX) spec",
        "4-bit",
    ),
    QA(
        (
            "How many bits per parameter does MXFP4 use?",
            "What is the storage cost of MXFP4 per weight?",
            "How many bits does an MXFP4 parameter take?",
        ),
        ("MXFP4 bits per parameter",),
        "mxfp4.md",
        "4.25 bits per parameter",
        "MXFP4 takes 4.25 bits per parameter (4-bit values plus a shared 8-bit scale per block of 32)",
        "bits",
    ),
    QA(
        (
            "How long is the sliding window in gpt-oss?",
            "How many tokens does sliding-window attention see?",
            "What is the window size of the sliding layers?",
        ),
        ("sliding window attention tokens", "sliding window size"),
        "sliding-window-attention.md",
        "the last 128",
        "The sliding window covers the last 128 tokens, on the even layers",
        "128",
    ),
    QA(
        (
            "What is an attention sink?",
            "What are attention sinks in gpt-oss?",
            "Explain the learned sink in gpt-oss attention.",
        ),
        ("attention sink", "attention sinks"),
        "attention-sinks.md",
        "learned sink",
        "Each attention head has a learned sink: an extra logit in the softmax with no value vector",
        "sink",
    ),
    QA(
        (
            "How many query heads does gpt-oss have?",
            "How many key-value heads does gpt-oss attention use?",
            "What attention layout does gpt-oss use?",
        ),
        ("query heads key-value heads", "gpt-oss attention heads"),
        "attention.md",
        "64 query heads share 8 key-value heads",
        "gpt-oss uses grouped-query attention: 64 query heads share 8 key-value heads",
        "heads",
    ),
    QA(
        (
            "What is the default keep-alive?",
            "How long does a model stay loaded after a request?",
            "When are idle models unloaded?",
        ),
        ("keep-alive default", "keep-alive unload"),
        "keep-alive.md",
        "(5 minutes by default)",
        "A model is unloaded after the keep-alive, 5 minutes by default",
        "keep-alive",
    ),
    QA(
        (
            "How many models can be loaded at once?",
            "What is the default of --max-loaded-models?",
            "How many models does ossai keep loaded?",
        ),
        ("max loaded models", "max-loaded-models"),
        "keep-alive.md",
        "(3 by default)",
        "At most 3 models are loaded at once by default (`--max-loaded-models`)",
        "loaded",
    ),
    QA(
        (
            "What does ossai bench measure?",
            "What does the bench command report?",
            "How do I measure decode speed?",
        ),
        ("ossai bench measures", "bench prefill decode speed"),
        "cli-bench.md",
        "measures prefill speed",
        "`ossai bench` measures prefill and decode speed, then aggregate throughput and time to first token",
        "speed",
    ),
    QA(
        (
            "What is the default max tokens in ossai chat?",
            "How many tokens does ossai chat generate at most?",
            "What is the chat reply length limit?",
        ),
        ("terminal chat max-tokens", "ossai chat options"),
        "cli-chat.md",
        "(2048 by default)",
        "`ossai chat` uses `--max-tokens` 2048 by default",
        "max-tokens",
    ),
    QA(
        (
            "How do I reset the conversation in ossai chat?",
            "How do I clear the chat history?",
            "Which chat command forgets the conversation?",
        ),
        ("ossai chat reset", "chat commands reset"),
        "cli-chat.md",
        "`/reset` forgets the conversation",
        "Type `/reset` in `ossai chat` to forget the conversation",
        "reset",
    ),
    QA(
        (
            "What is the default temperature of ossai generate?",
            "How do I get greedy output from ossai generate?",
            "What temperature does generate use?",
        ),
        ("ossai generate temperature", "generate temperature default"),
        "cli-generate.md",
        "(1.0 by default; 0 is greedy)",
        "`ossai generate` samples at temperature 1.0 by default; 0 is greedy",
        "temperature",
    ),
    QA(
        (
            "Can ossai pull resume a download?",
            "What happens if a pull is interrupted?",
            "Does ossai pull resume partial files?",
        ),
        ("ossai pull resume", "pull resumes partial files"),
        "cli-pull.md",
        "resumes partial files",
        "Yes: `ossai pull` resumes partial files, so after Ctrl-C just run the same command again",
        "resume",
    ),
    QA(
        (
            "How do I import a checkpoint that is already on disk?",
            "How do I register a local checkpoint?",
            "Can I add a model from a local folder?",
        ),
        ("ossai import checkpoint", "import checkpoint on disk"),
        "cli-pull.md",
        "`ossai import PATH",
        "Use `ossai import PATH`, which validates the checkpoint and registers it (linked in place by "
        "default)",
        "import",
    ),
    QA(
        (
            "Where does ossai ps get its information?",
            "How does ossai ps know what is loaded?",
            "Where do servers record their loaded models?",
        ),
        ("ossai ps run files", "ps loaded models files"),
        "cli-ps.md",
        "`$OSSAI_HOME/run/<pid>.json`",
        "Each server records what it has loaded in `$OSSAI_HOME/run/<pid>.json`, which `ossai ps` reads",
        "run",
    ),
    QA(
        (
            "How does the python tool sandbox code?",
            "Is the python tool sandboxed?",
            "What isolates code run by the python tool?",
        ),
        ("python tool sandbox", "python sandbox bubblewrap"),
        "tool-python.md",
        "bubblewrap (`bwrap`)",
        "The python tool runs code in a bubblewrap (`bwrap`) sandbox with no network",
        "sandbox",
    ),
    QA(
        (
            "Where does ossai read its MCP servers from?",
            "Where are MCP servers configured?",
            "Which file lists the MCP servers?",
        ),
        ("MCP servers config", "mcp.json"),
        "tool-mcp.md",
        "`$OSSAI_HOME/mcp.json`",
        "ossai reads its MCP servers from `$OSSAI_HOME/mcp.json`",
        "mcp.json",
    ),
    QA(
        (
            "How many tokens does a batching step take by default?",
            "What is the token budget of a continuous batching step?",
            "How big are prompt chunks in a step?",
        ),
        ("continuous batching token budget", "batching step budget"),
        "continuous-batching.md",
        "(512 tokens by default)",
        "Each step schedules prompt chunks within a budget of 512 tokens by default",
        "budget",
    ),
    QA(
        (
            "What does OSSAI_DEBUG do?",
            "How do I see tracebacks for errors?",
            "Which variable shows tracebacks?",
        ),
        ("OSSAI_DEBUG", "debug tracebacks environment"),
        "environment.md",
        "show tracebacks",
        "`OSSAI_DEBUG` shows tracebacks for unexpected errors on the command line",
        "DEBUG",
    ),
    QA(
        (
            "How many experts does the router keep per token?",
            "How does gpt-oss route tokens to experts?",
            "How many experts run for each token?",
        ),
        ("router experts per token", "mixture of experts router"),
        "mixture-of-experts.md",
        "keeps the top 4",
        "The router scores every expert and keeps the top 4 per token",
        "router",
    ),
    QA(
        (
            "What is the RoPE theta of gpt-oss?",
            "Which rotary base does gpt-oss use?",
            "What theta do the rotary embeddings use?",
        ),
        ("RoPE theta", "rotary theta"),
        "yarn.md",
        "theta 150000",
        "gpt-oss uses rotary position embeddings with theta 150000",
        "theta",
    ),
    QA(
        (
            "By what factor does YaRN stretch the rotary frequencies?",
            "What is the YaRN scaling factor?",
            "How much does YaRN extend the context?",
        ),
        ("YaRN factor", "yarn scaling factor"),
        "yarn.md",
        "factor of 32",
        "YaRN stretches the rotary frequencies by a factor of 32, from 4,096 to 131,072 tokens",
        "factor",
    ),
    QA(
        (
            "How are responses stored in the Responses API?",
            "Where does ossai keep Responses?",
            "Are responses kept after a restart?",
        ),
        ("Responses API stored", "responses stored sqlite"),
        "responses-api.md",
        "stored in SQLite",
        "Responses are stored in SQLite (`$OSSAI_HOME/responses.db`) and survive restarts",
        "SQLite",
    ),
    QA(
        (
            "How do I set reasoning effort in the Ollama API?",
            "What does think mean in the Ollama API?",
            "How do Ollama clients choose the effort?",
        ),
        ("Ollama think effort", "ollama reasoning effort think"),
        "ollama-api.md",
        "Reasoning effort is set with `think`",
        "In the Ollama API the effort is set with `think`: `true` means medium, or give low, medium or high",
        "think",
    ),
    QA(
        (
            "What is the hidden size of gpt-oss?",
            "How wide is the gpt-oss model?",
            "What hidden size do both gpt-oss models share?",
        ),
        ("gpt-oss hidden size", "hidden size"),
        "model-sizes.md",
        "hidden size of 2880",
        "Both gpt-oss models have a hidden size of 2880",
        "hidden",
    ),
    QA(
        (
            "How big is the gpt-oss-20b checkpoint?",
            "How large is the gpt-oss-120b checkpoint?",
            "How many GB is the checkpoint?",
        ),
        ("checkpoint size gpt-oss", "gpt-oss checkpoint size"),
        "model-sizes.md",
        "| checkpoint size |",
        "The gpt-oss-20b checkpoint is about 13 GB and gpt-oss-120b about 65 GB",
        "checkpoint",
    ),
    QA(
        (
            "How does the browser search local documents?",
            "What does the browser use to index docs?",
            "How are local docs ranked in search?",
        ),
        ("browser local index search", "browser BM25 ranking"),
        "tool-browser.md",
        "BM25 ranking",
        "The browser searches a local SQLite full-text index with BM25 ranking",
        "BM25",
    ),
    QA(
        (
            "How does the server answer a 401?",
            "Why does the server answer 401?",
            "What should I do about a 401 error?",
        ),
        ("server answers 401", "401 api key"),
        "troubleshooting.md",
        "An API key is set",
        "A 401 means an API key is set: send `Authorization: Bearer KEY`",
        "401",
    ),
    QA(
        (
            "What does the prefix cache report?",
            "How are prefix cache hits shown?",
            "Where do I see prefix cache hits?",
        ),
        ("prefix cache hits cached_tokens", "prefix cache usage"),
        "prefix-cache.md",
        "`cached_tokens`",
        "Usage reports the prefix cache hits as `cached_tokens`",
        "cached",
    ),
)


class Browser:
    """The real browser tool over the bundled docs, with a private index (one per process).

    A session's outputs depend only on the calls made in it so far (the docs do not change while we
    generate), so each distinct sequence of calls runs once and is replayed from a cache after that."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="ossai-data-browser-")
        self.tool = BrowserTool(LocalIndex([bundled_docs()], Path(self.dir.name) / "index.sqlite3"))
        self.namespace: ToolNamespaceConfig = self.tool.namespace()  # what the runtime's system message has
        self.sessions = 0
        self.cache: dict[tuple[str, ...], str] = {}

    def session(self) -> Callable[[str, dict[str, Any]], str]:
        self.sessions += 1
        key = f"data-{self.sessions}"
        done: list[str] = []  # the calls made so far: the cache key
        pending: list[tuple[str, str]] = []  # calls answered from the cache, not yet run in the real session

        def run(function: str, args: dict[str, Any]) -> str:
            arguments = compact(args)
            done.append(f"{function} {arguments}")
            calls = tuple(done)
            if calls in self.cache:
                pending.append((function, arguments))
                return self.cache[calls]
            for name, earlier in pending:  # bring the real session to the same state first
                self.tool.call(f"browser.{name}", earlier, key)
            pending.clear()
            out = self.tool.call(f"browser.{function}", arguments, key)
            if out.error:
                raise RuntimeError(f"browser.{function}({arguments}) failed: {out.text}")
            self.cache[calls] = out.text
            return out.text

        return run


@cache
def browser() -> Browser:
    return Browser()


def page_lines(text: str) -> dict[int, str]:
    """The `L{n}: ...` lines of a browser display, links written as their text."""
    return {int(m[1]): strip_links(m[2]) for m in re.finditer(r"^L(\d+): (.*)$", text, re.M)}


def find_lines(
    lines: dict[int, str], phrase: str, within: Sequence[int] | None = None
) -> tuple[int, int] | None:
    """The first and last line of the first place `phrase` occurs (wrapped lines joined by spaces)."""
    numbers = sorted(lines) if within is None else [n for n in sorted(lines) if n in within]
    joined, starts = "", []
    for n in numbers:
        starts.append((len(joined), n))
        joined += lines[n] + " "
    at = joined.find(phrase)
    if at < 0:
        return None
    first = max(n for s, n in starts if s <= at)
    last = max(n for s, n in starts if s < at + len(phrase))
    return first, last


def cite(cursor: int, lines: tuple[int, int]) -> str:
    a, b = lines
    return f"【{cursor}†L{a}】" if a == b else f"【{cursor}†L{a}-L{b}】"


def _result_lines(search_text: str, link: int) -> list[int]:
    """The lines of result `link` on a search page."""
    lines = page_lines(search_text)
    raw = {int(m[1]): m[2] for m in re.finditer(r"^L(\d+): (.*)$", search_text, re.M)}
    start = next(n for n, t in raw.items() if t.startswith(f"- 【{link}†"))
    out = [start]
    for n in sorted(lines):
        if n > start and not raw[n].startswith("- 【"):
            out.append(n)
        elif n > start:
            break
    return out


def browser_outputs() -> Iterator[str]:
    """Every text the browser can return in these conversations (searches, pages and finds of all QAS)."""
    for qa in QAS:
        for query in qa.queries:
            run = browser().session()
            search_text = run("search", {"query": query, "topn": TOPN})
            yield search_text
            for link in re.findall(r"【(\d+)†", search_text):
                yield run("open", {"id": int(link), "cursor": 0})
            yield run("find", {"pattern": qa.pattern, "cursor": 1})


def browser_turn(ctx: Ctx, stage: str | None = None) -> Turn:
    """search -> (the snippet answers: cite the results page) or open -> [find] -> cite the page."""
    rng = ctx.rng
    qa = rng.choice(QAS)
    question = vary(rng, rng.choice(held(qa.questions, ctx.split)))
    run = browser().session()
    query = rng.choice(qa.queries)
    search_args = {"query": query, "topn": TOPN}
    search_text = run("search", search_args)
    link = next(
        (int(m[1]) for m in re.finditer(r"【(\d+)†[^†】]*†([^】]*)】", search_text) if m[2] == qa.doc), None
    )
    if link is None:
        raise LookupError(f"query {query!r} does not find {qa.doc} in the top {TOPN}")
    snippet = find_lines(page_lines(search_text), qa.phrase, _result_lines(search_text, link))
    title = re.search(rf"【{link}†([^†】]*)†", search_text)[1]  # type: ignore[index]
    messages: list[Message] = [user(question)]
    reasoning = ctx.pick(
        [f"Search the docs for {query}.", "Look it up in the docs."],
        f"The user asks about {query}. I'll search the ossai docs with the browser.",
        f"The user asks a specific question about ossai or gpt-oss: {query}. I should not guess details; the "
        "browser can search the bundled docs, so search first, then read the best result and cite it.",
    )
    searching = call(ctx, reasoning, "browser.search", compact(search_args))
    stages = ["search", "answer"] if snippet else ["search", "open", "answer"]
    if snippet is None and rng.random() < 0.3:
        stages.insert(2, "find")
    stage = stage if stage in stages else rng.choice(stages)
    if stage == "search":
        messages.append(searching)
        return Turn(
            messages,
            {"kind": "call", "recipient": "browser.search", "arguments": search_args},
            {"stage": stage, "doc": qa.doc, "phrase": qa.phrase},
        )
    messages += [searching, result(searching, search_text)]
    if snippet is not None:  # the results page shows the answer: cite it (cursor 0)
        reasoning = ctx.pick(
            f"Result {link} says it.",
            f"Result {link} ({title}) already answers it in its snippet. Cite the results page.",
            f"The search returned {title} as result {link}, and its snippet on lines "
            f"{snippet[0]}-{snippet[1]} "
            "already contains the answer, so there is no need to open the page. Answer briefly and cite "
            "those lines of the results page.",
        )
        messages.append(final(reasoning, f"{qa.answer}{cite(0, snippet)}."))
        return Turn(
            messages,
            {"kind": "final", "citation": [0, *snippet]},
            {"stage": stage, "doc": qa.doc, "phrase": qa.phrase},
        )
    reasoning = ctx.pick(
        f"Open result {link}.",
        f"Result {link} ({title}) looks right. Open it to read the details.",
        f"Result {link}, {title}, is the page that should answer this, but the snippet does not show the "
        "exact answer. Open it and read the relevant lines before answering.",
    )
    open_args = {"id": link}
    opening = call(ctx, reasoning, "browser.open", compact(open_args))
    if stage == "open":
        messages.append(opening)
        return Turn(
            messages,
            {"kind": "call", "recipient": "browser.open", "arguments": open_args},
            {"stage": stage, "doc": qa.doc, "phrase": qa.phrase},
        )
    page_text = run("open", open_args)
    lines = find_lines(page_lines(page_text), qa.phrase)
    if lines is None:
        raise LookupError(f"{qa.phrase!r} is not on the page {qa.doc}")
    messages += [opening, result(opening, page_text)]
    if "find" in stages:
        reasoning = ctx.pick(
            f"Find {qa.pattern!r}.",
            f"The page is open. Find the lines about {qa.pattern!r}.",
            f"The page is open as cursor 1. Rather than read all of it, find the lines that mention "
            f"{qa.pattern!r}, which is where the answer should be.",
        )
        find_args = {"pattern": qa.pattern}
        finding = call(ctx, reasoning, "browser.find", compact(find_args))
        if stage == "find":
            messages.append(finding)
            return Turn(
                messages,
                {"kind": "call", "recipient": "browser.find", "arguments": find_args},
                {"stage": stage, "doc": qa.doc, "phrase": qa.phrase},
            )
        messages += [finding, result(finding, run("find", find_args))]
    shown = " ".join(page_lines(page_text)[n] for n in range(lines[0], lines[1] + 1))
    reasoning = ctx.pick(
        f"Lines {lines[0]}-{lines[1]} answer it.",
        f"Line {lines[0]} of the page says: {shown.strip()} That answers the question; cite it.",
        f"Reading the page ({title}, cursor 1): line {lines[0]} says {shown.strip()!r}. That answers the "
        f"question directly. Answer in one sentence and cite lines {lines[0]}-{lines[1]} of cursor 1.",
    )
    messages.append(final(reasoning, f"{qa.answer}{cite(1, lines)}."))
    return Turn(
        messages,
        {"kind": "final", "citation": [1, *lines]},
        {"stage": stage, "doc": qa.doc, "phrase": qa.phrase},
    )


# --- 5. Function tools ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # string, integer, number, boolean, enum
    values: tuple[Any, ...]  # the choices (enum, string, number) or (lo, hi) for integers


@dataclass(frozen=True)
class WordBank:
    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    params: tuple[Param, ...]


CITIES = (
    "Paris",
    "Tokyo",
    "Berlin",
    "Madrid",
    "Lima",
    "Cairo",
    "Oslo",
    "Seoul",
    "Boston",
    "Denver",
    "Rome",
    "Dublin",
    "Nairobi",
    "Sydney",
    "Toronto",
    "Mumbai",
    "Lisbon",
    "Vienna",
)
PEOPLE = (
    "Alice",
    "Bob",
    "Carla",
    "Dmitri",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Keiko",
    "Liam",
)
DATES = ("2025-03-14", "2025-07-01", "2026-01-20", "2024-11-05", "2025-12-24", "2026-05-09")
TEXTS = ("hello world", "quarterly review", "team lunch", "project kickoff", "weekly sync", "birthday party")
REGIONS = ("Europe", "Asia", "Africa", "Oceania", "South America")
VENUES = ("Main Hall", "Studio B", "Riverside Park", "Room 12")
KEYWORDS = ("solar", "harbor", "maple", "copper")
BRANDS = ("Acme", "Globex", "Initech", "Umbrella")
STATIONS = ("North Station", "Central", "Harbor Point")
WEEKDAYS = ("Monday", "Tuesday", "Friday", "Sunday")
AMOUNTS = (12.5, 100.0, 42.75, 3.2, 250.0, 9.99, 75.5, 1.5, 18.0, 640.25)

TRAIN_WORDS = WordBank(
    verbs=(
        "get",
        "book",
        "convert",
        "send",
        "find",
        "track",
        "set",
        "create",
        "cancel",
        "check",
        "schedule",
        "order",
        "play",
        "translate",
        "calculate",
        "reserve",
        "update",
        "delete",
        "list",
        "share",
        "rename",
        "pause",
    ),
    nouns=(
        "weather",
        "table",
        "currency",
        "email",
        "recipe",
        "package",
        "alarm",
        "flight",
        "hotel",
        "reminder",
        "song",
        "ticket",
        "invoice",
        "meeting",
        "taxi",
        "playlist",
        "note",
        "event",
        "contact",
        "movie",
        "stock_price",
        "timer",
        "podcast",
        "appointment",
        "news",
        "exchange_rate",
        "password",
        "shopping_list",
    ),
    params=(
        Param("city", "string", CITIES),
        Param("date", "string", DATES),
        Param("time", "string", ("09:00", "18:30", "12:15", "07:45", "21:00")),
        Param("language", "string", ("French", "Spanish", "German", "Japanese", "Italian")),
        Param("name", "string", PEOPLE),
        Param("title", "string", TEXTS),
        Param("email", "string", ("ana@example.com", "bo@example.org", "team@example.net")),
        Param("cuisine", "string", ("Italian", "Thai", "Mexican", "Indian")),
        Param("genre", "string", ("jazz", "rock", "pop", "classical")),
        Param("destination", "string", CITIES),
        Param("message", "string", TEXTS),
        Param("count", "integer", (1, 10)),
        Param("guests", "integer", (1, 12)),
        Param("nights", "integer", (1, 14)),
        Param("seats", "integer", (1, 6)),
        Param("quantity", "integer", (1, 20)),
        Param("minutes", "integer", (1, 120)),
        Param("year", "integer", (1990, 2026)),
        Param("limit", "integer", (1, 50)),
        Param("amount", "number", AMOUNTS),
        Param("price", "number", AMOUNTS),
        Param("weight", "number", AMOUNTS),
        Param("distance", "number", AMOUNTS),
        Param("urgent", "boolean", ()),
        Param("express", "boolean", ()),
        Param("vegetarian", "boolean", ()),
        Param("notify", "boolean", ()),
        Param("recurring", "boolean", ()),
        Param("insurance", "boolean", ()),
        Param("unit", "enum", ("celsius", "fahrenheit")),
        Param("priority", "enum", ("low", "normal", "high")),
        Param("size", "enum", ("small", "medium", "large")),
        Param("mode", "enum", ("driving", "walking", "transit")),
        Param("format", "enum", ("pdf", "csv", "json")),
        Param("cabin", "enum", ("economy", "business", "first")),
        # The heldout parameters' values under train names: new names must not come with untrained tokens.
        Param("continent", "string", REGIONS),
        Param("place", "string", VENUES),
        Param("tag", "string", KEYWORDS),
        Param("company", "string", BRANDS),
        Param("pickup", "string", STATIONS),
        Param("day", "string", WEEKDAYS),
        Param("plan", "enum", ("bronze", "silver", "gold")),
        Param("theme", "enum", ("red", "green", "blue")),
        Param("period", "enum", ("morning", "evening", "night")),
        Param("pace", "enum", ("slow", "standard", "fast")),
        Param("layout", "enum", ("portrait", "landscape")),
    ),
)
HELDOUT_WORDS = WordBank(
    verbs=(
        "fetch",
        "compute",
        "dispatch",
        "register",
        "archive",
        "locate",
        "estimate",
        "submit",
        "renew",
        "grade",
        "draft",
        "monitor",
        "approve",
        "assign",
        "verify",
        "refund",
        "publish",
    ),
    nouns=(
        "tide",
        "shipment",
        "lesson",
        "vaccine",
        "warranty",
        "mortgage",
        "pollen_level",
        "parking_spot",
        "gym_class",
        "bike",
        "ferry",
        "concert",
        "visa",
        "prescription",
        "thermostat",
        "garden",
        "sensor",
        "damage_claim",
        "library_loan",
        "vet_visit",
        "moon_phase",
    ),
    params=(
        Param("region", "string", REGIONS),
        Param("venue", "string", VENUES),
        Param("owner", "string", PEOPLE),
        Param("recipient", "string", PEOPLE),
        Param("label", "string", TEXTS),
        Param("keyword", "string", KEYWORDS),
        Param("brand", "string", BRANDS),
        Param("station", "string", STATIONS),
        Param("weekday", "string", WEEKDAYS),
        Param("copies", "integer", (1, 9)),
        Param("rounds", "integer", (1, 8)),
        Param("slots", "integer", (1, 16)),
        Param("passengers", "integer", (1, 7)),
        Param("floors", "integer", (1, 40)),
        Param("deposit", "number", AMOUNTS),
        Param("fee", "number", AMOUNTS),
        Param("radius", "number", AMOUNTS),
        Param("height", "number", AMOUNTS),
        Param("signature", "boolean", ()),
        Param("accessible", "boolean", ()),
        Param("refundable", "boolean", ()),
        Param("anonymous", "boolean", ()),
        Param("verbose", "boolean", ()),
        Param("tier", "enum", ("bronze", "silver", "gold")),
        Param("color", "enum", ("red", "green", "blue")),
        Param("shift", "enum", ("morning", "evening", "night")),
        Param("speed", "enum", ("slow", "standard", "fast")),
        Param("orientation", "enum", ("portrait", "landscape")),
    ),
)
WORDS_BY_SPLIT: dict[str, WordBank] = {"train": TRAIN_WORDS, "heldout": HELDOUT_WORDS}

DESCRIPTIONS = (
    "{V} the {n}.",
    "{V} a {n}.",
    "Use this to {v} the {n}.",
    "{V} the {n} for the user.",
    "{V} a {n} with the given details.",
)
REQUESTS = (
    "Please {v} the {n} with {args}.",
    "Can you {v} a {n}? {Args}.",
    "I want to {v} the {n}: {args}.",
    "{V} the {n}, {args}.",
    "Could you {v} the {n} for me? Use {args}.",
    "{V} a {n} with {args}, please.",
)


@dataclass
class Function:
    name: str
    verb: str
    noun: str  # with spaces
    description: str
    params: list[tuple[Param, bool]]  # (param, required)

    def spec(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for p, _ in self.params:
            schema: dict[str, Any] = {"type": "string" if p.kind == "enum" else p.kind}
            if p.kind == "enum":
                schema["enum"] = list(p.values)
            schema["description"] = f"The {p.name.replace('_', ' ')}"
            props[p.name] = schema
        parameters = {
            "type": "object",
            "properties": props,
            "required": [p.name for p, req in self.params if req],
        }
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": parameters},
        }


def heldout_name(name: str) -> bool:
    """One (verb, noun) pair in five is kept out of training: the heldout split's functions are schemas
    never seen in training (names, descriptions, parameter sets), built from words the model has seen.
    (Entirely new words would need tokens a model trained from scratch has never produced.)"""
    return zlib.crc32(name.encode()) % 5 == 0


def make_functions(rng: Random, split: Split, k: int) -> list[Function]:
    words = TRAIN_WORDS
    out: list[Function] = []
    names: set[str] = set()
    while len(out) < k:
        verb, noun = rng.choice(words.verbs), rng.choice(words.nouns)
        name = f"{verb}_{noun}"
        if name in names or heldout_name(name) != (split == "heldout"):
            continue
        names.add(name)
        chosen = rng.sample(words.params, rng.randint(1, 4))
        n_required = rng.randint(1, len(chosen))
        params = [(p, i < n_required) for i, p in enumerate(chosen)]
        n = noun.replace("_", " ")
        description = rng.choice(DESCRIPTIONS).format(V=verb.capitalize(), v=verb, n=n)
        out.append(Function(name, verb, n, description, params))
    return out


def _value(rng: Random, p: Param) -> Any:
    if p.kind == "integer":
        return rng.randint(*p.values)
    if p.kind == "boolean":
        return rng.random() < 0.5
    return rng.choice(p.values)


def _phrase(rng: Random, p: Param, value: Any) -> str:
    """How a user says `p = value`, with the parameter's own words so the model learns to copy them."""
    words = p.name.replace("_", " ")
    if p.kind == "boolean":
        return rng.choice(
            [
                f"with {words}" if value else f"without {words}",
                f"{words} {'yes' if value else 'no'}",
                f"{words} {str(value).lower()}",
            ]
        )
    return rng.choice([f"{words} {value}", f"{words}: {value}", f"{words} set to {value}"])


def function_turn(ctx: Ctx, stage: str | None = None, functions: list[Function] | None = None) -> Turn:
    rng = ctx.rng
    if functions is None:
        functions = make_functions(rng, ctx.split, rng.randint(1, 5))
        ctx.tools = [f.spec() for f in functions]
    target = rng.choice(functions)
    args: dict[str, Any] = {}
    phrases = []
    for p, required in target.params:
        if required or rng.random() < 0.5:
            args[p.name] = _value(rng, p)
            phrases.append(_phrase(rng, p, args[p.name]))
    said = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    request = rng.choice(REQUESTS).format(
        v=target.verb, V=target.verb.capitalize(), n=target.noun, args=said, Args=said[0].upper() + said[1:]
    )
    filled = ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())
    others = [f.name for f in functions if f is not target]
    reasoning = ctx.pick(
        [f"Call {target.name}.", f"Use {target.name} with {filled}."],
        f"The user wants to {target.verb} the {target.noun}. {target.name} does that. Arguments: {filled}.",
        f"The user wants to {target.verb} the {target.noun}. Among the tools, {target.name} matches: "
        f"{target.description!r}"
        + (f" The others ({', '.join(others)}) do something else." if others else "")
        + f" From the message: {filled}. Everything required is given, so call it.",
    )
    calling = call(ctx, reasoning, target.name, compact(args))
    stage = stage or rng.choice(["call", "call", "answer"])
    expect = {"kind": "call", "recipient": f"functions.{target.name}", "arguments": args}
    if stage == "call":
        return Turn([user(request), calling], expect, {"stage": stage})
    code = f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}-{rng.randint(1000, 9999)}"  # a bounded set of tokens
    if rng.random() < 0.15:
        output = {"status": "error", "message": f"the {target.noun} service is unavailable"}
        after = ctx.pick(
            "It failed.",
            "The tool reported an error: the service is unavailable. Tell the user.",
            f"{target.name} returned an error: {output['message']}. I should not pretend it "
            "worked; tell the user it failed and that they can try again later.",
        )
        answer = (
            f"Sorry, I couldn't {target.verb} the {target.noun}: {output['message']}. Please try again later."
        )
    else:
        output = {"status": "ok", "id": code}
        after = ctx.pick(
            f"Done, id {code}.",
            f"{target.name} returned status ok with id {code}. Confirm it.",
            f"{target.name} returned status ok and the id {code}. The request went through, so "
            "confirm it to the user and give them the id for reference.",
        )
        answer = rng.choice(
            [
                f"Done! Your {target.noun} request went through (id {code}).",
                f"All set: {target.verb} {target.noun} succeeded. Reference: {code}.",
            ]
        )
    messages = [user(request), calling, result(calling, compact(output)), final(after, answer)]
    return Turn(
        messages, {"kind": "final", "text": code if output["status"] == "ok" else "Sorry"}, {"stage": stage}
    )


# --- Instructions users put in system prompts -----------------------------------------------------------

INSTRUCTIONS = (
    "You are a helpful assistant.",
    "Answer briefly.",
    "You are a friendly assistant. Keep answers short.",
    "Be concise and accurate.",
    "You are ossai's assistant. Be helpful and polite.",
    "Always answer in English.",
    "You are a helpful assistant that uses tools when they help.",
)
