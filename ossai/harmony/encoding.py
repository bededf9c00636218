"""Render OpenAI chat-style messages into a harmony prompt for gpt-oss.

Every API ossai serves (OpenAI chat/responses, Ollama) translates into the plain message dicts this module
takes, so there is one place that decides how a conversation looks to the model:

- gpt-oss's *system* message is reserved for identity, date, reasoning effort and built-in tools, so user
  `system` and `developer` messages both become the developer message's `# Instructions` (as the HF chat
  template and OpenAI do). Function tools also go in the developer message.
- Assistant turns split into harmony messages: reasoning → `analysis`, tool calls → one message per
  call (functions on `commentary`, built-ins `python` / `browser.*` on `analysis`), content → `final`
  (or a `commentary` preamble when the turn also calls tools).
- Chain-of-thought is dropped here rather than by openai-harmony (spec §3.8): analysis-channel messages
  before the last assistant `final` belong to turns that were already answered and are removed; the
  analysis of the turn in progress (a tool-call loop) is kept. The library's own rule (drop analysis
  before the *first* final, only when the last message is a final) keeps stale reasoning in long chats.

Errors in the input raise `HarmonyInputError`, a ValueError whose message names the offending item.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyError,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    SystemContent,
    ToolDescription,
    ToolNamespaceConfig,
)

from ossai.harmony.tokenizer import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    MESSAGE,
    RETURN,
    START,
    STOP_TOKENS,
    decode,
    encode,
    load_encoding,
)

__all__ = [  # the token constants and text helpers are re-exported so callers need only this module
    "CALL",
    "CHANNEL",
    "CONSTRAIN",
    "END",
    "MESSAGE",
    "RETURN",
    "START",
    "STOP_TOKENS",
    "HarmonyInputError",
    "build_conversation",
    "decode",
    "drop_old_reasoning",
    "encode",
    "function_recipient",
    "function_tool",
    "is_builtin_recipient",
    "parse_effort",
    "render_chat",
    "render_conversation",
]

DEFAULT_KNOWLEDGE_CUTOFF = "2024-06"  # what gpt-oss was trained to expect (harmony's default)
BUILTIN_TOOLS = ("browser", "python")  # namespaces that live in the system message (spec §3.5)
JSON_CONTENT_TYPE = "<|constrain|>json"  # content type of function-call arguments
BUILTIN_CONTENT_TYPE = "code"  # what the model writes after a built-in recipient (`to=python code`)
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
_EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
_NO_DROP = RenderConversationConfig(auto_drop_analysis=False)


class HarmonyInputError(ValueError):
    """Messages or tools that cannot be rendered; the message says which item and why."""


def is_builtin_recipient(name: str) -> bool:
    """Whether a tool name addresses a built-in (`python`, `browser.search`, …) rather than a function."""
    return name == "python" or name.startswith("browser.")


def function_recipient(name: str) -> str:
    """The harmony recipient for a called tool name: built-ins as they are, functions as `functions.X`."""
    if is_builtin_recipient(name) or name.startswith("functions."):
        return name
    return f"functions.{name}"


def parse_effort(effort: str | ReasoningEffort) -> ReasoningEffort:
    if isinstance(effort, str) and effort.lower() in _EFFORTS:
        return _EFFORTS[effort.lower()]
    raise HarmonyInputError(f"reasoning effort must be one of low, medium, high; got {effort!r}")


# --- System and developer messages ----------------------------------------------------------------------


def _system_message(
    effort: str | ReasoningEffort,
    builtin_tools: Sequence[str | ToolNamespaceConfig],
    model_identity: str | None,
    date: str | None,
    knowledge_cutoff: str,
) -> Message:
    content = (
        SystemContent.new()
        .with_reasoning_effort(parse_effort(effort))
        .with_conversation_start_date(date if date is not None else dt.date.today().isoformat())
        .with_knowledge_cutoff(knowledge_cutoff)
    )
    if model_identity is not None:
        content = content.with_model_identity(model_identity)
    if isinstance(builtin_tools, str):
        raise HarmonyInputError(f"builtin_tools must be a list of names, got the string {builtin_tools!r}")
    for i, tool in enumerate(builtin_tools):
        match tool:
            case ToolNamespaceConfig():
                content = content.with_tools(tool)
            case "browser":
                content = content.with_browser_tool()
            case "python":
                content = content.with_python_tool()
            case _:
                raise HarmonyInputError(
                    f"builtin_tools[{i}]: unknown built-in tool {tool!r}; expected one of {BUILTIN_TOOLS} "
                    "or a ToolNamespaceConfig"
                )
    return Message.from_role_and_content(Role.SYSTEM, content)


def function_tool(spec: Any, where: str) -> ToolDescription:
    """One OpenAI function tool, chat form `{type, function: {name, description, parameters}}` or the flat
    Responses form `{type, name, description, parameters}`, as a harmony ToolDescription."""
    if not isinstance(spec, Mapping):
        raise HarmonyInputError(f"{where}: expected a tool object, got {type(spec).__name__}")
    kind = spec.get("type", "function")
    if kind != "function":
        raise HarmonyInputError(f"{where}: unsupported tool type {kind!r}; only 'function' tools are allowed")
    fn = spec.get("function", spec)
    if not isinstance(fn, Mapping):
        raise HarmonyInputError(f"{where}.function: expected an object, got {type(fn).__name__}")
    name = fn.get("name")
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise HarmonyInputError(f"{where}: tool name must be a non-empty string without spaces, got {name!r}")
    description = fn.get("description") or ""
    if not isinstance(description, str):
        raise HarmonyInputError(f"{where}: description must be a string")
    parameters = fn.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise HarmonyInputError(f"{where}: parameters must be a JSON schema object")
    try:
        json.dumps(parameters)
    except (TypeError, ValueError) as exc:
        raise HarmonyInputError(f"{where}: parameters are not JSON: {exc}") from exc
    if (
        parameters is not None
        and parameters.get("type", "object") == "object"
        and not parameters.get("properties")
    ):
        # harmony renders an empty object as `(_: {\n}) => any`; the model knows `() => any` (as HF renders).
        parameters = None
    return ToolDescription.new(name, description, dict(parameters) if parameters is not None else None)


def response_format_section(name: str, schema: Mapping[str, Any], description: str | None = None) -> str:
    """The developer message's `# Response Formats` section (the harmony docs' wording; openai-harmony
    has no API for it), which tells the model the answer's JSON schema."""
    comment = f"// {description}\n" if description else ""
    return f"# Response Formats\n\n## {name}\n\n{comment}{json.dumps(schema, separators=(',', ':'))}"


def _developer_message(instructions: list[str], tools: Sequence[Any] | None) -> Message | None:
    content = DeveloperContent.new()
    if instructions:
        content = content.with_instructions("\n\n".join(instructions))
    if tools is not None and (isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence)):
        raise HarmonyInputError(f"tools must be a list of tool objects, got {type(tools).__name__}")
    descriptions = [function_tool(spec, f"tools[{i}]") for i, spec in enumerate(tools or ())]
    if descriptions:
        content = content.with_function_tools(descriptions)
    if not instructions and not descriptions:
        return None
    return Message.from_role_and_content(Role.DEVELOPER, content)


# --- Conversation messages ------------------------------------------------------------------------------


def content_text(content: Any, where: str) -> str:
    """A message's text: a string, or a list of `{type: text|input_text|output_text, text}` parts joined
    with newlines (as vLLM does)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        texts: list[str] = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, Mapping):
                raise HarmonyInputError(f"{where}[{j}]: expected a content part object")
            if part.get("type") not in TEXT_PART_TYPES:
                kind = part.get("type")
                raise HarmonyInputError(
                    f"{where}[{j}]: unsupported content part type {kind!r}; only text is supported"
                )
            if not isinstance(part.get("text"), str):
                raise HarmonyInputError(f"{where}[{j}]: text part without a string 'text'")
            texts.append(part["text"])
        return "\n".join(texts)
    raise HarmonyInputError(f"{where}: content must be a string or a list of text parts")


def _required_text(raw: Mapping[str, Any], where: str) -> str:
    if raw.get("content") is None:
        raise HarmonyInputError(f"{where}: {raw.get('role')} message without content")
    return content_text(raw["content"], f"{where}.content")


class _ToolCallLedger:
    """Remembers the tools the assistant called, so a tool result can be attributed to its caller."""

    def __init__(self) -> None:
        self.by_id: dict[str, str] = {}
        self.pending: list[tuple[str | None, str]] = []  # calls of the latest assistant turn, unanswered

    def called(self, call_id: str | None, name: str) -> None:
        if call_id:
            self.by_id[call_id] = name
        self.pending.append((call_id, name))

    def answer(self, raw: Mapping[str, Any], where: str) -> str:
        call_id = raw.get("tool_call_id") or raw.get("call_id")
        name = raw.get("name") or raw.get("tool_name")
        if call_id is not None and not isinstance(call_id, str):
            raise HarmonyInputError(f"{where}: tool_call_id must be a string")
        if name is not None and not isinstance(name, str):
            raise HarmonyInputError(f"{where}: name must be a string")
        if call_id and call_id in self.by_id:
            name = self.by_id[call_id]
        elif call_id and not name:
            raise HarmonyInputError(f"{where}: tool_call_id {call_id!r} matches no earlier tool call")
        elif not name:
            if not self.pending:
                raise HarmonyInputError(
                    f"{where}: cannot tell which tool call this result answers (no tool_call_id or name)"
                )
            name = self.pending[0][1]
        for k, (pending_id, pending_name) in enumerate(self.pending):
            if (call_id and pending_id == call_id) or (not call_id and pending_name == name):
                del self.pending[k]
                break
        return name


def _tool_call_message(call: Any, where: str, ledger: _ToolCallLedger) -> Message:
    if not isinstance(call, Mapping):
        raise HarmonyInputError(f"{where}: expected a tool call object")
    kind = call.get("type", "function")
    if kind not in ("function", "function_call"):
        raise HarmonyInputError(f"{where}: unsupported tool call type {kind!r}")
    fn = call.get("function", call)  # chat form nests under "function"; Responses/flat form does not
    if not isinstance(fn, Mapping):
        raise HarmonyInputError(f"{where}.function: expected an object")
    name = fn.get("name")
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise HarmonyInputError(f"{where}: function name must be a non-empty string without spaces")
    arguments = fn.get("arguments")
    if arguments is None:
        arguments = "{}"
    elif isinstance(arguments, Mapping):  # Ollama sends an object, OpenAI a JSON string
        arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    elif not isinstance(arguments, str):
        raise HarmonyInputError(f"{where}: arguments must be a JSON string or an object")
    call_id = call.get("id") or call.get("call_id")
    ledger.called(call_id if isinstance(call_id, str) else None, name)
    message = Message.from_role_and_content(Role.ASSISTANT, arguments)
    message = message.with_recipient(function_recipient(name))
    if is_builtin_recipient(name):  # the model calls built-ins from its chain of thought
        return message.with_channel("analysis").with_content_type(BUILTIN_CONTENT_TYPE)
    return message.with_channel("commentary").with_content_type(JSON_CONTENT_TYPE)


def _assistant_messages(raw: Mapping[str, Any], where: str, ledger: _ToolCallLedger) -> list[Message]:
    out: list[Message] = []
    for key in ("reasoning_content", "reasoning", "thinking"):
        if raw.get(key) is not None:
            reasoning = content_text(raw[key], f"{where}.{key}")
            if reasoning:
                out.append(Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis"))
            break
    content = None if raw.get("content") is None else content_text(raw["content"], f"{where}.content")
    tool_calls = raw.get("tool_calls") or []
    if not isinstance(tool_calls, Sequence) or isinstance(tool_calls, str | bytes):
        raise HarmonyInputError(f"{where}.tool_calls: expected a list")
    if tool_calls:
        ledger.pending.clear()
        if content:  # text alongside calls is a user-visible preamble (what the parser reports as one)
            out.append(Message.from_role_and_content(Role.ASSISTANT, content).with_channel("commentary"))
        for j, call in enumerate(tool_calls):
            out.append(_tool_call_message(call, f"{where}.tool_calls[{j}]", ledger))
    elif content is not None:
        out.append(Message.from_role_and_content(Role.ASSISTANT, content).with_channel("final"))
    elif not out:
        raise HarmonyInputError(f"{where}: assistant message without content, reasoning or tool_calls")
    return out


def _tool_result_message(raw: Mapping[str, Any], where: str, ledger: _ToolCallLedger) -> Message:
    text = _required_text(raw, where)
    name = ledger.answer(raw, where)
    author = Author.new(Role.TOOL, function_recipient(name))
    channel = "analysis" if is_builtin_recipient(name) else "commentary"
    return Message.from_author_and_content(author, text).with_recipient("assistant").with_channel(channel)


# --- Chain-of-thought dropping --------------------------------------------------------------------------


def drop_old_reasoning(messages: Sequence[Message]) -> list[Message]:
    """Drop analysis-channel messages (reasoning, built-in calls and their results) that come before the
    last assistant `final`: those turns were answered, and gpt-oss is trained without their CoT. Everything
    after that final (the current turn's tool loop) is kept."""
    last_final = -1
    for i, message in enumerate(messages):
        if message.author.role == Role.ASSISTANT and message.channel == "final":
            last_final = i
    return [
        m
        for i, m in enumerate(messages)
        if i > last_final or m.channel != "analysis" or m.author.role not in (Role.ASSISTANT, Role.TOOL)
    ]


# --- Public entry points --------------------------------------------------------------------------------


def build_conversation(
    messages: Sequence[Mapping[str, Any]],
    *,
    effort: str | ReasoningEffort = "medium",
    tools: Sequence[Mapping[str, Any]] | None = None,
    builtin_tools: Sequence[str | ToolNamespaceConfig] = (),
    model_identity: str | None = None,
    date: str | None = None,
    knowledge_cutoff: str = DEFAULT_KNOWLEDGE_CUTOFF,
    response_format: str | None = None,
) -> Conversation:
    """The harmony Conversation for chat-style `messages`, with old reasoning already dropped.

    `effort` is low/medium/high (any case); `tools` are OpenAI function tools; `builtin_tools` names
    `"browser"`/`"python"` or passes a custom `ToolNamespaceConfig`; `date` defaults to today;
    `response_format` is a `response_format_section` for the end of the developer instructions.
    """
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise HarmonyInputError(f"messages must be a list of message objects, got {type(messages).__name__}")
    system = _system_message(effort, builtin_tools, model_identity, date, knowledge_cutoff)
    instructions: list[str] = []
    body: list[Message] = []
    ledger = _ToolCallLedger()
    for i, raw in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(raw, Mapping):
            raise HarmonyInputError(f"{where}: expected a message object, got {type(raw).__name__}")
        role = raw.get("role")
        match role:
            case "system" | "developer":
                text = _required_text(raw, where)
                if text.strip():
                    instructions.append(text)
            case "user":
                body.append(Message.from_role_and_content(Role.USER, _required_text(raw, where)))
            case "assistant":
                body.extend(_assistant_messages(raw, where, ledger))
            case "tool":
                body.append(_tool_result_message(raw, where, ledger))
            case _:
                raise HarmonyInputError(f"{where}: unknown role {role!r}")
    if response_format:
        instructions.append(response_format)
    developer = _developer_message(instructions, tools)
    head = [system] if developer is None else [system, developer]
    return Conversation.from_messages([*head, *drop_old_reasoning(body)])


def render_conversation(conversation: Conversation) -> list[int]:
    """Token ids of `conversation` followed by `<|start|>assistant`, ready for the model to continue.

    Reasoning is not dropped here (build_conversation already did; callers that append parsed messages
    should use `drop_old_reasoning`)."""
    try:
        return load_encoding().render_conversation_for_completion(conversation, Role.ASSISTANT, _NO_DROP)
    except (HarmonyError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise HarmonyInputError(f"cannot render the conversation: {exc}") from exc


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    effort: str | ReasoningEffort = "medium",
    tools: Sequence[Mapping[str, Any]] | None = None,
    builtin_tools: Sequence[str | ToolNamespaceConfig] = (),
    model_identity: str | None = None,
    date: str | None = None,
    knowledge_cutoff: str = DEFAULT_KNOWLEDGE_CUTOFF,
    response_format: str | None = None,
) -> list[int]:
    """Prompt token ids for chat-style `messages` (see `build_conversation` for the arguments)."""
    conversation = build_conversation(
        messages,
        effort=effort,
        tools=tools,
        builtin_tools=builtin_tools,
        model_identity=model_identity,
        date=date,
        knowledge_cutoff=knowledge_cutoff,
        response_format=response_format,
    )
    return render_conversation(conversation)
