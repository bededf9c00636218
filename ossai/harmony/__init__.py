"""The harmony format for gpt-oss: offline tokenizer, prompt rendering and a streaming output parser.

Torch-free and independent of the rest of ossai, so the server, the tools and the tests can use it
without loading a model. Errors subclass ValueError (`HarmonyInputError`, `VocabError`).
"""

from ossai.harmony.constrain import FunctionArguments, function_schemas
from ossai.harmony.encoding import (
    BUILTIN_TOOLS,
    DEFAULT_KNOWLEDGE_CUTOFF,
    HarmonyInputError,
    build_conversation,
    drop_old_reasoning,
    function_recipient,
    function_tool,
    is_builtin_recipient,
    parse_effort,
    render_chat,
    render_conversation,
)
from ossai.harmony.parser import (
    ContentDelta,
    Event,
    MessageEnd,
    PreambleDelta,
    ReasoningDelta,
    StreamParser,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
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
    VocabError,
    decode,
    encode,
    load_encoding,
    token_bytes,
)

__all__ = [
    "BUILTIN_TOOLS",
    "CALL",
    "CHANNEL",
    "CONSTRAIN",
    "DEFAULT_KNOWLEDGE_CUTOFF",
    "END",
    "MESSAGE",
    "RETURN",
    "START",
    "STOP_TOKENS",
    "ContentDelta",
    "Event",
    "FunctionArguments",
    "HarmonyInputError",
    "MessageEnd",
    "PreambleDelta",
    "ReasoningDelta",
    "StreamParser",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "VocabError",
    "build_conversation",
    "decode",
    "drop_old_reasoning",
    "encode",
    "function_recipient",
    "function_schemas",
    "function_tool",
    "is_builtin_recipient",
    "load_encoding",
    "parse_effort",
    "render_chat",
    "render_conversation",
    "token_bytes",
]
