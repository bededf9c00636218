// One message of the thread as an <article>: the user's text, or the assistant's reasoning panel, tool
// cards, answer, badges, stats and actions. `updateAssistant` refreshes an article in place while the
// reply streams, so open panels, focus and scroll stay where the user left them.
import { copyText, h } from "./dom.js";
import { icon } from "./icons.js";
import { renderMarkdown } from "./markdown.js";
import { toolCard } from "./tools.js";

function iconButton(name, label, onclick, disabled = false) {
  return h("button", { type: "button", class: "icon-button", "aria-label": label, title: label, onclick, disabled }, icon(name));
}

/** ‹ 2/3 › for a message with alternatives (edits or regenerations); nothing when it has none. */
function alternatives(info, actions, disabled) {
  if (!info || info.count < 2) return null;
  return h("span", { class: "alternatives" },
    iconButton("left", "Previous alternative", actions.previous, disabled || info.index === 0),
    h("span", { class: "alt-count" }, `${info.index + 1}/${info.count}`),
    iconButton("right", "Next alternative", actions.next, disabled || info.index === info.count - 1));
}

// Stored messages are untrusted data (the server keeps their extra fields as sent): a stat that is not a
// finite number is left out rather than thrown on.
const finite = (value) => (Number.isFinite(value) ? value : null);
const toolsOf = (message) => (Array.isArray(message.tools) ? message.tools : []);

function statsText(stats) {
  const tokens = finite(stats?.completion_tokens);
  if (tokens === null) return "";
  const parts = [`${tokens} tokens`];
  parts.push(`${(finite(stats.tokens_per_s) ?? 0).toFixed(1)} tok/s`);
  const ttft = finite(stats.ttft_ms);
  if (ttft !== null) parts.push(`TTFT ${Math.round(ttft)} ms`);
  return parts.join(" · ");
}

function statsTitle(stats) {
  const seconds = finite(stats?.seconds);
  if (seconds === null) return "";
  return `${stats.model ?? ""} · ${finite(stats.prompt_tokens) ?? "?"} prompt tokens · ${seconds.toFixed(1)} s`;
}

// --- User messages ----------------------------------------------------------------------------------

/** ctx: {info: {index, count}, busy, actions: {previous, next, edit(text), copy}} */
export function userArticle(message, ctx) {
  const article = h("article", { class: "message user", dataset: { role: "user", status: message.status ?? "done", messageId: message.id } });
  const bubble = h("div", { class: "bubble" }, message.content);
  const edit = () => {
    const box = h("textarea", { class: "edit-box", "aria-label": "Edit message", rows: 3 }, message.content);
    const send = () => box.value.trim() && ctx.actions.edit(box.value);
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send();
      } else if (event.key === "Escape") {
        event.stopPropagation();
        form.replaceWith(bubble);
        footer.hidden = false;
      }
    });
    const form = h("div", { class: "edit-form" }, box,
      h("div", { class: "edit-actions" },
        h("button", { type: "button", class: "button", onclick: () => { form.replaceWith(bubble); footer.hidden = false; } }, "Cancel"),
        h("button", { type: "button", class: "button primary", onclick: send, disabled: ctx.busy }, "Send edited message")));
    bubble.replaceWith(form);
    footer.hidden = true;
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  };
  const footer = h("div", { class: "message-actions" },
    alternatives(ctx.info, ctx.actions, ctx.busy),
    iconButton("edit", "Edit", edit, ctx.busy),
    iconButton("copy", "Copy", (event) => copyText(message.content, event.currentTarget)));
  article.append(bubble, footer);
  return article;
}

// --- Assistant messages -----------------------------------------------------------------------------

/** ctx: {info, busy, reasoningOpen, sources, actions: {previous, next, regenerate}} */
export function assistantArticle(message, ctx) {
  const article = h("article", { class: "message assistant", dataset: { role: "assistant", messageId: message.id } });
  article.append(
    h("div", { class: "tools" }),
    h("div", { class: "answer" }),
    h("p", { class: "message-error", role: "alert", hidden: true }),
    h("div", { class: "message-actions" }),
  );
  updateAssistant(article, message, ctx);
  return article;
}

export function updateAssistant(article, message, ctx) {
  article.dataset.status = message.status;
  updateReasoning(article, message, ctx);
  updateTools(article, message);
  renderOnce(article.querySelector(".answer"), message.content, ctx.sources);
  article.querySelector(".answer").classList.toggle("typing", message.status === "streaming" && !message.content && !message.reasoning && !toolsOf(message).length);
  const error = article.querySelector(".message-error");
  error.hidden = !message.error;
  error.textContent = message.error ?? "";
  updateActions(article, message, ctx);
}

const rendered = new WeakMap(); // element -> the text and sources it shows: re-render only on change

function renderOnce(el, text, sources = new Map()) {
  const last = rendered.get(el);
  if (last && last.text === text && last.sources === sources.size) return;
  rendered.set(el, { text, sources: sources.size });
  renderMarkdown(el, text, { sources });
}

function reasoningSummary(message) {
  if (message.status === "streaming" && !message.content && message.reasoning_seconds === null) return "Thinking…";
  const seconds = Math.max(1, Math.round(finite(message.reasoning_seconds) ?? 0));
  return `Thought for ${seconds} s`;
}

function updateReasoning(article, message, ctx) {
  let panel = article.querySelector("details.reasoning");
  if (!message.reasoning) {
    panel?.remove();
    return;
  }
  if (!panel) {
    panel = h("details", { class: "reasoning" },
      h("summary", {}, h("span", { class: "reasoning-label" }), icon("chevron")),
      h("div", { class: "reasoning-text" }));
    article.querySelector(".tools").before(panel);
  }
  const label = panel.querySelector(".reasoning-label");
  const summary = reasoningSummary(message);
  if (label.textContent !== summary) label.textContent = summary;
  const text = panel.querySelector(".reasoning-text");
  if (text.textContent !== message.reasoning) text.textContent = message.reasoning; // plain text, as the model wrote it
  // Open while thinking, closed once the answer starts (open in Reasoning mode); a panel the user
  // opened or closed by hand (its state differs from the one we last set) is left alone.
  const wanted = ctx.reasoningOpen || (message.status === "streaming" && !message.content);
  const lastSet = panel.dataset.auto;
  if (lastSet === undefined || panel.open === (lastSet === "open")) {
    panel.open = wanted;
    panel.dataset.auto = wanted ? "open" : "closed";
  }
}

function updateTools(article, message) {
  const box = article.querySelector(".tools");
  const live = message.status === "streaming"; // "Run" and "Skip" only while the server can still hear them
  toolsOf(message).forEach((event, index) => {
    if (!event || typeof event !== "object") return;
    const id = String(event.id ?? `${event.tool}-${index}`);
    const existing = box.querySelector(`[data-tool-id="${CSS.escape(id)}"]`);
    const card = toolCard({ ...event, id }, existing, live);
    if (!existing) box.append(card);
  });
}

function updateActions(article, message, ctx) {
  const bar = article.querySelector(".message-actions");
  const streaming = message.status === "streaming";
  const key = JSON.stringify([message.status, ctx.busy, ctx.info, statsText(message.stats)]);
  if (bar.dataset.key === key) return;
  bar.dataset.key = key;
  bar.replaceChildren();
  if (streaming) return;
  if (message.status === "stopped") bar.append(h("span", { class: "badge" }, "stopped"));
  bar.append(
    alternatives(ctx.info, ctx.actions, ctx.busy) ?? "",
    iconButton("copy", "Copy", (event) => copyText(message.content, event.currentTarget)),
    iconButton("regenerate", "Regenerate", ctx.actions.regenerate, ctx.busy),
    h("span", { class: "stats", title: statsTitle(message.stats) }, statsText(message.stats)),
  );
}
