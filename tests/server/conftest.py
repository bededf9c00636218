"""A real `ossai serve` app on a loopback port (uvicorn in a thread) over a random tiny checkpoint.

`served` is a module-wide server on a ScriptedEngine: tests queue harmony completions with
`served.engine.script(...)` when they need structure (reasoning, tool calls) that random weights never
produce; without a script the model samples as usual.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from ossai.config import EngineConfig
from ossai.engine import Request as EngineRequest
from ossai.server.app import create_app
from ossai.server.context import ServerConfig
from ossai.testing.scripted import ScriptedEngine

MODEL = "tiny-gpt-oss"

# Scripted completions and a tool shared by the API tests (random weights never produce these).
REASONING = "The user asks 2+2. That is 4."
ANSWER = "2 + 2 = **4**."
REASONED = (
    f"<|channel|>analysis<|message|>{REASONING}<|end|>"
    f"<|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>"
)
CALL_REASONING = "Need the weather; call the tool."
TOOL_CALL = (
    f"<|channel|>analysis<|message|>{CALL_REASONING}<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"city":"Paris"}<|call|>'
)
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CHAT_TOOLS = [{"type": "function", "function": WEATHER}]  # chat completions' (and Ollama's) form


@dataclass
class Served:
    url: str
    engine: ScriptedEngine
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def wait_idle(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (s := self.engine.stats()).running or s.waiting:
            if time.monotonic() > deadline:
                raise AssertionError(f"engine still busy: {s}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.engine.close()


def record_submissions(engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch) -> list[EngineRequest]:
    """Every engine request submitted from now on (prompt tokens, sampling), in order."""
    seen: list[EngineRequest] = []
    original = engine.submit

    def record(request: EngineRequest):
        seen.append(request)
        return original(request)

    monkeypatch.setattr(engine, "submit", record)
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    checkpoint: Path, home: Path, engine: ScriptedEngine | None = None, **server_options
) -> Served:
    engine = engine or ScriptedEngine.load(checkpoint, config=EngineConfig(kv_cache_mb=64, max_num_seqs=8))
    config = ServerConfig(model_name=MODEL, home=home, **server_options)
    url, server, thread = serve_app(create_app(engine, config))
    return Served(url, engine, server, thread)


def serve_app(app: FastAPI) -> tuple[str, uvicorn.Server, threading.Thread]:
    """Run `app` with uvicorn in a thread on a free loopback port, once /health answers."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, lambda: thread.is_alive())
    return url, server, thread


def spawn_server(args: list[str], home: Path) -> tuple[subprocess.Popen, str]:
    """`ossai serve ARGS` as a child process on a free port, once /health answers; the caller stops it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ossai.cli", "serve", *args, "--port", str(port)],
        env={**os.environ, "OSSAI_HOME": str(home)}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, lambda: proc.poll() is None)
    except RuntimeError:
        proc.kill()
        raise AssertionError(proc.stderr.read() if proc.stderr else "server did not start") from None
    return proc, url


def wait_healthy(url: str, alive, timeout: float = 60.0) -> None:
    """Poll /health until the server answers; fail early if `alive()` says it died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
        if time.monotonic() > deadline or not alive():
            raise RuntimeError(f"server at {url} did not start")


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory) -> Iterator[Served]:
    handle = start_server(tiny, tmp_path_factory.mktemp("home"))
    yield handle
    handle.stop()
