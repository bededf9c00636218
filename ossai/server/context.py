"""What the routes share: the model pool, metrics, settings."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from ossai.errors import BadRequest
from ossai.server.confirm import CONFIRM_TIMEOUT_S, Confirmations, ConfirmGate, owner_of
from ossai.server.metrics import Metrics
from ossai.server.openai_types import OssaiOptions
from ossai.server.pool import Loaded, ModelPool, leases_of
from ossai.tools.agent import DEFAULT_MAX_STEPS, DEFAULT_TIMEOUT_S, AgentLoop, ToolSet
from ossai.tools.base import Tool

TOOL_NAMES = ("python", "browser", "mcp")  # what requests and --tools name


@dataclass(slots=True)
class ServerConfig:
    model_name: str | None  # the pinned model's name; None serves the store
    home: Path  # OSSAI_HOME: the SQLite store of stateful responses lives here
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 16 * 2**20
    tools: Mapping[str, Tool] = field(default_factory=dict)  # the tools requests may enable, by name
    default_tools: tuple[str, ...] = ()  # enabled for every chat request
    tool_max_steps: int = DEFAULT_MAX_STEPS
    tool_timeout_s: float = DEFAULT_TIMEOUT_S
    confirm_timeout_s: float = CONFIRM_TIMEOUT_S  # how long a call waits for the user's confirmation
    web_dir: Path | None = None  # the web client's files; None: the package's ossai/web


@dataclass
class ServerContext:
    pool: ModelPool
    config: ServerConfig
    metrics: Metrics
    started: int = field(default_factory=lambda: int(time.time()))
    confirmations: Confirmations = field(default_factory=Confirmations)  # calls waiting for the user

    async def use(self, request: Request, name: str, keep_alive: float | str | None = None) -> Loaded:
        """The model a request names, loaded and leased until its response has been sent."""
        model = await self.pool.acquire(name, keep_alive)
        leases_of(request.scope).append(model)
        return model

    def agent(
        self, request: Request, names: Sequence[str] | None, session: str | None = None
    ) -> AgentLoop | None:
        """The agent loop for a request that enables `names` (plus the server's defaults), or None.

        A client's session name is kept apart per API key, so one client cannot open another's python
        session by guessing its name; without a name the session lasts for this request only."""
        wanted = list(dict.fromkeys([*self.config.default_tools, *(names or ())]))
        if not wanted:
            return None
        for name in wanted:
            if name not in TOOL_NAMES:
                raise BadRequest(f"unknown built-in tool {name!r}; use {', '.join(TOOL_NAMES)}", "tools")
            if name not in self.config.tools:
                raise BadRequest(
                    f"the {name} tool is not enabled on this server (see ossai serve --allow-tools)", "tools"
                )
        tools = ToolSet([self.config.tools[n] for n in wanted], self.config.tool_max_steps,
                        self.config.tool_timeout_s)  # fmt: skip
        if session is None:
            return AgentLoop(tools, uuid.uuid4().hex, ephemeral=True)
        return AgentLoop(tools, f"{owner_of(request)}-{session}")

    def agent_for(self, request: Request, extension: OssaiOptions | None) -> AgentLoop | None:
        """The loop the `ossai` extension field of a chat request (OpenAI or Ollama) asks for."""
        if extension is None:
            return self.agent(request, None)
        return self.agent(request, extension.builtin_tools, extension.session)

    def confirm_gate(
        self, request: Request, extension: OssaiOptions | None, stream: bool
    ) -> ConfirmGate | None:
        """The calls a chat request asks to confirm before they run (`ossai.confirm`), or None. Only a
        streamed request can be asked: the question goes out in the stream."""
        if extension is None or not extension.confirm:
            return None
        if not stream:
            raise BadRequest("ossai.confirm needs a streamed request (stream: true)", "ossai.confirm")
        tools = [self.config.tools[n] for n in dict.fromkeys(extension.confirm) if n in self.config.tools]
        return ConfirmGate(self.confirmations, owner_of(request), tools, self.config.confirm_timeout_s)


def context(request: Request) -> ServerContext:
    return request.app.state.ctx
