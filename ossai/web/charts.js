// A small line chart on a <canvas>: the last samples of one series, a baseline grid, the scale and the
// latest value. Colours come from the page's CSS variables, so the charts follow the theme.

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((step) => step >= value);
}

/** Draw `values` (null or not a finite number: a gap) into `canvas`; returns how many samples it drew,
 * so a series of nothing but gaps (a field the server does not send) counts 0, not its length. */
export function drawChart(canvas, values, { unit = "", max = null, digits = 1 } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return 0; // not laid out: nothing drawn
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const known = values.filter((v) => Number.isFinite(v));
  const top = max ?? niceMax(Math.max(0, ...known));
  const pad = { left: 8, right: 8, top: 22, bottom: 8 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const capacity = Math.max(values.length, 60); // a few samples start at the right, as they arrive
  const x = (i) => pad.left + plotW * ((capacity - values.length + i) / Math.max(1, capacity - 1));
  const y = (v) => pad.top + plotH * (1 - Math.min(v, top) / top);

  ctx.font = `12px ${cssVar("--font") || "sans-serif"}`;
  ctx.strokeStyle = cssVar("--border");
  ctx.lineWidth = 1;
  for (const fraction of [0, 0.5, 1]) {
    const gy = Math.round(pad.top + plotH * fraction) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.left, gy);
    ctx.lineTo(width - pad.right, gy);
    ctx.stroke();
  }
  ctx.fillStyle = cssVar("--text-muted");
  ctx.textBaseline = "top";
  ctx.fillText(`max ${top.toLocaleString()} ${unit}`, pad.left, 2);
  const last = [...values].reverse().find((v) => v !== null && Number.isFinite(v));
  const latest = last === undefined ? "—" : `${last.toFixed(digits)} ${unit}`;
  ctx.textAlign = "right";
  ctx.fillStyle = cssVar("--text");
  ctx.fillText(latest, width - pad.right, 2);

  const accent = cssVar("--accent");
  canvas.dataset.accent = accent; // the colours it was drawn in (a theme change redraws: dashboard.js)
  ctx.strokeStyle = accent;
  ctx.lineWidth = 2;
  ctx.lineJoin = "round";
  ctx.beginPath();
  let drawing = false;
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) {
      drawing = false;
      return;
    }
    if (drawing) ctx.lineTo(x(i), y(v));
    else ctx.moveTo(x(i), y(v));
    drawing = true;
  });
  ctx.stroke();
  const lastIndex = values.findLastIndex((v) => v !== null && Number.isFinite(v));
  if (lastIndex >= 0) { // a dot on the latest sample (also shows a lone sample, which makes no line)
    ctx.fillStyle = accent;
    ctx.beginPath();
    ctx.arc(x(lastIndex), y(values[lastIndex]), 3, 0, 2 * Math.PI);
    ctx.fill();
  }
  return known.length;
}
