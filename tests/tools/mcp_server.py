"""A small MCP server for the MCP tool tests, written with the official SDK.

python mcp_server.py              # stdio
python mcp_server.py --http PORT  # streamable HTTP on http://127.0.0.1:PORT/mcp
"""

from __future__ import annotations

import argparse
import os

import anyio
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("ossai-test", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def fail(reason: str = "it broke") -> str:
    """Always fail, with the given reason."""
    raise ToolError(reason)  # the message reaches the client (other exceptions are masked)


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleep, then say so (a tool slower than the caller's timeout)."""
    await anyio.sleep(seconds)
    return f"slept {seconds} s"


@server.tool()
def picture() -> Image:
    """A tiny image (content the model cannot read as text)."""
    return Image(data=b"\x89PNG\r\n", format="png")


@server.tool()
def pid() -> int:
    """The server's process id (the tests check it is gone after close)."""
    return os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on this port")
    args = parser.parse_args()
    if args.http is None:
        server.run()
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
