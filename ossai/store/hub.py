"""`ossai pull`: download one layout of a gpt-oss repo from the Hugging Face Hub, resumably and verified.

huggingface_hub alone falls short here (measured on 2.4): a new process never resumes a dropped file, it
checks sizes but not content hashes, and one 503 on the repo-info call fails `snapshot_download`. So this
module asks the hub for the file list with LFS sha256s (`HfApi.model_info(files_metadata=True)`, retried),
then fetches each file itself over HTTP with `Range` into `partial/<repo>@<rev>/<file>.part`, with a sidecar
naming the expected sha256/size so a later run resumes it (or drops it when the remote file changed).
Finished files are hashed, moved aside, validated as a whole checkpoint, moved into `models/` and only then
listed (manifest last). Transient failures (connection errors, 5xx, 429) are retried with backoff.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from huggingface_hub import HfApi, get_token, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import build_hf_headers

from ossai.errors import BadRequest, Busy, ModelLoadError, NotFound, OssaiError
from ossai.store import models, paths

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds between attempts; tests shorten this
FREE_SPACE_MARGIN = 1 << 30  # bytes that must stay free after the download; tests raise it to refuse
CHUNK = 1 << 20
TIMEOUT = httpx.Timeout(30.0, read=60.0)
LAYOUTS = ("original", "hf")
SKIPPED_DIRS = ("metal/",)  # the 13 GB Metal (Apple) weights: never needed here
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class PullError(OssaiError):
    status = 502
    code = "pull_failed"


class Progress(Protocol):
    """What `pull` reports to; the CLI draws a bar or prints a line per file."""

    def start(self, path: str, total: int, done: int, sha256: str | None = None) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def finish(self, path: str) -> None: ...


class _Quiet:
    def start(self, path: str, total: int, done: int, sha256: str | None = None) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self, path: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files only; small git files carry no sha256 in the hub's metadata


def parse_ref(ref: str) -> tuple[str, str]:
    """`gpt-oss:20b` or `owner/repo[@revision]` -> (repo id, revision)."""
    ref = ref.strip()
    repo, _, revision = ref.partition("@")
    repo = models.ALIASES.get(repo, repo)
    if not _REPO.fullmatch(repo):
        aliases = ", ".join(models.ALIASES)
        raise BadRequest(f"{ref!r} is not a model to pull: use {aliases} or owner/repo[@revision]")
    return repo, revision or "main"


def select_files(siblings: list[RemoteFile], layout: str) -> list[RemoteFile]:
    """One layout only: `original/*` for the original layout, everything else (no metal/) for hf."""
    if layout not in LAYOUTS:
        raise BadRequest(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    keep = []
    for f in siblings:
        if f.path.startswith(SKIPPED_DIRS) or f.path.startswith(".") or "/." in f.path:
            continue
        if (layout == "original") == f.path.startswith("original/"):
            keep.append(f)
    if not any(f.path.endswith(".safetensors") for f in keep):
        raise NotFound(f"the repo has no {layout}-layout weights (*.safetensors)")
    return keep


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it once at import


def _token() -> str | None:
    return get_token()  # HF_TOKEN, else the token `hf auth login` stored


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    status = _status(exc)
    return status is not None and (status >= 500 or status == 429)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _retrying(what: str, call: Callable[[], Any], on_error: Callable[[BaseException], None]) -> Any:
    """Run `call`, retrying transient failures; `on_error` turns a permanent one into an OssaiError."""
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            return call()
        except (httpx.HTTPError, HfHubHTTPError, OSError) as exc:
            on_error(exc)
            if not _transient(exc) or attempt == len(RETRY_DELAYS):
                raise PullError(f"{what} failed after {attempt + 1} attempt(s): {_describe(exc)}") from exc
            time.sleep(RETRY_DELAYS[attempt])
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    return f"HTTP {status}" if status else f"{type(exc).__name__}: {exc}".splitlines()[0]


def _permanent(repo: str) -> Callable[[BaseException], None]:
    def check(exc: BaseException) -> None:
        status = _status(exc)
        if status in (401, 403):
            if _token():
                raise PullError(f"the hub refused HF_TOKEN for repo {repo} (HTTP {status})") from exc
            raise PullError(
                f"repo {repo} needs a token: run `hf auth login` (formerly `huggingface-cli login`) "
                "or set HF_TOKEN"
            ) from exc
        if status == 404:
            raise NotFound(f"no such model repo {repo} on the hub (or no such revision)") from exc

    return check


def remote_files(repo: str, revision: str) -> tuple[str, list[RemoteFile]]:
    """(commit sha, files) of the repo at `revision`, with LFS sizes and sha256s."""
    api = HfApi(endpoint=_endpoint(), token=_token())
    info = _retrying(
        f"fetching the file list of {repo}",
        lambda: api.model_info(repo, revision=revision, files_metadata=True),
        _permanent(repo),
    )
    files = []
    for s in info.siblings or []:
        lfs = s.lfs
        size = lfs.size if lfs is not None else s.size
        files.append(RemoteFile(s.rfilename, int(size or 0), lfs.sha256 if lfs is not None else None))
    return info.sha or revision, files


def partial_root(repo: str, revision: str) -> Path:
    return paths.partial_dir() / f"{repo.replace('/', '--')}@{revision}"


def pull(
    ref: str,
    layout: str = "original",
    validate: models.Validator | None = None,
    progress: Progress | None = None,
) -> models.Manifest:
    """Download `ref` (alias or owner/repo[@rev]) and register it; resumes whatever a past run left."""
    repo, revision = parse_ref(ref)
    progress = progress or _Quiet()
    commit, siblings = remote_files(repo, revision)
    wanted = select_files(siblings, layout)
    name = models.store_name(repo)
    current = _current(name)
    if current is not None and current.mode != "pull":
        raise BadRequest(f"{name} is already in the store as an import; `ossai rm {name}` first")
    if current is not None and (current.source, current.revision, current.layout) == (repo, commit, layout):
        return current  # already complete at this commit
    work = partial_root(repo, revision)
    with _locked(work):
        return _pull_locked(repo, revision, commit, name, wanted, work, validate, progress)


def _current(name: str) -> models.Manifest | None:
    try:
        return models.get(name)
    except OssaiError:
        return None


@contextlib.contextmanager
def _locked(work: Path) -> Iterator[None]:
    """One pull per repo and revision at a time: a second would write into the same partial files."""
    work.parent.mkdir(parents=True, exist_ok=True)
    with open(work.with_name(work.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another `ossai pull` of {work.name} is running; wait for it to finish") from None
        yield


def _pull_locked(
    repo: str,
    revision: str,
    commit: str,
    name: str,
    wanted: list[RemoteFile],
    work: Path,
    validate: models.Validator | None,
    progress: Progress,
) -> models.Manifest:
    done_dir = work / "files"
    _drop_stale(work, wanted, commit)
    need = sum(f.size - _have(work, done_dir, f) for f in wanted)
    _check_disk(need)

    headers = build_hf_headers(token=_token())
    with httpx.Client(follow_redirects=True, headers=headers, timeout=TIMEOUT) as client:
        for f in wanted:
            final = done_dir / f.path
            if final.is_file() and final.stat().st_size == f.size:
                continue
            url = hf_hub_url(repo, f.path, revision=commit, endpoint=_endpoint())
            part = _download(client, url, repo, f, work, commit, progress)
            _verify(part, f)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, final)
            _sidecar(part).unlink(missing_ok=True)

    if validate is not None:
        try:
            validate(done_dir)
        except ModelLoadError as exc:
            shutil.rmtree(work, ignore_errors=True)  # verified bytes that do not load: no use resuming
            raise ModelLoadError(f"{repo}@{commit[:12]} downloaded but does not load: {exc}") from exc
    found_layout, _ = models.checkpoint_layout(done_dir)
    entries = []
    for f in wanted:
        digest = f.sha256 or models.sha256_file(done_dir / f.path)
        entries.append({"path": f.path, "size": f.size, "sha256": digest})
    target = paths.model_dir(name)
    if target.exists():  # replace an older pull: unlist it first
        (target / paths.MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(target)
    os.replace(done_dir, target)
    manifest = models.Manifest(
        name=name,
        source=repo,
        revision=commit,
        layout=found_layout,
        files=entries,
        size=sum(f.size for f in wanted),
        added=models.now(),
        mode="pull",
        extra={"requested_revision": revision},
    )
    models.register(manifest)
    shutil.rmtree(work, ignore_errors=True)  # nothing left to resume (the empty .lock file stays: see flock)
    return manifest


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _have(work: Path, done_dir: Path, f: RemoteFile) -> int:
    final = done_dir / f.path
    if final.is_file():
        return final.stat().st_size
    part = work / (f.path + ".part")
    return part.stat().st_size if part.is_file() else 0


def _expected(f: RemoteFile, commit: str) -> dict[str, Any]:
    # LFS files are identified by content; small git files by the commit they were listed at
    return {"size": f.size, "sha256": f.sha256} if f.sha256 else {"size": f.size, "commit": commit}


def _drop_stale(work: Path, wanted: list[RemoteFile], commit: str) -> None:
    """Remove partial and finished files that no longer match the remote, and orphans of older runs."""
    if not work.exists():
        return
    keep: set[Path] = set()
    for f in wanted:
        part, final = work / (f.path + ".part"), work / "files" / f.path
        try:
            meta = json.loads(_sidecar(part).read_text()) if part.exists() else None
        except (OSError, ValueError):
            meta = None
        if meta == _expected(f, commit) and part.stat().st_size <= f.size:
            keep |= {part, _sidecar(part)}
        if final.is_file() and final.stat().st_size == f.size:
            stamp = work / "files.json"
            stamps = json.loads(stamp.read_text()) if stamp.is_file() else {}
            if stamps.get(f.path) == _expected(f, commit):
                keep.add(final)
    for file in sorted(p for p in work.rglob("*") if p.is_file()):
        if file not in keep and file.name != "files.json":
            file.unlink()


def _check_disk(need: int) -> None:
    free = shutil.disk_usage(paths.partial_dir()).free
    if need + FREE_SPACE_MARGIN > free:
        raise BadRequest(
            f"not enough disk space: the download needs {_gb(need)} and {_gb(FREE_SPACE_MARGIN)} should stay "
            f"free, but {paths.partial_dir().parent} has {_gb(free)} free"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _download(
    client: httpx.Client, url: str, repo: str, f: RemoteFile, work: Path, commit: str, progress: Progress
) -> Path:
    """Fetch one file into its `.part`, resuming from what is there; returns the complete `.part`."""
    part = work / (f.path + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    paths.atomic_write_json(_sidecar(part), _expected(f, commit))
    part.touch()
    progress.start(f.path, f.size, part.stat().st_size, f.sha256)
    check = _permanent(repo)
    failures = 0
    while (have := part.stat().st_size) < f.size:
        try:
            for chunk in _ranged(client, url, part, have):
                progress.advance(chunk)
            failures = 0 if part.stat().st_size > have else failures  # progress resets the budget
        except (httpx.HTTPError, OSError) as exc:
            check(exc)
            if not _transient(exc) or failures >= len(RETRY_DELAYS):
                raise PullError(
                    f"downloading {f.path} failed: {_describe(exc)}; run the same command to resume"
                ) from exc
            if part.stat().st_size == have:
                time.sleep(RETRY_DELAYS[failures])
                failures += 1
    _stamp(work, f, commit)
    progress.finish(f.path)
    return part


def _ranged(client: httpx.Client, url: str, part: Path, have: int) -> Iterator[int]:
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416:  # nothing past `have`: the part is longer than the file
            part.unlink()
            part.touch()
            return
        response.raise_for_status()
        mode = "ab" if response.status_code == 206 else "wb"  # 200: the server ignored Range
        with part.open(mode) as out:
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
                out.flush()
                yield len(chunk)


def _stamp(work: Path, f: RemoteFile, commit: str) -> None:
    stamp = work / "files.json"
    stamps = json.loads(stamp.read_text()) if stamp.is_file() else {}
    stamps[f.path] = _expected(f, commit)
    paths.atomic_write_json(stamp, stamps)


def _verify(part: Path, f: RemoteFile) -> None:
    size = part.stat().st_size
    bad = size != f.size or (f.sha256 is not None and models.sha256_file(part) != f.sha256)
    if bad:
        part.unlink()
        _sidecar(part).unlink(missing_ok=True)
        check = "size" if size != f.size else "sha256"
        raise PullError(
            f"file {f.path} failed its {check} check; the partial file was removed, run pull again"
        )
