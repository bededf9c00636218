"""Wire types of the OpenAI API requests ossai accepts (responses are built as plain dicts in the shape
the official `openai` SDK parses). Unknown fields are ignored, as vLLM does; wrong types are a 400."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ossai.errors import BadRequest

Effort = Literal["low", "medium", "high"]


class OssaiOptions(BaseModel):
    """ossai's extension field `"ossai": {...}` on chat requests (OpenAI and Ollama): built-in tools the
    server runs for this request, the session their state (python variables, browser pages) lives in, and
    the tools whose calls wait for the user's confirmation (streamed requests only)."""

    model_config = ConfigDict(extra="forbid")

    builtin_tools: list[Literal["python", "browser", "mcp"]] = Field(default_factory=list)
    confirm: list[Literal["python", "browser", "mcp"]] = Field(default_factory=list)  # wait for the user
    session: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # vLLM extension
    min_p: float | None = Field(None, ge=0, le=1)  # vLLM extension
    repetition_penalty: float | None = Field(None, gt=0)  # vLLM extension
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def sampling(self) -> dict[str, Any]:
        """SamplingParams fields (but max_tokens) from the request, defaults left to SamplingParams."""
        out: dict[str, Any] = {}
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty", "seed"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.stop:
            out["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if self.logit_bias:
            try:
                out["logit_bias"] = {int(k): float(v) for k, v in self.logit_bias.items()}
            except ValueError as exc:
                raise BadRequest("logit_bias keys must be token ids", param="logit_bias") from exc
        return out

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions"""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Effort | None = None
    reasoning: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    ossai: OssaiOptions | None = None

    def effort(self) -> str:
        for candidate in (
            self.reasoning_effort,
            (self.reasoning or {}).get("effort"),
            (self.chat_template_kwargs or {}).get("reasoning_effort"),
        ):
            if candidate is not None:
                if candidate not in ("low", "medium", "high"):
                    raise BadRequest(
                        f"reasoning effort must be low, medium or high, got {candidate!r}", "reasoning"
                    )
                return candidate
        return "medium"


class CompletionRequest(_Request):
    """POST /v1/completions (raw text completion, no chat format)"""

    prompt: str | list[int] | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    ignore_eos: bool = False  # vLLM extension: keep going past <|endoftext|>, <|return|>, <|call|>
