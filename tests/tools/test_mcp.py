"""MCP tools against a real MCP server (tests/tools/mcp_server.py) over stdio and streamable HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ossai.errors import BadRequest
from ossai.tools.base import ToolResult
from ossai.tools.mcp import HttpServer, McpTools, StdioServer, _function_name, describe, load_config

SERVER = Path(__file__).with_name("mcp_server.py")
MISSING = "/nonexistent/ossai-mcp-server"


def stdio() -> StdioServer:
    return StdioServer(command=sys.executable, args=(str(SERVER),))


def start_http(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The test server on a free loopback port, once it accepts connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)], stdout=out, stderr=out)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the HTTP MCP server did not start: {log.read_text()}")


def gone(pid: int, within: float = 5.0) -> bool:
    """Whether the process has exited and been reaped (a zombie still counts as left behind)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_http(tmp_path_factory.mktemp("mcp") / "http.log")
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def tools(http_url: str) -> Iterator[McpTools]:
    t = McpTools(
        {"local": stdio(), "remote": HttpServer(url=http_url), "broken": StdioServer(command=MISSING)},
        timeout=10,
    )
    yield t
    t.close()


def call(tools: McpTools, name: str, arguments: dict[str, object] | str) -> ToolResult:
    return tools.call(name, arguments if isinstance(arguments, str) else json.dumps(arguments), "s1")


# --- config ------------------------------------------------------------------------------------------


def test_load_config(tmp_path: Path):
    path = tmp_path / "mcp.json"
    config = {
        "globalShortcut": "Ctrl+Space",  # other keys of a Claude Desktop config are ignored
        "mcpServers": {
            "files": {"command": "npx", "args": ["-y", "server"], "env": {"A": "1"}, "cwd": "data"},
            "web-2": {
                "type": "http",
                "url": "https://example.com/mcp",
                "headers": {"Authorization": "Bearer x"},
            },
            "bare": {"command": "srv"},
            "off": {"command": "srv", "disabled": True},
        },
    }
    path.write_text(json.dumps(config))
    assert load_config(path) == {
        "files": StdioServer(
            command="npx", args=("-y", "server"), env={"A": "1"}, cwd=str(tmp_path / "data")
        ),
        "web-2": HttpServer(url="https://example.com/mcp", headers={"Authorization": "Bearer x"}),
        "bare": StdioServer(command="srv"),
    }


def test_load_config_missing_or_empty_file_means_no_servers(tmp_path: Path):
    assert load_config(tmp_path / "nope.json") == {}
    (tmp_path / "empty.json").write_text("\n")
    assert load_config(tmp_path / "empty.json") == {}
    (tmp_path / "none.json").write_text("{}")
    assert load_config(tmp_path / "none.json") == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"mcpServers": {', "not valid JSON"),
        ("[1, 2]", '"mcpServers"'),
        ('{"mcpServers": []}', '"mcpServers"'),
        ('{"mcpServers": {"a b": {"command": "x"}}}', "'a b'"),
        ('{"mcpServers": {"s": "npx"}}', "'s'"),
        ('{"mcpServers": {"s": {}}}', '"command" or "url"'),
        ('{"mcpServers": {"s": {"command": "x", "url": "http://h"}}}', '"command" or "url"'),
        ('{"mcpServers": {"s": {"command": "x", "args": "-y"}}}', '"args"'),
        ('{"mcpServers": {"s": {"command": "x", "env": {"A": 1}}}}', '"env"'),
        ('{"mcpServers": {"s": {"command": ""}}}', '"command"'),
        ('{"mcpServers": {"s": {"url": "ftp://h/mcp"}}}', "ftp://h/mcp"),
        ('{"mcpServers": {"s": {"url": "http://h/sse", "type": "sse"}}}', "'sse'"),
        ('{"mcpServers": {"s": {"url": "http://h", "headers": ["x"]}}}', '"headers"'),
    ],
)
def test_load_config_rejects_malformed(tmp_path: Path, text: str, words: str):
    path = tmp_path / "mcp.json"
    path.write_text(text)
    with pytest.raises(BadRequest) as info:
        load_config(path)
    assert str(path) in str(info.value) and words in str(info.value)


def test_bad_server_name_in_code():
    with pytest.raises(BadRequest, match=r"'a\.b'"):
        McpTools({"a.b": stdio()})


def test_function_names_are_sanitised_short_and_unique():
    taken: dict[str, object] = {}
    for tool in ("read.file", "read file", "x" * 80, "x" * 81):
        taken[_function_name("fs", tool, taken)] = True
    assert list(taken) == ["fs__read_file", "fs__read_file_2", "fs__" + "x" * 60, "fs__" + "x" * 58 + "_2"]


# --- listing and calling -----------------------------------------------------------------------------


def test_functions_of_both_transports(tools: McpTools):
    functions = {f["function"]["name"]: f for f in tools.functions()}
    tool_names = ["add", "echo", "fail", "sleep", "picture", "pid"]
    assert set(functions) == {f"{server}__{tool}" for server in ("local", "remote") for tool in tool_names}
    add = functions["remote__add"]
    assert add["type"] == "function"
    assert add["function"]["description"] == "Add two integers."
    assert add["function"]["parameters"]["type"] == "object"
    assert set(add["function"]["parameters"]["properties"]) == {"a", "b"}
    assert tools.handles("local__add") and tools.handles("functions.remote__echo")
    assert (
        not tools.handles("broken__add") and not tools.handles("python") and not tools.handles("local__nope")
    )


@pytest.mark.parametrize("server", ["local", "remote"])
def test_calls(tools: McpTools, server: str):
    result = call(tools, f"{server}__add", {"a": 2, "b": 3})
    assert (result.text, result.error) == ("5", False)
    assert result.data == {
        "server": server,
        "tool": "add",
        "arguments": {"a": 2, "b": 3},
        "output": "5",
        "error": None,
    }
    assert call(tools, f"functions.{server}__echo", {"text": "héllo\nworld"}).text == "héllo\nworld"
    assert call(tools, f"{server}__picture", "").text == "[image: image/png]"


@pytest.mark.parametrize("server", ["local", "remote"])
def test_tool_error_is_an_error_result(tools: McpTools, server: str):
    result = call(tools, f"{server}__fail", {"reason": "disk on fire"})
    assert result.error and "disk on fire" in result.text
    assert result.data["error"] == result.text
    wrong = call(tools, f"{server}__add", {"a": "two"})  # the server validates the arguments
    assert wrong.error and "validation error" in wrong.text


def test_bad_json_arguments(tools: McpTools):
    for raw in ('{"a": 1', "[1, 2]"):
        result = call(tools, "local__add", raw)
        assert result.error and "not valid" in result.text
        assert result.data["arguments"] == raw and result.data["server"] == "local"
    assert call(tools, "nobody__add", "{}").error


def test_servers_report_the_broken_one(tools: McpTools):
    status = {s["name"]: s for s in tools.servers()}
    assert status["local"]["status"] == status["remote"]["status"] == "ok"
    assert status["remote"]["transport"] == "http" and status["local"]["transport"] == "stdio"
    assert status["broken"]["status"] == "error" and "was not found" in status["broken"]["error"]
    assert status["broken"]["tools"] == []
    assert {"name": "add", "function": "local__add", "description": "Add two integers."} in status["local"][
        "tools"
    ]


def test_describe(http_url: str, tmp_path: Path):
    configs = {
        "ok": stdio(),
        "missing": StdioServer(command=MISSING),
        "quits": StdioServer(command=sys.executable, args=("-c", "import sys; sys.exit('no token set')")),
        "nothere": HttpServer(url="http://127.0.0.1:9/mcp"),
        "nodir": StdioServer(command=sys.executable, cwd=str(tmp_path / "nodir")),
    }
    report = {s["name"]: s for s in describe(configs, connect_timeout=10)}
    assert report["ok"]["status"] == "ok" and len(report["ok"]["tools"]) == 6
    assert report["ok"]["target"] == f"{sys.executable} {SERVER}"
    assert "was not found" in report["missing"]["error"]
    assert "no token set" in report["quits"]["error"]  # the server's stderr explains
    assert "cannot reach http://127.0.0.1:9/mcp" in report["nothere"]["error"]
    assert "working directory" in report["nodir"]["error"]


def test_server_that_never_answers_is_given_up_and_killed():
    hangs = "import os, sys, time; print('pid', os.getpid(), file=sys.stderr, flush=True); time.sleep(60)"
    started = time.monotonic()
    (report,) = describe(
        {"hangs": StdioServer(command=sys.executable, args=("-c", hangs))}, connect_timeout=1
    )
    assert report["status"] == "error" and "no answer within 1 s" in report["error"]
    assert time.monotonic() - started < 10
    pid = int(report["error"].split("pid ")[1].rstrip(")"))
    assert gone(pid, within=1.0)  # it ignored its closed stdin, so close() had to kill it


# --- timeouts, deaths, close -------------------------------------------------------------------------


def test_timeout_death_reconnect_and_close():
    tools = McpTools({"s": stdio()}, timeout=1)
    try:
        first = int(call(tools, "s__pid", "").text)
        started = time.monotonic()
        slow = call(tools, "s__sleep", {"seconds": 30})
        assert slow.error and "did not answer within 1 s" in slow.text
        assert time.monotonic() - started < 5
        assert call(tools, "s__echo", {"text": "still there"}).text == "still there"

        os.kill(first, signal.SIGKILL)
        assert gone(first)
        lost = call(tools, "s__echo", {"text": "anyone?"})
        assert lost.error and "failed" in lost.text
        second = int(call(tools, "s__pid", "").text)  # the next call starts the server again
        assert second != first
    finally:
        tools.close()
    assert gone(second, within=1.0)
    assert call(tools, "s__echo", {"text": "x"}).error  # closed: an error result, not an exception


def test_http_server_that_dies(tmp_path: Path):
    proc, url = start_http(tmp_path / "http.log")
    tools = McpTools({"h": HttpServer(url=url)}, timeout=5)
    try:
        assert call(tools, "h__add", {"a": 1, "b": 1}).text == "2"
        proc.kill()
        proc.wait()
        started = time.monotonic()
        assert call(tools, "h__add", {"a": 1, "b": 1}).error
        assert call(tools, "h__add", {"a": 1, "b": 1}).error
        assert time.monotonic() - started < 10
    finally:
        tools.close()
        proc.kill()


def test_no_servers_no_thread():
    tools = McpTools({})
    assert tools.functions() == [] and not tools.handles("x__y") and tools.servers() == []
    assert tools.call("x__y", "{}", "s").error
    tools.close()


def test_concurrent_calls_from_threads(tools: McpTools):
    jobs = [(server, n) for server in ("local", "remote") for n in range(20)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: call(tools, f"{job[0]}__add", {"a": job[1], "b": 1}), jobs))
    assert [r.text for r in results] == [str(n + 1) for _, n in jobs]
