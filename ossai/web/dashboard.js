// The dashboard: /ossai/stats/stream read with fetch (so it sends the API key, which EventSource cannot),
// shown as meters (CPU, RAM, GPU), request counts, the loaded models and three charts of recent samples.
import { readSSE, request } from "./api.js";
import { drawChart } from "./charts.js";
import { $, formatBytes, formatNumber, h } from "./dom.js";

const SAMPLES = 300; // five minutes at one sample a second
const RETRY_MS = 3000;
const series = { tps: [], ttft: [], kv: [] };
const CHARTS = [
  ["tps", "#chart-tps", { unit: "tok/s" }],
  ["ttft", "#chart-ttft", { unit: "ms", digits: 0 }],
  ["kv", "#chart-kv", { unit: "%", max: 100 }],
];
let controller = null;
let lastStats = null;

export function startDashboard() {
  if (controller) return;
  controller = new AbortController();
  follow(controller.signal);
  drawCharts();
}

export function stopDashboard() {
  controller?.abort();
  controller = null;
}

async function follow(signal) {
  while (!signal.aborted) {
    try {
      const response = await request("/ossai/stats/stream?interval=1", { signal });
      setConnection("");
      for await (const stats of readSSE(response)) update(stats);
    } catch (error) {
      if (signal.aborted) return;
      if (error.status === 401) {
        // The key dialog was dismissed: retrying would only fail again. Stop; app.js starts the
        // dashboard again once a key is saved (or the user comes back to this page).
        setConnection("Statistics need the API key.");
        if (controller?.signal === signal) controller = null;
        return;
      }
      setConnection(`Statistics unavailable (${error.message}); retrying…`);
    }
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
}

function setConnection(text) {
  const note = $("#dashboard-note");
  note.textContent = text;
  note.hidden = !text;
}

function push(values, value) {
  values.push(value === undefined ? null : value);
  if (values.length > SAMPLES) values.shift();
}

function update(stats) {
  lastStats = stats;
  push(series.tps, stats.tokens?.tokens_per_s ?? 0);
  push(series.ttft, stats.ttft?.count ? stats.ttft.p50_ms : null); // no request in the last 60 s: a gap
  push(series.kv, (stats.kv_usage ?? 0) * 100);
  drawMeters(stats);
  drawFigures(stats);
  drawModels(stats.models ?? []);
  drawCharts();
}

/** Redraw the charts (a new sample, a resize, a theme change). */
export function drawCharts() {
  for (const [key, selector, options] of CHARTS) {
    const canvas = $(selector);
    if (!canvas.isConnected || canvas.closest("[hidden]")) continue;
    canvas.closest("figure").dataset.points = String(drawChart(canvas, series[key], options));
  }
}

function meter(id, value, text) {
  const el = $(`#meter-${id}`);
  el.value = Math.max(0, Math.min(100, value ?? 0));
  $(`#meter-${id}-text`).textContent = text;
}

function drawMeters(stats) {
  const cpu = stats.cpu ?? {};
  meter("cpu", cpu.percent, `${formatNumber(cpu.percent, 0)}%${cpu.cores ? ` of ${cpu.cores} cores` : ""}`);
  const memory = stats.memory ?? {};
  const ram = memory.total ? (100 * memory.used) / memory.total : 0;
  meter("ram", ram, `${formatBytes(memory.used)} / ${formatBytes(memory.total)} (ossai ${formatBytes(memory.process_rss)})`);
  const gpus = stats.gpus ?? [];
  if (!gpus.length) {
    meter("gpu", 0, "No GPU");
    return;
  }
  const readable = gpus.filter((g) => g.utilization !== null && g.utilization !== undefined);
  const utilization = readable.length ? readable.reduce((s, g) => s + g.utilization, 0) / readable.length : 0;
  const used = gpus.reduce((s, g) => s + (g.memory_used ?? 0), 0);
  const total = gpus.reduce((s, g) => s + (g.memory_total ?? 0), 0);
  const names = gpus.map((g) => g.name).join(", ");
  const busy = readable.length ? `${formatNumber(utilization, 0)}%` : "utilization unknown";
  meter("gpu", utilization, `${busy} · ${formatBytes(used)} / ${formatBytes(total)} · ${names}`);
}

function drawFigures(stats) {
  const figures = {
    running: stats.requests?.running ?? 0,
    queued: stats.requests?.waiting ?? 0,
    total: stats.requests?.total ?? 0,
    tps: formatNumber(stats.tokens?.tokens_per_s, 1),
    ttft: stats.ttft?.count ? `${formatNumber(stats.ttft.p50_ms, 0)} ms` : "—",
    uptime: formatUptime(stats.uptime_s),
  };
  for (const [key, value] of Object.entries(figures)) $(`#figure-${key}`).textContent = String(value);
}

/** Compact: "25 s", "3 min", "2 h 5 min", "3 d 4 h" (the two largest units, a zero second one left out). */
function formatUptime(seconds) {
  if (!(seconds >= 0)) return "—";
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  const pair = (big, bigUnit, small, smallUnit) => (small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`);
  if (s < 86400) return pair(Math.floor(s / 3600), "h", Math.floor((s % 3600) / 60), "min");
  return pair(Math.floor(s / 86400), "d", Math.floor((s % 86400) / 3600), "h");
}

function expires(iso) {
  const when = iso ? new Date(iso) : null;
  if (!when || Number.isNaN(when.getTime())) return "—";
  return when.getFullYear() > 2200 ? "never" : when.toLocaleTimeString(); // Ollama's "never" is in 2318
}

function drawModels(models) {
  const rows = models.map((m) => h("tr", {},
    h("td", {}, m.name),
    h("td", {}, m.device ?? "—"),
    h("td", {}, formatBytes(m.memory_bytes)),
    h("td", {}, m.context_length ? m.context_length.toLocaleString() : "—"),
    h("td", {}, `${m.running ?? 0} / ${m.waiting ?? 0}`),
    h("td", {}, `${formatNumber((m.kv_usage ?? 0) * 100, 1)}%`),
    h("td", {}, m.prefix_hit_rate === null || m.prefix_hit_rate === undefined ? "—" : `${formatNumber(m.prefix_hit_rate * 100, 0)}%`),
    h("td", {}, expires(m.expires_at))));
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No model is loaded.")));
  $("#loaded-models").replaceChildren(...rows);
}

window.addEventListener("resize", () => lastStats && drawCharts());
// A chart takes the theme's colours when it is drawn, so a change of theme redraws them at once rather
// than at the next sample: "Toggle theme" (data-theme on <html>) or the system's colour scheme, which the
// page follows while no theme is chosen.
new MutationObserver(() => drawCharts()).observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => drawCharts());
