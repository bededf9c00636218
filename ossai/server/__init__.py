"""The HTTP server: OpenAI- and Ollama-compatible APIs over the engine (`create_app`)."""
