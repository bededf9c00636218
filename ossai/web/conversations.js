// Conversations on the server (/ossai/conversations): list, load, create, save, delete, restore, export,
// import. Saving is throttled (at most one PUT every SAVE_INTERVAL_MS while a reply streams), serialised
// per conversation, and a 409 (another tab saved first) is resolved by reloading and merging.
import { ApiError, getJSON, request, sendJSON } from "./api.js";
import { download, toast } from "./dom.js";
import { normalize } from "./tree.js";

const BASE = "/ossai/conversations";
const SAVE_INTERVAL_MS = 1500;
const FIELDS = ["id", "rev", "title", "created", "updated", "mode", "model", "system", "settings", "messages", "active"];

const saves = new WeakMap(); // conversation -> {timer, chain, queued, last}
const listeners = new Set(); // called with (conversation, {created}) after each save
let unavailable = false; // the server has no conversation store (404): stop trying

export const onSaved = (listener) => listeners.add(listener);

export function listConversations({ q = "", limit = 50, offset = 0 } = {}) {
  const params = new URLSearchParams({ limit, offset });
  if (q) params.set("q", q);
  return getJSON(`${BASE}?${params}`);
}

export const loadConversation = (id) => getJSON(`${BASE}/${encodeURIComponent(id)}`);
export const deleteConversation = (id) => sendJSON("DELETE", `${BASE}/${encodeURIComponent(id)}`);
export const restoreConversation = (id) => sendJSON("POST", `${BASE}/${encodeURIComponent(id)}/restore`);
export const importConversations = (data) => sendJSON("POST", `${BASE}/import`, data);

export async function exportConversation(id, format) {
  const response = await request(`${BASE}/${encodeURIComponent(id)}/export?format=${format}`);
  const disposition = response.headers.get("Content-Disposition") || "";
  const name = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition)?.[1];
  const fallback = `conversation-${id}.${format === "markdown" ? "md" : "json"}`;
  download(await response.blob(), name ? decodeURIComponent(name) : fallback);
}

function body(conv) {
  const out = {};
  for (const field of FIELDS) if (conv[field] !== undefined) out[field] = conv[field];
  return out;
}

function stateOf(conv) {
  let state = saves.get(conv);
  if (!state) {
    state = { timer: null, chain: Promise.resolve(), queued: null, last: 0 };
    saves.set(conv, state);
  }
  return state;
}

/** Save soon: at most once every SAVE_INTERVAL_MS (used while a reply streams). */
export function scheduleSave(conv) {
  const state = stateOf(conv);
  if (state.timer) return;
  const wait = Math.max(0, state.last + SAVE_INTERVAL_MS - Date.now());
  state.timer = setTimeout(() => {
    state.timer = null;
    saveNow(conv);
  }, wait);
}

/** Save now (after any save in flight); resolves when the conversation is stored, false if it is not. */
export function saveNow(conv) {
  const state = stateOf(conv);
  clearTimeout(state.timer);
  state.timer = null;
  if (state.queued) return state.queued; // a save that has not started yet will send the latest state
  const queued = state.chain.then(() => {
    state.queued = null;
    state.last = Date.now();
    return store(conv);
  });
  state.queued = queued;
  state.chain = queued.catch(() => {});
  return queued;
}

async function store(conv, attempt = 0) {
  if (conv.deleted || unavailable) return false;
  try {
    const created = !conv.id;
    const saved = created
      ? await sendJSON("POST", BASE, body(conv))
      : await sendJSON("PUT", `${BASE}/${encodeURIComponent(conv.id)}`, body(conv));
    Object.assign(conv, { id: saved.id, rev: saved.rev, created: saved.created, updated: saved.updated });
    for (const listener of listeners) listener(conv, { created });
    return true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 409 && attempt < 3) {
      try {
        merge(conv, normalize(await loadConversation(conv.id)));
      } catch (reloadError) {
        toast(`Could not save the conversation: ${reloadError.message}`);
        return false;
      }
      return store(conv, attempt + 1);
    }
    if (error instanceof ApiError && error.status === 404) {
      if (!conv.id) {
        unavailable = true;
        toast("This server does not store conversations; this chat lives in this tab only.");
        return false;
      }
      conv.deleted = true;
      toast("This conversation was deleted elsewhere; it is no longer saved.");
      return false;
    }
    toast(`Could not save the conversation: ${error.message}`);
    return false;
  }
}

/** Another tab saved first: keep its messages, put ours over them (ours are the newer for what we
 * touched), and take its revision so the next PUT applies. */
function merge(conv, server) {
  const ours = new Map(conv.messages.map((m) => [m.id, m]));
  const merged = server.messages.map((m) => ours.get(m.id) ?? m);
  const known = new Set(server.messages.map((m) => m.id));
  merged.push(...conv.messages.filter((m) => !known.has(m.id)));
  conv.messages = merged;
  conv.active = { ...server.active, ...conv.active };
  conv.rev = server.rev;
}
