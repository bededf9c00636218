"""The agent loop's rules, shared by the server and the terminal chat.

The model calls a tool by ending a generation with `<|call|>`. For a tool that ossai runs (a built-in or
an MCP tool), the caller asks `AgentLoop.pending` which calls are ours, runs each with `run` (in a worker
thread: it blocks), appends the messages `record` returns (the assistant turn with its chain of thought
and the call, then one tool message per result, as harmony requires) and generates again; it stops when
`pending` returns nothing. Function tools from the request are never run here: they go back to the
client. How a caller generates (the server's async streams, the terminal chat's token loop) is its own
business; which calls run, with what limits, and what the model sees afterwards is decided here once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ossai.tools.base import Tool, ToolResult

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 8  # tool calls run for one request before the loop stops
DEFAULT_TIMEOUT_S = 180.0  # per call, on top of each tool's own limits
MAX_RESULT_CHARS = 32_000  # what one result may put into the context; the rest is cut with a note
# Calls run here so a stuck one can be abandoned at its time limit; each tool bounds its own work.
_POOL = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="ossai-tool")


@dataclass(frozen=True, slots=True)
class Call:
    id: str
    name: str  # the recipient as the model wrote it: python, browser.search, functions.server__tool
    arguments: str


@dataclass(frozen=True, slots=True)
class Run:
    """One call the server ran, and what came of it."""

    call: Call
    tool: str  # the tool's name: python, browser, or the MCP tools' name
    result: ToolResult
    seconds: float


@dataclass
class ToolSet:
    """The tools one request may use, with the loop's limits."""

    tools: Sequence[Tool]
    max_steps: int = DEFAULT_MAX_STEPS
    timeout_s: float = DEFAULT_TIMEOUT_S

    def find(self, recipient: str) -> Tool | None:
        """The tool for a recipient: a built-in namespace (`python`, `browser.open`), or one of the function
        tools the server added (`functions.files__read`). A client's own function is never ours, even one
        named `python`: its recipient is `functions.python`."""
        if recipient.startswith("functions."):
            name = recipient.removeprefix("functions.")
            return next((t for t in self.tools if name in _names(t.functions())), None)
        return next((t for t in self.tools if t.namespace() is not None and t.handles(recipient)), None)

    def function_names(self) -> set[str]:
        return _names(self.functions())

    @property
    def builtin_namespaces(self) -> list[Any]:
        """The harmony namespaces for the system message (python, browser)."""
        return [ns for t in self.tools if (ns := t.namespace()) is not None]

    def functions(self) -> list[dict[str, Any]]:
        """Function tools the server runs (MCP), for the developer message beside the request's own."""
        return [spec for t in self.tools for spec in t.functions()]

    def run(self, call: Call, session: str) -> Run:
        """Run one call (blocking) with the per-call time limit; a failure is an error result."""
        started = time.perf_counter()
        tool, future = self._submit(call, session)
        if future is None:
            return self._finish(call, tool, None, started)
        try:
            return self._finish(call, tool, future.result(timeout=self.timeout_s), started)
        except concurrent.futures.TimeoutError:
            future.cancel()  # not started yet: never starts; started: the tool's own limits end it
            return self._finish(call, tool, TimeoutError(), started)
        except Exception as exc:
            return self._finish(call, tool, exc, started)

    async def arun(self, call: Call, session: str) -> Run:
        """`run` for asyncio callers: waits without holding a thread of the event loop's executor."""
        started = time.perf_counter()
        tool, future = self._submit(call, session)
        if future is None:
            return self._finish(call, tool, None, started)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
            return self._finish(call, tool, result, started)
        except TimeoutError:
            future.cancel()
            return self._finish(call, tool, TimeoutError(), started)
        except Exception as exc:
            return self._finish(call, tool, exc, started)

    def _submit(self, call: Call, session: str) -> tuple[Tool | None, concurrent.futures.Future | None]:
        tool = self.find(call.name)
        if tool is None:
            return None, None
        return tool, _POOL.submit(tool.call, call.name, call.arguments, session)

    def _finish(self, call: Call, tool: Tool | None, outcome: object, started: float) -> Run:
        if tool is None:
            result = ToolResult(f"Error: no tool named {call.name!r} is available.", error=True)
            return Run(call, call.name, result, 0.0)
        if isinstance(outcome, ToolResult):
            result = outcome
        elif isinstance(outcome, TimeoutError):
            result = ToolResult(f"Error: the {tool.name} call took longer than {self.timeout_s:g} s.", True)
        else:  # a bug in a tool: the model is told, the request goes on
            log.error("tool %s failed: %r", tool.name, outcome)
            result = ToolResult(
                f"Error: the {tool.name} tool failed ({type(outcome).__name__}: {outcome}).", True
            )
        if len(result.text) > MAX_RESULT_CHARS:
            cut = len(result.text) - MAX_RESULT_CHARS
            result.text = result.text[:MAX_RESULT_CHARS] + f"\n[... {cut} more characters cut]"
        return Run(call, tool.name, result, time.perf_counter() - started)

    def end_session(self, session: str) -> None:
        for tool in self.tools:
            tool.end_session(session)


class AgentLoop:
    """The state of one request's loop: the steps taken so far. An `ephemeral` session was made up for
    this request alone (the client named none): its state is dropped when the request ends."""

    def __init__(self, tools: ToolSet, session: str, ephemeral: bool = False):
        self.tools = tools
        self.session = session
        self.ephemeral = ephemeral
        self.steps = 0
        self.limit_hit = False

    def ours(self, name: str) -> bool:
        return self.tools.find(name) is not None

    def pending(self, finish_reason: str, calls: Sequence[Call]) -> list[Call]:
        """The calls of a finished generation that the server runs now; empty when the loop is over (an
        answer, a call the client runs, or the step limit, which sets `limit_hit`)."""
        if finish_reason != "tool_calls":
            return []
        ours = [c for c in calls if self.ours(c.name)]
        if not ours or len(ours) != len(calls):  # a function tool of the client's: the client's turn
            return []
        if self.steps >= self.tools.max_steps:
            self.limit_hit = True
            return []
        self.steps += 1
        return ours

    def run(self, call: Call) -> Run:
        return self.tools.run(call, self.session)

    async def arun(self, call: Call) -> Run:
        return await self.tools.arun(call, self.session)

    def end(self) -> None:
        """The request is over: forget a session made up for it."""
        if self.ephemeral:
            self.tools.end_session(self.session)

    @staticmethod
    def record(reasoning: str, preamble: str, runs: Sequence[Run]) -> list[dict[str, Any]]:
        """The chat messages that carry a tool step into the next generation: the assistant turn (its
        chain of thought, any preamble and the calls), then each result as a tool message."""
        calls = [
            {
                "id": r.call.id,
                "type": "function",
                "function": {"name": r.call.name, "arguments": r.call.arguments},
            }
            for r in runs
        ]
        turn: dict[str, Any] = {"role": "assistant", "content": preamble or None, "tool_calls": calls}
        if reasoning:
            turn["reasoning_content"] = reasoning
        results = [
            {"role": "tool", "tool_call_id": r.call.id, "name": r.call.name, "content": r.result.text}
            for r in runs
        ]
        return [turn, *results]


def _names(functions: list[dict[str, Any]]) -> set[str]:
    return {f.get("function", f).get("name") for f in functions}
