// One streamed chat completion (/v1/chat/completions with stream: true), as a sequence of simple events:
// {type: "reasoning" | "content", text}, {type: "function", index, id, name, arguments} (a function call's
// parts as they arrive), {type: "tool", event} (a tool the server runs: ossai_tool), {type: "usage", usage},
// {type: "finish", reason}.
import { ApiError, readSSE, request } from "./api.js";

export async function* chatEvents(body, signal) {
  const response = await request("/v1/chat/completions", { method: "POST", body, signal });
  for await (const chunk of readSSE(response)) {
    if (chunk.error) throw new ApiError(500, chunk.error.message ?? String(chunk.error));
    if (chunk.usage) yield { type: "usage", usage: chunk.usage };
    for (const choice of chunk.choices ?? []) {
      const delta = choice.delta ?? {};
      const reasoning = delta.reasoning_content ?? delta.reasoning; // the server sends both, the same text
      if (reasoning) yield { type: "reasoning", text: reasoning };
      if (delta.content) yield { type: "content", text: delta.content };
      for (const call of delta.tool_calls ?? []) {
        yield { type: "function", index: call.index, id: call.id, name: call.function?.name, arguments: call.function?.arguments ?? "" };
      }
      if (delta.ossai_tool) yield { type: "tool", event: delta.ossai_tool };
      if (choice.finish_reason) yield { type: "finish", reason: choice.finish_reason };
    }
  }
}

/** The request body for a reply in `conv`, given the API messages of its history. */
export function chatBody(conv, messages, session) {
  const { settings } = conv;
  const body = {
    model: conv.model,
    messages: conv.system.trim() ? [{ role: "system", content: conv.system }, ...messages] : messages,
    stream: true,
    stream_options: { include_usage: true },
    reasoning_effort: settings.effort,
  };
  if (settings.temperature !== null && settings.temperature !== undefined) body.temperature = settings.temperature;
  if (settings.top_p !== null && settings.top_p !== undefined) body.top_p = settings.top_p;
  if (settings.max_tokens) body.max_tokens = settings.max_tokens;
  // Agent mode turns the built-in tools on. Confirmation is asked for in every mode: a server started
  // with `--tools python` may run python for any request, Agent mode or not.
  const builtinTools = conv.mode === "agent" ? ["python", "browser"] : [];
  if (builtinTools.length || settings.confirm_python) {
    body.ossai = { builtin_tools: builtinTools, session };
    if (settings.confirm_python) body.ossai.confirm = ["python"];
  }
  return body;
}

/** What the model sees of a thread: user and assistant text (earlier reasoning is not sent back). */
export function historyMessages(messages) {
  const out = [];
  for (const m of messages) {
    if (m.role === "user") out.push({ role: "user", content: m.content });
    else if (m.role === "assistant" && m.content) out.push({ role: "assistant", content: m.content });
  }
  return out;
}
