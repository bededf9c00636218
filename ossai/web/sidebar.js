// The sidebar's conversation list: search, open, rename, delete (with an undo toast), export.
import {
  deleteConversation, exportConversation, listConversations, onSaved, restoreConversation,
} from "./conversations.js";
import { $, h, toast } from "./dom.js";
import { icon } from "./icons.js";

const PAGE = 50;
const list = { query: "", items: [], hasMore: false, activeId: null, available: true };
// {rename(id, title), deleting(id): before the DELETE, deleted(id), restored(id): the open conversation is back}
let hooks = {};
let searchTimer = null;

export function initSidebar(callbacks) {
  hooks = callbacks;
  $("#conversation-search").addEventListener("input", (event) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      list.query = event.target.value.trim();
      refreshSidebar();
    }, 250);
  });
  $("#load-more").addEventListener("click", () => refreshSidebar({ more: true }));
  onSaved((conv, { created }) => {
    const first = list.items[0];
    const stale = created || !first || first.id !== conv.id || first.title !== conv.title;
    if (stale && !list.query) refreshSidebar(); // while a reply streams, saves leave the list as it is
  });
}

export function setActiveConversation(id) {
  list.activeId = id;
  for (const li of document.querySelectorAll("#conversation-list li")) {
    const button = li.querySelector(".conversation-open");
    if (li.dataset.conversationId === id) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
}

export async function refreshSidebar({ more = false } = {}) {
  const query = list.query;
  try {
    const page = await listConversations({ q: query, limit: PAGE, offset: more ? list.items.length : 0 });
    if (query !== list.query) return; // a newer search is under way
    list.items = more ? [...list.items, ...page.data] : page.data;
    list.hasMore = page.has_more;
    list.available = true;
  } catch (error) {
    list.items = [];
    list.hasMore = false;
    list.available = false;
    if (error.status !== 404) toast(`Could not list conversations: ${error.message}`);
  }
  draw();
}

function draw() {
  const ul = $("#conversation-list");
  ul.replaceChildren(...list.items.map(item));
  $("#load-more").hidden = !list.hasMore;
  const empty = $("#conversation-empty");
  empty.hidden = list.items.length > 0;
  empty.textContent = !list.available ? "Conversations are not stored by this server." : list.query ? "No conversation matches." : "No conversations yet.";
  setActiveConversation(list.activeId);
}

function action(name, label, onclick) {
  return h("button", { type: "button", class: "icon-button small", "aria-label": label, title: label, onclick }, icon(name));
}

function item(summary) {
  const go = () => (window.location.hash = `#/c/${encodeURIComponent(summary.id)}`);
  const open = h("button", { type: "button", class: "conversation-open", onclick: go },
    h("span", { class: "conversation-title" }, summary.title || "Untitled"),
    summary.snippet ? h("span", { class: "conversation-snippet" }, summary.snippet) : null);
  const li = h("li", { dataset: { conversationId: summary.id } });
  li.append(open, h("span", { class: "conversation-actions" },
    action("edit", "Rename", () => rename(li, summary)),
    action("trash", "Delete", () => remove(summary)),
    action("download", "Export", () => exportConversation(summary.id, "json").catch((e) => toast(e.message)))));
  return li;
}

function rename(li, summary) {
  const input = h("input", { class: "rename-input", type: "text", "aria-label": "Conversation title", value: summary.title });
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (save && title && title !== summary.title) {
      summary.title = title;
      try {
        await hooks.rename(summary.id, title);
      } catch (error) {
        toast(`Could not rename: ${error.message}`);
      }
    }
    draw();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    else if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

async function remove(summary) {
  try {
    await hooks.deleting?.(summary.id); // a reply streaming in it is stopped and stored first
    await deleteConversation(summary.id);
  } catch (error) {
    toast(`Could not delete: ${error.message}`);
    return;
  }
  const wasOpen = list.activeId === summary.id;
  list.items = list.items.filter((other) => other.id !== summary.id);
  draw();
  hooks.deleted(summary.id);
  toast("Conversation deleted", {
    action: "Undo",
    onAction: async () => {
      try {
        await restoreConversation(summary.id);
        await refreshSidebar();
        if (wasOpen) hooks.restored(summary.id);
      } catch (error) {
        toast(`Could not restore: ${error.message}`);
      }
    },
  });
}
