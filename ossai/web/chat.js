// The chat view: the thread of the conversation shown, the composer, the header's mode, effort and model
// controls, and the streaming of a reply (saved as it grows, stopped with the Stop button or Esc).
import { loadConversation, markChanged, onSaved, saveNow, scheduleSave } from "./conversations.js";
import { $, h, randomId, toast } from "./dom.js";
import { assistantArticle, updateAssistant, userArticle } from "./messages.js";
import { sourcesFromTools } from "./markdown.js";
import { chatBody, chatEvents, historyMessages } from "./stream.js";
import {
  DEFAULT_TITLE, addMessage, assistantMessage, endTools, newConversation, normalize, pathTo, select, siblings, thread,
  titleFrom, userMessage,
} from "./tree.js";

const state = {
  conv: newConversation(),
  streaming: null, // {conv, message, controller, finished} while a reply streams (finished: run's promise)
  opening: 0, // the latest openConversation call: earlier ones that finish late are ignored
};

let els = {};
let renderQueued = false;

export const currentConversation = () => state.conv;
export const isStreaming = () => state.streaming !== null;

export function initChat() {
  els = {
    messages: $("#messages"),
    composer: $("#composer"),
    input: $("#message-input"),
    send: $("#send"),
    stop: $("#stop"),
    model: $("#model"),
    effort: $("#effort"),
  };
  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send(els.input.value);
  });
  els.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send(els.input.value);
    }
  });
  els.input.addEventListener("input", autosize);
  els.stop.addEventListener("click", stop);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.streaming && !document.querySelector("dialog[open]")) stop();
  });
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => radio.checked && setMode(radio.value));
  }
  els.effort.addEventListener("change", () => {
    state.conv.settings.effort = els.effort.value;
    conversationChanged({ fields: ["settings"] });
  });
  els.model.addEventListener("change", () => {
    localStorage.setItem("ossai.model", els.model.value);
    state.conv.model = els.model.value;
    conversationChanged({ fields: ["model"] });
  });
  onSaved((conv, { created, merged }) => {
    if (conv !== state.conv) return;
    if (created) window.history.replaceState(null, "", `#/c/${conv.id}`);
    if (merged) { // a 409 brought in another tab's messages, title or settings: show them
      endStale(conv);
      syncControls();
      renderThread({ keepScroll: true });
    }
  });
  updateComposer();
  render();
}

function autosize() {
  els.input.style.height = "auto";
  els.input.style.height = `${Math.min(els.input.scrollHeight, 240)}px`;
}

/** Settings changed (header controls or the settings drawer): show them and save a stored conversation.
 * `changed`: which fields (see markChanged in conversations.js). */
export function conversationChanged(changed) {
  syncControls();
  markChanged(state.conv, changed);
  if (state.conv.id) saveNow(state.conv);
}

export function newChat() {
  state.opening += 1;
  state.conv = newConversation({ model: els.model.value });
  syncControls();
  renderThread();
  els.input.focus();
}

export async function openConversation(id) {
  if (state.conv.id === id) return render(); // already shown (it was just created here)
  const ticket = ++state.opening;
  let conv = state.streaming?.conv.id === id ? state.streaming.conv : null;
  try {
    conv ??= normalize(await loadConversation(id));
  } catch (error) {
    toast(`Could not open the conversation: ${error.message}`);
    window.location.hash = "#/";
    return;
  }
  if (ticket !== state.opening) return;
  endStale(conv);
  state.conv = conv;
  render();
}

/** A reply saved mid-stream by a tab that went away (not the one streaming here) ended there. */
function endStale(conv) {
  for (const message of conv.messages) {
    if (message.status !== "streaming" || message === state.streaming?.message) continue;
    message.status = "stopped";
    endTools(message);
  }
}

function render() {
  syncControls();
  renderThread();
}

/** Before the sidebar deletes a conversation: a reply streaming in it is stopped and stored as
 * "stopped" first, so that Undo brings back a consistent conversation (not one "streaming" forever). */
export async function beforeDelete(id) {
  const { streaming } = state;
  if (streaming?.conv.id !== id) return;
  stop();
  await streaming.finished;
}

/** A conversation deleted from the sidebar: no copy here saves it again, and it is left if shown. */
export function forgetConversation(id) {
  if (state.streaming?.conv.id === id) {
    state.streaming.conv.deleted = true;
    stop();
  }
  if (state.conv.id === id) {
    state.conv.deleted = true;
    window.location.hash = "#/";
  }
}

export async function renameConversation(id, title) {
  // The copy shown or streaming is renamed in place: a second copy would race its saves, and the
  // stream's next save would put the old title back.
  const open = [state.conv, state.streaming?.conv].find((conv) => conv?.id === id);
  const conv = open ?? normalize(await loadConversation(id));
  conv.title = title;
  if (conv === state.conv) syncControls();
  return saveNow(conv, { fields: ["title"] });
}

// --- Controls ---------------------------------------------------------------------------------------

function syncControls() {
  const { conv } = state;
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.checked = radio.value === conv.mode;
  els.effort.value = conv.settings.effort;
  if (conv.model && [...els.model.options].some((o) => o.value === conv.model)) els.model.value = conv.model;
  document.title = conv.title && conv.title !== DEFAULT_TITLE ? `${conv.title} · ossai` : "ossai";
}

function setMode(mode) {
  state.conv.mode = mode;
  if (mode === "reasoning") state.conv.settings.effort = "high"; // its default; the selector can change it
  conversationChanged({ fields: ["mode", "settings"] });
  if (!state.streaming) renderThread(); // Reasoning mode shows reasoning panels open
}

function updateComposer() {
  const streaming = state.streaming !== null;
  els.send.hidden = streaming;
  els.stop.hidden = !streaming;
}

// --- The thread -------------------------------------------------------------------------------------

function contextFor(message, sources) {
  const { conv } = state;
  const sibs = siblings(conv, message);
  const index = sibs.indexOf(message);
  const switchTo = (other) => () => {
    if (!other || state.streaming) return;
    select(conv, other);
    renderThread({ keepScroll: true });
    if (conv.id) saveNow(conv, { active: [other.parent] });
  };
  return {
    info: { index, count: sibs.length },
    busy: state.streaming !== null,
    reasoningOpen: conv.mode === "reasoning",
    sources,
    actions: {
      previous: switchTo(sibs[index - 1]),
      next: switchTo(sibs[index + 1]),
      regenerate: () => !state.streaming && reply(conv, message.parent),
      edit: (text) => {
        if (state.streaming) return;
        const edited = addMessage(conv, userMessage(message.parent, text));
        markChanged(conv, { messages: [edited.id], active: [edited.parent] });
        reply(conv, edited.id);
      },
    },
  };
}

function renderThread({ keepScroll = false } = {}) {
  const messages = thread(state.conv);
  const tools = [];
  const articles = messages.map((message) => {
    if (Array.isArray(message.tools)) tools.push(...message.tools);
    try {
      const ctx = contextFor(message, sourcesFromTools(tools));
      return message.role === "user" ? userArticle(message, ctx) : assistantArticle(message, ctx);
    } catch (error) { // a malformed stored message: say so in its place, and show the rest of the thread
      console.error(error);
      return h("article", { class: "message", dataset: { role: message.role, messageId: message.id } },
        h("p", { class: "message-error", role: "alert" }, `This message could not be shown: ${error.message}`));
    }
  });
  if (!articles.length) articles.push(emptyState());
  const list = els.messages;
  const scroll = list.scrollTop;
  const atBottom = list.scrollHeight - scroll - list.clientHeight < 80;
  list.replaceChildren(...articles);
  list.scrollTop = keepScroll && !atBottom ? scroll : list.scrollHeight; // a reader who scrolled up stays
}

function emptyState() {
  return h("div", { class: "empty" }, h("p", { class: "empty-title" }, "What can I help with?"),
    h("p", { class: "empty-hint" }, "Enter sends, Shift+Enter adds a line, Esc stops a reply."));
}

/** Refresh the streaming message's article once per frame (if its conversation is shown). */
function scheduleRender(message) {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const article = els.messages.querySelector(`[data-message-id="${CSS.escape(message.id)}"]`);
    if (!article) return;
    const list = els.messages;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    const tools = pathTo(state.conv, message.id).flatMap((m) => (Array.isArray(m.tools) ? m.tools : []));
    updateAssistant(article, message, contextFor(message, sourcesFromTools(tools)));
    if (atBottom) list.scrollTop = list.scrollHeight;
  });
}

// --- Sending and streaming --------------------------------------------------------------------------

async function send(text) {
  if (state.streaming || !text.trim()) return;
  const { conv } = state;
  const last = thread(conv).at(-1);
  const user = addMessage(conv, userMessage(last?.id ?? null, text));
  markChanged(conv, { messages: [user.id], active: [user.parent] });
  if (conv.title === DEFAULT_TITLE) {
    conv.title = titleFrom(text);
    markChanged(conv, { fields: ["title"] });
  }
  els.input.value = "";
  autosize();
  await reply(conv, user.id);
}

export function stop() {
  state.streaming?.controller.abort();
}

async function reply(conv, parentId) {
  if (!els.model.value) {
    toast("No model to answer with: pull one on the Models page.");
    renderThread();
    return;
  }
  if (conv.model !== els.model.value) {
    conv.model = els.model.value;
    markChanged(conv, { fields: ["model"] });
  }
  const message = addMessage(conv, assistantMessage(parentId, conv.model));
  markChanged(conv, { messages: [message.id], active: [parentId] });
  const controller = new AbortController();
  const streaming = { conv, message, controller, finished: null };
  state.streaming = streaming;
  updateComposer();
  renderThread();
  // A new conversation is stored by the first save of its reply (see initChat), not before it: the
  // request goes out at once and its first tokens do not queue behind another round trip.
  streaming.finished = run(conv, message, controller);
  await streaming.finished;
}

/** The agent's session (python variables, browser pages): one per conversation, known before the
 * server has given the conversation an id, so it is made from the first message. */
function sessionFor(conv) {
  const first = conv.messages[0];
  return `s_${first.id}_${Math.round(first.created * 1000)}`.replace(/[^A-Za-z0-9_.:-]/g, "").slice(0, 128);
}

async function run(conv, message, controller) {
  const clock = { start: performance.now(), first: null, reasoningStart: null, reasoningEnd: null, deltas: 0 };
  const calls = new Map(); // function call index -> its entry in message.tools
  const body = chatBody(conv, historyMessages(pathTo(conv, message.parent)), sessionFor(conv));
  try {
    for await (const event of chatEvents(body, controller.signal)) {
      apply(message, event, clock, calls);
      scheduleRender(message);
      scheduleSave(conv, { messages: [message.id] });
    }
    message.status = "done";
  } catch (error) {
    if (controller.signal.aborted) message.status = "stopped";
    else {
      message.status = "error";
      message.error = error.message;
    }
  } finally {
    endTools(message); // the server runs nothing more for this reply: no call is left waiting or running
    finishStats(message, clock);
    state.streaming = null;
    updateComposer();
    // Redraw even when another conversation is shown: its buttons were drawn disabled while this streamed.
    renderThread({ keepScroll: true });
    await saveNow(conv, { messages: [message.id] });
  }
}

function apply(message, event, clock, calls) {
  const t = performance.now();
  if (event.type !== "usage" && event.type !== "finish") clock.first ??= t;
  switch (event.type) {
    case "reasoning":
      clock.reasoningStart ??= t;
      clock.reasoningEnd = t;
      message.reasoning += event.text;
      clock.deltas += 1;
      break;
    case "content":
      if (!message.content && clock.reasoningStart !== null && message.reasoning_seconds === null) {
        message.reasoning_seconds = (t - clock.reasoningStart) / 1000;
      }
      message.content += event.text;
      clock.deltas += 1;
      break;
    case "function": {
      let call = calls.get(event.index);
      if (!call) {
        call = { tool: "function", id: event.id ?? randomId("call_"), name: event.name ?? "", arguments: "" };
        calls.set(event.index, call);
        message.tools.push(call);
      }
      call.arguments += event.arguments;
      break;
    }
    case "tool": {
      const index = message.tools.findIndex((tool) => tool.id === event.event.id);
      if (index >= 0) message.tools[index] = { ...message.tools[index], ...event.event };
      else message.tools.push(event.event);
      break;
    }
    case "usage":
      message.stats.prompt_tokens = event.usage.prompt_tokens;
      message.stats.completion_tokens = event.usage.completion_tokens;
      break;
    default:
      break;
  }
}

function finishStats(message, clock) {
  const end = performance.now();
  const { stats } = message;
  if (message.reasoning_seconds === null && clock.reasoningStart !== null) {
    message.reasoning_seconds = (clock.reasoningEnd - clock.reasoningStart) / 1000;
  }
  stats.seconds = Math.round(end - clock.start) / 1000;
  if (clock.first === null) return; // nothing came: no speed to report
  stats.completion_tokens ??= clock.deltas; // a stopped reply has no usage chunk: count the deltas
  stats.ttft_ms = Math.round(clock.first - clock.start);
  const generating = (end - clock.first) / 1000;
  if (generating > 0 && stats.completion_tokens > 1) {
    stats.tokens_per_s = Math.round(((stats.completion_tokens - 1) / generating) * 10) / 10;
  }
}
