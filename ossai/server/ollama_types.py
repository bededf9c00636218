"""Wire types of the Ollama API requests ossai accepts (responses are plain dicts in the shape the official
`ollama` client parses), and their translation into the one internal chat request.

Like Ollama, unknown fields and options are ignored; wrong types are a 400. Where gpt-oss or ossai cannot
do what a field asks (images, suffix, templates, `format` with `raw`), the request is refused with a 400
that says so, rather than answered as if the field had been honoured.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ossai.errors import BadRequest
from ossai.server.generation import ANY_OBJECT, AnswerFormat
from ossai.server.openai_types import OssaiOptions

Effort = Literal["low", "medium", "high"]
MAX_SEED = 2**64 - 1  # the widest seed torch's generator takes; negative seeds mean "random" (Ollama's -1)


class Options(BaseModel):
    """`options` of POST /api/chat and POST /api/generate (Ollama's runtime and load-time parameters).

    The sampling options map onto `SamplingParams`; defaults are ossai's (OpenAI's recommendation for
    gpt-oss: temperature 1, top_p 1, no top_k), not Ollama's. Load-time and llama.cpp-only options are
    accepted and ignored: the model is loaded once, by `ossai serve`.
    """

    model_config = ConfigDict(extra="ignore")

    num_predict: int | None = None  # <= 0 (Ollama: -1 infinite, -2 fill context) = to the end of context
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = None  # <= 0 = off
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, le=MAX_SEED)
    stop: str | list[str] | None = None
    repeat_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    # accepted and ignored
    num_ctx: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    num_keep: int | None = None
    repeat_last_n: int | None = None
    typical_p: float | None = None
    tfs_z: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    penalize_newline: bool | None = None
    numa: bool | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None

    def sampling(self) -> dict[str, Any]:
        """SamplingParams fields (but max_tokens) from the options; unset ones keep ossai's defaults."""
        out: dict[str, Any] = {}
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        if self.top_k is not None:
            out["top_k"] = max(self.top_k, 0)
        if self.seed is not None and self.seed >= 0:
            out["seed"] = self.seed
        if self.repeat_penalty is not None:
            out["repetition_penalty"] = self.repeat_penalty
        if self.stop:
            out["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return out

    @property
    def max_tokens(self) -> int | None:
        """None: generate to the end of the context (Ollama's -1 and -2; 0 is unlimited in its runner)."""
        return self.num_predict if self.num_predict is not None and self.num_predict > 0 else None


class _Generation(BaseModel):
    """What POST /api/chat and POST /api/generate share."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    stream: bool = True  # Ollama streams unless told not to
    think: bool | Effort | None = None
    format: str | dict[str, Any] | None = None
    options: Options = Field(default_factory=Options)
    keep_alive: float | str | None = None  # how long the model stays loaded after this request
    ossai: OssaiOptions | None = None  # ossai's extension: built-in tools the server runs
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)

    @field_validator("think", mode="before")
    @classmethod
    def _think(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool) or value in ("low", "medium", "high"):
            return value
        raise ValueError(f"think must be true, false, or one of low, medium, high; got {value!r}")

    def reasoning(self) -> tuple[str, bool]:
        """(harmony reasoning effort, whether to return the thinking).

        gpt-oss always reasons before it answers; there is no way to turn that off. So `think: true` is
        medium effort, "low"/"medium"/"high" pick the effort, and `think: false` (or no `think`) runs at low
        effort (the least reasoning) and leaves the thinking out of the response.
        """
        if self.think is None or self.think is False:
            return "low", False
        return ("medium" if self.think is True else self.think), True

    def answer_format(self) -> AnswerFormat | None:
        """`format`: "json" (an object, as Ollama's JSON mode gives) or a JSON schema for the answer."""
        if self.format in (None, ""):
            return None
        if self.format == "json":
            return dataclasses.replace(ANY_OBJECT, param="format")
        if isinstance(self.format, dict):
            return AnswerFormat(self.format, param="format")
        raise BadRequest(f'format must be "json" or a JSON schema object, got {self.format!r}', "format")

    def sampling(self) -> dict[str, Any]:
        out = self.options.sampling()
        if self.logprobs:
            out |= {"logprobs": True, "top_logprobs": self.top_logprobs}
        return out


class ToolCallFunction(BaseModel):
    """`function` of a tool call in an assistant message of POST /api/chat."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    arguments: dict[str, Any] | str = Field(default_factory=dict)  # Ollama sends an object


class ToolCall(BaseModel):
    """A tool call in an assistant message of POST /api/chat."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None  # newer Ollama versions send one; older ones match results by tool_name
    function: ToolCallFunction


class Message(BaseModel):
    """One message of POST /api/chat."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None

    def to_openai(self, where: str) -> dict[str, Any]:
        """The OpenAI-style chat message `harmony.render_chat` takes."""
        if self.images:
            raise BadRequest("images are not supported: gpt-oss reads text only", param=f"{where}.images")
        content = self.content or ""
        match self.role:
            case "assistant":
                out: dict[str, Any] = {"role": "assistant", "content": content}
                if self.thinking:
                    out["reasoning"] = self.thinking
                if self.tool_calls:
                    out["content"] = content or None
                    out["tool_calls"] = [_openai_tool_call(call) for call in self.tool_calls]
                return out
            case "tool":
                out = {"role": "tool", "content": content}
                if self.tool_call_id:
                    out["tool_call_id"] = self.tool_call_id
                if self.tool_name:
                    out["name"] = self.tool_name
                return out
            case _:
                return {"role": self.role, "content": content}


def _openai_tool_call(call: ToolCall) -> dict[str, Any]:
    arguments = call.function.arguments
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": call.function.name, "arguments": arguments},
    }


class ChatRequest(_Generation):
    """POST /api/chat"""

    messages: list[Message] = Field(default_factory=list)  # none: just load the model (Ollama)
    tools: list[dict[str, Any]] | None = None  # OpenAI-format function tools, as Ollama takes them

    def openai_messages(self) -> list[dict[str, Any]]:
        return [m.to_openai(f"messages[{i}]") for i, m in enumerate(self.messages)]


class GenerateRequest(_Generation):
    """POST /api/generate"""

    prompt: str = ""  # empty: just load the model (Ollama)
    system: str | None = None
    raw: bool = False  # true: the prompt goes to the model as is (special tokens included), no harmony
    suffix: str | None = None
    template: str | None = None
    images: list[str] | None = None
    context: list[int] | None = None  # Ollama's deprecated conversation memory: ignored

    def check_supported(self) -> None:
        if self.images:
            raise BadRequest("images are not supported: gpt-oss reads text only", param="images")
        if self.suffix:
            raise BadRequest("suffix (fill-in-the-middle) is not supported by gpt-oss", param="suffix")
        if self.template:
            raise BadRequest(
                "template is not supported: prompts are rendered in harmony (send raw=true to give the "
                "whole prompt yourself)",
                param="template",
            )

    def openai_messages(self) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.prompt}]


class ModelRequest(BaseModel):
    """A request naming a model: `model`, or `name` as older clients send it."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    name: str | None = None

    @property
    def model_name(self) -> str:
        name = self.model or self.name
        if not name:
            raise BadRequest("model is required", param="model")
        return name


class ShowRequest(ModelRequest):
    """POST /api/show."""

    verbose: bool = False


class PullRequest(ModelRequest):
    """POST /api/pull; `layout` is ossai's: which checkpoint layout to fetch (original or hf)."""

    stream: bool = True
    insecure: bool = False  # accepted; the hub is always reached over HTTPS (or HF_ENDPOINT)
    layout: Literal["original", "hf"] = "original"
