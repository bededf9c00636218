// The settings drawer of the conversation shown: system prompt, sampling, python confirmation, export
// and import, and forgetting the API key.
import { forgetApiKey } from "./api.js";
import { exportConversation, importConversations, markChanged } from "./conversations.js";
import { $, toast } from "./dom.js";

let hooks = {}; // {conversation(), changed(what changed: see markChanged), imported(ids)}

function numberOrNull(input) {
  const value = input.valueAsNumber;
  return Number.isFinite(value) ? value : null;
}

export function initSettings(callbacks) {
  hooks = callbacks;
  const dialog = $("#settings");
  $("#open-settings").addEventListener("click", () => {
    fill();
    dialog.showModal();
  });
  $("#close-settings").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => hooks.changed());
  dialog.addEventListener("click", (event) => event.target === dialog && dialog.close()); // the backdrop

  // Values apply as they are typed (a message sent with the drawer open uses them) and are saved on
  // change and when the drawer closes. Each is noted as changed in this tab (`field`), so a save that
  // meets another tab's newer version (409) keeps it.
  const bind = (selector, field, apply) => {
    const el = $(selector);
    el.addEventListener("input", () => {
      const conv = hooks.conversation();
      apply(conv, el);
      markChanged(conv, { fields: [field] });
    });
    el.addEventListener("change", () => {
      apply(hooks.conversation(), el);
      hooks.changed({ fields: [field] });
    });
  };
  bind("#system-prompt", "system", (conv, el) => (conv.system = el.value));
  bind("#temperature", "settings", (conv, el) => (conv.settings.temperature = numberOrNull(el)));
  bind("#top-p", "settings", (conv, el) => (conv.settings.top_p = numberOrNull(el)));
  bind("#max-tokens", "settings", (conv, el) => {
    const value = numberOrNull(el);
    conv.settings.max_tokens = value && value >= 1 ? Math.round(value) : null; // empty: no limit
  });
  bind("#confirm-python", "settings", (conv, el) => (conv.settings.confirm_python = el.checked));

  const exporter = (format) => () => exportConversation(hooks.conversation().id, format).catch((e) => toast(e.message));
  $("#export-json").addEventListener("click", exporter("json"));
  $("#export-markdown").addEventListener("click", exporter("markdown"));
  $("#import-conversation").addEventListener("click", () => $("#import-file").click());
  $("#import-file").addEventListener("change", (event) => importFile(event.target));
  $("#forget-key").addEventListener("click", () => {
    forgetApiKey();
    toast("API key forgotten");
  });
}

function fill() {
  const conv = hooks.conversation();
  $("#system-prompt").value = conv.system ?? "";
  $("#temperature").value = conv.settings.temperature ?? "";
  $("#top-p").value = conv.settings.top_p ?? "";
  $("#max-tokens").value = conv.settings.max_tokens ?? "";
  $("#confirm-python").checked = Boolean(conv.settings.confirm_python);
  $("#export-json").disabled = $("#export-markdown").disabled = !conv.id;
}

async function importFile(input) {
  const [file] = input.files;
  input.value = ""; // choosing the same file again imports it again
  if (!file) return;
  try {
    const answer = await importConversations(JSON.parse(await file.text()));
    const ids = answer.data.map((summary) => summary.id);
    toast(ids.length === 1 ? "Conversation imported" : `${ids.length} conversations imported`);
    $("#settings").close();
    hooks.imported(ids);
  } catch (error) {
    toast(`Could not import ${file.name}: ${error.message}`);
  }
}
