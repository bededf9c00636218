"""`ossai tool python|browser`, `ossai mcp list`, and an MCP tool through the server's agent loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import openai
from typer.testing import CliRunner

from ossai import settings
from ossai.cli import app
from ossai.config import EngineConfig
from ossai.testing.scripted import ScriptedEngine
from ossai.tools.mcp import McpTools, StdioServer
from tests.server.conftest import MODEL, start_server

SERVER = Path(__file__).with_name("mcp_server.py")
runner = CliRunner()


def _cli(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def _docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text("# Handbook\n\nVacation: 25 days a year.\n\nThe office opens at 9.\n")
    return docs


def test_tool_browser_runs_actions_in_one_session(tmp_path):
    docs = _docs(tmp_path)
    result = _cli(
        "tool", "browser", "search", "vacation days", "open", "0", "find", "office", "--docs", str(docs)
    )
    assert result.exit_code == 0, result.output
    assert "【0†Handbook" in result.output  # the result link the model follows
    assert "Vacation: 25 days a year." in result.output  # the opened page
    assert "Find results for text: `office`" in result.output
    offline = _cli("tool", "browser", "open", "https://example.com/")
    assert offline.exit_code == 1 and "offline" in offline.output.lower()
    assert _cli("tool", "browser", "search").exit_code != 0  # actions come in pairs
    bad = _cli("tool", "browser", "fetch", "x")
    assert bad.exit_code != 0 and "fetch" in str(bad.exception)


def test_tool_python_prints_what_the_model_sees():
    ok = _cli("tool", "python", input="x = 6 * 7\nprint('x is', x)\nx + 1\n")
    assert ok.exit_code == 0, ok.output
    assert "x is 42" in ok.output and "43" in ok.output
    failed = _cli("tool", "python", input="1/0\n")
    assert failed.exit_code == 1 and "ZeroDivisionError" in failed.output


def test_mcp_list(tmp_path):
    empty = _cli("mcp", "list")
    assert empty.exit_code == 0 and "no MCP servers configured" in empty.output
    config = {"mcpServers": {"calc": {"command": sys.executable, "args": [str(SERVER)]},
                             "broken": {"command": str(tmp_path / "missing")}}}  # fmt: skip
    (settings.home() / "mcp.json").write_text(json.dumps(config))
    listed = _cli("mcp", "list")
    assert listed.exit_code == 0, listed.output
    assert "calc (stdio" in listed.output and "calc__add" in listed.output
    assert "broken (stdio" in listed.output and "error" in listed.output
    servers = {s["name"]: s for s in json.loads(_cli("mcp", "list", "--json").stdout)}
    assert servers["calc"]["status"] == "ok" and servers["broken"]["status"] == "error"


def test_mcp_tool_through_the_responses_api(tiny, tmp_path):
    mcp = McpTools({"calc": StdioServer(command=sys.executable, args=(str(SERVER),))})
    engine = ScriptedEngine.load(tiny, config=EngineConfig(kv_cache_mb=64, max_num_seqs=4))
    handle = start_server(tiny, tmp_path, engine=engine, tools={"mcp": mcp})
    try:
        engine.script(
            "<|channel|>analysis<|message|>Add them.<|end|><|start|>assistant<|channel|>commentary "
            'to=functions.calc__add <|constrain|>json<|message|>{"a": 2, "b": 40}<|call|>'
        )
        engine.script("<|channel|>final<|message|>42<|return|>")
        engine.script("<|channel|>commentary to=functions.calc__fail <|constrain|>json<|message|>{}<|call|>")
        engine.script("<|channel|>final<|message|>It failed.<|return|>")
        client = openai.OpenAI(base_url=handle.v1, api_key="x", max_retries=0)
        tools = [{"type": "mcp", "server_label": "calc"}]
        response = client.responses.create(model=MODEL, input="2+40?", tools=tools)
        call = next(item for item in response.output if item.type == "mcp_call")
        assert (call.server_label, call.name, call.arguments, call.output) == (
            "calc",
            "add",
            '{"a": 2, "b": 40}',
            "42",
        )
        assert response.output_text == "42"
        failed = client.responses.create(model=MODEL, input="fail", tools=tools)
        call = next(item for item in failed.output if item.type == "mcp_call")
        assert call.error is not None and call.output is None and failed.output_text == "It failed."
    finally:
        handle.stop()
        mcp.close()
