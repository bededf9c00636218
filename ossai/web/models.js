// The model picker in the header and the Models page: the store (/api/tags) with what is loaded
// (/api/ps), load and unload, delete (after a confirmation), and pull with live progress.
import { ApiError, getJSON, readNDJSON, request, sendJSON } from "./api.js";
import { $, formatBytes, h, toast } from "./dom.js";

let pull = null; // {controller} while a pull streams
const busy = new Set(); // models being loaded, unloaded or deleted

// --- The picker -------------------------------------------------------------------------------------

async function serverDefault() {
  try {
    return (await (await fetch("/health")).json()).model ?? null; // /health never needs a key
  } catch {
    return null;
  }
}

/** Fill the "Model" combobox; keep the choice, else the remembered one, the server's, or the first. */
export async function loadModelPicker() {
  const select = $("#model");
  let names = [];
  try {
    names = (await getJSON("/api/tags")).models.map((m) => m.name);
  } catch (error) {
    toast(`Could not list the models: ${error.message}`);
  }
  const choices = [select.value, localStorage.getItem("ossai.model"), await serverDefault(), names[0]];
  select.replaceChildren(...names.map((name) => h("option", { value: name }, name)));
  if (!names.length) select.append(h("option", { value: "" }, "No models"));
  select.value = choices.find((name) => name && names.includes(name)) ?? "";
}

// --- The page ---------------------------------------------------------------------------------------

export function initModels() {
  $("#pull-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("#pull-name").value.trim();
    if (name && !pull) startPull(name);
  });
  $("#cancel-pull").addEventListener("click", () => pull?.controller.abort());
  $("#cancel-delete-model").addEventListener("click", () => $("#delete-model").close());
}

async function contextLength(name, loaded) {
  if (loaded?.context_length) return loaded.context_length;
  try {
    const info = (await sendJSON("POST", "/api/show", { model: name })).model_info ?? {};
    return info["gptoss.context_length"] ?? null;
  } catch {
    return null;
  }
}

export async function refreshModels() {
  const tbody = $("#model-rows");
  let tags;
  let ps;
  try {
    [tags, ps] = await Promise.all([getJSON("/api/tags"), getJSON("/api/ps")]);
  } catch (error) {
    tbody.replaceChildren(h("tr", {}, h("td", { colspan: 6 }, `Could not list the models: ${error.message}`)));
    return;
  }
  const loaded = new Map(ps.models.map((m) => [m.name, m]));
  const contexts = await Promise.all(tags.models.map((m) => contextLength(m.name, loaded.get(m.name))));
  const rows = tags.models.map((model, i) => row(model, loaded.get(model.name), contexts[i]));
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No models in the store: pull one above.")));
  tbody.replaceChildren(...rows);
}

function row(model, loaded, context) {
  const name = model.name;
  const act = (label, work) => h("button", { type: "button", class: "button small", disabled: busy.has(name), onclick: () => work(name) }, label);
  const status = loaded ? `loaded${loaded.device ? ` (${loaded.device})` : ""}` : "not loaded";
  // The classes lay a row out as a card on narrow screens (style.css): the name, then size, quantization,
  // context and status on one line, then the buttons.
  return h("tr", { dataset: { model: name } },
    h("td", { class: "model-name" }, name),
    h("td", { class: "model-fact" }, formatBytes(model.size)),
    h("td", { class: "model-fact" }, model.details?.quantization_level ?? "—"),
    h("td", { class: context ? "model-fact model-context" : "model-fact" }, context ? context.toLocaleString() : "—"),
    h("td", { class: "model-status" }, h("span", { class: `status-pill ${loaded ? "on" : ""}` }, busy.has(name) ? "working…" : status)),
    h("td", { class: "row-actions" },
      loaded ? act("Unload", unload) : act("Load", load),
      act("Delete", confirmDelete)));
}

async function whileBusy(name, work, failure) {
  busy.add(name);
  refreshModels();
  try {
    await work();
  } catch (error) {
    toast(`${failure}: ${error.message}`);
  } finally {
    busy.delete(name);
    await refreshModels();
  }
}

const load = (name) => whileBusy(name, () => sendJSON("POST", "/api/generate", { model: name }), `Could not load ${name}`);
const unload = (name) => whileBusy(name, () => sendJSON("POST", "/api/generate", { model: name, keep_alive: 0 }), `Could not unload ${name}`);

function confirmDelete(name) {
  const dialog = $("#delete-model");
  $("#delete-model-name").textContent = name;
  const confirm = $("#confirm-delete-model");
  const onConfirm = () => {
    dialog.close();
    whileBusy(name, () => sendJSON("DELETE", "/api/delete", { model: name }), `Could not delete ${name}`).then(loadModelPicker);
  };
  confirm.addEventListener("click", onConfirm, { once: true });
  dialog.addEventListener("close", () => confirm.removeEventListener("click", onConfirm), { once: true });
  dialog.showModal();
  $("#cancel-delete-model").focus(); // the safe choice first
}

// --- Pull -------------------------------------------------------------------------------------------

function showPull({ percent = null, text = "", error = false, running = true }) {
  const box = $("#pull-status");
  box.hidden = false;
  const bar = $("#pull-progress");
  bar.hidden = !running;
  if (percent !== null) {
    bar.setAttribute("aria-valuenow", String(Math.round(percent)));
    bar.firstElementChild.style.width = `${percent}%`;
  }
  const label = $("#pull-text");
  label.textContent = text;
  label.classList.toggle("error", error);
  if (error) label.setAttribute("role", "alert");
  else label.removeAttribute("role");
  $("#cancel-pull").hidden = !running;
  $("#pull-submit").disabled = running;
}

async function startPull(name) {
  pull = { controller: new AbortController() };
  const files = new Map(); // digest -> {total, completed}
  showPull({ percent: 0, text: `Pulling ${name}…` });
  try {
    const response = await request("/api/pull", { method: "POST", body: { model: name, stream: true }, signal: pull.controller.signal });
    for await (const status of readNDJSON(response)) {
      if (status.error) throw new ApiError(500, status.error);
      if (status.total) files.set(status.digest, { total: status.total, completed: status.completed ?? 0 });
      const total = [...files.values()].reduce((sum, f) => sum + f.total, 0);
      const done = [...files.values()].reduce((sum, f) => sum + f.completed, 0);
      const percent = total ? (100 * done) / total : 0;
      const sizes = total ? ` · ${formatBytes(done)} / ${formatBytes(total)}` : "";
      if (status.status === "success") {
        showPull({ percent: 100, text: `Pulled ${status.model ?? name}`, running: false });
        $("#pull-name").value = "";
      } else showPull({ percent, text: `${status.status}${sizes}` });
    }
  } catch (error) {
    const cancelled = pull.controller.signal.aborted;
    showPull({ text: cancelled ? "Pull cancelled; pulling again resumes it." : `Pull failed: ${error.message}`, error: !cancelled, running: false });
  } finally {
    pull = null;
    $("#pull-submit").disabled = false;
    $("#cancel-pull").hidden = true;
    $("#pull-progress").hidden = true;
    refreshModels();
    loadModelPicker();
  }
}
