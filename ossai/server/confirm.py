"""Confirm before running: a streamed chat request with `"ossai": {"confirm": ["python"]}` makes the agent
loop wait for the user before each call of those tools (docs/web-client.md).

The loop registers the call here and sends `ossai_tool` with status `awaiting_confirmation`;
`POST /ossai/tool-calls/{id}/confirm` answers it. Only the API key that made the request may answer. A
call declined, unanswered for `ServerConfig.confirm_timeout_s`, or whose client went away is not run: the
model reads `DECLINED` as the call's (failed) result.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ossai.errors import NotFound
from ossai.tools.base import Tool

DECLINED = "The user declined to run this code."
CONFIRM_TIMEOUT_S = 600.0

router = APIRouter(prefix="/ossai/tool-calls")


def owner_of(request: Request) -> str:
    """Who is asking, as far as the server can tell: a hash of the API key (empty without keys)."""
    return hashlib.sha256(request.headers.get("authorization", "").encode()).hexdigest()[:16]


class Confirmations:
    """The tool calls waiting for the user, by call id, with the owner allowed to answer each. Used from
    the event loop only."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[str, asyncio.Future[bool]]] = {}

    def open(self, call_id: str, owner: str) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = (owner, future)
        return future

    def answer(self, call_id: str, owner: str, approve: bool) -> bool:
        """Resolve a waiting call; False when there is none (unknown, answered, gone, or not the owner's)."""
        entry = self._waiting.get(call_id)
        if entry is None or entry[0] != owner or entry[1].done():
            return False
        del self._waiting[call_id]
        entry[1].set_result(approve)
        return True

    def close(self, call_id: str) -> None:
        entry = self._waiting.pop(call_id, None)
        if entry is not None and not entry[1].done():
            entry[1].cancel()

    def __len__(self) -> int:
        return len(self._waiting)


@dataclass
class ConfirmGate:
    """One request's confirmations: which of its tools wait for the user, and who may answer."""

    registry: Confirmations
    owner: str
    tools: Sequence[Tool]
    timeout_s: float = CONFIRM_TIMEOUT_S

    def wants(self, tool: Tool | None) -> bool:
        return tool is not None and any(tool is t for t in self.tools)

    def open(self, call_id: str) -> asyncio.Future[bool]:
        return self.registry.open(call_id, self.owner)

    async def wait(self, future: asyncio.Future[bool]) -> bool:
        """The user's answer; False when the time runs out."""
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            return False

    def close(self, call_id: str) -> None:
        self.registry.close(call_id)


class ConfirmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approve: bool


@router.post("/{call_id}/confirm")
async def confirm(call_id: str, body: ConfirmRequest, request: Request) -> dict:
    registry: Confirmations = request.app.state.ctx.confirmations
    if not registry.answer(call_id, owner_of(request), body.approve):
        raise NotFound(f"no tool call {call_id!r} is waiting for confirmation", "id")
    return {"id": call_id, "approved": body.approve}
