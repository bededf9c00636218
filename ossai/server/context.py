"""What the routes share: the engine, the served model's names, metrics, settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from ossai.engine import Engine
from ossai.errors import NotFound
from ossai.server.metrics import Metrics


@dataclass(slots=True)
class ServerConfig:
    model_name: str
    home: Path  # OSSAI_HOME: the SQLite store of stateful responses lives here
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 16 * 2**20


@dataclass
class ServerContext:
    engine: Engine
    config: ServerConfig
    metrics: Metrics
    started: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_name(self) -> str:
        return self.config.model_name

    def check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise NotFound(
                f"model {name!r} not found; this server serves {self.config.model_name!r}", "model"
            )


def context(request: Request) -> ServerContext:
    return request.app.state.ctx
