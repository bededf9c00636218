"""The web client's files (`/` and `/web/...`) on a real app over a temporary web directory: the security
headers, content types, caching, path traversal, the "not built" page, and auth (the page is public)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ossai.server.app import create_app
from ossai.server.context import ServerConfig
from ossai.server.pool import ModelPool
from ossai.server.web import PACKAGE_WEB

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
INDEX = '<!doctype html><html><head><script type="module" src="/web/app.js"></script></head></html>'
FILES = {
    "index.html": INDEX,
    "app.js": "import './ui.mjs';\n",
    "ui.mjs": "export const x = 1;\n",
    "style.css": "body { color: black }\n",
    "logo.svg": '<svg xmlns="http://www.w3.org/2000/svg"/>',
    "fonts/KaTeX_Main-Regular.woff2": "wOF2",
    "vendor/marked.esm.js": "export function marked() {}\n",
    ".secret": "hidden",
}


def _headers_ok(response) -> None:
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.fixture
def web(tmp_path) -> Path:
    root = tmp_path / "web"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "secret.txt").write_text("outside the web directory")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    return root


def client_for(tmp_path: Path, web: Path, **options) -> TestClient:
    config = ServerConfig(model_name=None, home=tmp_path / "home", web_dir=web, **options)
    return TestClient(create_app(ModelPool(), config))


@pytest.fixture
def client(tmp_path, web) -> Iterator[TestClient]:
    with client_for(tmp_path, web) as c:
        yield c


def test_index_and_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and r.text == INDEX
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    _headers_ok(r)
    head = client.head("/")
    assert head.status_code == 200 and head.content == b""
    _headers_ok(head)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("ui.mjs", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("logo.svg", "image/svg+xml"),
        ("fonts/KaTeX_Main-Regular.woff2", "font/woff2"),
        ("vendor/marked.esm.js", "text/javascript; charset=utf-8"),
        ("index.html", "text/html; charset=utf-8"),
    ],
)
def test_files_and_content_types(client, path, content_type):
    r = client.get(f"/web/{path}")
    assert r.status_code == 200 and r.text == FILES[path]
    assert r.headers["content-type"] == content_type
    _headers_ok(r)
    assert r.headers["cache-control"] == "no-cache"  # an upgrade never mixes old and new modules


@pytest.mark.parametrize(
    "path",
    [
        "/web/%2e%2e/secret.txt",
        "/web/..%2fsecret.txt",
        "/web/vendor/%2e%2e/%2e%2e/secret.txt",
        "/web/%2fetc%2fpasswd",
        "/web//etc/passwd",
        "/web/escape.txt",  # a link that leads out of the directory
        "/web/.secret",
        "/web/vendor",
        "/web/vendor/",
        "/web/",
        "/web/missing.js",
        "/web/app.js%00.txt",
        "/web/..\\secret.txt",
    ],
)
def test_nothing_outside_the_web_directory(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.text)
    assert "outside" not in r.text and "hidden" not in r.text
    assert r.json()["error"]["type"] == "not_found_error"
    _headers_ok(r)


@pytest.mark.parametrize("missing", ["index.html", "vendor"])
def test_not_built_page(tmp_path, web, missing):
    target = web / missing
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    else:
        target.unlink()
    with client_for(tmp_path, web) as client:
        r = client.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "not built" in r.text and "make web" in r.text
        assert r.headers["cache-control"] == "no-cache"
        _headers_ok(r)
        assert client.get("/health").status_code == 200  # the API works either way


def test_empty_or_absent_web_directory(tmp_path):
    with client_for(tmp_path, tmp_path / "nowhere") as client:
        r = client.get("/")
        assert r.status_code == 200 and "make web" in r.text
        _headers_ok(r)
        assert client.get("/web/app.js").status_code == 404


def test_the_page_is_public_and_the_api_is_not(tmp_path, web):
    with client_for(tmp_path, web, api_keys=("sekret",)) as client:
        assert client.get("/").status_code == 200
        assert client.get("/web/app.js").status_code == 200
        r = client.get("/ossai/stats")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert client.get("/ossai/conversations").status_code == 401
        assert client.post("/ossai/tool-calls/call_x/confirm", json={"approve": True}).status_code == 401
        ok = client.get("/ossai/stats", headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200


def test_the_package_directory_is_the_default(tmp_path):
    repository = Path(__file__).resolve().parents[2]
    assert repository / "ossai" / "web" == PACKAGE_WEB
    with TestClient(create_app(ModelPool(), ServerConfig(model_name=None, home=tmp_path))) as client:
        r = client.get("/")
        assert r.status_code == 200
        _headers_ok(r)
