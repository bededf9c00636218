"""The `browser` built-in tool: `search`, `open` and `find`, as gpt-oss was trained to use them, over an
offline index of local documents and, only when one is configured, the web through a SearXNG instance.

The display follows the gpt-oss reference browser (`gpt_oss/tools/simple_browser`) because the model
learned to read and cite it: every result is a page pushed on a per-conversation stack, shown as

    [{cursor}] {title} ({url})
    **viewing lines [{start} - {end}] of {last}**

    L{start}: ...

with the text wrapped at 80 columns and links written `【{id}†{text}】` (`【{id}†{text}†{domain}】` when
they lead elsewhere), so the model can follow them with `open(id=...)` and cite `【{cursor}†L{n}】`.

`LocalIndex` indexes `.md`, `.markdown`, `.txt`, `.html` and `.htm` files into SQLite FTS5 (BM25
ranking) and catches up with added, changed and removed files on every search. PDFs are not indexed:
getting their text would need a new dependency. `SearxngBackend` is the only code that touches the
network, and a `BrowserTool` without one refuses http(s) URLs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import sqlite3
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlparse

import httpx
from openai_harmony import ToolNamespaceConfig

from ossai.errors import BadRequest, NotFound, OssaiError
from ossai.tools.base import Tool, ToolResult

WRAP_WIDTH = 80  # the reference wraps page text at 80 columns; line numbers (citations) count these lines
VIEW_CHARS = 4096  # a default view: about the reference's 1024 tokens at ~4 characters per token
FIND_MAX_MATCHES = 50
FIND_SHOW_LINES = 4  # lines shown per find match; a match is also where the next search starts over
LANDING_MARGIN = 4  # lines of context kept above a passage that `open` lands on
KINDS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html"}
MAX_FILE_BYTES = 4 << 20  # bigger local files are not indexed (logs, dumps)
SCHEMA_VERSION = 1

LINK_RE = re.compile(r"【\d+†[^【】]*】")
LINK_TEXT_RE = re.compile(r"【\d+†([^†】]*)(?:†[^†】]*)?】")
MD_LINK_RE = re.compile(r"(!?)\[([^\]\n]*)\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^\"'\n]*[\"'])?\s*\)")
MD_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
FENCE_RE = re.compile(r"^\s{0,3}(```|~~~)")
MD_BLOCK_RE = re.compile(r"\s*([-*+]\s|\d+[.)]\s|#|\||>)")  # a line that starts a block of its own
# Words too common to rank by: left out of a query that has other words.
_STOPWORD_TEXT = (
    "a an and are as at be by can do does for from how i in is it me my of on or the this that to what "
    "when where which who why with you"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


class BrowserError(OssaiError):
    """A page or search the browser could not get (the web backend failed or refused)."""

    status = 502
    code = "browser_error"


# --- Pages ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Page:
    """One display on the stack: a document, a list of search results, or find results."""

    url: str  # "" for search results, as in the reference
    title: str
    text: str  # with links written `【id†text】`
    links: list[str] = field(default_factory=list)  # link id -> url
    kind: str = "page"  # "page", "search" or "find"
    terms: list[str] = field(default_factory=list)  # search pages: words to land on in a result
    targets: dict[int, int] = field(default_factory=dict)  # find pages: link id -> line in the page
    lines: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.lines = wrap_lines(self.text)


def wrap_lines(text: str, width: int = WRAP_WIDTH) -> list[str]:
    """Wrap each line at `width` columns, keeping empty lines and never splitting a link."""
    protected = LINK_RE.sub(lambda m: m.group(0).replace(" ", "\xa0"), text)  # textwrap keeps NBSP whole
    lines: list[str] = []
    for line in protected.split("\n"):
        parts = textwrap.wrap(line, width, replace_whitespace=False, break_on_hyphens=False) or [""]
        lines.extend(part.rstrip().replace("\xa0", " ") for part in parts)
    return lines


def strip_links(text: str) -> str:
    return LINK_TEXT_RE.sub(lambda m: m.group(1), text)


def _clean(text: str) -> str:
    # The model reads 【】 as link and citation markup, so text may not contain them.
    return text.replace("【", "〖").replace("】", "〗").replace("\u200b", "")


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _domain(url: str) -> str:
    return urlparse(url).netloc


class _Links:
    """The links of a page being built: one id per distinct target."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self._ids: dict[str, int] = {}

    def add(self, url: str, text: str, label: str | None) -> str:
        text = _clean(_squash(text)).replace("†", "‡")
        if not text:
            return ""  # an empty link (an icon) cannot be read, so it is left out
        if url not in self._ids:
            self._ids[url] = len(self.urls)
            self.urls.append(url)
        suffix = f"†{label}" if label else ""
        return f"【{self._ids[url]}†{text}{suffix}】"


# Resolves a link target found in a document: (url, label shown after the text) or None to drop the link.
Resolver = Callable[[str], tuple[str, str | None] | None]


# --- Converting documents to text ----------------------------------------------------------------------


class _HtmlText(HTMLParser):
    """HTML to plain text with markdown-style headings and lists, links as `【id†text】`."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas", "math"})
    BLOCK = re.compile(
        r"p|div|section|article|main|header|footer|nav|aside|ul|ol|table|tr|blockquote|figure|figcaption"
        r"|form|dl|dt|dd|details|summary|hr|address|fieldset"
    )

    def __init__(self, resolve: Resolver, links: _Links) -> None:
        super().__init__(convert_charrefs=True)
        self.resolve, self.links = resolve, links
        self.out: list[str] = []
        self.title = ""
        self.first_heading = ""
        self._skip = 0
        self._pre = 0
        self._in_title = False
        self._heading: list[str] | None = None
        self._anchor: tuple[str, list[str]] | None = None  # (href, text so far)

    def _tail(self) -> str:
        return self.out[-1][-2:] if self.out else "\n\n"

    def _break(self, blank: bool = False) -> None:
        """End the current line (`blank`: and leave an empty line), never adding to breaks already there."""
        tail = ""
        while self.out and not self.out[-1].strip(" \n"):
            tail = self.out.pop() + tail
        if not self.out:
            return  # nothing written yet: no leading blank lines
        kept = self.out[-1].rstrip(" \n")
        tail = self.out[-1][len(kept) :] + tail
        self.out[-1] = kept
        self.out.append("\n" * min(2, max(tail.count("\n"), 2 if blank else 1)))

    def _emit(self, text: str) -> None:
        if self._anchor is not None:
            self._anchor[1].append(text)
            return
        if self._heading is not None:
            self._heading.append(text)
        if not self._pre:
            text = re.sub(r"\s+", " ", text)
            if self._tail().endswith(("\n", " ")):
                text = text.lstrip(" ")
        if text:
            self.out.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif self._skip:
            return
        elif tag == "title":
            self._in_title = True
        elif self.BLOCK.fullmatch(tag):
            self._break(blank=tag in ("p", "table", "blockquote", "ul", "ol", "hr"))
        elif re.fullmatch(r"h[1-6]", tag):
            self._break(blank=True)
            self.out.append("#" * int(tag[1]) + " ")
            self._heading = []
        elif tag == "li":
            self._break()
            self.out.append("- ")
        elif tag == "br":
            self._break()
        elif tag == "pre":
            self._break(blank=True)
            self._pre += 1
        elif tag in ("td", "th"):
            self._emit(" ")
        elif tag == "img":
            alt = _squash(dict(attrs).get("alt") or "")
            if alt:
                self._emit(f"[Image: {alt}]")
        elif tag == "a" and self._anchor is None:
            self._anchor = (dict(attrs).get("href") or "", [])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif self._skip:
            return
        elif tag == "title":
            self._in_title = False
        elif tag == "a" and self._anchor is not None:
            href, parts = self._anchor
            self._anchor = None
            text = "".join(parts)
            target = self.resolve(href) if href else None
            self._emit(self.links.add(target[0], text, target[1]) if target else text)
        elif re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            self.first_heading = self.first_heading or _squash(strip_links("".join(self._heading)))
            self._heading = None
            self._break(blank=True)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
            self._break(blank=True)
        elif self.BLOCK.fullmatch(tag) or tag == "li":
            self._break(blank=tag in ("p", "table", "blockquote", "ul", "ol"))

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self._emit(_clean(data))


def html_to_text(html: str, resolve: Resolver) -> tuple[str, str, list[str]]:
    """(title, text, link urls) of an HTML document; the title is `<title>`, else the first heading."""
    links = _Links()
    parser = _HtmlText(resolve, links)
    try:
        parser.feed(html)
        parser.close()
    except AssertionError:  # html.parser gives up on some broken `<!...>` declarations: read them as text
        links = _Links()
        parser = _HtmlText(resolve, links)
        parser.feed(re.sub(r"<!(?!--|doctype)", "&lt;!", html, flags=re.IGNORECASE))
        parser.close()
    text = "\n".join(line.rstrip() for line in "".join(parser.out).split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return _clean(_squash(parser.title)) or parser.first_heading, text, links.urls


def markdown_to_text(markdown: str, resolve: Resolver) -> tuple[str, str, list[str]]:
    """(title, text, link urls) of a markdown document: the text stays markdown, its links become
    `【id†text】` (plain text when they lead nowhere the browser can go); the title is the first heading."""
    links = _Links()
    title, out = "", []

    def link(m: re.Match[str]) -> str:
        image, text, target = m.group(1), m.group(2), m.group(3)
        if image:
            return f"[Image: {text}]" if text else ""
        resolved = resolve(target) if target else None
        if resolved is None:
            return text
        return links.add(resolved[0], text, resolved[1]) or text

    for line, code in _reflow(_clean(markdown).split("\n")):
        if not code:
            if not title and (heading := MD_HEADING_RE.match(line)):
                title = _squash(heading.group(1))
            line = MD_LINK_RE.sub(link, line)
        out.append(line.rstrip())
    return title, "\n".join(out).strip("\n"), links.urls


def _reflow(lines: list[str]) -> Iterator[tuple[str, bool]]:
    """Markdown lines with each paragraph (or list item) joined into one line, so the 80-column wrap
    reads well and a link broken over two source lines is whole; code blocks pass through, flagged."""
    fenced = indented = False
    blank_before = True
    para: str | None = None  # the paragraph being joined
    for line in lines:
        fence = bool(FENCE_RE.match(line))
        if fenced or fence:
            fenced ^= fence
            code = True
        else:  # an indented code block starts after a blank line and runs while lines stay indented
            indented = code = line.startswith("    ") and (indented or blank_before)
        text = line.strip()
        hard_break = para is not None and para.endswith(("  ", "\\"))
        if not code and text and para is not None and not hard_break and not MD_BLOCK_RE.match(line):
            para = para.rstrip() + " " + text
        else:
            if para is not None:
                yield para, False
            para = None
            if code or not text or MD_HEADING_RE.match(line) or text.startswith("|"):
                yield line, code  # never joined
            else:
                para = line
        blank_before = not text
    if para is not None:
        yield para, False


def _index_text(page: Page) -> str:
    """What the full-text index holds for a page: its text without link, heading and code markup (so
    that snippets read as prose), and without the heading that is already the title."""
    lines = strip_links(page.text).split("\n")
    if lines and MD_HEADING_RE.match(lines[0]) and _squash(lines[0].lstrip(" #")) == page.title:
        lines = lines[1:]
    kept = (re.sub(r"^\s*#{1,6}\s+", "", line) for line in lines if not FENCE_RE.match(line))
    return re.sub(r"`|\*\*", "", "\n".join(kept))


# --- The local index ------------------------------------------------------------------------------------


@dataclass(slots=True)
class SearchHit:
    title: str
    url: str
    label: str  # shown after the title: the path in the collection, or the web page's domain
    snippet: str


class LocalIndex:
    """A full-text index (SQLite FTS5, BM25) over folders of documents, kept in step with the files.

    Only files inside `docs_dirs` are ever read, indexed or opened (symlinks are resolved first). Every
    search compares each file's mtime and size with the index and re-reads only what changed, so edits,
    new files and deletions show up in the next search.
    """

    def __init__(self, docs_dirs: list[Path], index_path: Path) -> None:
        self.roots: list[Path] = []
        for d in docs_dirs:
            root = Path(d).expanduser().resolve()
            if not root.is_dir():
                raise NotFound(f"The browser's document folder {d} does not exist.")
            if root not in self.roots:
                self.roots.append(root)
        self.index_path = Path(index_path).expanduser()
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection, shared by the worker threads that run calls
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open_db()
        except sqlite3.DatabaseError:  # a corrupt or foreign file: the index is a cache, so start over
            self.index_path.unlink(missing_ok=True)
            return self._open_db()

    def _open_db(self) -> sqlite3.Connection:
        # Autocommit: `_refresh` opens its own transaction.
        db = sqlite3.connect(self.index_path, check_same_thread=False, timeout=30, isolation_level=None)
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                db.executescript(
                    f"""
                    BEGIN IMMEDIATE;
                    DROP TABLE IF EXISTS files;
                    DROP TABLE IF EXISTS docs;
                    CREATE TABLE files (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL,
                                        mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL,
                                        title TEXT NOT NULL);
                    CREATE VIRTUAL TABLE docs USING fts5(title, body, tokenize = 'porter unicode61');
                    PRAGMA user_version = {SCHEMA_VERSION};
                    COMMIT;
                    """
                )
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # Files

    def _inside(self, path: Path) -> Path | None:
        """The root that holds `path` (already resolved), or None."""
        return next((root for root in self.roots if path.is_relative_to(root)), None)

    def _scan(self) -> Iterator[tuple[str, int, int]]:
        """(path, mtime_ns, size) of every indexable file, hidden files and folders skipped."""
        seen: set[str] = set()
        for root in self.roots:
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith(".") or Path(name).suffix.lower() not in KINDS:
                        continue
                    path = Path(folder, name).resolve()
                    key = str(path)
                    if key in seen or self._inside(path) is None:  # a symlink out of the folders
                        continue
                    try:
                        st = path.stat()
                    except OSError:
                        continue
                    if st.st_size <= MAX_FILE_BYTES:
                        seen.add(key)
                        yield key, st.st_mtime_ns, st.st_size

    def refresh(self) -> tuple[int, int]:
        """Bring the index up to date with the files; returns (files re-read, files dropped)."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> tuple[int, int]:
        # IMMEDIATE: one writer at a time, also across processes (a server and a chat) sharing the index.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            counts = self._update()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return counts

    def _update(self) -> tuple[int, int]:
        known = {
            p: (i, m, s) for i, p, m, s in self._db.execute("SELECT id, path, mtime_ns, size FROM files")
        }
        current = {p: (m, s) for p, m, s in self._scan()}
        read = dropped = 0
        for path in known.keys() - current.keys():
            self._drop(known[path][0])
            dropped += 1
        for path, (mtime, size) in current.items():
            old = known.get(path)
            if old is not None and old[1:] == (mtime, size):
                continue
            try:
                page = self._load(Path(path))
            except (OSError, OssaiError):
                continue  # unreadable now; tried again at the next search
            if old is not None:
                self._drop(old[0])
            cur = self._db.execute(
                "INSERT INTO files (path, mtime_ns, size, title) VALUES (?, ?, ?, ?)",
                (path, mtime, size, page.title),
            )
            self._db.execute(
                "INSERT INTO docs (rowid, title, body) VALUES (?, ?, ?)",
                (cur.lastrowid, page.title, _index_text(page)),
            )
            read += 1
        return read, dropped

    def _drop(self, file_id: int) -> None:
        self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self._db.execute("DELETE FROM docs WHERE rowid = ?", (file_id,))

    # Search and open

    def search(self, query: str, topn: int = 10) -> list[SearchHit]:
        """The best `topn` documents for `query`'s words (any of them; BM25 with titles weighing 3x), a
        document whose title holds the whole query first."""
        all_words = re.findall(r"\w+", query.lower())
        if not all_words:
            raise BadRequest("The search query has no words to look for.")
        words = [w for w in dict.fromkeys(all_words) if w not in STOPWORDS] or all_words
        match = " OR ".join(f'"{w}"' for w in words)  # quoted: FTS5 syntax in a query is plain text here
        with self._lock:
            self._refresh()
            rows = self._db.execute(
                "SELECT files.path, files.title, snippet(docs, 1, '', '', ' … ', 24) FROM docs "
                "JOIN files ON files.id = docs.rowid WHERE docs MATCH ? "
                "ORDER BY bm25(docs, 3.0, 1.0), files.path LIMIT ?",
                (match, max(1, topn) + 10),
            ).fetchall()
        phrase = " ".join(all_words)
        rows.sort(key=lambda row: phrase not in " ".join(re.findall(r"\w+", row[1].lower())))  # stable
        hits = []
        for path, title, snippet in rows[: max(1, topn)]:
            p = Path(path)
            root = self._inside(p) or p.parent
            hits.append(SearchHit(title, p.as_uri(), p.relative_to(root).as_posix(), _squash(snippet)))
        return hits

    def resolve(self, ref: str) -> Path:
        """The indexed-folder file that `ref` (a path, relative to a folder or absolute, or a file://
        URL) names; anything else is refused."""
        ref = ref.strip()
        parsed = urlparse(ref)
        if parsed.scheme == "file":
            candidates = [Path(unquote(parsed.path))]
        elif len(parsed.scheme) > 1:
            raise BadRequest(f"`{ref}` is neither a local document nor a web page the browser can open.")
        else:
            path = Path(ref).expanduser()
            candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        outside = False
        for candidate in candidates:
            real = candidate.resolve()
            if self._inside(real) is None:
                outside = True
            elif real.is_file():
                if real.suffix.lower() not in KINDS:
                    raise BadRequest(
                        f"`{ref}` is not a document the browser can read: it reads "
                        ".md, .markdown, .txt, .html and .htm files."
                    )
                return real
        if outside and len(candidates) == 1:
            raise BadRequest(f"`{ref}` is outside the browser's document folders, so it cannot be opened.")
        raise NotFound(f"`{ref}` is not a file in the browser's document folders.")

    def open(self, ref: str, raw: bool = False) -> Page:
        """A document as a page (`raw`: its source text, unconverted)."""
        return self._load(self.resolve(ref), raw)

    def _load(self, path: Path, raw: bool = False) -> Page:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise BadRequest(f"`{path.name}` is larger than {MAX_FILE_BYTES >> 20} MB, too big to open.")
        source = data.decode("utf-8", errors="replace")
        url = path.as_uri()
        if raw:
            return Page(url=f"view-source:{url}", title=f"view-source:{path.name}", text=_clean(source))
        kind = KINDS[path.suffix.lower()]
        resolve = self._resolver(path)
        if kind == "html":
            title, text, links = html_to_text(source, resolve)
        elif kind == "markdown":
            title, text, links = markdown_to_text(source, resolve)
        else:
            title, text, links = "", _clean(source).strip("\n"), []
        return Page(url=url, title=title or path.name, text=text, links=links)

    def _resolver(self, base: Path) -> Resolver:
        """Links in a local document lead to web pages (labelled with their domain) or to other
        documents in the folders; any other target is dropped to plain text."""

        def resolve(href: str) -> tuple[str, str | None] | None:
            parsed = urlparse(href.strip())
            if parsed.scheme in ("http", "https"):
                return (href.strip(), parsed.netloc) if parsed.netloc else None
            if parsed.scheme == "file":
                target = Path(unquote(parsed.path))
            elif parsed.scheme or not parsed.path:  # mailto:, javascript:, an anchor in this page
                return None
            else:
                target = base.parent / unquote(parsed.path)
            target = target.resolve()
            if self._inside(target) and target.is_file() and target.suffix.lower() in KINDS:
                return target.as_uri(), None
            return None

        return resolve


# --- The web backend ------------------------------------------------------------------------------------


class SearxngBackend:
    """Web search through a SearXNG instance (its JSON API), and http(s) pages fetched directly.

    The instance must allow `format=json` (`search.formats` in its settings.yml). Pages on private,
    loopback or link-local addresses are refused unless `allow_private` (the model chooses these URLs, and a
    page it reads could steer it towards services on the user's network); the SearXNG instance itself may
    be local.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 15.0,
        max_bytes: int = 2 << 20,
        allow_private: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_bytes = max_bytes
        self.allow_private = allow_private
        self._client = httpx.Client(
            timeout=timeout, follow_redirects=False, headers={"User-Agent": "ossai-browser/0.1"}
        )

    def close(self) -> None:
        self._client.close()

    def search(self, query: str, topn: int = 10) -> list[SearchHit]:
        url = f"{self.base_url}/search"
        try:
            response = self._client.get(url, params={"q": query, "format": "json"})
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise BrowserError(f"The search engine at {self.base_url} could not be reached: {exc}.") from exc
        if response.status_code == 403:
            raise BrowserError(
                f"The search engine at {self.base_url} refused the request (403); a SearXNG instance must "
                "list `json` under search.formats in its settings.yml."
            )
        if response.status_code != 200:
            raise BrowserError(f"The search engine at {self.base_url} answered HTTP {response.status_code}.")
        try:
            results = response.json().get("results", [])
        except (ValueError, AttributeError) as exc:
            raise BrowserError(f"The search engine at {self.base_url} did not answer with JSON.") from exc
        hits = []
        for r in results:
            if isinstance(r, dict) and str(r.get("url", "")).startswith(("http://", "https://")):
                url = str(r["url"])
                title = _squash(_clean(str(r.get("title") or url)))
                hits.append(SearchHit(title, url, _domain(url), _squash(_clean(str(r.get("content") or "")))))
            if len(hits) >= topn:
                break
        return hits

    def open(self, url: str, raw: bool = False) -> Page:
        content_type, body, final_url, cut = self._fetch(url)
        source = body.decode(_charset(content_type), errors="replace")
        note = f"\n\n[The page was cut off after its first {self.max_bytes} bytes.]" if cut else ""
        if raw:
            title, text, links = f"view-source:{final_url}", _clean(source), []
            final_url = f"view-source:{final_url}"
        elif "html" in content_type or (not content_type and source.lstrip()[:1] == "<"):
            title, text, links = html_to_text(source, self._resolver(final_url))
        elif content_type.startswith("text/") or "json" in content_type or "xml" in content_type:
            title, text, links = "", _clean(source).strip("\n"), []
        else:
            kind = content_type.split(";")[0] or "binary"
            raise BrowserError(f"`{url}` is a {kind} file, which the browser cannot display.")
        return Page(url=final_url, title=title or _domain(final_url), text=text + note, links=links)

    def _fetch(self, url: str) -> tuple[str, bytes, str, bool]:
        """(content type, body up to `max_bytes`, final URL, whether the body was cut), following up to
        5 redirects by hand so that every hop passes the address check."""
        for _ in range(6):
            self._check(url)
            try:
                with self._client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code >= 400:
                        raise BrowserError(f"`{url}` answered HTTP {response.status_code}.")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > self.max_bytes:  # the rest is cut off rather than refused
                            break
                    content_type = response.headers.get("content-type", "").lower()
                    return content_type, bytes(body[: self.max_bytes]), url, len(body) > self.max_bytes
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise BrowserError(f"`{url}` could not be fetched: {exc}.") from exc
        raise BrowserError(f"`{url}` redirected too many times.")

    def _check(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise BadRequest(f"`{url}` is not an http(s) URL.")
        if self.allow_private:
            return
        try:
            infos = socket.getaddrinfo(parsed.hostname, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise BrowserError(f"The host of `{url}` could not be resolved.") from exc
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if not address.is_global:
                raise BrowserError(f"`{url}` points into a private network, which the browser does not open.")

    def _resolver(self, base: str) -> Resolver:
        here = _domain(base)

        def resolve(href: str) -> tuple[str, str | None] | None:
            target = urljoin(base, href.strip())
            if urlparse(target).scheme not in ("http", "https") or href.strip().startswith("#"):
                return None
            domain = _domain(target)
            return target, (None if domain == here else domain)

        return resolve


def _charset(content_type: str) -> str:
    m = re.search(r"charset=([\w.-]+)", content_type)
    if m:
        try:
            "".encode(m.group(1))
            return m.group(1)
        except LookupError:
            pass
    return "utf-8"


# --- The tool -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    stack: list[Page] = field(default_factory=list)
    # Opened pages by URL, reused when a link to them is followed again.
    cache: dict[str, Page] = field(default_factory=dict)
    used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, cursor: int) -> tuple[int, Page]:
        if not self.stack:
            raise BadRequest("There is no page yet: search or open one first.")
        if cursor < 0:
            cursor = len(self.stack) - 1
        if cursor >= len(self.stack):
            raise BadRequest(
                f"Cursor `{cursor}` is out of range: available cursors are 0 to {len(self.stack) - 1}."
            )
        return cursor, self.stack[cursor]


# The arguments each function takes: name -> (type, required). `top_n` is the reference's alias of `topn`.
_PARAMS: dict[str, dict[str, tuple[str, bool]]] = {
    "search": {
        "query": ("str", True),
        "topn": ("int", False),
        "top_n": ("int", False),
        "source": ("str", False),
    },
    "open": {
        "id": ("int|str", False),
        "cursor": ("int", False),
        "loc": ("int", False),
        "num_lines": ("int", False),
        "view_source": ("bool", False),
        "source": ("str", False),
    },
    "find": {"pattern": ("str", True), "cursor": ("int", False)},
}


def bundled_docs() -> Path:
    """The demo collection shipped with ossai: short pages about ossai and gpt-oss."""
    return Path(__file__).parent / "docs"


class BrowserTool(Tool):
    """`browser.search`, `browser.open`, `browser.find`; one page stack per conversation (`session`)."""

    name = "browser"

    def __init__(
        self,
        index: LocalIndex,
        web: SearxngBackend | None = None,
        *,
        view_chars: int = VIEW_CHARS,
        max_results: int = 20,
        session_ttl: float = 3600.0,
        max_sessions: int = 256,
    ) -> None:
        self.index = index
        self.web = web
        self.view_chars = view_chars
        self.max_results = max_results
        self.session_ttl = session_ttl
        self.max_sessions = max_sessions
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    @property
    def sources(self) -> list[str]:
        """The `source` values `search` takes, the default first."""
        return ["web", "local"] if self.web is not None else ["local"]

    def namespace(self) -> ToolNamespaceConfig:
        config = ToolNamespaceConfig.browser()
        hint = f"sources={', '.join(self.sources)} (default: {self.sources[0]})"
        config.description = re.sub(r"sources=.*$", hint, config.description)
        return config

    def end_session(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
        self.index.close()
        if self.web is not None:
            self.web.close()

    def _session(self, key: str) -> _Session:
        now = time.monotonic()
        with self._lock:
            for k in [k for k, s in self._sessions.items() if now - s.used > self.session_ttl]:
                del self._sessions[k]
            session = self._sessions.get(key)
            if session is None:
                if len(self._sessions) >= self.max_sessions:  # drop the least recently used
                    del self._sessions[min(self._sessions, key=lambda k: self._sessions[k].used)]
                session = self._sessions[key] = _Session()
            session.used = now
            return session

    def call(self, recipient: str, arguments: str, session: str) -> ToolResult:
        function = recipient.removeprefix("browser.")
        if function not in _PARAMS or recipient == function:
            return ToolResult(
                f"Unknown browser function `{recipient}`: use browser.search, browser.open or browser.find.",
                error=True,
            )
        try:
            args = _parse_arguments(function, arguments)
            state = self._session(session)
            with state.lock:
                if function == "search":
                    return self._search(state, args)
                if function == "open":
                    return self._open(state, args)
                return self._find(state, args)
        except OssaiError as exc:
            return ToolResult(str(exc), error=True)
        except (OSError, sqlite3.Error) as exc:  # the disk or the index failed under us
            return ToolResult(f"The browser failed: {exc}.", error=True)

    # Functions

    def _search(self, state: _Session, args: dict[str, Any]) -> ToolResult:
        query = args["query"].strip()
        source = args.get("source") or self.sources[0]
        if source not in self.sources:
            raise BadRequest(f"Unknown source `{source}`: the sources are {', '.join(self.sources)}.")
        topn = min(max(1, args.get("topn", args.get("top_n", 10))), self.max_results)
        backend = self.web if source == "web" else self.index
        assert backend is not None
        hits = backend.search(query, topn)
        links = _Links()
        items = [f"- {links.add(h.url, h.title, h.label)} {h.snippet}".rstrip() for h in hits]
        text = "# Search Results\n\n" + ("\n".join(items) if items else f"No results for `{query}`.")
        terms = [_stem(w) for w in re.findall(r"\w+", query.lower()) if len(w) > 2 and w not in STOPWORDS]
        page = Page(url="", title=query, text=text, links=links.urls, kind="search", terms=terms)
        return self._show(state, page, 0, -1, {"type": "search", "query": query})

    def _open(self, state: _Session, args: dict[str, Any]) -> ToolResult:
        ref = args.get("id", -1)
        loc, num_lines = args.get("loc", -1), args.get("num_lines", -1)
        line = 0  # the passage to land on when `loc` is not given
        if isinstance(ref, str):
            page = self._fetch(ref.strip(), args.get("view_source", False))
            state.cache[page.url] = page
        else:
            cursor, current = state.get(args.get("cursor", -1))
            if ref >= 0:
                if ref >= len(current.links):
                    count = len(current.links)
                    have = {0: "no links", 1: "only link 0"}.get(count, f"links 0 to {count - 1}")
                    raise BadRequest(f"Invalid link id `{ref}`: page [{cursor}] has {have}.")
                url = current.links[ref]
                if args.get("view_source"):
                    page = self._fetch(url, True)
                else:
                    page = state.cache.get(url) or self._fetch(url, False)
                    state.cache[url] = page
                    if current.kind == "find":
                        line = current.targets.get(ref, 0)
                    elif current.terms:
                        line = _best_line(page.lines, current.terms)
            elif args.get("view_source"):
                if current.kind != "page" or current.url.startswith("view-source:"):
                    raise BadRequest("`view_source` needs a document or web page, not a list of results.")
                page = self._fetch(current.url, True)
            else:  # no link: scroll the page at `cursor`
                page = current
        if loc < 0:
            loc = self._landing(page, line)
        return self._show(state, page, loc, num_lines, {"type": "open_page", "url": page.url})

    def _find(self, state: _Session, args: dict[str, Any]) -> ToolResult:
        pattern = args["pattern"]
        if not pattern.strip():
            raise BadRequest("`pattern` must not be empty.")
        _, page = state.get(args.get("cursor", -1))
        if page.kind != "page":
            raise BadRequest("`find` cannot search a page of search or find results: open a result first.")
        needle = pattern.lower()
        lines = [strip_links(line) for line in page.lines]
        chunks: list[str] = []
        targets: dict[int, int] = {}
        i = 0
        while i < len(lines) and len(chunks) < FIND_MAX_MATCHES:
            if needle not in lines[i].lower():
                i += 1
                continue
            targets[len(chunks)] = i
            snippet = "\n".join(lines[i : i + FIND_SHOW_LINES])
            chunks.append(f"# 【{len(chunks)}†match at L{i}】\n{snippet}")
            i += FIND_SHOW_LINES
        result = Page(
            url=f"{page.url}/find?pattern={quote(pattern)}",
            title=f"Find results for text: `{pattern}` in `{page.title}`",
            text="\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`",
            links=[page.url] * len(chunks),
            kind="find",
            targets=targets,
        )
        state.cache.setdefault(page.url, page)  # a match followed later opens this very page
        return self._show(state, result, 0, -1, {"type": "find_in_page", "pattern": pattern, "url": page.url})

    # Helpers

    def _fetch(self, ref: str, raw: bool) -> Page:
        if ref.lower().startswith(("http://", "https://")):
            if self.web is None:
                raise BadRequest(
                    f"The browser is offline and cannot open `{ref}`: only local documents can be opened "
                    "(browser.search finds them)."
                )
            return self.web.open(ref, raw)
        return self.index.open(ref, raw)

    def _end(self, lines: list[str], loc: int, num_lines: int) -> int:
        """One past the last line a view from `loc` shows: `num_lines`, or about `view_chars` of text."""
        if num_lines > 0:
            return min(loc + num_lines, len(lines))
        end, used = loc, 0
        while end < len(lines):
            used += len(lines[end]) + len(str(end)) + 4  # "L{n}: " and the newline
            if used > self.view_chars and end > loc:
                break
            end += 1
        return end

    def _landing(self, page: Page, line: int) -> int:
        """Where `open` starts without `loc`: the top, unless `line` lies beyond the first view."""
        if line <= 0 or self._end(page.lines, 0, -1) > line:
            return 0
        return max(0, line - LANDING_MARGIN)

    def _show(
        self, state: _Session, page: Page, loc: int, num_lines: int, action: dict[str, Any]
    ) -> ToolResult:
        """Push `page` and display it from line `loc`."""
        last = len(page.lines) - 1
        if loc > last:
            raise BadRequest(f"Invalid location parameter: `{loc}`. Cannot exceed page maximum of {last}.")
        end = self._end(page.lines, loc, num_lines)
        state.stack.append(page)
        cursor = len(state.stack) - 1
        header = f"[{cursor}] {page.title}" + (f" ({_short(page.url)})" if page.url else "")
        body = "\n".join(f"L{n}: {page.lines[n]}" for n in range(loc, end))
        text = f"{header}\n**viewing lines [{loc} - {end - 1}] of {last}**\n\n{body}"
        url = action.get("url", page.url)
        data = {"action": action, "title": page.title, "url": url, "cursor": cursor}
        return ToolResult(text, data=data)


def _short(url: str, limit: int = 120) -> str:
    url = unquote(url)
    return url if len(url) <= limit else url[: limit - 1] + "…"


def _stem(word: str) -> str:
    """A crude stem, so that a query's `experts` finds the line about an `expert`."""
    for suffix in ("ing", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _best_line(lines: list[str], terms: list[str]) -> int:
    """The first line holding the most distinct query terms (0 when none does)."""
    best, best_score = 0, 0
    for n, line in enumerate(lines):
        low = line.lower()
        score = sum(1 for t in terms if t in low)
        if score > best_score:
            best, best_score = n, score
    return best


def _parse_arguments(function: str, arguments: str) -> dict[str, Any]:
    """The JSON arguments the model wrote, checked against `_PARAMS[function]`."""
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The arguments are not valid JSON ({exc.msg} at character {exc.pos}).") from exc
    if not isinstance(args, dict):
        raise BadRequest("The arguments must be a JSON object.")
    params = _PARAMS[function]
    unknown = sorted(args.keys() - params.keys())
    if unknown:
        raise BadRequest(
            f"browser.{function} has no argument {', '.join(f'`{k}`' for k in unknown)}; "
            f"it takes {', '.join(f'`{k}`' for k in params if k != 'top_n')}."
        )
    out: dict[str, Any] = {}
    for name, (kind, required) in params.items():
        value = args.get(name)
        if value is None:
            if required:
                raise BadRequest(f"browser.{function} needs `{name}`.")
            continue
        out[name] = _coerce(name, kind, value)
    return out


def _coerce(name: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "str":
        if isinstance(value, str):
            return value
    else:  # "int" or "int|str"; models write numbers as 3, 3.0 or "3"
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            if re.fullmatch(r"-?\d+", value.strip()):
                return int(value)
            if kind == "int|str" and value.strip():
                return value
    expected = {"bool": "true or false", "str": "a string", "int": "an integer"}.get(
        kind, "an integer or a URL"
    )
    raise BadRequest(f"`{name}` must be {expected}, not {json.dumps(value)}.")
