// Markdown for model output, which is untrusted: marked with raw HTML escaped (shown as text), then
// DOMPurify (no style, no event handlers, no javascript: URLs), then code highlighting, KaTeX math
// (trust: false) and harmony citations (【4†L10-L15】) turned into links to the page the browser opened.
import { Marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";
import hljs from "./vendor/highlight/highlight.min.js";
import katex from "./vendor/katex/katex.mjs";
import { copyText, h } from "./dom.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

let citationSources = new Map(); // cursor -> {url, title}, for the render in progress (parse is synchronous)

const mathBlock = {
  name: "mathBlock",
  level: "block",
  start: (src) => src.match(/\$\$|\\\[/)?.index,
  tokenizer(src) {
    const match = /^(?:\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\])[ \t]*(?:\n|$)/.exec(src);
    if (match) return { type: "mathBlock", raw: match[0], text: (match[1] ?? match[2]).trim() };
    return undefined;
  },
  renderer: (token) => `<div class="math" data-display="true">${escapeHtml(token.text)}</div>\n`,
};

// `$x$` needs no space inside its dollars and no digit after the closing one, so "$5 and $10" stays text.
const INLINE_MATH = [
  [/^\$\$((?:\\.|[^\\$])+?)\$\$/, true],
  [/^\$(?![\s$])((?:\\.|[^\\$\n])+?)(?<!\s)\$(?!\d)/, false],
  [/^\\\(((?:\\.|[^\\\n])+?)\\\)/, false],
];

const mathInline = {
  name: "mathInline",
  level: "inline",
  start: (src) => src.match(/\$|\\\(/)?.index,
  tokenizer(src) {
    for (const [pattern, display] of INLINE_MATH) {
      const match = pattern.exec(src);
      if (match) return { type: "mathInline", raw: match[0], text: match[1].trim(), display };
    }
    return undefined;
  },
  renderer: (token) => `<span class="math" data-display="${token.display}">${escapeHtml(token.text)}</span>`,
};

const citation = {
  name: "citation",
  level: "inline",
  start: (src) => src.indexOf("【") >= 0 ? src.indexOf("【") : undefined,
  tokenizer(src) {
    const match = /^【(\d+)†([^【】]*)】/.exec(src);
    if (match) return { type: "citation", raw: match[0], cursor: Number(match[1]), where: match[2] };
    return undefined;
  },
  renderer(token) {
    const source = citationSources.get(token.cursor);
    if (!source) return escapeHtml(token.raw);
    const lines = token.where.replace(/^L/, "lines ").replace(/-L/, "–");
    const title = escapeHtml(`${source.title || source.url}${lines ? `, ${lines}` : ""}`);
    const host = hostOf(source.url);
    if (host !== null) {
      return `<a class="citation" href="${escapeHtml(source.url)}" title="${title}">${escapeHtml(host)}</a>`;
    }
    // A local document (file://), or a URL that does not parse: no link the page could open, so the
    // citation names it.
    return `<span class="citation" title="${title}">${escapeHtml(shorten(String(source.title || "source"), 32))}</span>`;
  },
};

const renderer = {
  html: ({ text }) => escapeHtml(text), // raw HTML in model output is shown, never interpreted
  image: ({ href, text }) => `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`, // offline: no remote images
};

const marked = new Marked({ gfm: true, breaks: false, renderer, extensions: [mathBlock, mathInline, citation] });

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const PURIFY = { FORBID_TAGS: ["style", "form"], FORBID_ATTR: ["style"], ADD_ATTR: ["target"] };

/** The host name of an http(s) URL, else null (stored tool events are untrusted: `new URL` may throw). */
function hostOf(url) {
  if (typeof url !== "string" || !/^https?:\/\//i.test(url)) return null;
  try {
    return new URL(url).hostname.replace(/^www\./, "");
  } catch {
    return null;
  }
}

/** `text` cut to `length` code points (a UTF-16 slice could split an emoji's surrogate pair). */
function shorten(text, length) {
  const points = Array.from(text);
  return points.length > length ? `${points.slice(0, length - 1).join("")}…` : text;
}

/** Cursor -> page for the citations of an answer, from the browser tool events of its thread. */
export function sourcesFromTools(tools) {
  const sources = new Map();
  for (const event of tools) {
    const data = event?.tool === "browser" ? event.data : null;
    if (data && Number.isInteger(data.cursor) && data.url) {
      sources.set(data.cursor, { url: data.url, title: data.title });
    }
  }
  return sources;
}

/** Render `text` as sanitised markdown into `container`. */
export function renderMarkdown(container, text, { sources = new Map() } = {}) {
  citationSources = sources;
  const html = marked.parse(text ?? "");
  citationSources = new Map();
  container.innerHTML = DOMPurify.sanitize(html, PURIFY);
  for (const code of container.querySelectorAll("pre > code")) enhanceCode(code);
  for (const el of container.querySelectorAll(".math")) renderMath(el);
  for (const table of container.querySelectorAll("table")) {
    const wrap = h("div", { class: "table-wrap" }); // wide tables scroll inside the message
    table.replaceWith(wrap);
    wrap.append(table);
  }
}

/** Highlight a code element and give it a header with its language and a Copy button. */
export function enhanceCode(code, language) {
  const lang = language || (code.className.match(/language-([\w+#.-]+)/) || [])[1] || "";
  const source = code.textContent;
  if (lang && hljs.getLanguage(lang)) {
    code.innerHTML = hljs.highlight(source, { language: lang, ignoreIllegals: true }).value; // escapes
    code.classList.add("hljs");
  }
  const pre = code.parentElement;
  const copy = h("button", { type: "button", class: "copy-code", "aria-label": "Copy code" }, "Copy");
  copy.addEventListener("click", () => copyText(source, copy));
  const block = h("div", { class: "code-block" }, h("div", { class: "code-header" }, h("span", {}, lang || "text"), copy));
  pre.replaceWith(block);
  block.append(pre);
}

function renderMath(el) {
  const tex = el.textContent;
  try {
    katex.render(tex, el, { displayMode: el.dataset.display === "true", throwOnError: false, trust: false });
  } catch {
    el.textContent = tex; // KaTeX refuses some input outright (e.g. too deep): show the source
  }
}
