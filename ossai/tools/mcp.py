"""Tools of MCP (Model Context Protocol) servers, offered to the model as function tools.

Config: the JSON file users know from Claude Desktop and Cursor; other top-level keys and unknown entry
keys are ignored, an entry with `"disabled": true` is skipped:

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
                  "env": {"DEBUG": "1"}, "cwd": "~/work"},
        "search": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ..."}}}}

A `command` entry is spawned and spoken to over its stdin/stdout (the SDK passes it only a safe subset
of our environment, HOME and PATH among them, plus its `env`); a `url` entry uses the streamable HTTP
transport. Each server tool `T` of server `S` becomes the function `S__T` (sanitised to
`[A-Za-z0-9_-]`, at most 64 characters); servers are shared by every conversation (`session` is unused).

Threads: the SDK is async, `Tool.call` is not. `McpTools` owns one asyncio loop in a daemon thread and
submits coroutines to it. Each server has one long-lived task that enters the transport and the
`Client` and then sleeps until cancelled, so that anyio's cancel scopes are entered and exited by the
same task; calls are separate tasks on that loop using the connected client. Servers are connected
concurrently on `start()`, which the first `functions()`, `handles()` or `call()` runs if nobody did.
A server that fails to connect has no tools; one that dies later is reconnected on the next call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar, TextIO, TypeVar, cast

import anyio
import httpx2
import mcp.types as mcp_types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from ossai.errors import BadRequest
from ossai.tools.base import Tool, ToolResult

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_FUNCTION_NAME = 64  # the OpenAI function-name limit
_MAX_PAGES = 100  # a tools/list paginator that never ends cannot hang start()
_GRACE = 10.0  # thread-side slack over the loop-side deadlines (stdio shutdown alone takes up to 6 s)
_POLL = 0.5  # how often a waiting thread checks that the loop thread is still alive
_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)  # the SDK's defaults: a response stream may stay open

T = TypeVar("T")


# --- config ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StdioServer:
    """A server we spawn and talk to over its stdin/stdout."""

    transport: ClassVar[str] = "stdio"
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None  # merged over the SDK's safe subset of our environment
    cwd: str | None = None

    @property
    def target(self) -> str:
        return " ".join([self.command, *self.args])


@dataclass(frozen=True, slots=True)
class HttpServer:
    """A server reached over the streamable HTTP transport."""

    transport: ClassVar[str] = "http"
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.url


ServerConfig = StdioServer | HttpServer


def load_config(path: Path) -> dict[str, ServerConfig]:
    """The servers of an `mcpServers` config file, by name; a missing (or blank) file means none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Cannot read the MCP config {path}: {exc}.") from exc
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"The MCP config {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from exc
    servers = data.get("mcpServers", {}) if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise BadRequest(f'The MCP config {path} must be a JSON object whose "mcpServers" is an object.')
    return {
        name: _parse_entry(path, name, entry)
        for name, entry in servers.items()
        if not (isinstance(entry, dict) and entry.get("disabled") is True)  # Cline and Roo write this
    }


def _parse_entry(path: Path, name: str, entry: Any) -> ServerConfig:
    where = f"In the MCP config {path}, server {name!r}"
    if not _NAME.fullmatch(name):
        raise BadRequest(f"{where} has a bad name: use only letters, digits, '_' and '-'.")
    if not isinstance(entry, dict) or ("command" in entry) == ("url" in entry):
        raise BadRequest(f'{where} must be an object with either "command" or "url".')
    kind = entry.get("type")  # Cursor and VS Code write the transport out
    if "url" in entry:
        if kind not in (None, "http", "streamable-http", "streamableHttp", "streamable_http"):
            raise BadRequest(f"{where} has type {kind!r}: only stdio and streamable HTTP are supported.")
        url = _string(where, entry, "url")
        if not url.startswith(("http://", "https://")):
            raise BadRequest(f'{where} has "url" {url!r}, which is not an http:// or https:// URL.')
        return HttpServer(url=url, headers=_strings(where, entry, "headers") or {})
    if kind not in (None, "stdio"):
        raise BadRequest(f'{where} has type {kind!r} but a "command": only stdio runs a command.')
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise BadRequest(f'{where} has "args" that is not a list of strings.')
    cwd = _string(where, entry, "cwd") if entry.get("cwd") is not None else None
    if cwd is not None:
        cwd = str(path.parent / Path(cwd).expanduser())  # relative to the config file, not to us
    return StdioServer(
        command=_string(where, entry, "command"), args=tuple(args), env=_strings(where, entry, "env"), cwd=cwd
    )


def _string(where: str, entry: dict[str, Any], key: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value:
        raise BadRequest(f'{where} has "{key}" that is not a non-empty string.')
    return value


def _strings(where: str, entry: dict[str, Any], key: str) -> dict[str, str] | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest(f'{where} has "{key}" that is not an object of strings.')
    return dict(value)


# --- the tool ----------------------------------------------------------------------------------------


class _Unavailable(Exception):
    """The server is not connected; the message says why."""


@dataclass(eq=False)
class _Server:
    """One configured server; its fields are written by the loop thread only."""

    name: str
    config: ServerConfig
    tools: list[mcp_types.Tool] = field(default_factory=list)
    client: Client | None = None  # set while connected
    error: str | None = "not started"  # why it is not connected
    functions: dict[str, str] = field(default_factory=dict)  # tool name -> function name
    ever_connected: bool = False  # reconnect only servers that once worked
    scope: anyio.CancelScope | None = None  # cancelling it disconnects
    task: asyncio.Task[None] | None = None  # the connection task
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one (re)connect at a time


class McpTools(Tool):
    """The tools of every configured MCP server, as function tools named `SERVER__TOOL`.

    `ToolResult.data` of a call: `{"server", "tool", "arguments" (parsed, or the raw text when it is not
    a JSON object), "output" (the text), "error" (the message, or None)}`.
    """

    name = "mcp"

    def __init__(
        self, configs: Mapping[str, ServerConfig], *, timeout: float = 60.0, connect_timeout: float = 30.0
    ) -> None:
        for name in configs:
            if not _NAME.fullmatch(name):
                raise BadRequest(f"MCP server name {name!r} may use only letters, digits, '_' and '-'.")
        self.timeout = timeout  # per call
        self.connect_timeout = connect_timeout  # per server: spawn or connect, handshake, tools/list
        self._servers = [_Server(name, config) for name, config in configs.items()]
        self._routes: dict[str, tuple[_Server, str]] = {}  # function name -> (server, tool name)
        self._functions: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._state = "new"  # -> "started" -> "closed"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # Tool interface

    def functions(self) -> list[dict[str, Any]]:
        self.start()
        return copy.deepcopy(self._functions)

    def handles(self, recipient: str) -> bool:
        self.start()
        return recipient.removeprefix("functions.") in self._routes

    def call(self, recipient: str, arguments: str, session: str) -> ToolResult:
        self.start()
        function = recipient.removeprefix("functions.")
        route = self._routes.get(function)
        if route is None:
            return ToolResult(f"There is no MCP tool named {function!r}.", error=True)
        server, tool = route
        data: dict[str, Any] = {"server": server.name, "tool": tool, "arguments": arguments, "output": ""}
        try:
            parsed = _parse_arguments(arguments)
        except ValueError as exc:
            return _failure(data, f"The arguments of {function} are not valid: {exc}.")
        data["arguments"] = parsed
        if self._state == "closed":
            return _failure(data, "The MCP tools are closed.")
        try:
            result = self._submit(self._call(server, tool, parsed), self.connect_timeout + self.timeout)
        except TimeoutError:
            return _failure(data, f"The MCP tool {function} did not answer within {self.timeout:g} s.")
        except _Unavailable as exc:
            return _failure(data, f"The MCP server {server.name!r} is not available: {exc}.")
        except concurrent.futures.CancelledError:
            return _failure(data, "The MCP tools were closed during the call.")
        except Exception as exc:  # the server or the connection failed; the model should hear about it
            return _failure(data, f"The MCP tool {function} failed: {_reason(exc)}.")
        output = _render(result)
        data["output"] = output
        data["error"] = output if result.is_error else None
        return ToolResult(output or "(no output)", error=result.is_error, data=data)

    def close(self) -> None:
        with self._lock:
            if self._state == "closed":
                return
            self._state = "closed"
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        # On a timeout the loop stops anyway; stdio children were started in their own process group.
        with suppress(TimeoutError, concurrent.futures.CancelledError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(self.connect_timeout + _GRACE)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_GRACE)

    # Lifecycle and introspection

    def start(self) -> None:
        """Connect to every server (concurrently, each within `connect_timeout`) and list their tools.

        Idempotent; blocks until every server is connected or has failed. Never raises for a server."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "started"
            if not self._servers:
                return
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=_run_loop, args=(self._loop,), name="mcp", daemon=True)
            self._thread.start()
            # Each server has its own deadline; any still connecting past it is left without tools.
            with suppress(TimeoutError):
                self._submit(self._connect_all(), self.connect_timeout)
            self._build_routes()

    def servers(self) -> list[dict[str, Any]]:
        """Per server: name, transport, target (command line or URL), status ("ok" or "error"), error
        (why it is not connected, or None), tools ({name, function, description}), for `ossai mcp list`."""
        self.start()
        return [
            {
                "name": s.name,
                "transport": s.config.transport,
                "target": s.config.target,
                "status": "ok" if s.client is not None else "error",
                "error": None if s.client is not None else s.error,
                "tools": [
                    {"name": t.name, "function": s.functions.get(t.name), "description": t.description or ""}
                    for t in s.tools
                ],
            }
            for s in self._servers
        ]

    def _build_routes(self) -> None:
        for server in self._servers:
            for tool in server.tools:
                function = _function_name(server.name, tool.name, self._routes)
                server.functions[tool.name] = function
                self._routes[function] = (server, tool.name)
                description = tool.description or tool.title or f"{tool.name} (MCP server {server.name})"
                spec = {"name": function, "description": description, "parameters": tool.input_schema}
                self._functions.append({"type": "function", "function": spec})

    def _submit(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on our loop and wait for it; `TimeoutError` past `timeout` (+ slack)."""
        assert self._loop is not None and self._thread is not None
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop is closed: close() won a race with this call
            coro.close()
            raise _Unavailable("the MCP tools are closed") from None
        deadline = time.monotonic() + timeout + _GRACE
        # The loop side bounds everything it runs; this is the backstop if the loop itself stopped.
        while not future.done():
            concurrent.futures.wait([future], _POLL)
            if not future.done() and (not self._thread.is_alive() or time.monotonic() > deadline):
                future.cancel()
                raise TimeoutError
        return future.result()  # the coroutine's own TimeoutError, if it timed out, comes out here

    # Loop side: everything below runs on the loop thread

    async def _connect_all(self) -> None:
        await asyncio.gather(*(self._connect(server) for server in self._servers))

    async def _connect(self, server: _Server) -> None:
        """Start the server's connection task; return once it is connected or has failed."""
        ready = asyncio.get_running_loop().create_future()
        server.task = asyncio.create_task(self._serve(server, ready), name=f"mcp-{server.name}")
        await ready

    async def _serve(self, server: _Server, ready: asyncio.Future[None]) -> None:
        """The connection's lifetime: connect, list the tools, then wait to be cancelled."""
        scope = server.scope = anyio.CancelScope(deadline=anyio.current_time() + self.connect_timeout)
        error = "the MCP tools were closed"
        # A stdio server's stderr goes to a file, read back when it fails: that is where it explains why.
        with _stderr_file(server.config) as stderr:
            try:
                with scope:
                    async with _open(server.config, stderr) as client:
                        tools = await _list_tools(client)
                        scope.deadline = math.inf
                        server.tools, server.client, server.error = tools, client, None
                        server.ever_connected = True
                        ready.set_result(None)
                        await anyio.sleep_forever()
                if self._state != "closed":  # cancelled by its deadline, or by a call that found it dead
                    lost = ready.done()
                    error = (
                        "the connection was lost" if lost else f"no answer within {self.connect_timeout:g} s"
                    )
            except Exception as exc:
                error = _start_error(exc, server.config)
            finally:
                server.client = None
                if stderr is not None and self._state != "closed":
                    error = _with_stderr(error, stderr)
                server.error = error
                if not ready.done():
                    ready.set_result(None)

    async def _connected(self, server: _Server) -> Client:
        """The server's client, reconnecting one that worked before and died since."""
        async with server.lock:
            if server.client is None and server.ever_connected and self._state != "closed":
                if server.task is not None:
                    await asyncio.wait({server.task})  # let the dead connection finish shutting down
                await self._connect(server)
            if server.client is None:
                raise _Unavailable(server.error or "it is not connected")
            return server.client

    async def _call(self, server: _Server, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        client = await self._connected(server)
        try:
            with anyio.fail_after(self.timeout):
                return await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED and server.client is client and server.scope:
                # A stdio server that died: tear the connection down, reconnect on the next call.
                server.client, server.error = None, "the connection was lost"
                server.scope.cancel()
            raise

    async def _shutdown(self) -> None:
        for server in self._servers:
            if server.scope is not None:
                server.scope.cancel()
        tasks = [s.task for s in self._servers if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.connect_timeout)
        # Calls still waiting end now (their threads see CancelledError), so the loop stops clean.
        current = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others, timeout=_GRACE)


def describe(configs: Mapping[str, ServerConfig], *, connect_timeout: float = 30.0) -> list[dict[str, Any]]:
    """Connect to every server once and report it (see `McpTools.servers`): for `ossai mcp list`."""
    tools = McpTools(configs, connect_timeout=connect_timeout)
    try:
        return tools.servers()
    finally:
        tools.close()


# --- helpers -----------------------------------------------------------------------------------------


def _stderr_file(config: ServerConfig) -> AbstractContextManager[TextIO | None]:
    if isinstance(config, HttpServer):
        return nullcontext()
    return cast(AbstractContextManager[TextIO], tempfile.TemporaryFile("w+"))


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@asynccontextmanager
async def _open(config: ServerConfig, stderr: TextIO | None) -> AsyncIterator[Client]:
    """A connected client; enter and exit it in the same task."""
    info = mcp_types.Implementation(name="ossai", version=_version())
    if isinstance(config, HttpServer):
        async with httpx2.AsyncClient(headers=dict(config.headers), timeout=_HTTP_TIMEOUT) as http:
            transport = streamable_http_client(config.url, http_client=http)
            async with Client(transport, cache=None, client_info=info) as client:
                yield client
    else:
        params = StdioServerParameters(
            command=config.command,
            args=list(config.args),
            env=dict(config.env) if config.env is not None else None,
            cwd=config.cwd,
        )
        assert stderr is not None
        async with Client(stdio_client(params, errlog=stderr), cache=None, client_info=info) as client:
            yield client


async def _list_tools(client: Client) -> list[mcp_types.Tool]:
    if client.server_capabilities.tools is None:
        return []  # a server with only resources or prompts
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


@cache
def _version() -> str:
    try:
        return version("ossai")
    except PackageNotFoundError:
        return "0"


def _function_name(server: str, tool: str, taken: Mapping[str, object]) -> str:
    """`server__tool`, sanitised and cut to 64 characters, with a `_2`... suffix against clashes."""
    base = _UNSAFE.sub("_", f"{server}__{tool}")[:_MAX_FUNCTION_NAME]
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[: _MAX_FUNCTION_NAME - len(suffix)] + suffix
    return name


def _parse_arguments(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}  # a tool without parameters, called with nothing
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"they are not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"they must be a JSON object, not {type(value).__name__}")
    return value


def _failure(data: dict[str, Any], message: str) -> ToolResult:
    return ToolResult(message, error=True, data={**data, "output": "", "error": message})


def _render(result: mcp_types.CallToolResult) -> str:
    """The result's content as text; what the model cannot see is named, not dropped silently."""
    parts = [_render_block(block) for block in result.content]
    if not parts and result.structured_content is not None:
        parts = [json.dumps(result.structured_content, ensure_ascii=False)]
    return "\n".join(parts)


def _render_block(block: mcp_types.ContentBlock) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return f"[{block.type}: {block.mime_type}]"
    if isinstance(block, mcp_types.ResourceLink):
        return f"[resource link: {block.uri}]"
    resource = block.resource
    if isinstance(resource, mcp_types.TextResourceContents):
        return resource.text
    return f"[resource: {resource.uri} ({resource.mime_type or 'binary'})]"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _reason(exc: BaseException) -> str:
    """One readable line for an exception, looking inside anyio's exception groups."""
    leaves = _leaves(exc)
    # "Connection closed" is the echo of a failure another leaf may explain better.
    leaf = next((e for e in leaves if not _is_closed(e)), leaves[0])
    if isinstance(leaf, MCPError):
        return leaf.message
    if isinstance(leaf, TimeoutError):
        return "it timed out"
    return str(leaf) or type(leaf).__name__


def _is_closed(exc: BaseException) -> bool:
    return isinstance(exc, MCPError) and exc.code == mcp_types.CONNECTION_CLOSED


def _start_error(exc: Exception, config: ServerConfig) -> str:
    leaf = next((e for e in _leaves(exc) if not _is_closed(e)), None)
    if isinstance(config, StdioServer) and isinstance(leaf, FileNotFoundError):
        if config.cwd is not None and leaf.filename == config.cwd:
            return f"the working directory {config.cwd!r} does not exist"
        return f"the command {config.command!r} was not found"
    if isinstance(config, StdioServer) and isinstance(leaf, PermissionError):
        return f"the command {config.command!r} cannot be run (permission denied)"
    if isinstance(config, HttpServer) and isinstance(leaf, httpx2.TransportError):
        return f"cannot reach {config.url}: {_reason(leaf)}"
    return _reason(exc)


def _with_stderr(error: str, stderr: TextIO) -> str:
    """`error`, with the last lines a stdio server wrote on stderr (where it explains itself)."""
    size = os.fstat(stderr.fileno()).st_size
    text = os.pread(stderr.fileno(), 2000, max(0, size - 2000)).decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()][-3:]
    return f"{error} (stderr: {' | '.join(lines)[-300:]})" if lines else error
