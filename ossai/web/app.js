// Bootstrap and routing: #/ and #/c/<id> (chat), #/models, #/dashboard; the theme toggle and the
// sidebar drawer of narrow screens.
import { allowKeyPrompt, onKeySaved, promptForKey } from "./api.js";
import {
  beforeDelete, conversationChanged, currentConversation, forgetConversation, initChat, isStreaming, newChat,
  openConversation, renameConversation,
} from "./chat.js";
import { onSaved } from "./conversations.js";
import { startDashboard, stopDashboard } from "./dashboard.js";
import { $ } from "./dom.js";
import { fillIcons } from "./icons.js";
import { initModels, loadModelPicker, refreshModels } from "./models.js";
import { initSettings } from "./settings.js";
import { initSidebar, refreshSidebar, setActiveConversation } from "./sidebar.js";

const VIEWS = ["chat", "models", "dashboard"];

function parseRoute(hash) {
  if (hash === "#/models") return { view: "models" };
  if (hash === "#/dashboard") return { view: "dashboard" };
  const match = /^#\/c\/(.+)$/.exec(hash);
  return { view: "chat", id: match ? decodeId(match[1]) : null };
}

function decodeId(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return null; // a malformed %-escape (#/c/%E0): no such conversation, a new chat instead
  }
}

function route() {
  const { view, id } = parseRoute(window.location.hash || "#/");
  for (const name of VIEWS) $(`#view-${name}`).hidden = name !== view;
  $("#chat-controls").hidden = view !== "chat";
  for (const link of document.querySelectorAll(".main-nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (view === "dashboard") startDashboard();
  else stopDashboard();
  if (view === "models") refreshModels();
  if (view === "chat") {
    setActiveConversation(id);
    const conv = currentConversation();
    if (id) openConversation(id);
    else if (conv.id || conv.messages.length) newChat(); // an empty draft stays, with its mode and settings
  }
  setDrawer(false);
}

// --- Theme ------------------------------------------------------------------------------------------

function toggleTheme() {
  const root = document.documentElement;
  const dark = root.dataset.theme ? root.dataset.theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark"; // the dashboard's charts see it and redraw
  try {
    localStorage.setItem("ossai.theme", root.dataset.theme);
  } catch {
    // storage disabled: the choice lasts until the page is left
  }
}

// --- The sidebar as a drawer (narrow screens) -------------------------------------------------------

function setDrawer(open) {
  document.body.classList.toggle("sidebar-open", open);
  $("#show-sidebar").setAttribute("aria-expanded", String(open));
  $("#scrim").hidden = !open;
  if (open) $("#conversation-search").focus();
}

function initDrawer() {
  $("#show-sidebar").addEventListener("click", () => setDrawer(!document.body.classList.contains("sidebar-open")));
  $("#hide-sidebar").addEventListener("click", () => setDrawer(false));
  $("#scrim").addEventListener("click", () => setDrawer(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && document.body.classList.contains("sidebar-open") && !isStreaming()) setDrawer(false);
  });
}

/** A key was saved after requests had failed without one: load again what they would have shown. */
function reloadAfterKey() {
  const { view } = parseRoute(window.location.hash || "#/");
  loadModelPicker();
  refreshSidebar();
  if (view === "models") refreshModels();
  if (view === "dashboard") startDashboard(); // its loop stopped at the 401
}

async function main() {
  fillIcons();
  initDrawer();
  $("#toggle-theme").addEventListener("click", toggleTheme);
  $("#new-chat").addEventListener("click", () => {
    if (window.location.hash === "#/" || !window.location.hash) newChat();
    else window.location.hash = "#/";
  });
  initChat();
  initModels();
  initSidebar({
    rename: renameConversation,
    deleting: beforeDelete,
    deleted: forgetConversation,
    restored: (id) => (window.location.hash = `#/c/${encodeURIComponent(id)}`),
  });
  initSettings({
    conversation: currentConversation,
    changed: conversationChanged,
    imported: (ids) => {
      refreshSidebar();
      if (ids.length) window.location.hash = `#/c/${encodeURIComponent(ids[0])}`;
    },
  });
  onSaved((conv) => conv === currentConversation() && setActiveConversation(conv.id));
  // A dismissed key dialog stays closed for background requests; the "API key needed" button, or going
  // to another page, asks again, and once a key is saved what failed without it is loaded again.
  $("#key-needed").addEventListener("click", () => promptForKey());
  onKeySaved(reloadAfterKey);
  window.addEventListener("hashchange", () => {
    allowKeyPrompt();
    route();
  });
  await loadModelPicker();
  route();
  refreshSidebar();
}

main();
