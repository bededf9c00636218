// The server's HTTP API: fetch with the API key, the key dialog on 401, and the streaming readers
// (server-sent events for chat and stats, NDJSON for pulls).
import { $ } from "./dom.js";

const KEY = "ossai.apiKey";
let memoryKey = null; // a key the user chose not to remember on this device
let pendingKey = null; // one dialog for every request that got a 401 at the same time
// Dismissing the dialog means "not now": until the user asks again (promptForKey, allowKeyPrompt), a 401
// fails at once instead of reopening the dialog, so pollers (the dashboard's retry) do not loop on it.
let declined = false;
let missed = false; // requests failed for want of a key: once one is saved, onKeySaved's listeners reload
const keyListeners = new Set();

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return localStorage.getItem(KEY) || sessionStorage.getItem(KEY) || memoryKey;
}

export function forgetApiKey() {
  localStorage.removeItem(KEY);
  sessionStorage.removeItem(KEY);
  memoryKey = null;
}

function storeKey(key, remember) {
  forgetApiKey();
  if (remember) localStorage.setItem(KEY, key);
  else {
    memoryKey = key;
    sessionStorage.setItem(KEY, key); // survives a reload of this tab only
  }
}

export const onKeySaved = (listener) => keyListeners.add(listener);

/** Let the next 401 open the key dialog again (the user went to another page: they are acting). */
export function allowKeyPrompt() {
  declined = false;
}

/** Open the key dialog now (the "API key needed" button). */
export function promptForKey() {
  declined = false;
  return askForKey();
}

function keyDialogClosed(saved) {
  declined = !saved;
  if (!saved) missed = true;
  $("#key-needed").hidden = saved || !missed;
  if (saved && missed) {
    missed = false;
    for (const listener of keyListeners) listener();
  }
}

/** Ask for the key; resolves true when one was saved, false when the dialog was dismissed. */
function askForKey() {
  if (pendingKey) return pendingKey;
  const dialog = $("#key-dialog");
  const form = $("#key-form");
  const input = $("#key-input");
  pendingKey = new Promise((resolve) => {
    const onSubmit = (event) => {
      event.preventDefault();
      if (!input.value.trim()) return;
      storeKey(input.value.trim(), $("#key-remember").checked);
      dialog.close("saved");
    };
    const onClose = () => {
      form.removeEventListener("submit", onSubmit);
      input.value = "";
      pendingKey = null;
      const saved = dialog.returnValue === "saved";
      keyDialogClosed(saved);
      resolve(saved);
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
  return pendingKey;
}

async function errorMessage(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    const error = body.error ?? body.detail;
    if (typeof error === "string") return error;
    if (error && typeof error.message === "string") return error.message;
  } catch {
    // not JSON: fall through to the text itself
  }
  // Cut by code points: a UTF-16 slice could end in half an emoji.
  return Array.from(text.trim()).slice(0, 300).join("") || `${response.status} ${response.statusText}`;
}

/** fetch() with the API key; a 401 opens the key dialog and retries once a key is saved.
 * Resolves to the Response when it is ok, else throws an ApiError with the server's message. */
export async function request(path, { method = "GET", body, signal, headers = {} } = {}) {
  for (;;) {
    const init = { method, signal, headers: { ...headers } };
    if (body !== undefined) {
      init.body = typeof body === "string" ? body : JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const key = apiKey();
    if (key) init.headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, init);
    if (response.status === 401 && !signal?.aborted && !declined && (await askForKey())) continue;
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response;
  }
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

export async function sendJSON(method, path, body, options = {}) {
  const response = await request(path, { ...options, method, body });
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

async function* lines(response, separator) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf(separator)) >= 0) {
        yield buffer.slice(0, end);
        buffer = buffer.slice(end + separator.length);
      }
    }
    if (buffer.trim()) yield buffer;
  } finally {
    reader.releaseLock();
  }
}

/** The JSON objects of a server-sent event stream (`data: {...}` frames), up to `data: [DONE]`. */
export async function* readSSE(response) {
  for await (const frame of lines(response, "\n\n")) {
    const data = frame
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""))
      .join("\n");
    if (!data) continue;
    if (data === "[DONE]") return;
    yield JSON.parse(data);
  }
}

/** The objects of an NDJSON stream, one per line. */
export async function* readNDJSON(response) {
  for await (const line of lines(response, "\n")) {
    if (line.trim()) yield JSON.parse(line);
  }
}
