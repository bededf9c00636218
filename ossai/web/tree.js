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

/** Fill in what a stored conversation may leave out (one made through the API, or imported). */
export function normalize(conv) {
  conv.title ??= DEFAULT_TITLE;
  conv.mode ??= "chat";
  conv.model ??= "";
  conv.system ??= "";
  conv.settings = { ...DEFAULT_SETTINGS, ...(conv.settings ?? {}) };
  conv.messages ??= [];
  conv.active ??= {};
  for (const m of conv.messages) {
    m.parent ??= null;
    m.created ??= 0;
    m.content ??= "";
    if (m.role === "assistant") {
      m.reasoning ??= "";
      m.reasoning_seconds ??= null;
      m.tools ??= [];
      m.status ??= "done";
      m.error ??= null;
      m.stats ??= {};
    }
  }
  return conv;
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

/** A title from the first user message: its first line, shortened. */
export function titleFrom(text) {
  const line = text.trim().split("\n")[0].replace(/\s+/g, " ");
  return line.length > 60 ? `${line.slice(0, 57)}…` : line || DEFAULT_TITLE;
}
