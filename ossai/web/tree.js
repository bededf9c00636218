// A conversation's messages form a tree (docs/web-client.md): an edited user message is a new sibling of
// the old one, a regenerated reply a new sibling of the old reply, and `active` maps a parent id ("root"
// for the top) to the child shown. These functions read and change that tree; they touch no DOM.
import { now, randomId } from "./dom.js";

export const DEFAULT_TITLE = "New chat";
const DEFAULT_SETTINGS = { effort: "medium", temperature: 1.0, top_p: 1.0, max_tokens: null, confirm_python: false };

export function newConversation({ model = "", mode = "chat" } = {}) {
  return {
    title: DEFAULT_TITLE,
    mode,
    model,
    system: "",
    settings: { ...DEFAULT_SETTINGS },
    messages: [],
    active: {},
  };
}

const EFFORTS = ["low", "medium", "high"];
const STATUSES = ["done", "stopped", "error", "streaming"];
const text = (value) => (typeof value === "string" ? value : "");
const finiteOr = (value, fallback) => (Number.isFinite(value) ? value : fallback);
const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

/** Fill in what a stored conversation may leave out (one made through the API, or imported). The server
 * keeps unknown message fields as sent, so a field of the wrong type is replaced here: one bad message
 * must not break the view of the whole thread (or make every later save fail). */
export function normalize(conv) {
  conv.title = typeof conv.title === "string" ? conv.title : DEFAULT_TITLE;
  conv.mode ??= "chat";
  conv.model = text(conv.model);
  conv.system = text(conv.system);
  const settings = isObject(conv.settings) ? conv.settings : {};
  conv.settings = { ...DEFAULT_SETTINGS, ...settings };
  const s = conv.settings;
  if (!EFFORTS.includes(s.effort)) s.effort = DEFAULT_SETTINGS.effort;
  for (const name of ["temperature", "top_p", "max_tokens"]) {
    if (s[name] !== null && !Number.isFinite(s[name])) s[name] = DEFAULT_SETTINGS[name];
  }
  s.confirm_python = s.confirm_python === true;
  conv.messages ??= [];
  conv.active ??= {};
  for (const m of conv.messages) {
    m.parent ??= null;
    m.created = finiteOr(m.created, 0);
    m.content = text(m.content);
    if (m.role === "assistant") {
      m.reasoning = text(m.reasoning);
      m.reasoning_seconds = finiteOr(m.reasoning_seconds, null);
      m.tools = Array.isArray(m.tools) ? m.tools.filter(isObject) : [];
      if (!STATUSES.includes(m.status)) m.status = "done";
      if (typeof m.error !== "string") m.error = null;
      if (!isObject(m.stats)) m.stats = {};
    }
  }
  return conv;
}

/** A reply that ended (done, stopped, error) runs no more tools: a call still waiting for approval or
 * still running is marked failed, so it shows no "Run" button and no spinner once stored. */
export function endTools(message) {
  const ended = { awaiting_confirmation: "Stopped before it ran.", running: "Stopped while running." };
  for (const tool of message.tools) {
    const note = ended[tool.status];
    if (!note) continue;
    tool.status = "failed";
    tool.output = typeof tool.output === "string" && tool.output ? `${tool.output}\n${note}` : note;
  }
}

const key = (parentId) => parentId ?? "root";

/** The children of `parentId` (null: the top), oldest first. */
export function children(conv, parentId) {
  return conv.messages.filter((m) => (m.parent ?? null) === (parentId ?? null)).sort((a, b) => a.created - b.created);
}

export const siblings = (conv, message) => children(conv, message.parent);

const findMessage = (conv, id) => conv.messages.find((m) => m.id === id);

/** The messages shown: from the top, following `active` (else the newest child) at each level. */
export function thread(conv) {
  const out = [];
  let parent = null;
  for (;;) {
    const kids = children(conv, parent);
    if (!kids.length) return out;
    const chosen = kids.find((m) => m.id === conv.active[key(parent)]) ?? kids[kids.length - 1];
    out.push(chosen);
    parent = chosen.id;
  }
}

/** Add a message and show it (it becomes the active child of its parent). */
export function addMessage(conv, message) {
  conv.messages.push(message);
  conv.active[key(message.parent)] = message.id;
  return message;
}

export function select(conv, message) {
  conv.active[key(message.parent)] = message.id;
}

export function userMessage(parent, content) {
  return { id: randomId("m_"), parent, role: "user", content, created: now() };
}

export function assistantMessage(parent, model) {
  return {
    id: randomId("m_"),
    parent,
    role: "assistant",
    content: "",
    reasoning: "",
    reasoning_seconds: null,
    tools: [],
    status: "streaming",
    error: null,
    stats: { model },
    created: now(),
  };
}

/** The thread from the top down to `lastId` (included). */
export function pathTo(conv, lastId) {
  const out = [];
  for (let m = findMessage(conv, lastId); m; m = m.parent ? findMessage(conv, m.parent) : null) out.unshift(m);
  return out;
}

/** A title from the first user message: its first line, shortened by code points, not UTF-16 units: a
 * cut through an emoji's surrogate pair is not valid Unicode, and the server refuses every save of it. */
export function titleFrom(message) {
  const line = Array.from(message.trim().split("\n")[0].replace(/\s+/g, " "));
  return line.length > 60 ? `${line.slice(0, 57).join("")}…` : line.join("") || DEFAULT_TITLE;
}
