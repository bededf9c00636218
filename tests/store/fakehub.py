"""A fake Hugging Face Hub on loopback, so `ossai pull` is tested end to end without the network.

It serves directories as model repos over the two endpoints pull uses (what `HfApi.model_info(...,
files_metadata=True)` and a plain ranged GET call), and injects faults on request: 5xx answers, dropped
connections mid-file, corrupted bytes, a required token. It counts the body bytes it serves, so tests can
bound what a resumed download re-fetched.

    GET  /api/models/{owner}/{repo}[/revision/{rev}]   -> {"id", "sha", "siblings": [{rfilename, size, lfs}]}
    GET|HEAD /{owner}/{repo}/resolve/{rev}/{path}       -> the file, honouring `Range: bytes=N-`; LFS
                                                           files redirect (302) to /_cdn/{repo}/{sha}/{path}
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_MIN = 1024  # files this large (and every *.safetensors) are served as LFS files, with a sha256
REPO = "openai/gpt-oss-20b"  # the repo the tests serve; the alias gpt-oss:20b points here
MIB = 2**20
CDN = "_cdn"  # LFS downloads redirect here, as the real hub redirects to its CDN (no token needed there)


@dataclass
class Repo:
    root: Path
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    token: str | None = None  # when set, requests need `Authorization: Bearer <token>`

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())


@dataclass
class Faults:
    """One-shot faults are consumed by the request they hit; `corrupt` stays until cleared."""

    info_status: list[int] = field(default_factory=list)  # answers for the next model_info calls
    file_status: list[int] = field(default_factory=list)  # answers for the next file GETs
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> close after this many bytes, once
    corrupt: set[str] = field(default_factory=set)  # paths served with one byte flipped
    slow: float = 0.0  # seconds to pause after each MiB of a file's body (a slow link)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # dropped connections are the point of some tests; keep pytest's output clean


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.faults = Faults()
        self.bytes_served = 0
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, repo_id: str, root: Path, **kwargs) -> Repo:
        self.repos[repo_id] = repo = Repo(root, **kwargs)
        return repo

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take(self, queue: list[int]) -> int | None:
        with self._lock:
            return queue.pop(0) if queue else None

    def count(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n


def _is_lfs(file: Path) -> bool:
    return file.suffix == ".safetensors" or file.stat().st_size >= LFS_MIN


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _reply(self, status: int, data: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, code: str | None = None) -> None:
            headers = {"Content-Type": "application/json"} | ({"X-Error-Code": code} if code else {})
            self._reply(status, json.dumps({"error": f"fake hub: {status}"}).encode(), headers)

        def _repo(self, repo_id: str, signed: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound")
                return None
            if not signed and repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
                self._error(401)
                return None
            return repo

        def _serve(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            parts = path.strip("/").split("/")
            if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
                self._info(parts[2:])
            elif len(parts) >= 5 and parts[0] == CDN:
                self._file("/".join(parts[1:3]), parts[3], "/".join(parts[4:]), body, signed=True)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]), body, signed=False)
            else:
                self._error(404)

        def _info(self, parts: list[str]) -> None:
            status = hub.take(hub.faults.info_status)
            if status:
                self._error(status)
                return
            repo_id = "/".join(parts[:2])
            repo = self._repo(repo_id)
            if repo is None:
                return
            siblings = []
            for file in repo.files():
                rel = file.relative_to(repo.root).as_posix()
                entry: dict = {"rfilename": rel, "size": file.stat().st_size}
                if _is_lfs(file):
                    entry["lfs"] = {"sha256": _sha256(file), "size": file.stat().st_size, "pointerSize": 134}
                siblings.append(entry)
            data = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": bool(repo.token),
                    "siblings": siblings, "tags": []}  # fmt: skip
            self._reply(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _file(self, repo_id: str, revision: str, rel: str, body: bool, signed: bool) -> None:
            repo = self._repo(repo_id, signed)
            if repo is None:
                return
            file = repo.root / rel
            if revision not in ("main", repo.sha) or not file.is_file():
                self._error(404, "EntryNotFound")
                return
            if not signed and _is_lfs(file):  # like the hub: LFS files come from a CDN, by redirect
                self._reply(302, b"", {"Location": f"/{CDN}/{repo_id}/{repo.sha}/{rel}"})
                return
            status = hub.take(hub.faults.file_status) if body else None
            if status:
                self._error(status)
                return
            data = file.read_bytes()
            if rel in hub.faults.corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            start, code = 0, 200
            wanted = self.headers.get("Range")
            if wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
                start, code = int(wanted[6:-1]), 206
                if start >= len(data):
                    self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
            payload = data[start:]
            headers = {"ETag": f'"{_sha256(file)}"', "Accept-Ranges": "bytes"}
            if code == 206:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not body:
                return
            with hub._lock:
                drop = hub.faults.drop_after.pop(rel, None)
            if drop is not None:
                payload = payload[:drop]
            step = MIB if hub.faults.slow else len(payload) or 1
            for offset in range(0, len(payload), step):
                self.wfile.write(payload[offset : offset + step])
                hub.count(len(payload[offset : offset + step]))
                if hub.faults.slow:
                    time.sleep(hub.faults.slow)
            if drop is not None:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # mid-body: the client sees a dropped connection

    return Handler


def layout_size(repo_dir: Path, layout: str) -> int:
    files = [p for p in repo_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    rel = [p.relative_to(repo_dir).as_posix() for p in files]
    keep = [
        p
        for p, r in zip(files, rel, strict=True)
        if not r.startswith("metal/") and (layout == "original") == r.startswith("original/")
    ]
    return sum(p.stat().st_size for p in keep)
