"""The browser tool over a small collection written here: exact pages, line numbers and citations."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from ossai.errors import NotFound
from ossai.tools.base import ToolResult
from ossai.tools.browser import (
    BrowserTool,
    LocalIndex,
    SearxngBackend,
    bundled_docs,
    html_to_text,
    markdown_to_text,
    wrap_lines,
)

GUIDE = """# Zebra guide

Zebras live in the grasslands of Africa. See [the giraffe notes](animals/giraffe.html)
and [OpenAI](https://openai.com/research), or [nothing](missing.md).

## Stripes

Every zebra has its own stripe pattern, like a fingerprint.
"""

GIRAFFE = """<html><head><title>Giraffe notes</title><style>p { color: red }</style></head><body>
<h1>Giraffes</h1>
<p>The giraffe is the   tallest land animal.</p>
<ul><li>Height: up to 5.5 m</li><li>Home: <a href='https://en.wikipedia.org/wiki/Giraffe'>savanna</a></li></ul>
<p>Back to the <a href="../guide.md">zebra guide</a>.</p>
<script>var hidden = 'kangaroo';</script></body></html>
"""

NEEDLES = (30, 32, 70)
LONG = "".join(f"Line {i} of the long file{' with a Needle' if i in NEEDLES else ''}.\n" for i in range(100))


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "animals").mkdir(parents=True)
    (docs / "guide.md").write_text(GUIDE)
    (docs / "animals" / "giraffe.html").write_text(GIRAFFE)
    (docs / "long.txt").write_text(LONG)
    (docs / "notes.md").write_text("# Notes\n\nA short note about the weather.\n")
    return docs


@pytest.fixture
def tool(docs: Path, tmp_path: Path) -> Iterator[BrowserTool]:
    browser = BrowserTool(LocalIndex([docs], tmp_path / "index" / "browser.db"))
    yield browser
    browser.close()


def call(tool: BrowserTool, function: str, session: str = "s", **args: object) -> ToolResult:
    return tool.call(f"browser.{function}", json.dumps(args), session)


def page(*lines: str) -> str:
    """A display written line by line (its empty lines end in a space: `L1: `)."""
    return "\n".join(lines)


def ok(result: ToolResult) -> str:
    assert not result.error, result.text
    return result.text


def guide_page(cursor: int, url: str) -> str:
    return page(
        f"[{cursor}] Zebra guide ({url})",
        "**viewing lines [0 - 7] of 7**",
        "",
        "L0: # Zebra guide",
        "L1: ",
        "L2: Zebras live in the grasslands of Africa. See 【0†the giraffe notes】 and",
        "L3: 【1†OpenAI†openai.com】, or nothing.",
        "L4: ",
        "L5: ## Stripes",
        "L6: ",
        "L7: Every zebra has its own stripe pattern, like a fingerprint.",
    )


def giraffe_page(cursor: int, url: str) -> str:
    return page(
        f"[{cursor}] Giraffe notes ({url})",
        "**viewing lines [0 - 7] of 7**",
        "",
        "L0: # Giraffes",
        "L1: ",
        "L2: The giraffe is the tallest land animal.",
        "L3: ",
        "L4: - Height: up to 5.5 m",
        "L5: - Home: 【0†savanna†en.wikipedia.org】",
        "L6: ",
        "L7: Back to the 【1†zebra guide】.",
    )


# --- search, open, find ---------------------------------------------------------------------------------


def test_search_ranks_the_right_page_first(tool: BrowserTool, docs: Path):
    result = call(tool, "search", query="tallest giraffe")
    assert ok(result) == page(
        "[0] tallest giraffe",
        "**viewing lines [0 - 5] of 5**",
        "",
        "L0: # Search Results",
        "L1: ",
        "L2: - 【0†Giraffe notes†animals/giraffe.html】 Giraffes The giraffe is the tallest",
        "L3: land animal. - Height: up to 5.5 m - Home: savanna Back to the zebra guide.",
        "L4: - 【1†Zebra guide†guide.md】 … See the giraffe notes and OpenAI, or nothing.",
        "L5: Stripes Every zebra has its own stripe pattern, like a fingerprint.",
    )
    assert result.data == {
        "action": {"type": "search", "query": "tallest giraffe"},
        "title": "tallest giraffe",
        "url": "",
        "cursor": 0,
    }
    # Script text is not indexed; `topn` limits the results; a query without hits is a page too.
    assert "No results for `kangaroo`." in ok(call(tool, "search", query="kangaroo"))
    assert ok(call(tool, "search", query="zebra", topn=1)).count("【") == 1


def test_open_by_link_id_path_and_file_url(tool: BrowserTool, docs: Path):
    guide, giraffe = (docs / "guide.md").as_uri(), (docs / "animals" / "giraffe.html").as_uri()
    call(tool, "search", query="tallest giraffe")
    result = call(tool, "open", id=0)
    assert ok(result) == giraffe_page(1, giraffe)
    assert result.data == {
        "action": {"type": "open_page", "url": giraffe},
        "title": "Giraffe notes",
        "url": giraffe,
        "cursor": 1,
    }
    assert ok(call(tool, "open", id=1)) == guide_page(2, guide)  # a link to another local file
    assert ok(call(tool, "open", id="guide.md")) == guide_page(3, guide)
    assert ok(call(tool, "open", id=guide)) == guide_page(4, guide)
    assert ok(call(tool, "open", id=str(docs / "guide.md"))) == guide_page(5, guide)
    assert ok(call(tool, "open", id="0")) == giraffe_page(6, giraffe)  # "0" is a link id, not a path


def test_views_with_loc_and_num_lines(tool: BrowserTool, docs: Path):
    url = (docs / "long.txt").as_uri()
    assert (
        ok(call(tool, "open", id="long.txt", loc=10, num_lines=3))
        == f"""[0] long.txt ({url})
**viewing lines [10 - 12] of 99**

L10: Line 10 of the long file.
L11: Line 11 of the long file.
L12: Line 12 of the long file."""
    )
    # Without `id`, open scrolls the current page (and pushes it again); num_lines past the end stops there.
    assert (
        ok(call(tool, "open", loc=98, num_lines=5))
        == f"""[1] long.txt ({url})
**viewing lines [98 - 99] of 99**

L98: Line 98 of the long file.
L99: Line 99 of the long file."""
    )
    result = call(tool, "open", loc=100)
    assert result.error
    assert result.text == "Invalid location parameter: `100`. Cannot exceed page maximum of 99."


def test_default_view_is_about_a_screenful_and_lands_on_the_passage(docs: Path, tmp_path: Path):
    tool = BrowserTool(LocalIndex([docs], tmp_path / "i.db"), view_chars=300)
    url = (docs / "long.txt").as_uri()
    first = ok(call(tool, "open", id="long.txt"))
    assert first.splitlines()[1] == "**viewing lines [0 - 9] of 99**"  # 10 lines of ~30 characters
    # From a search result, open lands 4 lines above the best-matching line (L30) when it is out of view.
    call(tool, "search", query="needle")
    assert ok(call(tool, "open", id=0)).splitlines()[:4] == [
        f"[2] long.txt ({url})",
        "**viewing lines [26 - 33] of 99**",
        "",
        "L26: Line 26 of the long file.",
    ]
    # A short page is shown from the top even when the passage is further down.
    call(tool, "search", query="fingerprint")
    assert ok(call(tool, "open", id=0)).splitlines()[1] == "**viewing lines [0 - 7] of 7**"
    tool.close()


def test_find_gives_citable_matches(tool: BrowserTool, docs: Path):
    url = (docs / "long.txt").as_uri()
    call(tool, "open", id="long.txt")
    result = call(tool, "find", pattern="NEEDLE")  # case-insensitive
    assert ok(result) == page(
        f"[1] Find results for text: `NEEDLE` in `long.txt` ({url}/find?pattern=NEEDLE)",
        "**viewing lines [0 - 10] of 10**",
        "",
        "L0: # 【0†match at L30】",
        "L1: Line 30 of the long file with a Needle.",
        "L2: Line 31 of the long file.",
        "L3: Line 32 of the long file with a Needle.",
        "L4: Line 33 of the long file.",
        "L5: ",
        "L6: # 【1†match at L70】",
        "L7: Line 70 of the long file with a Needle.",
        "L8: Line 71 of the long file.",
        "L9: Line 72 of the long file.",
        "L10: Line 73 of the long file.",
    )
    assert result.data == {
        "action": {"type": "find_in_page", "pattern": "NEEDLE", "url": url},
        "title": "Find results for text: `NEEDLE` in `long.txt`",
        "url": url,
        "cursor": 1,
    }
    # The line numbers are the page's: the citation 【0†L70】 points at the match.
    cited = ok(call(tool, "open", cursor=0, loc=70, num_lines=1))
    assert cited.endswith("L70: Line 70 of the long file with a Needle.")
    # A match is a link back to the page at that line (the page fits one view, so from the top).
    assert ok(call(tool, "open", id=1, cursor=1)).splitlines()[1] == "**viewing lines [0 - 99] of 99**"

    none = call(tool, "find", pattern="walrus", cursor=0)
    assert ok(none).endswith("L0: No `find` results for pattern: `walrus`")
    refused = call(tool, "find", pattern="needle")  # the current page is a find page
    assert refused.error
    assert refused.text == "`find` cannot search a page of search or find results: open a result first."


def test_find_matches_link_text_and_at_most_50(tool: BrowserTool, docs: Path):
    call(tool, "open", id="guide.md")
    found = ok(call(tool, "find", pattern="giraffe notes"))
    assert (
        "L0: # 【0†match at L2】\nL1: Zebras live in the grasslands of Africa. See the giraffe notes and"
        in found
    )
    (docs / "many.txt").write_text("hit\n" * 300)
    call(tool, "open", id="many.txt")
    page = ok(call(tool, "find", pattern="hit", cursor=2))
    assert page.count("match at L") == 50
    assert "# 【49†match at L196】" in page


def test_cursor_stack(tool: BrowserTool, docs: Path):
    guide, giraffe = (docs / "guide.md").as_uri(), (docs / "animals" / "giraffe.html").as_uri()
    call(tool, "search", query="tallest giraffe")  # [0]
    call(tool, "open", id=0)  # [1] the giraffe page
    call(tool, "open", id=1)  # [2] the guide
    # Link 1 of the search page at cursor 0 is the guide; link 0 of the giraffe page at cursor 1 is the web.
    assert ok(call(tool, "open", id=1, cursor=0)) == guide_page(3, guide)
    assert ok(call(tool, "open", id=1, cursor=1)) == guide_page(4, guide)
    assert ok(call(tool, "open", cursor=1)) == giraffe_page(5, giraffe)  # scroll an older page
    bad = call(tool, "open", id=0, cursor=9)
    assert bad.error
    assert bad.text == "Cursor `9` is out of range: available cursors are 0 to 5."
    bad_link = call(tool, "open", id=7, cursor=1)
    assert bad_link.text == "Invalid link id `7`: page [1] has links 0 to 1."
    # Sessions are separate stacks.
    empty = call(tool, "open", session="other", id=0)
    assert empty.error
    assert empty.text == "There is no page yet: search or open one first."


def test_sessions_expire_and_are_capped(docs: Path, tmp_path: Path):
    tool = BrowserTool(LocalIndex([docs], tmp_path / "i.db"), session_ttl=3600, max_sessions=2)
    for session in ("a", "b", "c"):  # "a" is the least recently used when "c" arrives
        ok(call(tool, "open", session=session, id="notes.md"))
    assert call(tool, "open", session="a", loc=0).error
    assert not call(tool, "open", session="c", loc=0).error
    tool.session_ttl = 0
    assert call(tool, "open", session="c", loc=0).error
    tool.close()


# --- the index follows the files ------------------------------------------------------------------------


def test_index_follows_changed_added_and_deleted_files(tool: BrowserTool, docs: Path):
    assert "【0†Notes†notes.md】" in ok(call(tool, "search", query="weather"))
    (docs / "notes.md").write_text("# Notes\n\nThe kangaroo carries its young in a pouch, mostly.\n")
    assert "【0†Notes†notes.md】 The kangaroo carries" in ok(call(tool, "search", query="kangaroo"))
    assert "No results for `weather`." in ok(call(tool, "search", query="weather"))
    (docs / "animals" / "wombat.md").write_text("# Wombats\n\nWombats dig burrows.\n")
    assert "【0†Wombats†animals/wombat.md】 Wombats dig burrows." in ok(call(tool, "search", query="burrows"))
    (docs / "notes.md").unlink()
    assert "No results for `kangaroo`." in ok(call(tool, "search", query="kangaroo"))
    assert tool.index.refresh() == (0, 0)  # nothing changed since the last search
    gone = call(tool, "open", id="notes.md")
    assert gone.error
    assert gone.text == "`notes.md` is not a file in the browser's document folders."


def test_index_persists_and_rereads_only_changes(docs: Path, tmp_path: Path):
    path = tmp_path / "i.db"
    first = LocalIndex([docs], path)
    assert first.refresh() == (4, 0)
    first.close()
    second = LocalIndex([docs], path)
    assert second.refresh() == (0, 0)
    (docs / "long.txt").write_text("short now\n")
    assert second.refresh() == (1, 0)
    second.close()
    path.write_bytes(b"not a database" * 100)  # a corrupt index is rebuilt
    third = LocalIndex([docs], path)
    assert third.refresh() == (4, 0)
    third.close()


def test_refuses_files_outside_the_folders(tool: BrowserTool, docs: Path, tmp_path: Path):
    (tmp_path / "secret.md").write_text("# Secret\n")
    (docs / "link.md").symlink_to(tmp_path / "secret.md")
    (docs / "image.pdf").write_bytes(b"%PDF-1.4")
    for ref in (
        "/etc/passwd",
        "../secret.md",
        str(tmp_path / "secret.md"),
        (tmp_path / "secret.md").as_uri(),
    ):
        result = call(tool, "open", id=ref)
        assert result.error, ref
        assert result.text == f"`{ref}` is outside the browser's document folders, so it cannot be opened."
    link = call(tool, "open", id="link.md")  # a symlink that leads out
    assert link.text == "`link.md` is outside the browser's document folders, so it cannot be opened."
    assert "No results" in ok(call(tool, "search", query="secret"))  # the symlink out is not indexed
    assert call(tool, "open", id="image.pdf").text == (
        "`image.pdf` is not a document the browser can read: "
        "it reads .md, .markdown, .txt, .html and .htm files."
    )
    assert call(tool, "open", id="ftp://example.com/x").text == (
        "`ftp://example.com/x` is neither a local document nor a web page the browser can open."
    )


def test_offline_without_a_web_backend(tool: BrowserTool, monkeypatch: pytest.MonkeyPatch):
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the offline browser touched the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(httpx.Client, "send", no_network)
    result = call(tool, "open", id="https://example.com/page")
    assert result.error
    assert result.text == (
        "The browser is offline and cannot open `https://example.com/page`: only local documents can be "
        "opened (browser.search finds them)."
    )
    call(tool, "open", id="guide.md")
    assert call(tool, "open", id=1).error  # following a web link is refused the same way
    web = call(tool, "search", query="zebra", source="web")
    assert web.text == "Unknown source `web`: the sources are local."
    assert tool.namespace().description.endswith("\nsources=local (default: local)")
    assert [t.name for t in tool.namespace().tools] == ["search", "open", "find"]


# --- arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "arguments", "message"),
    [
        ("browser.search", "{query: 1", "The arguments are not valid JSON ("),
        ("browser.search", "[1, 2]", "The arguments must be a JSON object."),
        ("browser.search", "{}", "browser.search needs `query`."),
        ("browser.search", '{"query": 3}', "`query` must be a string, not 3."),
        ("browser.search", '{"query": "?!"}', "The search query has no words to look for."),
        ("browser.open", '{"id": true}', "`id` must be an integer or a URL, not true."),
        ("browser.open", '{"loc": 1.5}', "`loc` must be an integer, not 1.5."),
        (
            "browser.open",
            '{"url": "x"}',
            "browser.open has no argument `url`; it takes `id`, `cursor`, `loc`,",
        ),
        ("browser.find", '{"pattern": " "}', "`pattern` must not be empty."),
        ("browser.close", "{}", "Unknown browser function `browser.close`: use browser.search,"),
        ("search", "{}", "Unknown browser function `search`"),
    ],
)
def test_bad_arguments_are_error_results(tool: BrowserTool, recipient: str, arguments: str, message: str):
    result = tool.call(recipient, arguments, "s")
    assert result.error
    assert result.text.startswith(message), result.text


def test_lenient_numbers_and_aliases(tool: BrowserTool):
    ok(tool.call("browser.search", '{"query": "zebra", "top_n": 1.0, "source": null}', "s"))
    assert ok(tool.call("browser.open", '{"id": "0", "cursor": "0", "num_lines": 2.0}', "s")).splitlines()[
        1
    ] == ("**viewing lines [0 - 1] of 7**")
    assert ok(tool.call("browser.open", "", "s")).startswith("[2] ")  # no arguments: the current page


# --- conversion -----------------------------------------------------------------------------------------


def test_html_and_markdown_conversion():
    def web(href: str) -> tuple[str, str | None] | None:
        return (href, "b.org") if href.startswith("http") else None

    title, text, links = html_to_text(
        "<title>T</title><h2>Head</h2><p>One <a href='http://b.org/x'>link † here</a> and "
        "<a href='#top'>anchor</a>.<br>【bracket】<img alt='cat'></p><pre>a   b\n  c</pre>",
        web,
    )
    assert title == "T"
    assert text == "## Head\n\nOne 【0†link ‡ here†b.org】 and anchor.\n〖bracket〗[Image: cat]\n\na   b\n  c"
    assert links == ["http://b.org/x"]
    title, text, links = markdown_to_text(
        "Intro\n# Title\ntext [a](http://b.org) and\n[b](http://b.org) ![pic](p.png)\n```\n[c](http://b.org)\n```",
        web,
    )
    assert title == "Title"
    assert (
        text
        == "Intro\n# Title\ntext 【0†a†b.org】 and 【0†b†b.org】 [Image: pic]\n```\n[c](http://b.org)\n```"
    )
    assert links == ["http://b.org"]
    # Declarations html.parser chokes on are read as text rather than failing the page.
    assert html_to_text("<p>a</p><![x y <p>b</p>", web)[1] == "a\n\n<![x y\n\nb"
    # Wrapping keeps a link whole and never breaks at hyphens.
    assert wrap_lines("x " * 36 + "【3†two words】 gpt-oss-120b", width=80) == [
        ("x " * 36).rstrip(),
        "【3†two words】 gpt-oss-120b",
    ]


# --- the web backend ------------------------------------------------------------------------------------


class _FakeSearxng(BaseHTTPRequestHandler):
    queries: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        url = urlparse(self.path)
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if url.path == "/search":
            self.queries.append(parse_qs(url.query))
            results = [
                {"url": f"{base}/zebra.html", "title": "Web zebras", "content": "Zebras on the open web."},
                {
                    "url": "https://example.org/okapi",
                    "title": "Okapi",
                    "content": "A relative of the giraffe.",
                },
            ]
            self._send(200, "application/json", json.dumps({"query": "x", "results": results}))
        elif url.path == "/zebra.html":
            self._send(
                200,
                "text/html; charset=utf-8",
                "<html><head><title>Web zebras</title></head><body><p>Plains zebras are the most common.</p>"
                "<p><a href='/about'>About</a> and <a href='https://example.org/x'>elsewhere</a></p></body></html>",
            )
        elif url.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/zebra.html")
            self.end_headers()
        elif url.path == "/big.txt":
            self._send(200, "text/plain", "y" * 5000)
        elif url.path == "/image.png":
            self._send(200, "image/png", "PNG")
        else:
            self._send(404, "text/plain", "no")

    def _send(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def searxng(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeSearxng)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeSearxng.queries.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_searxng_search_and_open(searxng: str, docs: Path, tmp_path: Path):
    web = SearxngBackend(searxng, allow_private=True, max_bytes=1000)
    tool = BrowserTool(LocalIndex([docs], tmp_path / "i.db"), web)
    host = urlparse(searxng).netloc
    result = call(tool, "search", query="plains zebra")
    assert ok(result) == page(
        "[0] plains zebra",
        "**viewing lines [0 - 3] of 3**",
        "",
        "L0: # Search Results",
        "L1: ",
        f"L2: - 【0†Web zebras†{host}】 Zebras on the open web.",
        "L3: - 【1†Okapi†example.org】 A relative of the giraffe.",
    )
    assert _FakeSearxng.queries == [{"q": ["plains zebra"], "format": ["json"]}]
    assert ok(call(tool, "open", id=0)) == page(
        f"[1] Web zebras ({searxng}/zebra.html)",
        "**viewing lines [0 - 2] of 2**",
        "",
        "L0: Plains zebras are the most common.",
        "L1: ",
        "L2: 【0†About】 and 【1†elsewhere†example.org】",
    )
    missing = call(tool, "open", id=0)
    assert missing.error
    assert missing.text == f"`{searxng}/about` answered HTTP 404."
    moved = call(tool, "open", id=f"{searxng}/moved")
    assert moved.data["url"] == f"{searxng}/zebra.html"
    big = ok(call(tool, "open", id=f"{searxng}/big.txt"))  # cut at max_bytes
    assert big.endswith(
        "L12: " + "y" * 40 + "\nL13: \nL14: [The page was cut off after its first 1000 bytes.]"
    )
    assert call(tool, "open", id=f"{searxng}/image.png").text == (
        f"`{searxng}/image.png` is a image/png file, which the browser cannot display."
    )
    assert "- 【0†Zebra guide†guide.md】" in ok(call(tool, "search", query="zebra", source="local"))
    assert tool.namespace().description.endswith("\nsources=web, local (default: web)")
    tool.close()


def test_searxng_refuses_private_addresses(searxng: str, docs: Path, tmp_path: Path):
    tool = BrowserTool(LocalIndex([docs], tmp_path / "i.db"), SearxngBackend(searxng))
    ok(call(tool, "search", query="zebra"))  # the configured instance itself may be local
    refused = call(tool, "open", id=0)
    assert refused.error
    assert (
        refused.text
        == f"`{searxng}/zebra.html` points into a private network, which the browser does not open."
    )
    tool.close()


def test_searxng_failures_are_error_results(docs: Path, tmp_path: Path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tool = BrowserTool(
        LocalIndex([docs], tmp_path / "i.db"), SearxngBackend(f"http://127.0.0.1:{port}", timeout=2)
    )
    result = call(tool, "search", query="zebra")
    assert result.error
    assert result.text.startswith(f"The search engine at http://127.0.0.1:{port} could not be reached")
    tool.close()


# --- the bundled collection -----------------------------------------------------------------------------


def test_bundled_docs_index_and_answer(tmp_path: Path):
    pages = sorted(bundled_docs().glob("*.md"))
    assert 25 <= len(pages) <= 40
    for page in pages:  # every local link leads to a page of the collection
        for target in re.findall(r"\]\(([^)]+)\)", page.read_text()):
            assert target.startswith("http") or (bundled_docs() / target).is_file(), (page.name, target)
    tool = BrowserTool(LocalIndex([bundled_docs()], tmp_path / "i.db"))
    search = ok(call(tool, "search", query="what is ossai"))
    assert search.splitlines()[5].startswith("L2: - 【0†What is ossai?†what-is-ossai.md】")
    page = ok(call(tool, "open", id=0))
    assert page.splitlines()[0] == f"[1] What is ossai? ({(bundled_docs() / 'what-is-ossai.md').as_uri()})"
    assert "OpenAI's open-weight gpt-oss models" in page
    found = ok(call(tool, "search", query="how many experts does gpt-oss-120b have"))
    assert "mixture-of-experts.md" in found or "model-sizes.md" in found
    tool.close()


def test_missing_docs_folder_is_a_readable_error(tmp_path: Path):
    with pytest.raises(NotFound, match=r"The browser's document folder .* does not exist\."):
        LocalIndex([tmp_path / "nope"], tmp_path / "i.db")


def test_index_lives_where_the_caller_says(tool: BrowserTool, tmp_path: Path):
    call(tool, "search", query="zebra")
    assert sorted(os.listdir(tmp_path / "index")) == ["browser.db"]
