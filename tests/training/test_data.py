"""The synthetic data generator (training.data, training.tasks) and the evaluation (training.eval)."""

from __future__ import annotations

import collections
import itertools
import json
import re
import statistics
from pathlib import Path

import pytest

from ossai.engine import Engine
from ossai.harmony import CALL, END, RETURN, START, STOP_TOKENS, StreamParser, load_encoding, render_chat
from ossai.harmony.encoding import _assistant_messages, _ToolCallLedger
from ossai.tools.browser import BrowserTool, LocalIndex, bundled_docs
from training import data, tasks
from training import eval as evaluation

N = 240  # enough for every category and stage to show up


@pytest.fixture(scope="module")
def train() -> list[data.Example]:
    return list(itertools.islice(data.examples(0, "train"), N))


@pytest.fixture(scope="module")
def heldout() -> list[data.Example]:
    return list(itertools.islice(data.examples(0, "heldout"), N // 2))


def segments(sample: data.Sample) -> list[tuple[int, list[int]]]:
    """(start, tokens) of each run of masked tokens: one per generation step of the last turn."""
    out: list[tuple[int, list[int]]] = []
    for i, (token, masked) in enumerate(zip(sample.tokens, sample.mask, strict=True)):
        if masked and (not out or i != out[-1][0] + len(out[-1][1])):
            out.append((i, []))
        if masked:
            out[-1][1].append(token)
    return out


def test_deterministic_and_seeded() -> None:
    first = [s.tokens for s in itertools.islice(data.samples(3, "train"), 20)]
    again = [(s.tokens, s.mask) for s in itertools.islice(data.samples(3, "train"), 20)]
    assert [t for t, _ in again] == first
    assert [s.tokens for s in itertools.islice(data.samples(4, "train"), 20)] != first
    assert [s.tokens for s in itertools.islice(data.samples(3, "heldout"), 20)] != first
    with pytest.raises(ValueError):
        next(data.samples(0, "val"))  # type: ignore[arg-type]


def test_every_category_and_stage_appears(train: list[data.Example]) -> None:
    assert {e.category for e in train} == set(data.CATEGORIES)
    stages = {(e.category, e.info.get("stage")) for e in train}
    for stage in ("call", "answer"):
        assert ("python", stage) in stages and ("function", stage) in stages
    assert {("browser", "search"), ("browser", "open"), ("browser", "answer")} <= stages
    assert all(len(e.render().tokens) <= data.MAX_TOKENS for e in train)
    assert {e.effort for e in train} == {"low", "medium", "high"}


def test_samples_start_with_the_runtime_prompt(train: list[data.Example]) -> None:
    for e in train:
        sample = e.render()
        last_user = max(i for i, m in enumerate(e.messages) if m["role"] == "user")
        opts = {"effort": e.effort, "tools": e.tools, "builtin_tools": e.builtin_tools, "date": e.date}
        prompt = render_chat(e.messages[: last_user + 1], **opts)
        assert sample.tokens[: sample.mask.index(True)] == prompt
        assert sample.tokens[: len(e.prompt())] == e.prompt()  # the last step's prompt too (tool loops)
        assert f"Current date: {e.date}" in load_encoding().decode(prompt[:40])


def test_mask_is_exactly_the_last_turns_assistant_output(train: list[data.Example], heldout) -> None:
    enc = load_encoding()
    for e in train + heldout:
        sample = e.render()
        last_user = max(i for i, m in enumerate(e.messages) if m["role"] == "user")
        steps = [m for m in e.messages[last_user + 1 :] if m["role"] == "assistant"]
        runs = segments(sample)
        assert len(runs) == len(steps)
        for (start, tokens), step in zip(runs, steps, strict=True):
            assert sample.tokens[start - 2 : start] == [START, enc.encode("assistant")[0]]
            parser = StreamParser()
            parser.feed_all(tokens)
            assert not parser.warnings and parser.done
            assert tokens[-1] == (RETURN if step.get("tool_calls") is None else CALL)
            expected = _assistant_messages(step, "step", _ToolCallLedger())
            got = [(m.channel, m.recipient, m.content_type, m.content[0].text) for m in parser.messages]
            want = [(m.channel, m.recipient, m.content_type, m.content[0].text) for m in expected]
            assert got == want
        # Between generation steps only tool results (and the runtime's `<|start|>assistant`) are unmasked.
        for (start, tokens), (after, _) in itertools.pairwise(runs):
            gap = enc.decode(sample.tokens[start + len(tokens) : after])
            assert re.fullmatch(r"<\|start\|>(python|browser\.\w+|functions\.\w+) to=assistant.*<\|end\|>"
                                r"<\|start\|>assistant", gap, re.S), gap  # fmt: skip
        assert sample.mask[-1] and sample.tokens[-1] in (RETURN, CALL)
        assert END not in sample.tokens[runs[-1][0] + len(runs[-1][1]) :]


def test_heldout_functions_are_never_seen_in_training(train: list[data.Example], heldout) -> None:
    """Held-out schemas are (verb, noun) names kept out of training, built from trained words."""
    trained = {t["function"]["name"] for e in train for t in e.tools or ()}
    seen = [t["function"] for e in heldout for t in e.tools or ()]
    assert seen and trained, "both splits offer functions"
    for fn in seen:
        assert tasks.heldout_name(fn["name"]) and fn["name"] not in trained
    assert not any(tasks.heldout_name(name) for name in trained)


def test_function_calls_carry_the_users_arguments(train: list[data.Example]) -> None:
    calls = [e for e in train if e.category == "function" and e.expect["kind"] == "call"]
    assert calls
    for e in calls:
        call = e.messages[-1]["tool_calls"][0]["function"]
        args = json.loads(call["arguments"])
        assert args == e.expect["arguments"] and f"functions.{call['name']}" == e.expect["recipient"]
        spec = next(t["function"] for t in e.tools or () if t["function"]["name"] == call["name"])
        assert set(spec["parameters"]["required"]) <= set(args) <= set(spec["parameters"]["properties"])
        request = e.messages[-2]["content"]
        for value in args.values():
            if not isinstance(value, bool):
                assert str(value) in request


def test_browser_samples_hold_real_tool_output(train: list[data.Example], tmp_path: Path) -> None:
    loops = [e for e in train if e.category == "browser" and e.info["stage"] != "search"]
    assert loops
    for k, e in enumerate(loops[:12]):
        tool = BrowserTool(LocalIndex([bundled_docs()], tmp_path / f"index-{k}.sqlite3"))
        calls = {c["id"]: c["function"] for m in e.messages if m.get("tool_calls") for c in m["tool_calls"]}
        results = [m for m in e.messages if m["role"] == "tool"]
        assert results
        for m in results:
            fn = calls[m["tool_call_id"]]
            assert m["content"] == tool.call(fn["name"], fn["arguments"], "s").text
        tool.close()
        if e.expect["kind"] == "final":  # the citation points at the lines of that page that hold the answer
            cursor, a, b = e.expect["citation"]
            assert (f"【{cursor}†L{a}-L{b}】" if a != b else f"【{cursor}†L{a}】") in e.messages[-1][
                "content"
            ]
            page = tasks.page_lines(results[cursor]["content"])
            assert e.info["phrase"] in " ".join(page[n] for n in range(a, b + 1))
    assert any("**viewing lines" in m["content"] for e in loops for m in e.messages if m["role"] == "tool")


def test_python_results_match_the_real_tool(tmp_path: Path) -> None:
    from ossai.tools.python import PythonTool

    rng = __import__("random").Random(5)
    tool = PythonTool(tmp_path / "py", sandbox="none")
    try:
        for _ in range(4):
            _, _, code, value, _ = tasks._python_task(rng)
            assert tool.call("python", code, "s").text == value + "\n"
    finally:
        tool.close()


def test_reasoning_follows_effort(train: list[data.Example]) -> None:
    enc = load_encoding()
    lengths = collections.defaultdict(list)
    for e in train:
        if e.category == "arithmetic":
            lengths[e.effort].append(len(enc.encode(e.messages[-1]["reasoning_content"])))
    low, medium, high = (statistics.mean(lengths[x]) for x in ("low", "medium", "high"))
    assert high >= 2.5 * low and low < medium < high


def test_vocabulary_covers_samples_numbers_and_specials() -> None:
    enc = load_encoding()
    vocab = data.vocabulary(0, 30)
    assert all(set(s.tokens) <= vocab for s in itertools.islice(data.samples(0, "train"), 30))
    assert set(STOP_TOKENS) | {START, END, 200003, 200005, 200008} <= vocab
    for number in (*range(-20, 241), 7000, 20000, 212):
        assert set(enc.encode(f"= {number}.")) <= vocab
    assert set(enc.encode("Hello! How can I help you today?")) <= vocab


def test_reference_outputs_score_perfectly() -> None:
    report = evaluation.summarize(
        [evaluation.score(c, e, t) for c, e, t in evaluation.reference_outputs(6, 7)]
    )
    assert all(target["ok"] for target in report["targets"].values()), report["targets"]
    for key in (
        "arithmetic_correct",
        "function_right_tool",
        "function_unseen_args_exact",
        "python_call_rate",
    ):
        assert report[key] == 1.0
    assert report["wrong_action_rate"] == 0.0


def test_evaluate_runs_end_to_end(tiny: Path) -> None:
    engine = Engine.load(tiny, threads=1)
    try:
        report = evaluation.evaluate(engine, n=2, seed=1, max_new_tokens=12)
    finally:
        engine.close()
    for key in ("harmony_valid", "arithmetic_correct", "tool_json_valid", "function_right_tool",
                "function_unseen_right_tool", "high_low_reasoning_ratio", "python_call_rate",
                "browser_call_rate", "reasoning_tokens", "machine", "targets"):  # fmt: skip
        assert key in report
    assert report["n"] == dict.fromkeys(evaluation.CATEGORIES, 2)
    assert 0.0 <= report["harmony_valid"] <= 1.0 and report["machine"]["cores"]


def test_number_tokens_are_the_digit_pieces() -> None:
    enc = load_encoding()
    ids = {t for text in ("x = 13000 - 007, 144", "hello 5") for t in enc.encode(text)}
    numbers = data.number_tokens(ids)
    assert {enc.decode([t]): v for t, v in numbers.items()} == {
        "130": 130, "00": 0, "007": 7, "144": 144, "5": 5,
    }  # fmt: skip
    assert data.number_tokens([START, END]) == {}


@pytest.mark.parametrize("op", ["+", "-"])
def test_counting_chains_are_right_at_every_step(op: str) -> None:
    """Every link of a sum's or difference's reasoning chain equals the result, and each moves a ten or
    a one: what the model learns from must be true at each step, not only at the end."""
    for a, b in itertools.product(range(tasks.ADD_MAX + 1), repeat=2):
        text = tasks._add_steps(a, b) if op == "+" else tasks._sub_steps(a, b)
        result = a + b if op == "+" else a - b
        chain = text.rsplit(": ", 1)[-1].split(", so ")[0]  # a negative difference counts b - a
        links = chain.split(" = ")
        if op == "+" and a < b:  # counts from the bigger operand
            assert links[1] == f"{b} + {a}", (a, b, text)
            links = links[1:]
        value = abs(result) if op == "-" and b > a else result
        rights = []
        for link in links:
            m = re.fullmatch(r"(\d+)(?: ([+-]) (\d+))?", link)
            assert m, (a, b, text)
            left, right = int(m[1]), int(m[3] or 0)
            assert (left - right if m[2] == "-" else left + right) == value, (a, b, text)
            rights.append(right)
        assert int(links[-1]) == value and rights[-1] == 0, (a, b, text)
        moves = [x - y for x, y in itertools.pairwise(rights)]
        assert moves == [0] if rights[0] == 0 else all(m in (1, 10) for m in moves), (a, b, text)
        assert text.endswith(f"{a} - {b} = {result}") if op == "-" and b > a else True
