// Tool cards: a python run (code and output), a browser action (search, open, find), or a function call
// (name and JSON arguments). A python call waiting for the user's approval shows "Run" and "Skip" while
// its reply streams (the server waits for the answer only while the request is open).
import { sendJSON } from "./api.js";
import { h, toast } from "./dom.js";
import { enhanceCode } from "./markdown.js";

const STATUS_TEXT = {
  running: "running…",
  awaiting_confirmation: "waiting for approval",
  failed: "failed",
};

function kind(event) {
  if (event.tool === "function") return "function";
  return event.tool === "python" || event.tool === "browser" ? event.tool : "function"; // MCP: a function
}

function parseJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function browserTitle(event) {
  const args = parseJSON(event.arguments) ?? {};
  const action = event.data?.action ?? {};
  const name = String(event.name ?? "").replace(/^browser\./, "");
  if (name === "search" || action.type === "search") return `Searched “${action.query ?? args.query ?? ""}”`;
  if (name === "find" || action.type === "find_in_page") return `Found “${action.pattern ?? args.pattern ?? ""}”`;
  if (event.data?.title) return `Opened ${event.data.title}`;
  return `Opened ${typeof args.id === "string" ? args.id : "a result"}`;
}

function title(event) {
  switch (kind(event)) {
    case "python":
      return "Python";
    case "browser":
      return `Browser · ${browserTitle(event)}`;
    default:
      return `Function call · ${event.name ?? ""}`;
  }
}

function status(event) {
  if (event.tool === "function") return "";
  if (event.status === "completed") return Number.isFinite(event.seconds) ? `${event.seconds.toFixed(1)} s` : "done";
  return STATUS_TEXT[event.status] ?? event.status ?? "";
}

function codeBlock(text, language) {
  const code = h("code", { class: `language-${language}` }, text);
  const wrap = h("div", {}, h("pre", {}, code));
  enhanceCode(code, language);
  return wrap;
}

function output(text, failed) {
  return h("div", { class: "tool-output-wrap" },
    h("div", { class: "tool-label" }, failed ? "Error" : "Output"),
    h("pre", { class: `tool-output${failed ? " failed" : ""}` }, text));
}

function body(event, live) {
  const parts = [];
  const k = kind(event);
  if (k === "python") parts.push(codeBlock(event.arguments ?? "", "python"));
  else if (k === "function") {
    const args = parseJSON(event.arguments);
    parts.push(codeBlock(args !== null ? JSON.stringify(args, null, 2) : event.arguments ?? "", "json"));
  } else {
    const url = event.data?.url;
    if (url && /^https?:\/\//i.test(url)) {
      parts.push(h("p", { class: "tool-link" }, h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, event.data.title || url)));
    } else if (url) parts.push(h("p", { class: "tool-link" }, event.data.title || url));
  }
  if (event.output) parts.push(output(event.output, event.status === "failed"));
  if (event.status === "awaiting_confirmation" && live) parts.push(confirmation(event));
  return parts;
}

function confirmation(event) {
  const note = h("span", { class: "confirm-note" }, "Run this code?");
  const answer = async (approve) => {
    run.disabled = skip.disabled = true;
    note.textContent = approve ? "Approved" : "Skipped";
    try {
      await sendJSON("POST", `/ossai/tool-calls/${encodeURIComponent(event.id)}/confirm`, { approve });
    } catch (error) {
      note.textContent = `Could not answer: ${error.message}`;
      toast(`Could not answer the tool call: ${error.message}`);
    }
  };
  const run = h("button", { type: "button", class: "button primary", onclick: () => answer(true) }, "Run");
  const skip = h("button", { type: "button", class: "button", onclick: () => answer(false) }, "Skip");
  return h("div", { class: "tool-confirm" }, note, run, skip);
}

/** A tool card for one tool event (or an existing card brought up to date); `live`: its reply is still
 * streaming, so a call awaiting confirmation can be answered. */
export function toolCard(event, card = null, live = false) {
  const key = JSON.stringify([event.status, event.arguments, event.output, event.name, live]);
  if (card && card.dataset.key === key) return card; // nothing changed: keep buttons and focus as they are
  const next = h("details", {
    class: "tool-card",
    open: card ? card.open : kind(event) !== "browser" || event.status === "running", // pages are long: closed
    dataset: { tool: kind(event), toolId: event.id ?? "", status: event.status ?? "", key },
  });
  next.append(
    h("summary", {}, h("span", { class: "tool-title" }, title(event)), h("span", { class: "tool-status" }, status(event))),
    h("div", { class: "tool-body" }, body(event, live)),
  );
  card?.replaceWith(next);
  return next;
}
