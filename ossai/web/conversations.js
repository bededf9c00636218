// Conversations on the server (/ossai/conversations): list, load, create, save, delete, restore, export,
// import. Saving is throttled (at most one PUT every SAVE_INTERVAL_MS while a reply streams), serialised
// per conversation, and a 409 (another tab saved first) is resolved by reloading and merging: this tab's
// changes since it last loaded or saved the conversation (see markChanged) over the server's version.
import { ApiError, getJSON, request, sendJSON } from "./api.js";
import { download, toast } from "./dom.js";
import { normalize } from "./tree.js";

const BASE = "/ossai/conversations";
const SAVE_INTERVAL_MS = 1500;
const FIELDS = ["id", "rev", "title", "created", "updated", "mode", "model", "system", "settings", "messages", "active"];
const MERGED_FIELDS = ["title", "mode", "model", "system", "settings"]; // taken whole from one side on a 409

const saves = new WeakMap(); // conversation -> {timer, chain, queued, last}
const changes = new WeakMap(); // conversation -> what this tab changed since it last loaded or saved it
const deletedHere = new Set(); // ids this tab deleted (until restored): saves of any copy stop, quietly
const listeners = new Set(); // called with (conversation, {created}) after each save
let unavailable = false; // the server has no conversation store (404): stop trying

export const onSaved = (listener) => listeners.add(listener);

export function listConversations({ q = "", limit = 50, offset = 0 } = {}) {
  const params = new URLSearchParams({ limit, offset });
  if (q) params.set("q", q);
  return getJSON(`${BASE}?${params}`);
}

export const loadConversation = (id) => getJSON(`${BASE}/${encodeURIComponent(id)}`);

export async function deleteConversation(id) {
  deletedHere.add(id); // before the request: a save answered after it would only say "deleted elsewhere"
  try {
    return await sendJSON("DELETE", `${BASE}/${encodeURIComponent(id)}`);
  } catch (error) {
    deletedHere.delete(id);
    throw error;
  }
}

export async function restoreConversation(id) {
  const restored = await sendJSON("POST", `${BASE}/${encodeURIComponent(id)}/restore`);
  deletedHere.delete(id);
  return restored;
}
export const importConversations = (data) => sendJSON("POST", `${BASE}/import`, data);

export async function exportConversation(id, format) {
  const response = await request(`${BASE}/${encodeURIComponent(id)}/export?format=${format}`);
  const disposition = response.headers.get("Content-Disposition") || "";
  const name = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition)?.[1];
  const fallback = `conversation-${id}.${format === "markdown" ? "md" : "json"}`;
  download(await response.blob(), (name && decodeOr(name, null)) || fallback);
}

function decodeOr(text, fallback) {
  try {
    return decodeURIComponent(text);
  } catch {
    return fallback; // malformed %-escapes (URIError)
  }
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

function changesOf(conv) {
  let changed = changes.get(conv);
  if (!changed) {
    changed = { fields: new Set(), messages: new Set(), active: new Set() };
    changes.set(conv, changed);
  }
  return changed;
}

/** Note what this tab changed in `conv`, which a 409 keeps over the server's newer version (the rest is
 * taken from the server): `fields`, top-level names (title, mode, model, system, settings); `messages`,
 * ids of messages created or modified here; `active`, the parent ids (null: the top) whose shown child
 * was chosen here. Forgotten once a save that carried them succeeds. */
export function markChanged(conv, { fields = [], messages = [], active = [] } = {}) {
  const changed = changesOf(conv);
  for (const field of fields) changed.fields.add(field);
  for (const id of messages) changed.messages.add(id);
  for (const parent of active) changed.active.add(parent ?? "root");
}

function unite(conv, earlier) {
  const changed = changesOf(conv);
  for (const key of ["fields", "messages", "active"]) for (const item of earlier[key]) changed[key].add(item);
}

/** Save soon: at most once every SAVE_INTERVAL_MS (used while a reply streams); `changed`: see markChanged. */
export function scheduleSave(conv, changed) {
  markChanged(conv, changed);
  const state = stateOf(conv);
  if (state.timer) return;
  const wait = Math.max(0, state.last + SAVE_INTERVAL_MS - Date.now());
  state.timer = setTimeout(() => {
    state.timer = null;
    saveNow(conv);
  }, wait);
}

/** Save now (after any save in flight); resolves when the conversation is stored, false if it is not.
 * `changed`: what this call's caller changed (see markChanged). */
export function saveNow(conv, changed) {
  markChanged(conv, changed);
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
  if (conv.deleted || unavailable || deletedHere.has(conv.id)) return false;
  const sent = changesOf(conv);
  changes.delete(conv); // what this request carries; what changes while it is in flight stays pending
  try {
    const created = !conv.id;
    const saved = created
      ? await sendJSON("POST", BASE, body(conv))
      : await sendJSON("PUT", `${BASE}/${encodeURIComponent(conv.id)}`, body(conv));
    Object.assign(conv, { id: saved.id, rev: saved.rev, created: saved.created, updated: saved.updated });
    for (const listener of listeners) listener(conv, { created, merged: attempt > 0 });
    return true;
  } catch (error) {
    unite(conv, sent); // not stored: still this tab's changes
    if (error instanceof ApiError && error.status === 409 && attempt === 0) {
      try {
        merge(conv, normalize(await loadConversation(conv.id)), changesOf(conv));
      } catch (reloadError) {
        toast(`Could not save the conversation: ${reloadError.message}`);
        return false;
      }
      return store(conv, attempt + 1); // once: a second 409 waits for the next save
    }
    if (error instanceof ApiError && error.status === 404) {
      if (!conv.id) {
        unavailable = true;
        toast("This server does not store conversations; this chat lives in this tab only.");
        return false;
      }
      conv.deleted = true;
      if (!deletedHere.has(conv.id)) toast("This conversation was deleted elsewhere; it is no longer saved.");
      return false;
    }
    toast(`Could not save the conversation: ${error.message}`);
    return false;
  }
}

/** Another tab (or another copy in this one) saved first: take the server's version, then put back over
 * it only what this tab changed since it last loaded or saved the conversation, so a stale copy does not
 * undo a newer reply or a rename made elsewhere. Messages this tab touched are kept as objects (a reply
 * streaming here goes on writing into its own). The server's revision makes the next PUT apply. */
function merge(conv, server, changed) {
  const ours = new Map(conv.messages.map((m) => [m.id, m]));
  const known = new Set(server.messages.map((m) => m.id));
  const messages = server.messages.map((m) => (changed.messages.has(m.id) && ours.get(m.id)) || m);
  messages.push(...conv.messages.filter((m) => changed.messages.has(m.id) && !known.has(m.id)));
  const active = { ...server.active };
  for (const key of changed.active) if (conv.active[key] !== undefined) active[key] = conv.active[key];
  for (const field of MERGED_FIELDS) if (!changed.fields.has(field)) conv[field] = server[field];
  Object.assign(conv, { messages, active, rev: server.rev, created: server.created, updated: server.updated });
}
