"""Which ossai servers run on this machine and what they have loaded.

Each `ossai serve` keeps one small JSON file, `$OSSAI_HOME/run/<pid>.json`, rewritten whenever it loads or
unloads a model or a keep-alive changes, and removed when it stops. `ossai ps` lists them and `ossai rm`
refuses to remove a model one of them holds, without knowing the servers' addresses or API keys. A file
whose process is gone (a crash, kill -9) is ignored and deleted by the next reader; the process's start
time is recorded so a reused pid is not taken for the server that died.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ossai import settings
from ossai.errors import Conflict


def run_dir() -> Path:
    path = settings.home() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22 of proc(5), counted after the command name


def _alive(record: dict[str, Any]) -> bool:
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    started = record.get("process_start")
    return started is None or _start_time(pid) in (None, started)


def publish(url: str, models: list[dict[str, Any]]) -> None:
    """Record this process as a server at `url` with `models` loaded (temp file + rename; no fsync: the
    file describes a running process and means nothing after a crash)."""
    pid = os.getpid()
    record = {"pid": pid, "process_start": _start_time(pid), "url": url, "updated": time.time(),
              "models": models}  # fmt: skip
    path = run_dir() / f"{pid}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def withdraw() -> None:
    (run_dir() / f"{os.getpid()}.json").unlink(missing_ok=True)


def running() -> list[dict[str, Any]]:
    """The records of live servers, oldest pid first; stale files are removed on the way."""
    found = []
    for path in sorted(run_dir().glob("*.json"), key=lambda p: p.stem):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being rewritten or damaged; the next read sees it whole
        if not isinstance(record, dict):
            continue
        if _alive(record):
            found.append(record)
        else:
            path.unlink(missing_ok=True)
    return found


def holds(path: str | Path, name: str, directory: Path, loaded_name: str | None = None) -> bool:
    """Whether a model loaded from `path` (as `loaded_name`) is the stored model `name` at `directory`:
    the same name, or a checkpoint at or under the same directory."""
    if loaded_name == name:
        return True
    try:
        loaded, target = Path(path).resolve(), directory.resolve()
    except OSError:
        return False
    return loaded == target or target in loaded.parents


def check_unused(name: str, directory: Path, ignore_self: bool = True) -> None:
    """Raise Conflict if a running server (other than this process, by default) has the model loaded."""
    for record in running():
        if ignore_self and record["pid"] == os.getpid():
            continue
        if any(holds(m.get("path") or "", name, directory, m.get("name")) for m in record.get("models", [])):
            raise Conflict(
                f"{name} is loaded by the ossai server at {record.get('url')} (pid {record['pid']}); "
                f"stop it, or unload the model first (POST /api/generate with keep_alive 0)"
            )
