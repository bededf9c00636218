// Small DOM helpers shared by the views: element creation, toasts and number formatting.

/** Create an element: h("button", {class: "x", onclick: fn, "aria-label": "Copy"}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value; // properties: hidden, disabled, value
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** A toast with an optional action button; it goes away by itself after `ms`. */
export function toast(message, { action, onAction, ms = 6000 } = {}) {
  const region = $("#toasts");
  const item = h("div", { class: "toast", role: "status" }, h("span", {}, message));
  const close = () => item.remove();
  if (action) {
    item.append(h("button", { type: "button", class: "toast-action", onclick: () => { close(); onAction(); } }, action));
  }
  region.append(item);
  setTimeout(close, ms);
  return close;
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || Number.isNaN(bytes)) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatNumber(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
}

export const now = () => Date.now() / 1000; // the conversation format's timestamps: seconds

export function randomId(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Download a Blob under `filename` (the export route's answer, fetched with the API key). */
export function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Without the clipboard API (plain http on another host), fall back to a hidden textarea.
    const area = h("textarea", { class: "visually-hidden" }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (!button) return;
  button.dataset.copied = "true"; // icon buttons show a check mark (style.css)
  const label = button.querySelector("svg") ? null : button.textContent;
  if (label) button.textContent = "Copied";
  setTimeout(() => {
    delete button.dataset.copied;
    if (label) button.textContent = label;
  }, 1200);
}
