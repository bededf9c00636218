// Copies the browser builds of the web client's npm dependencies into ossai/web/vendor/.
// Run after `npm ci` (the Makefile's web target does both); it reads node_modules/ only and fetches nothing.
// The client imports these files by relative path (./vendor/...), so there is no bundler and no import map.
import { copyFileSync, cpSync, existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const modules = join(root, "node_modules");
const vendor = join(root, "ossai", "web", "vendor");

// [package directory, file in it, destination under vendor/]
const FILES = [
  ["marked", "lib/marked.esm.js", "marked/marked.esm.js"],
  ["marked", "lib/marked.esm.js.map", "marked/marked.esm.js.map"],
  ["marked", "LICENSE", "marked/LICENSE"],
  ["dompurify", "dist/purify.es.mjs", "dompurify/purify.es.mjs"],
  ["dompurify", "dist/purify.es.mjs.map", "dompurify/purify.es.mjs.map"],
  ["dompurify", "LICENSE", "dompurify/LICENSE"],
  ["@highlightjs/cdn-assets", "es/highlight.min.js", "highlight/highlight.min.js"],
  ["@highlightjs/cdn-assets", "LICENSE", "highlight/LICENSE"],
  ["katex", "dist/katex.mjs", "katex/katex.mjs"],
  ["katex", "dist/katex.min.css", "katex/katex.min.css"],
  ["katex", "LICENSE", "katex/LICENSE"],
];
const DIRECTORIES = [["katex", "dist/fonts", "katex/fonts"]]; // katex.min.css loads fonts/KaTeX_*.woff2

function source(pkg, file) {
  const path = join(modules, pkg, file);
  if (!existsSync(path)) {
    console.error(`build-web: ${path} is missing: run \`npm ci\` first (make web does both)`);
    process.exit(1);
  }
  return path;
}

rmSync(vendor, { recursive: true, force: true });
for (const [pkg, file, dest] of FILES) {
  mkdirSync(dirname(join(vendor, dest)), { recursive: true });
  copyFileSync(source(pkg, file), join(vendor, dest));
}
for (const [pkg, dir, dest] of DIRECTORIES) {
  cpSync(source(pkg, dir), join(vendor, dest), { recursive: true });
}
writeFileSync(join(vendor, ".built"), "");
console.log(`build-web: copied the client's dependencies into ${vendor}`);
