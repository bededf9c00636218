"""`ossai chat`: the session against a scripted harmony token source, and the real command on a random tiny
checkpoint, once with piped stdin and once on a pseudo-terminal."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ossai import harmony
from ossai.chat import HELP, ChatOptions, ChatSession, PlainView, Reply, TerminalView, View, run, run_chat
from ossai.cli import app
from ossai.config import SamplingParams
from ossai.errors import BadRequest, ContextLengthError

DATE = "2025-08-05"
REASONING = "The user asks for 2+2. That is 4."
ANSWER = "The answer is **4**."
REPLY = (
    f"<|channel|>analysis<|message|>{REASONING}<|end|>"
    f"<|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>"
)
STATS = re.compile(r"^(\d+) tokens · [\d.]+ tok/s · TTFT [\d.]+ s", re.MULTILINE)


def harmony_tokens(text: str) -> list[int]:
    return harmony.load_encoding().encode(text, allowed_special="all")


class Scripted:
    """A token source that replays harmony text (one reply per call, cycling) and records its calls."""

    def __init__(self, *replies: str):
        self.replies = [harmony_tokens(r) for r in replies or (REPLY,)]
        self.prompts: list[list[int]] = []
        self.params: list[SamplingParams] = []
        self.closed_early = 0

    def __call__(self, prompt: list[int], params: SamplingParams) -> Iterator[int]:
        self.prompts.append(list(prompt))
        self.params.append(params)
        return self._stream(self.replies[(len(self.prompts) - 1) % len(self.replies)][: params.max_tokens])

    def _stream(self, tokens: list[int]) -> Iterator[int]:
        try:
            yield from tokens
        except GeneratorExit:
            self.closed_early += 1
            raise


def lines(*items: str | type[BaseException]):
    """A read_line over `items`: strings are lines, exception classes are raised (KeyboardInterrupt)."""
    pending = list(items)

    def read_line(_prompt: str) -> str:
        if not pending:
            raise EOFError
        item = pending.pop(0)
        if isinstance(item, str):
            return item
        raise item()

    return read_line


def new_session(*replies: str, **options) -> tuple[ChatSession, Scripted]:
    source = Scripted(*replies)
    return ChatSession(source, ChatOptions(**options), model="tiny", date=DATE), source


def chat(session: ChatSession, *items: str, show_reasoning: bool = True) -> tuple[str, str, int]:
    """Run the piped-stdin loop over `items`; returns (stdout, stderr, failures)."""
    out, err = io.StringIO(), io.StringIO()
    failures = run(
        session, PlainView(out, err, show_reasoning=show_reasoning), lines(*items), interactive=False
    )
    return out.getvalue(), err.getvalue(), failures


def render(messages: list[dict], effort: str = "medium") -> list[int]:
    return harmony.render_chat(messages, effort=effort, date=DATE)


def turn(question: str) -> list[dict]:
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING},
    ]


# --- the session with a scripted token source -------------------------------------------------------------


def test_reply_shows_reasoning_and_answer_and_keeps_the_turn():
    session, source = new_session()
    out, err, failures = chat(session, "What is 2+2?")
    assert failures == 0
    assert out == ANSWER + "\n"  # stdout: the answer only
    assert err.startswith(REASONING + "\n")  # reasoning (asked for) and stats on stderr
    stats = STATS.findall(err)
    assert stats == [str(len(harmony_tokens(REPLY)))]
    assert source.prompts == [render([{"role": "user", "content": "What is 2+2?"}])]
    assert source.params[0].stop_token_ids == frozenset(harmony.STOP_TOKENS)
    assert session.messages == turn("What is 2+2?")


def test_piped_reasoning_is_hidden_unless_asked_for():
    out, err, _ = chat(new_session()[0], "What is 2+2?", show_reasoning=False)
    assert out == ANSWER + "\n"
    assert REASONING not in err and len(STATS.findall(err)) == 1


def test_second_turn_renders_history_without_old_reasoning():
    session, source = new_session(system="Answer briefly.")
    chat(session, "What is 2+2?", "And 3+3?")
    system = [{"role": "system", "content": "Answer briefly."}]
    history = [*system, *turn("What is 2+2?"), {"role": "user", "content": "And 3+3?"}]
    assert source.prompts[0] == render([*system, {"role": "user", "content": "What is 2+2?"}])
    assert source.prompts[1] == render(history)
    text = harmony.decode(source.prompts[1])
    assert ANSWER in text and REASONING not in text and "Answer briefly." in text
    assert session.messages == turn("What is 2+2?") + turn("And 3+3?")


def test_effort_command_changes_the_next_render():
    session, source = new_session(effort="low")
    _, err, failures = chat(session, "hi", "/effort", "/effort HIGH", "/effort extreme", "again")
    assert failures == 1  # the bad effort
    assert "effort: low\n" in err and "effort: high\n" in err
    assert "error: effort must be one of low, medium, high; got 'extreme'" in err
    assert session.effort == "high"
    assert source.prompts[0] == render([{"role": "user", "content": "hi"}], effort="low")
    assert source.prompts[1] == render([*turn("hi"), {"role": "user", "content": "again"}], effort="high")


def test_save_then_load_round_trip(tmp_path):
    session, _ = new_session(system="Be terse.", effort="high")
    path = tmp_path / "chat.json"
    _, err, failures = chat(session, "What is 2+2?", f"/save {path}")
    assert failures == 0 and f"saved 2 messages to {path}" in err
    saved = json.loads(path.read_text())
    assert saved == {
        "model": "tiny",
        "effort": "high",
        "system": "Be terse.",
        "messages": turn("What is 2+2?"),
    }

    other, source = new_session()  # medium, no system
    _, err, failures = chat(other, f"/load {path}", "And 3+3?")
    assert failures == 0 and f"loaded 2 messages from {path} (effort: high)" in err
    system = [{"role": "system", "content": "Be terse."}]
    expected = render([*system, *turn("What is 2+2?"), {"role": "user", "content": "And 3+3?"}], "high")
    assert source.prompts == [expected]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "is not a conversation saved by /save"),
        ('{"messages": {}}', "expected a JSON object with a 'messages' list"),
        ('{"messages": [{"role": "tool", "content": "x"}]}', "messages[0] must be an object with role"),
        ('{"messages": [{"role": "user"}]}', "messages[0].content must be a string"),
        ('{"effort": "max", "messages": []}', "effort must be one of low, medium, high"),
        ('{"system": 3, "messages": []}', "system must be a string or null"),
    ],
)
def test_load_errors_are_one_line_and_change_nothing(tmp_path, content, message):
    path = tmp_path / "saved.json"
    if content is not None:
        path.write_text(content)
    session, _ = new_session()
    chat(session, "What is 2+2?")
    out, err, failures = chat(session, f"/load {path}", "/load")
    assert failures == 2 and out == ""
    first, usage = err.splitlines()
    assert first.startswith(f"error: {path}" if content else "error: no such file") and message in first
    assert usage == "error: usage: /load FILE"
    assert session.messages == turn("What is 2+2?") and session.effort == "medium"


def test_reset_forgets_the_conversation():
    session, source = new_session()
    _, err, _ = chat(session, "What is 2+2?", "/reset", "And 3+3?")
    assert "conversation cleared" in err
    assert source.prompts[1] == render([{"role": "user", "content": "And 3+3?"}])
    assert session.messages == turn("And 3+3?")


def test_help_unknown_commands_exit_and_eof():
    session, source = new_session()
    _, err, failures = chat(session, "/help", "/frobnicate now", "", "   ", "/exit", "never read")
    assert all(command in err for command in ("/effort", "/reset", "/save", "/load", "/help", "/exit", '"""'))
    assert HELP in err
    assert "error: unknown command /frobnicate; /help lists the commands" in err
    assert failures == 1 and source.prompts == []  # empty lines skipped; nothing after /exit
    _, _, failures = chat(session, "/quit")
    assert failures == 0
    assert chat(session) == ("", "", 0)  # end of input


def test_multi_line_messages():
    session, _ = new_session()
    chat(session, '"""', "line one", "", "/not a command", 'line two"""', '"""one line"""', '"""first', '"""')
    assert [m["content"] for m in session.messages if m["role"] == "user"] == [
        "line one\n\n/not a command\nline two",
        "one line",
        "first",
    ]
    chat(session, '"""unclosed', "at the end")  # the end of input closes the block
    assert session.messages[-2]["content"] == "unclosed\nat the end"


class InterruptingView(PlainView):
    """Ctrl-C arrives while the n-th delta of `kind` is being shown. Notes whether `source` had been closed
    by the time the reply ended (a generator left to the garbage collector would be closed later)."""

    def __init__(self, kind: str, n: int, source: Scripted):
        super().__init__(io.StringIO(), io.StringIO())
        self.kind, self.n, self.source = kind, n, source
        self.closed_before_end: list[bool] = []

    def end(self, reply: Reply | None) -> None:
        self.closed_before_end.append(self.source.closed_early == 1)
        super().end(reply)

    def _maybe_interrupt(self, kind: str) -> None:
        if kind == self.kind:
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt

    def answer(self, text: str) -> None:
        super().answer(text)
        self._maybe_interrupt("answer")

    def reasoning(self, text: str) -> None:
        super().reasoning(text)
        self._maybe_interrupt("reasoning")


def test_ctrl_c_stops_the_reply_and_keeps_the_partial_answer():
    session, source = new_session()
    view = InterruptingView("answer", 2, source)
    assert run(session, view, lines("What is 2+2?", "Go on"), interactive=False) == 0
    assert view.closed_before_end[0] and source.closed_early == 1  # generation stopped right away
    stopped = session.messages[1]
    assert stopped["stopped"] is True and stopped["reasoning_content"] == REASONING
    partial = stopped["content"]
    assert partial and ANSWER.startswith(partial) and partial != ANSWER
    assert view.out.stream.getvalue().startswith(partial + "\n")
    err = view.err.stream.getvalue()
    assert STATS.search(err) and " · stopped\n" in err
    history = [{"role": "user", "content": "What is 2+2?"}, stopped, {"role": "user", "content": "Go on"}]
    assert source.prompts[1] == render(history)  # the chat went on with the partial answer in it


def test_ctrl_c_before_the_answer_drops_the_turn():
    session, source = new_session()
    view = InterruptingView("reasoning", 1, source)
    run(session, view, lines("What is 2+2?"), interactive=False)
    assert view.closed_before_end == [True] and session.messages == []


def test_ctrl_c_at_the_prompt_warns_then_leaves():
    session, source = new_session()
    file = io.StringIO()
    view = TerminalView(Console(file=file, width=80))
    read = lines(KeyboardInterrupt, "What is 2+2?", KeyboardInterrupt, KeyboardInterrupt, "never read")
    assert run(session, view, read, interactive=True) == 0
    assert file.getvalue().count("(Ctrl-C again or /exit to leave)") == 2
    assert len(source.prompts) == 1
    with pytest.raises(KeyboardInterrupt):  # piped: Ctrl-C is not a chat gesture
        run(session, view, lines(KeyboardInterrupt), interactive=False)


def test_max_tokens_and_tool_calls_are_reported():
    session, _ = new_session(max_tokens=5)
    _, err, _ = chat(session, "What is 2+2?")
    assert "5 tokens" in err and " · max tokens reached" in err
    call = '<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{"q": "2+2"}<|call|>'
    _, err, _ = chat(new_session(call)[0], "look it up")
    assert 'tool call: functions.lookup {"q": "2+2"}' in err
    assert "the model called lookup, which ossai chat does not run (see --tools)" in err


def test_token_source_errors_are_one_line_and_keep_the_history():
    def too_long(prompt: list[int], params: SamplingParams) -> Iterator[int]:
        raise ContextLengthError("prompt plus max_tokens exceeds the context")
        yield 0

    session = ChatSession(too_long, ChatOptions(), date=DATE)
    out, err, failures = chat(session, "hi", "/effort")
    assert failures == 1 and out == ""
    assert err == "error: prompt plus max_tokens exceeds the context\neffort: medium\n"
    assert session.messages == []


def test_terminal_view_dims_reasoning_and_renders_markdown():
    file = io.StringIO()
    console = Console(file=file, force_terminal=True, width=80, color_system="standard")
    run(new_session()[0], TerminalView(console), lines("What is 2+2?"), interactive=True)
    shown = file.getvalue()
    assert "\x1b[2m" + REASONING in shown.replace("\x1b[0m\x1b[2m", "")  # dim, one token at a time
    assert "**4**" not in shown and "\x1b[1m4" in shown  # markdown: bold, no asterisks
    assert re.search(r"\d+ tokens · [\d.]+ tok/s · TTFT", shown)

    file = io.StringIO()
    console = Console(file=file, force_terminal=True, width=80, color_system="standard")
    run(new_session()[0], TerminalView(console, show_reasoning=False), lines("2+2?"), interactive=True)
    shown = file.getvalue()
    assert REASONING not in shown and re.search(r"thought for [\d.]+ s, \d+ tokens", shown)
    assert "\x1b[1m4" in shown


def test_piped_stdin_plain_output_and_exit_status():
    def piped(script: str, **options) -> tuple[int, str, str]:
        stdin, out, err = io.StringIO(script), io.StringIO(), io.StringIO()
        status = run_chat(Scripted(), ChatOptions(**options), model="m", stdin=stdin, stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    status, out, err = piped("What is 2+2?\n\nAgain\n")
    assert status == 0 and out == f"{ANSWER}\n{ANSWER}\n"
    assert REASONING not in err and len(STATS.findall(err)) == 2
    status, out, err = piped("What is 2+2?\n", show_reasoning=True)
    assert status == 0 and out == f"{ANSWER}\n" and err.startswith(REASONING + "\n")
    status, _, err = piped("/effort max\nWhat is 2+2?\n")
    assert status == 1 and err.startswith("error: effort must be one of")  # a script can tell


def test_options_are_checked():
    with pytest.raises(BadRequest, match="effort must be one of"):
        ChatOptions(effort="max")
    with pytest.raises(BadRequest, match="top_p"):
        ChatOptions(top_p=0)
    assert ChatOptions(effort=" High ").effort == "high"


def test_views_satisfy_the_protocol():
    views: list[View] = [PlainView(io.StringIO(), io.StringIO()), TerminalView(Console(file=io.StringIO()))]
    assert len(views) == 2


def test_the_command_passes_its_options_and_closes_the_engine(monkeypatch):
    from ossai.engine import Engine

    seen: dict = {}

    class FakeEngine:
        def generate(self, prompt: list[int], params: SamplingParams) -> Iterator[int]:
            return iter(())

        def close(self) -> None:
            seen["closed"] = True

    def load(cls, path: str, config) -> FakeEngine:
        seen.update(path=path, device=config.device, threads=config.threads, moe_int8=config.moe_int8)
        return FakeEngine()

    def fake_run_chat(generate, options: ChatOptions, *, model: str, tools=None) -> int:
        seen.update(options=options, model=model, tools=tools)
        return 1

    monkeypatch.setattr(Engine, "load", classmethod(load))
    monkeypatch.setattr("ossai.chat.run_chat", fake_run_chat)
    monkeypatch.setattr("ossai.cli._resolve", lambda model: model)  # "m" is no real checkpoint
    args = [
        "chat",
        "m",
        "-e",
        "high",
        "--system",
        "S",
        "-n",
        "7",
        "-t",
        "0.5",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ]
    for flag, show in [([], None), (["--show-reasoning", "--moe-int8"], True), (["--hide-reasoning"], False)]:
        seen.clear()
        result = CliRunner().invoke(app, [*args, *flag, "--threads", "2"])
        assert result.exit_code == 1, result.output  # run_chat's status
        expected = ChatOptions("high", "S", show, max_tokens=7, temperature=0.5, top_p=0.9, seed=3)
        assert seen == {
            "path": "m",
            "device": "cpu",
            "threads": 2,
            "moe_int8": "--moe-int8" in flag,
            "options": expected,
            "model": "m",
            "tools": None,  # no --tools
            "closed": True,
        }


# --- the real command on a random tiny checkpoint ---------------------------------------------------------

CHAT_ARGS = ["--max-tokens", "8", "--temperature", "0"]


def test_piped_chat_on_a_tiny_checkpoint(tiny):
    script = "Hello there\n\n/effort high\nWhat is 2+2?\n/exit\nnot read\n"
    proc = subprocess.run(
        [sys.executable, "-m", "ossai.cli", "chat", str(tiny), *CHAT_ARGS],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(STATS.findall(proc.stderr)) == 2, proc.stderr
    assert "effort: high\n" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "\x1b[" not in proc.stdout + proc.stderr  # plain text for scripts
    assert proc.stdout.endswith("\n")


def test_chat_usage_errors_are_one_line(tiny, tmp_path):
    for args, message in [
        ([str(tiny), "--effort", "max"], "effort must be one of low, medium, high"),
        ([str(tmp_path / "missing")], "no such checkpoint directory"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "ossai.cli", "chat", *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1 and proc.stderr.startswith("error: ") and message in proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr


class Terminal:
    """The master side of a pseudo-terminal: read with select and a deadline, never sleep."""

    def __init__(self, fd: int):
        self.fd = fd
        self.output = b""
        self._seen = 0

    def send(self, text: str) -> None:
        with contextlib.suppress(OSError):  # the child is gone; what it printed is still read
            os.write(self.fd, text.encode())

    def expect(self, pattern: bytes, timeout: float = 60, required: bool = True) -> bool:
        """Wait for `pattern` after everything matched before."""
        deadline = time.monotonic() + timeout
        while (found := re.compile(pattern).search(self.output, self._seen)) is None:
            if not self._read(deadline):
                if not required:
                    return False
                raise AssertionError(f"no {pattern!r} in the terminal output: {self.output[self._seen :]!r}")
        self._seen = found.end()
        return True

    def read_to_end(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass

    def _read(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed its side
            return False
        self.output += chunk
        return bool(chunk)


HINT = rb"\(Ctrl-C again or /exit to leave\)"
# Runs the CLI with the terminal as its controlling tty, so Ctrl-C (\x03) becomes SIGINT as in a shell.
_WITH_CONTROLLING_TTY = (
    "import fcntl, runpy, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "sys.argv = ['ossai', *sys.argv[1:]]; runpy.run_module('ossai.cli', run_name='__main__')"
)


def test_chat_on_a_pseudo_terminal(tiny):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WITH_CONTROLLING_TTY, "chat", str(tiny), *CHAT_ARGS],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env=env,
    )
    os.close(slave)
    terminal = Terminal(master)
    try:
        terminal.expect(rb"/help for commands")
        terminal.expect(rb">>> ")
        terminal.send("What is 2+2?\n")
        terminal.expect(rb"\d+ tokens \xc2\xb7 [\d.]+ tok/s \xc2\xb7 TTFT [\d.]+ s")
        terminal.expect(rb">>> ")
        terminal.send("\x03")  # Ctrl-C at the prompt: a hint, not an exit
        if not terminal.expect(HINT, timeout=2, required=False):
            # CPython's readline misses a SIGINT that lands between printing the prompt and waiting for
            # input (it is only seen at the next signal); a second Ctrl-C then delivers it, once. Should
            # both count after all, the chat leaves, with status 0 too.
            terminal.send("\x03")
            terminal.expect(HINT)
        terminal.expect(rb">>> ")
        terminal.send("/exit\n")
        terminal.read_to_end()
        assert proc.wait(timeout=30) == 0, terminal.output.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"Traceback" not in terminal.output
    assert b"\x1b[" in terminal.output  # rich styled it


def test_chat_runs_builtin_tools_and_keeps_the_loop_in_the_history(tmp_path):
    from ossai.tools.agent import ToolSet
    from ossai.tools.browser import BrowserTool, LocalIndex

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "kv.md").write_text("# Paged KV cache\n\nKeys and values live in blocks of 16.\n")
    browser = BrowserTool(LocalIndex([tmp_path / "docs"], tmp_path / "index.sqlite3"))
    search = (
        "<|channel|>analysis<|message|>Search the docs.<|end|><|start|>assistant to=browser.search"
        '<|channel|>analysis code<|message|>{"query": "kv cache blocks"}<|call|>'
    )
    source = Scripted(search, REPLY)
    session = ChatSession(source, ChatOptions(), model="tiny", date=DATE, tools=ToolSet([browser]))
    try:
        out, err, failures = chat(session, "How is the KV cache stored?")
    finally:
        browser.close()
    assert failures == 0 and out.strip() == ANSWER
    assert 'tool call: browser.search {"query": "kv cache blocks"}' in err
    assert "tool result: browser.search" in err and "Paged KV cache" in err
    assert len(source.prompts) == 2  # the model was asked again with the result
    roles = [m["role"] for m in session.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert (
        session.messages[2]["name"] == "browser.search" and "live in blocks" in session.messages[2]["content"]
    )
    second = harmony.decode(source.prompts[1])
    assert "<|start|>browser.search to=assistant<|channel|>analysis<|message|>" in second
    assert "# Tools\n\n## browser" in second  # the namespace is in the system message
