"""`ossai chat`: talk to a gpt-oss model in the terminal, or drive the same loop from a script.

Why it is built this way:

- The model sits behind a token source, `(prompt_ids, params) -> Iterator[int]` (`Engine.generate` in the
  CLI). Everything else (harmony rendering, the streaming parse, history, slash commands) is plain Python,
  so the tests drive it with a scripted source that replays real harmony tokens, which random weights
  never produce. Closing the iterator is how a reply is stopped.
- Every reply re-renders the whole history with `harmony.render_chat`. An answered turn is stored as
  `{"role": "assistant", "content": answer, "reasoning_content": reasoning}`, so old reasoning is dropped
  by the one rule in `ossai.harmony`, and `/save` files hold OpenAI-style messages.
- One session, two views. `TerminalView` (rich) is used when stdin is a terminal: reasoning streams dim (or
  a spinner collapses into "thought for N s" when hidden), the answer is re-rendered as markdown in a
  `Live`, and a dim stats line follows. `PlainView` is used when stdin is not a terminal: no ANSI, the
  answers go to stdout (each ends with a newline) and everything else goes to stderr, so
  `ossai chat MODEL < prompts.txt > answers.txt` works.

Ctrl-C during a reply closes the token source (the engine stops) and keeps the partial answer in the
history, marked `"stopped": true`. If no answer text came yet, the prompt is dropped too. Ctrl-C at the
prompt only shows a hint; a second one in a row leaves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.spinner import Spinner
from rich.text import Text

from ossai import harmony
from ossai.config import SamplingParams
from ossai.errors import BadRequest, OssaiError
from ossai.tools.agent import AgentLoop, Call, ToolSet

TokenSource = Callable[[list[int], SamplingParams], Iterator[int]]
ReadLine = Callable[[str], str]  # like input(): raises EOFError at the end and KeyboardInterrupt on Ctrl-C

EFFORTS = ("low", "medium", "high")
FENCE = '"""'  # a line starting with it opens a multi-line message; a line ending with it closes it (Ollama)
PROMPT = ">>> "
CONTINUATION = "... "
TOOL_ARGUMENTS_SHOWN = 200  # characters of a tool call's arguments shown on its line
REFRESH = 10  # Live redraws per second; the answer's markdown is parsed per redraw, not per token
ROLES = ("user", "assistant")  # what a saved conversation may hold (the system text is stored apart)

HELP = f"""\
/effort [low|medium|high]  show or set the reasoning effort of the next replies
/reset                     forget the conversation
/save FILE                 write the conversation to FILE (JSON: model, effort, system, messages)
/load FILE                 continue a conversation written by /save
/help                      this help
/exit, /quit               leave (so does Ctrl-D)
{FENCE} on its own line starts a multi-line message, and another {FENCE} ends it.
Ctrl-C stops a reply and keeps what it said so far; at the prompt, press it twice to leave."""


def check_effort(effort: str) -> str:
    value = effort.strip().lower()
    if value not in EFFORTS:
        raise BadRequest(f"effort must be one of low, medium, high; got {effort!r}")
    return value


@dataclass(slots=True)
class ChatOptions:
    """What `ossai chat` was started with. Checked on construction, so bad options fail before a load."""

    effort: str = "medium"
    system: str | None = None
    show_reasoning: bool | None = None  # None: shown on a terminal, not shown when stdin is a pipe
    max_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        self.effort = check_effort(self.effort)
        self.params()  # SamplingParams raises BadRequest naming the bad field

    def params(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop_token_ids=frozenset(harmony.STOP_TOKENS),
        )


@dataclass(slots=True)
class Reply:
    reasoning: str = ""
    content: str = ""
    tokens: int = 0
    ttft: float = 0.0  # seconds from the request to the first token (prefill included)
    decode_tps: float = 0.0  # tokens per second after the first
    stopped: bool = False  # Ctrl-C
    truncated: bool = False  # ran into max_tokens before the model finished
    calls: list[Call] = field(default_factory=list)  # tool calls the model made (it stopped on <|call|>)

    @property
    def finish(self) -> str:
        return "tool_calls" if self.calls else "stop"

    def stats(self) -> str:
        parts = [f"{self.tokens} tokens", f"{self.decode_tps:.1f} tok/s", f"TTFT {self.ttft:.2f} s"]
        if self.stopped:
            parts.append("stopped")
        elif self.truncated:
            parts.append("max tokens reached")
        return " · ".join(parts)


class View(Protocol):
    """Where a session shows things. `end(None)` closes an aborted reply without stats."""

    def begin(self) -> None: ...
    def reasoning(self, text: str) -> None: ...
    def preamble(self, text: str) -> None: ...
    def answer(self, text: str) -> None: ...
    def tool_call(self, recipient: str, arguments: str) -> None: ...
    def tool_result(self, name: str, text: str, error: bool) -> None: ...
    def end(self, reply: Reply | None) -> None: ...
    def info(self, text: str) -> None: ...
    def error(self, text: str) -> None: ...


def _clip(text: str) -> str:
    shown = " ".join(text.split())
    return shown[:TOOL_ARGUMENTS_SHOWN] + "..." if len(shown) > TOOL_ARGUMENTS_SHOWN else shown


def tool_call_line(recipient: str, arguments: str) -> str:
    return f"tool call: {recipient} {_clip(arguments)}"


def tool_result_line(name: str, text: str, error: bool) -> str:
    return f"tool {'error' if error else 'result'}: {name} {_clip(text)}"


# --- The session -----------------------------------------------------------------------------------------


class ChatSession:
    """The conversation plus the settings of the next reply."""

    def __init__(
        self,
        generate: TokenSource,
        options: ChatOptions,
        *,
        model: str = "",
        date: str | None = None,
        tools: ToolSet | None = None,
    ):
        self._generate = generate
        self.options = options
        self.tools = tools  # built-in and MCP tools run for the model (`ossai chat --tools`)
        self.session_id = uuid.uuid4().hex
        self.model = model
        self.effort = options.effort
        self.system = options.system
        self.messages: list[dict[str, Any]] = []
        # fixed for the session, so every turn renders the same prefix (and midnight changes nothing)
        self.date = date or dt.date.today().isoformat()

    def prompt_ids(self) -> list[int]:
        return self._render(self.effort, self.system, self.messages)

    def _render(self, effort: str, system: str | None, messages: list[dict[str, Any]]) -> list[int]:
        head = [{"role": "system", "content": system}] if system else []
        tools = self.tools
        return harmony.render_chat(
            head + messages,
            effort=effort,
            date=self.date,
            tools=(tools.functions() or None) if tools else None,
            builtin_tools=tools.builtin_namespaces if tools else (),
        )

    def reset(self) -> None:
        self.messages.clear()
        if self.tools is not None:  # a new conversation gets a new python session and browser
            self.tools.end_session(self.session_id)
            self.session_id = uuid.uuid4().hex

    def send(self, text: str, view: View) -> Reply:
        """Ask `text`, stream the reply into `view` and keep the turn in the history.

        Errors from rendering or the token source (a too-long conversation, say) propagate with the
        history unchanged."""
        start = len(self.messages)
        self.messages.append({"role": "user", "content": text})
        loop = AgentLoop(self.tools, self.session_id) if self.tools else None
        try:
            reply = self._stream(view)
            while loop is not None and (pending := loop.pending(reply.finish, reply.calls)):
                runs = []
                try:
                    for call in pending:  # the call itself was shown as the model wrote it
                        run = loop.run(call)
                        view.tool_result(call.name, run.result.text, run.result.error)
                        runs.append(run)
                except KeyboardInterrupt:  # stop the tool too: its session restarts on the next call
                    loop.tools.end_session(self.session_id)
                    view.info("tool call interrupted")
                    reply.stopped = True
                    break
                self.messages += loop.record(reply.reasoning, reply.content, runs)
                reply = self._stream(view)
            if loop is not None and loop.limit_hit:
                view.info(f"stopped after {loop.steps} tool calls (the step limit)")
            elif reply.calls and not reply.stopped:
                names = ", ".join(c.name.removeprefix("functions.") for c in reply.calls)
                view.info(f"the model called {names}, which ossai chat does not run (see --tools)")
        except BaseException:
            del self.messages[start:]
            raise
        if reply.stopped and not reply.content:
            del self.messages[start:]  # stopped before the answer began: nothing worth keeping
            return reply
        turn: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.reasoning:
            turn["reasoning_content"] = reply.reasoning
        if reply.stopped:
            turn["stopped"] = True
        self.messages.append(turn)
        return reply

    def _stream(self, view: View) -> Reply:
        reply = Reply()
        parser = harmony.StreamParser()
        params = self.options.params()
        view.begin()
        started = first = last = time.perf_counter()
        tokens: Iterator[int] | None = None
        last_token = -1
        try:
            try:
                tokens = self._generate(self.prompt_ids(), params)
                for token in tokens:
                    last_token = token
                    last = time.perf_counter()
                    if reply.tokens == 0:
                        first = last
                    reply.tokens += 1
                    self._show(parser.feed(token), reply, view)
            except KeyboardInterrupt:
                reply.stopped = True
            finally:
                close = getattr(tokens, "close", None)
                if close is not None:
                    close()  # a generator stops generating here
            self._show(parser.finish(), reply, view)
        except BaseException:
            view.end(None)
            raise
        reply.truncated = not parser.done and reply.tokens >= params.max_tokens
        if reply.stopped or last_token != harmony.CALL:
            reply.calls.clear()  # a call is only made by a reply that ended on <|call|>
        if reply.tokens:
            reply.ttft = first - started
        if reply.tokens > 1 and last > first:
            reply.decode_tps = (reply.tokens - 1) / (last - first)
        view.end(reply)
        return reply

    def _show(self, events: list[harmony.Event], reply: Reply, view: View) -> None:
        for event in events:
            match event:
                case harmony.ReasoningDelta(text=text):
                    reply.reasoning += text
                    view.reasoning(text)
                case harmony.ContentDelta(text=text):
                    reply.content += text
                    view.answer(text)
                case harmony.PreambleDelta(text=text):
                    view.preamble(text)
                case harmony.ToolCallEnd(recipient=recipient, arguments=arguments):
                    view.tool_call(recipient, arguments)
                    reply.calls.append(Call(f"call_{uuid.uuid4().hex[:24]}", recipient, arguments))

    # --- /save and /load -------------------------------------------------------------------------------

    def save(self, path: str) -> Path:
        target = Path(path).expanduser()
        data = {"model": self.model, "effort": self.effort, "system": self.system, "messages": self.messages}
        try:
            target.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise BadRequest(f"cannot write {target}: {exc.strerror or exc}") from exc
        return target

    def load(self, path: str) -> Path:
        """Replace effort, system text and history with those saved in `path`; on any problem raise
        BadRequest and change nothing."""
        source = Path(path).expanduser()
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise BadRequest(f"no such file: {source}") from exc
        except OSError as exc:
            raise BadRequest(f"cannot read {source}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise BadRequest(f"{source} is not a conversation saved by /save: {exc}") from exc
        effort, system, messages = _parse_saved(data, source)
        try:
            self._render(effort, system, messages)
        except harmony.HarmonyInputError as exc:
            raise BadRequest(f"{source}: {exc}") from exc
        self.effort, self.system, self.messages = effort, system, messages
        return source


def _parse_saved(data: Any, source: Path) -> tuple[str, str | None, list[dict[str, Any]]]:
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise BadRequest(f"{source}: expected a JSON object with a 'messages' list (as /save writes)")
    try:
        effort = check_effort(str(data.get("effort", "medium")))
    except BadRequest as exc:
        raise BadRequest(f"{source}: {exc}") from exc
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise BadRequest(f"{source}: system must be a string or null")
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(data["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BadRequest(f"{source}: messages[{i}] must be an object with role 'user' or 'assistant'")
        if not isinstance(message.get("content"), str):
            raise BadRequest(f"{source}: messages[{i}].content must be a string")
        if not isinstance(message.get("reasoning_content", ""), str):
            raise BadRequest(f"{source}: messages[{i}].reasoning_content must be a string")
        messages.append(dict(message))
    return effort, system, messages


# --- The loop --------------------------------------------------------------------------------------------


def read_message(read_line: ReadLine) -> tuple[str, bool]:
    """One message: a line, or the lines of a `\"\"\"` block without the fences. Returns (text, is_block).

    An unclosed block at the end of input is sent as it is."""
    line = read_line(PROMPT)
    if not line.startswith(FENCE):
        return line, False
    rest = line[len(FENCE) :]
    if rest.rstrip().endswith(FENCE):  # """one line"""
        return rest.rstrip()[: -len(FENCE)], True
    lines = [rest] if rest else []
    while True:
        try:
            line = read_line(CONTINUATION)
        except EOFError:
            break
        if line.rstrip().endswith(FENCE):
            before = line.rstrip()[: -len(FENCE)]
            if before:
                lines.append(before)
            break
        lines.append(line)
    return "\n".join(lines), True


def run_command(session: ChatSession, view: View, line: str) -> bool:
    """Run one slash command; False means leave. Problems (an unknown command, a bad effort, an
    unreadable file) raise OssaiError."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    match name.lower():
        case "/exit" | "/quit" | "/bye":
            return False
        case "/help" | "/?":
            view.info(HELP)
        case "/reset":
            session.reset()
            view.info("conversation cleared")
        case "/effort":
            if arg:
                session.effort = check_effort(arg)
            view.info(f"effort: {session.effort}")
        case "/save" | "/load" if not arg:
            raise BadRequest(f"usage: {name} FILE")
        case "/save":
            path = session.save(arg)
            view.info(f"saved {len(session.messages)} messages to {path}")
        case "/load":
            path = session.load(arg)
            view.info(f"loaded {len(session.messages)} messages from {path} (effort: {session.effort})")
        case _:
            raise BadRequest(f"unknown command {name}; /help lists the commands")
    return True


def run(session: ChatSession, view: View, read_line: ReadLine, *, interactive: bool) -> int:
    """Read messages and commands until /exit or the end of input. Returns how many of them failed.

    `interactive`: Ctrl-C at the prompt shows a hint (a second one in a row leaves); otherwise it
    propagates."""
    failures = 0
    interrupted = False
    while True:
        try:
            text, is_block = read_message(read_line)
        except EOFError:
            if interactive:
                view.info("")  # Ctrl-D leaves the cursor after the prompt
            return failures
        except KeyboardInterrupt:
            if not interactive:
                raise
            if interrupted:
                view.info("")
                return failures
            interrupted = True
            view.info("\n(Ctrl-C again or /exit to leave)")
            continue
        interrupted = False
        if not text.strip():
            continue
        try:
            if is_block or not text.startswith("/"):
                session.send(text, view)
            elif not run_command(session, view, text):
                return failures
        except (OssaiError, harmony.HarmonyInputError) as exc:
            view.error(str(exc))
            failures += 1


def run_chat(
    generate: TokenSource,
    options: ChatOptions,
    *,
    model: str,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    tools: ToolSet | None = None,
) -> int:
    """`ossai chat` on this process's terminal or pipes; returns the exit status.

    With stdin not a terminal the status is 1 when any prompt or command failed, so scripts notice."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    session = ChatSession(generate, options, model=model, tools=tools)
    if not stdin.isatty():
        plain = PlainView(stdout, stderr, show_reasoning=options.show_reasoning is True)
        failures = run(session, plain, _line_reader(stdin), interactive=False)
        return 1 if failures else 0
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    view = TerminalView(Console(file=stdout), show_reasoning=options.show_reasoning is not False)
    view.info(f"ossai chat: {model} (effort: {session.effort}). /help for commands, /exit to leave.")
    run(session, view, input, interactive=True)
    return 0


def _line_reader(stream: TextIO) -> ReadLine:
    def read_line(_prompt: str) -> str:
        line = stream.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    return read_line


# --- Views -----------------------------------------------------------------------------------------------


class _Lines:
    """A text stream that knows whether it is at the start of a line."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.at_start = True

    def write(self, text: str) -> None:
        if text:
            self.stream.write(text)
            self.stream.flush()
            self.at_start = text.endswith("\n")

    def end_line(self) -> None:
        if not self.at_start:
            self.write("\n")

    def line(self, text: str) -> None:
        self.end_line()
        self.write(text + "\n")


class PlainView:
    """No ANSI codes. `out` gets the preamble and answer of each reply, always ending with a newline (an
    empty answer is an empty line). `err` gets the reasoning (only with show_reasoning), tool calls, the
    stats line, notices and errors."""

    def __init__(self, out: TextIO, err: TextIO, *, show_reasoning: bool = False):
        self.out = _Lines(out)
        self.err = _Lines(err)
        self.show_reasoning = show_reasoning
        self._answered = False

    def begin(self) -> None:
        self._answered = False

    def reasoning(self, text: str) -> None:
        if self.show_reasoning:
            self.out.end_line()
            self.err.write(text)

    def preamble(self, text: str) -> None:
        self.answer(text)

    def answer(self, text: str) -> None:
        self.err.end_line()
        self.out.write(text)
        self._answered = True

    def tool_call(self, recipient: str, arguments: str) -> None:
        self.out.end_line()
        self.err.line(tool_call_line(recipient, arguments))

    def tool_result(self, name: str, text: str, error: bool) -> None:
        self.err.line(tool_result_line(name, text, error))

    def end(self, reply: Reply | None) -> None:
        self.err.end_line()
        if reply is None:
            self.out.end_line()
            return
        if self._answered:
            self.out.end_line()
        else:
            self.out.write("\n")  # one line per reply, even an empty one
        self.err.line(reply.stats())

    def info(self, text: str) -> None:
        self.err.line(text)

    def error(self, text: str) -> None:
        self.err.line(f"error: {text}")


class _MarkdownSoFar:
    """The answer so far, parsed as markdown when `Live` redraws rather than once per token."""

    def __init__(self) -> None:
        self.text = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Markdown(self.text)


Section = Literal["reasoning", "thinking", "preamble", "answer"]


class TerminalView:
    """rich on a terminal. Reasoning streams dim; hidden, it is a spinner that collapses into a one-line
    "thought for N s, M tokens". The answer is redrawn as markdown in a `Live` (cropped while it is taller
    than the screen, shown whole when it ends). A dim stats line follows each reply."""

    def __init__(self, console: Console, *, show_reasoning: bool = True):
        self.console = console
        self.show_reasoning = show_reasoning
        self._section: Section | None = None
        self._live: Live | None = None
        self._markdown = _MarkdownSoFar()
        self._thinking_since = 0.0
        self._thinking_tokens = 0

    def begin(self) -> None:
        self._section = None
        self._thinking_tokens = 0

    def reasoning(self, text: str) -> None:
        self._thinking_tokens += 1  # one delta per token, near enough (a split UTF-8 character waits)
        if self.show_reasoning:
            self._enter("reasoning")
            self.console.print(Text(text, style="dim"), end="", soft_wrap=True)
        else:
            self._enter("thinking")

    def preamble(self, text: str) -> None:
        self._enter("preamble")
        self.console.print(Text(text), end="", soft_wrap=True)

    def answer(self, text: str) -> None:
        self._enter("answer")
        self._markdown.text += text

    def tool_call(self, recipient: str, arguments: str) -> None:
        self._enter(None)
        self.console.print(Text(tool_call_line(recipient, arguments), style="yellow"))

    def tool_result(self, name: str, text: str, error: bool) -> None:
        self._enter(None)
        self.console.print(Text(tool_result_line(name, text, error), style="red" if error else "cyan"))

    def end(self, reply: Reply | None) -> None:
        self._enter(None)
        if reply is not None:
            self.console.print(Text(reply.stats(), style="dim"))

    def info(self, text: str) -> None:
        self._enter(None)
        self.console.print(Text(text, style="dim"))

    def error(self, text: str) -> None:
        self._enter(None)
        self.console.print(Text(f"error: {text}", style="red"))

    def _enter(self, section: Section | None) -> None:
        if section == self._section:
            return
        self._leave()
        self._section = section
        if section == "thinking":
            self._thinking_since = time.perf_counter()
            spinner = Spinner("dots", Text("thinking…", style="dim"), style="dim")
            self._live = Live(spinner, console=self.console, transient=True, refresh_per_second=REFRESH)
        elif section == "answer":
            self._markdown = _MarkdownSoFar()
            self._live = Live(
                self._markdown, console=self.console, vertical_overflow="ellipsis", refresh_per_second=REFRESH
            )
        if self._live is not None:
            self._live.start()

    def _leave(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()
        match self._section:
            case "reasoning":
                self.console.print("\n")  # end the line, then a blank one before the answer
            case "preamble":
                self.console.print()
            case "thinking":
                seconds = time.perf_counter() - self._thinking_since
                self.console.print(
                    Text(f"thought for {seconds:.1f} s, {self._thinking_tokens} tokens", style="dim")
                )
        self._section = None
