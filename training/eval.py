"""Score an ossai-demo checkpoint on held-out conversations, through the real runtime.

    python -m training.eval CHECKPOINT [--n 50] [--seed 1234] [--json] [--device auto]

For every category, `n` held-out examples (`training.data.examples(seed, "heldout", category=...)`) are cut
before their last assistant message; that prompt is rendered with `ossai.harmony.render_chat` (the same
tools and built-in tools), generated greedily by `ossai.engine.Engine` up to the first `<|return|>` or
`<|call|>`, parsed with `ossai.harmony.StreamParser`, and checked against what the example's last message
does (`Example.expect`). Function calling is scored twice: `function` draws new conversations from the train
word lists (seen names, new combinations and values), `function_unseen` from the heldout word lists (names,
descriptions and parameters the model never saw). Arithmetic prompts are balanced over low/medium/high effort
so the reasoning-length ratio compares like with like.

`evaluate(engine, n, seed)` returns the report as a dict; `reference_outputs(n, seed)` is what a perfect
model generates, which scores 100% on every figure (tests/training checks that).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ossai.engine import Engine, Request, SamplingParams
from ossai.harmony import STOP_TOKENS, JsonConstraint, StreamParser, load_encoding
from ossai.store.resources import cpu_name
from training.data import Example, examples
from training.tasks import EFFORTS

CATEGORIES = ("chat", "arithmetic", "python", "browser", "function", "function_unseen", "multiturn")
TARGETS = {  # figure -> the least it should be
    "harmony_valid": 0.99,
    "arithmetic_correct": 0.90,
    "tool_json_valid": 0.99,
    "function_right_tool": 0.90,
    "high_low_reasoning_ratio": 2.0,
}
MAX_NEW_TOKENS = 512
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CITATION = re.compile(r"【(\d+)†L(\d+)(?:-L(\d+))?】")


@dataclass
class Outcome:
    category: str
    effort: str
    expect: dict[str, Any]
    stage: str | None
    valid: bool = False
    stop: str | None = None
    reasoning_tokens: int = 0
    recipient: str | None = None  # the call the model made, if any
    arguments: str | None = None
    final: str | None = None
    warnings: list[str] = field(default_factory=list)


def eval_examples(n: int, seed: int) -> list[tuple[str, Example]]:
    """(category, example) for every category, n each."""
    out: list[tuple[str, Example]] = []
    for category in CATEGORIES:
        if category == "function":  # seen word lists, fresh conversations: the train split at the eval seed
            stream = examples(seed, "train", category="function")
        elif category == "function_unseen":
            stream = examples(seed, "heldout", category="function")
        else:
            stream = examples(seed, "heldout", category=category)
        if category == "arithmetic":  # as many of each effort, so the reasoning-length ratio is fair
            quota = {effort: n // 3 + (i < n % 3) for i, effort in enumerate(EFFORTS)}
            stream = (ex for ex in stream if _take(quota, ex.effort))
        out += [(category, example) for example in itertools.islice(stream, n)]
    return out


def _take(quota: dict[str, int], effort: str) -> bool:
    quota[effort] -= 1
    return quota[effort] >= 0


def reference_outputs(n: int, seed: int) -> list[tuple[str, Example, list[int]]]:
    """(category, example, the tokens the example's last step generates): a perfect model's outputs."""
    out = []
    for category, example in eval_examples(n, seed):
        tokens = example.render().tokens
        out.append((category, example, tokens[len(example.prompt()) :]))
    return out


def score(category: str, example: Example, tokens: Sequence[int]) -> Outcome:
    """Parse one generation and record what it did."""
    enc = load_encoding()
    parser = StreamParser()
    parser.feed_all(tokens)
    messages = parser.messages
    outcome = Outcome(category, example.effort, example.expect, example.info.get("stage"))
    outcome.stop, outcome.warnings = parser.stop_reason, list(parser.warnings)
    thought = [m.channel == "analysis" and m.recipient is None for m in messages]
    text = lambda m: "".join(c.text for c in m.content)  # noqa: E731
    reasoning = [text(m) for m, t in zip(messages, thought, strict=True) if t]
    outcome.reasoning_tokens = sum(len(enc.encode(r, disallowed_special=())) for r in reasoning)
    if messages:
        last = messages[-1]
        if last.recipient is not None:
            outcome.recipient, outcome.arguments = last.recipient, text(last)
        elif last.channel == "final":
            outcome.final = text(last)
    # Harmony-valid: clean parse, reasoning first, then exactly one final (<|return|>) or one call (<|call|>).
    shape = (
        len(messages) >= 2
        and all(thought[:-1])
        and (
            (parser.stop_reason == "return" and outcome.final is not None)
            or (parser.stop_reason == "call" and outcome.recipient is not None)
        )
    )
    outcome.valid = bool(shape and not parser.warnings)
    return outcome


def _json_object(arguments: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(arguments or "")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _duplicate_keys(arguments: str | None) -> bool:
    """Whether the JSON repeats a key in an object (valid JSON that most parsers silently collapse)."""
    seen_twice = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal seen_twice
        seen_twice |= len({k for k, _ in items}) < len(items)
        return dict(items)

    try:
        json.loads(arguments or "", object_pairs_hook=pairs)
    except ValueError:
        return False
    return seen_twice


def _rate(hits: Sequence[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.mean(values), 2) if values else None


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Every figure of the report from the scored generations."""
    by: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by[o.category].append(o)
    calls = lambda cat: [o for o in by[cat] if o.expect["kind"] == "call"]  # noqa: E731
    finals = lambda cat: [o for o in by[cat] if o.expect["kind"] == "final"]  # noqa: E731
    report: dict[str, Any] = {"harmony_valid": _rate([o.valid for o in outcomes])}
    report["harmony_valid_by_category"] = {c: _rate([o.valid for o in by[c]]) for c in CATEGORIES}

    def correct(o: Outcome) -> bool:
        if o.final is None:
            return False
        if "number" in o.expect:  # the last number of the answer is the result
            numbers = _NUMBER.findall(o.final)
            return bool(numbers) and float(numbers[-1]) == float(o.expect["number"])
        return str(o.expect.get("text", "")) in o.final

    report["arithmetic_correct"] = _rate([correct(o) for o in by["arithmetic"]])
    report["multiturn_correct"] = _rate([correct(o) for o in finals("multiturn") if "number" in o.expect])

    # Reasoning length per effort: on arithmetic (efforts balanced there) and over every prompt.
    per_effort: dict[str, dict[str, float | None]] = {}
    for name, pool in (("arithmetic", by["arithmetic"]), ("all", list(outcomes))):
        per_effort[name] = {e: _mean([o.reasoning_tokens for o in pool if o.effort == e]) for e in EFFORTS}
    report["reasoning_tokens"] = per_effort
    low, high = per_effort["arithmetic"]["low"], per_effort["arithmetic"]["high"]
    report["high_low_reasoning_ratio"] = round(high / low, 2) if low and high is not None else None

    # Tool calls: JSON validity of every call the model made to a JSON tool (functions, browser).
    json_calls = [o for o in outcomes if o.recipient and o.recipient != "python"]
    report["tool_json_valid"] = _rate([_json_object(o.arguments) is not None for o in json_calls])
    report["tool_json_calls"] = len(json_calls)
    report["tool_json_duplicate_keys"] = _rate([_duplicate_keys(o.arguments) for o in json_calls])
    for cat in ("function", "function_unseen"):
        expected = calls(cat)
        report[f"{cat}_call_rate"] = _rate([o.recipient is not None for o in expected])
        report[f"{cat}_right_tool"] = _rate([o.recipient == o.expect["recipient"] for o in expected])
        report[f"{cat}_json_valid"] = _rate(
            [_json_object(o.arguments) is not None for o in expected if o.recipient]
        )
        report[f"{cat}_args_exact"] = _rate(
            [
                o.recipient == o.expect["recipient"] and _json_object(o.arguments) == o.expect["arguments"]
                for o in expected
            ]
        )
        names = [set(_json_object(o.arguments) or ()) == set(o.expect["arguments"]) for o in expected]
        report[f"{cat}_arg_names_right"] = _rate(names)
        report[f"{cat}_answer_correct"] = _rate([correct(o) for o in finals(cat)])

    report["python_call_rate"] = _rate([o.recipient == "python" for o in calls("python")])
    report["python_answer_correct"] = _rate([correct(o) for o in finals("python")])
    browser_calls = calls("browser")
    report["browser_call_rate"] = _rate([o.recipient == o.expect["recipient"] for o in browser_calls])
    for fn in ("search", "open", "find"):
        pool = [o for o in browser_calls if o.expect["recipient"] == f"browser.{fn}"]
        report[f"browser_{fn}_rate"] = _rate([o.recipient == f"browser.{fn}" for o in pool])

    def cited(o: Outcome, exact: bool) -> bool:
        found = [m for m in _CITATION.finditer(o.final or "")]
        if not exact:
            return bool(found)
        cursor, a, b = o.expect["citation"]
        return any(int(m[1]) == cursor and int(m[2]) <= b and int(m[3] or m[2]) >= a for m in found)

    report["browser_citation_rate"] = _rate([cited(o, False) for o in finals("browser")])
    report["browser_citation_correct"] = _rate([cited(o, True) for o in finals("browser")])
    # A call where an answer was due, or the reverse: the model used (or skipped) a tool at the wrong time.
    report["wrong_action_rate"] = _rate(
        [(o.recipient is None) != (o.expect["kind"] == "final") for o in outcomes]
    )
    report["n"] = {c: len(by[c]) for c in CATEGORIES}
    report["targets"] = {k: {"min": v, "ok": (report[k] or 0) >= v} for k, v in TARGETS.items()}
    return report


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}


def evaluate(
    engine: Engine,
    n: int = 50,
    seed: int = 1234,
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    constrain: bool = False,
) -> dict[str, Any]:
    """Generate and score `n` held-out prompts per category with `engine` (greedy); returns every figure.

    A generation may run to twice its reference length plus 32 tokens, and at most `max_new_tokens`.
    `constrain`: function arguments held to their schema as the server holds them
    (`ossai.harmony.JsonConstraint`); without it, the model alone."""
    started = time.perf_counter()
    cases = eval_examples(n, seed)
    streams = []
    for _, example in cases:
        prompt = example.prompt()
        target = len(example.render().tokens) - len(prompt)  # what the reference answer takes
        limit = min(max_new_tokens, 2 * target + 32, engine.max_model_len - len(prompt))
        params = SamplingParams(
            max_tokens=max(1, limit), temperature=0, stop_token_ids=frozenset(STOP_TOKENS)
        )
        constraint = JsonConstraint.for_request(example.tools) if constrain else None
        # all at once: the engine batches them
        streams.append(engine.submit(Request(prompt, params, constraint=constraint)))
    outcomes, generated = [], 0
    for (category, example), stream in zip(cases, streams, strict=True):
        tokens = [t for out in stream for t in out.token_ids]
        generated += len(tokens)
        outcomes.append(score(category, example, tokens))
    report = summarize(outcomes)
    seconds = time.perf_counter() - started
    report["generated_tokens"] = generated
    report["seconds"] = round(seconds, 1)
    report["seed"], report["n_per_category"] = seed, n
    report["machine"] = machine() | {"device": str(engine.device), "threads": engine.threads}
    return report


NOT_RATES = frozenset({"high_low_reasoning_ratio", "tool_json_calls", "generated_tokens", "seconds", "seed"})


def _fmt(value: Any, rate: bool = True) -> str:
    if value is None:
        return "-"
    if rate and isinstance(value, float):
        return f"{100 * value:.1f}%"
    return str(value)


def print_table(report: dict[str, Any]) -> None:
    rows = [(c, report["n"][c], report["harmony_valid_by_category"][c]) for c in CATEGORIES]
    print(f"{'category':<17}{'n':>5}  {'harmony-valid':>13}")
    for category, n, valid in rows:
        print(f"{category:<17}{n:>5}  {_fmt(valid):>13}")
    print()
    skip = {
        "harmony_valid_by_category",
        "n",
        "targets",
        "reasoning_tokens",
        "machine",
        "command",
        "checkpoint",
    }
    for key, value in report.items():
        if key not in skip:
            mark = ""
            if key in report["targets"]:
                verdict = "ok" if report["targets"][key]["ok"] else "MISSED"
                mark = f"   (target >= {_fmt(TARGETS[key], key not in NOT_RATES)}: {verdict})"
            print(f"{key:<32}{_fmt(value, key not in NOT_RATES):>10}{mark}")
    for pool, efforts in report["reasoning_tokens"].items():
        shown = ", ".join(f"{e} {_fmt(v, False)}" for e, v in efforts.items())
        print(f"{'reasoning tokens (' + pool + ')':<32}{shown}")
    m = report["machine"]
    print(f"\n{report['command']} ({report['checkpoint']})")
    print(f"{m['cpu']}, {m['cores']} cores, {m['device']}, {m['threads']} threads")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--n", type=int, default=50, help="prompts per category")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--constrain", action="store_true",
                   help="hold function arguments to their schema, as `ossai serve` does")  # fmt: skip
    args = p.parse_args(argv)
    engine = Engine.load(args.checkpoint, device=args.device, threads=args.threads)
    try:
        report = evaluate(engine, args.n, args.seed, constrain=args.constrain)
    finally:
        engine.close()
    command = " ".join(["python -m training.eval", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    report = {"command": command, "checkpoint": str(args.checkpoint), **report}
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
