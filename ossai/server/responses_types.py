"""Wire types of POST /v1/responses (the OpenAI Responses API), and the input items it takes.

The request body is parsed by FastAPI (wrong types are a 400 from the app's validation handler; unknown
fields are ignored). Input items are validated separately by `parse_items`, so that a malformed item gives
one clear message naming `input[i]` instead of pydantic's report on every member of a union. Items come
back normalized (typed parts, an id and a status on each), which is the form they are stored in and
listed by GET /v1/responses/{id}/input_items.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from ossai import harmony
from ossai.errors import BadRequest

# Tool types of the Responses API that run server-side, and the ossai tool that serves each.
BUILTIN_TOOL_TYPES = {
    "web_search": "browser",
    "web_search_preview": "browser",
    "web_search_preview_2025_03_11": "browser",
    "web_search_2025_08_26": "browser",
    "browser_search": "browser",
    "code_interpreter": "python",
    "mcp": "mcp",
}
ITEM_ID_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc", "function_call_output": "fco"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ReasoningConfig(_Wire):
    effort: Literal["low", "medium", "high"] | None = None
    summary: str | None = None  # accepted; gpt-oss writes no summaries


class ResponsesRequest(_Wire):
    """POST /v1/responses"""

    model: str = Field(min_length=1)
    input: str | list[Any] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None

    @field_validator("tools")
    @classmethod
    def _tool_types(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(tools or []):
            if not isinstance(tool.get("type"), str):
                raise ValueError(f"tools[{i}].type must be a string such as function or code_interpreter")
        return tools

    tool_choice: str | dict[str, Any] | None = None
    reasoning: ReasoningConfig | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_output_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool = True
    text: dict[str, Any] | None = None  # text.format: a structured answer (generation.answer_format)
    truncation: Literal["auto", "disabled"] | None = None  # accepted; a too-long prompt is a 400
    user: str | None = None
    include: list[str] | None = None  # accepted; encrypted reasoning and logprobs are not implemented

    @field_validator("input", mode="before")
    @classmethod
    def _string_or_items(cls, value: Any) -> Any:
        if not isinstance(value, str | list):  # else pydantic reports both union members, "str" first
            raise ValueError("input must be a string or a list of input items")
        return value

    @property
    def effort(self) -> str:
        return (self.reasoning.effort if self.reasoning else None) or "medium"

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        return out

    def builtin_tools(self) -> list[str]:
        """The ossai tools the built-in tool types name (web_search → browser, code_interpreter →
        python, mcp → the MCP servers configured in the ossai home)."""
        out = []
        for i, tool in enumerate(self.tools or []):
            kind = tool.get("type")
            if kind == "mcp" and tool.get("server_url"):
                raise BadRequest(
                    f"tools[{i}]: MCP servers are configured on the ossai server (mcp.json in the ossai "
                    "home) and named by server_label; server_url is not supported",
                    param=f"tools[{i}].server_url",
                )
            if kind in BUILTIN_TOOL_TYPES:
                out.append(BUILTIN_TOOL_TYPES[kind])
        return list(dict.fromkeys(out))

    def chat_tools(self) -> list[dict[str, Any]] | None:
        """Function tools in the chat form `ChatRequest` takes (built-in tool types are `builtin_tools`)."""
        if not self.tools:
            return None
        out = []
        for i, tool in enumerate(self.tools):
            kind = tool.get("type")
            if kind in BUILTIN_TOOL_TYPES:
                continue
            if kind != "function":
                raise BadRequest(f"tools[{i}]: unknown tool type {kind!r}", param=f"tools[{i}].type")
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise BadRequest(f"tools[{i}]: a function tool needs a name", param=f"tools[{i}].name")
            spec = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
            try:
                harmony.function_tool(spec, f"tools[{i}]")  # its errors name the tool and the field
            except harmony.HarmonyInputError as exc:
                raise BadRequest(str(exc), param=f"tools[{i}]") from exc
            out.append({"type": "function", "function": spec})
        return out or None

    def chat_tool_choice(self) -> str | dict[str, Any] | None:
        choice = self.tool_choice
        if choice is None or choice in ("none", "auto", "required"):
            return choice
        if (
            isinstance(choice, dict)
            and choice.get("type") == "function"
            and isinstance(choice.get("name"), str)
        ):
            return {"type": "function", "function": {"name": choice["name"]}}
        raise BadRequest(
            f"tool_choice must be none, auto, required or {{type: function, name}}, got {choice!r}",
            param="tool_choice",
        )

    def echo_tools(self) -> list[dict[str, Any]]:
        """The tools as a Response object lists them (built-in ones as they were given)."""
        return [
            dict(t)
            if t.get("type") in BUILTIN_TOOL_TYPES
            else {
                "type": "function",
                "name": t.get("name"),
                "description": t.get("description"),
                "parameters": t.get("parameters"),
                "strict": t.get("strict", False),
            }
            for t in self.tools or []
        ]

    def input_items(self) -> list[dict[str, Any]]:
        if isinstance(self.input, str):
            return parse_items([{"role": "user", "content": self.input}])
        return parse_items(self.input)


# --- Input items ----------------------------------------------------------------------------------------


class TextPart(_Wire):
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(_Wire):
    type: Literal["message"] = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]


class ReasoningPart(_Wire):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class SummaryPart(_Wire):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningItem(_Wire):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryPart] = Field(default_factory=list)
    content: list[ReasoningPart] | None = None


class FunctionCallItem(_Wire):
    type: Literal["function_call"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    name: str = Field(pattern=r"^\S+$")  # a harmony recipient: no spaces
    arguments: str


class FunctionCallOutputItem(_Wire):
    type: Literal["function_call_output"]
    id: str | None = None
    call_id: str = Field(min_length=1)
    output: str | list[TextPart]


def _item_type(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("type", "message")  # a bare {role, content} is a message
    return getattr(value, "type", None)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_type),
]
_ITEM = TypeAdapter(InputItem)


def _texts(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "\n".join(p.text for p in content)


def _normalize(item: MessageItem | ReasoningItem | FunctionCallItem | FunctionCallOutputItem) -> dict:
    out: dict[str, Any] = {"id": item.id or new_id(ITEM_ID_PREFIXES[item.type]), "type": item.type}
    match item:
        case MessageItem(role=role, content=content):
            parts = [content] if isinstance(content, str) else [p.text for p in content]
            if role == "assistant":
                out["content"] = [{"type": "output_text", "text": t, "annotations": []} for t in parts]
            else:
                out["content"] = [{"type": "input_text", "text": t} for t in parts]
            out |= {"role": role, "status": "completed"}
        case ReasoningItem(summary=summary, content=content):
            out["summary"] = [p.model_dump() for p in summary]
            out["content"] = [p.model_dump() for p in content or []]
        case FunctionCallItem(call_id=call_id, name=name, arguments=arguments):
            out |= {"call_id": call_id, "name": name, "arguments": arguments, "status": "completed"}
        case FunctionCallOutputItem(call_id=call_id, output=output):
            out |= {"call_id": call_id, "output": _texts(output), "status": "completed"}
    return out


def _item_error(i: int, value: Any, exc: ValidationError) -> BadRequest:
    # The deepest error is the specific one: for `str | list[TextPart]` it names the bad part, not "str".
    first = max(exc.errors(), key=lambda e: len(e["loc"]))
    kind = _item_type(value)
    where = f"input[{i}]"
    for part in first["loc"]:
        if isinstance(part, int):
            where += f"[{part}]"
        elif part != kind and part != "str" and "[" not in part:  # drop pydantic's union branch labels
            where += f".{part}"
    if first["type"] == "union_tag_invalid":
        return BadRequest(f"input[{i}]: unsupported item type {kind!r}", param=f"input[{i}]")
    if first["type"] == "union_tag_not_found" or not isinstance(value, dict):
        return BadRequest(f"input[{i}]: expected an item object", param=f"input[{i}]")
    return BadRequest(f"{where}: {first['msg']}", param=where)


def parse_items(raw: list[Any]) -> list[dict[str, Any]]:
    """Validated, normalized input items; a malformed item is a 400 naming it."""
    items = []
    for i, value in enumerate(raw):
        try:
            item = _ITEM.validate_python(value)
        except ValidationError as exc:
            raise _item_error(i, value, exc) from None
        items.append(_normalize(item))
    return items
