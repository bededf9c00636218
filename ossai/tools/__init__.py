"""Tools the model can use: sandboxed python, an offline browser, MCP servers; and the agent loop."""
