"""The one interface every tool implements: built-ins (python, browser), MCP tools, and what the agent loop
needs from them.

A tool is addressed by the harmony recipient the model writes: `python`, `browser.search`,
`browser.open`, `browser.find` (built-ins, called on the analysis channel and described in the system
message by a harmony namespace), or `functions.NAME` (function tools, described in the developer message;
MCP tools take this form). `call` blocks (the agent loop runs it in a worker thread) and never raises for
anything the model or the outside world did: a failure is a `ToolResult` with `error=True` and a text the
model can read and act on.

State is per conversation: `session` names it (the python interpreter's variables and files, the
browser's page stack). A tool keeps its sessions and expires idle ones itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from openai_harmony import ToolNamespaceConfig


@dataclass(slots=True)
class ToolResult:
    text: str  # what the model sees: the content of the harmony tool message
    error: bool = False  # the call failed; `text` says why, in words the model can act on
    data: dict[str, Any] = field(default_factory=dict)  # structured details for clients (see each tool)


class Tool(ABC):
    """A tool the server (or the terminal chat) runs on the model's behalf."""

    name: str  # "python", "browser", or the function name the model calls (`functions.<name>`)

    def namespace(self) -> ToolNamespaceConfig | None:
        """The harmony built-in namespace the model sees in the system message (built-ins only)."""
        return None

    def functions(self) -> list[dict[str, Any]]:
        """OpenAI-style function tools (`{"type": "function", "function": {name, description,
        parameters}}`) the model sees in the developer message (function-style tools only)."""
        return []

    def handles(self, recipient: str) -> bool:
        """Whether a call to `recipient` (as the model wrote it, `functions.` prefix stripped) is ours."""
        return recipient == self.name or recipient.startswith(self.name + ".")

    @abstractmethod
    def call(self, recipient: str, arguments: str, session: str) -> ToolResult:
        """Run one call. `arguments` is the raw text the model wrote (JSON for browser and functions,
        code for python). Blocking; never raises for bad arguments or failures outside ossai."""

    def end_session(self, session: str) -> None:  # noqa: B027  (a stateless tool keeps nothing)
        """Forget one conversation's state now (the server ends sessions it made up for one request)."""

    def close(self) -> None:  # noqa: B027  (a tool without sessions has nothing to release)
        """Release every session (processes, connections)."""
