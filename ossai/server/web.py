"""The web client's files: `GET /` (index.html) and `GET /web/{path}` (its ES modules, styles, fonts and
the vendored libraries under `vendor/`), public (the page asks for the API key itself), each response with
the strict security headers of docs/web-client.md.

The directory is `ServerConfig.web_dir` (the package's `ossai/web` by default). When the client is not
built (`index.html` or `vendor/` missing), `/` answers a short page saying how to build it; the API works
either way.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from ossai.server import errors
from ossai.server.context import context

PACKAGE_WEB = Path(__file__).resolve().parent.parent / "web"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".webmanifest": "application/manifest+json",
}

NOT_BUILT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>ossai</title></head>
<body>
<h1>The ossai web client is not built</h1>
<p>Its files are missing from <code>{where}</code>. Run <code>make web</code> in the ossai repository (it
installs the client's libraries with npm), then reload this page.</p>
<p>The API works without it: <code>/v1</code> (OpenAI), <code>/api</code> (Ollama), <code>/health</code>,
<code>/metrics</code>.</p>
</body>
</html>
"""

router = APIRouter()


def web_dir(request: Request) -> Path:
    return context(request).config.web_dir or PACKAGE_WEB


def _headers(cache: str) -> dict[str, str]:
    return {**SECURITY_HEADERS, "Cache-Control": cache}


def _not_found(path: str) -> Response:
    response = errors.error_response(404, f"no file {path!r} in the web client")
    response.headers.update(_headers("no-cache"))
    return response


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def index(request: Request) -> Response:
    root = web_dir(request)
    page = root / "index.html"
    if not page.is_file() or not (root / "vendor").is_dir():
        return HTMLResponse(NOT_BUILT.format(where=html.escape(str(root))), headers=_headers("no-cache"))
    return FileResponse(page, media_type=CONTENT_TYPES[".html"], headers=_headers("no-cache"))


@router.api_route("/web/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def asset(path: str, request: Request) -> Response:
    """A file under the web directory; anything else (`..`, absolute paths, links that lead out of it,
    hidden files, directories) is a 404."""
    root = web_dir(request).resolve()
    parts = Path(path).parts
    if (
        not parts
        or Path(path).is_absolute()
        or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts)
    ):
        return _not_found(path)
    try:
        target = root.joinpath(*parts).resolve()
    except (OSError, ValueError):
        return _not_found(path)
    if not target.is_relative_to(root) or not target.is_file():
        return _not_found(path)
    media = CONTENT_TYPES.get(target.suffix.lower(), "application/octet-stream")
    # revalidated every time: after an upgrade the page must never mix old and new modules
    return FileResponse(target, media_type=media, headers=_headers("no-cache"))
