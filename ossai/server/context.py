"""What the routes share: the model pool, metrics, settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from ossai.server.metrics import Metrics
from ossai.server.pool import Loaded, ModelPool, leases_of


@dataclass(slots=True)
class ServerConfig:
    model_name: str | None  # the pinned model's name; None serves the store
    home: Path  # OSSAI_HOME: the SQLite store of stateful responses lives here
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 16 * 2**20


@dataclass
class ServerContext:
    pool: ModelPool
    config: ServerConfig
    metrics: Metrics
    started: int = field(default_factory=lambda: int(time.time()))

    async def use(self, request: Request, name: str, keep_alive: float | str | None = None) -> Loaded:
        """The model a request names, loaded and leased until its response has been sent."""
        model = await self.pool.acquire(name, keep_alive)
        leases_of(request.scope).append(model)
        return model


def context(request: Request) -> ServerContext:
    return request.app.state.ctx
