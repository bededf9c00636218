"""Where the store keeps things under `$OSSAI_HOME`, and the one way it writes small files (atomically).

    models/<safe-name>/manifest.json   a model is listed iff its manifest exists; written last
    models/<safe-name>/...             the checkpoint files as in the hub repo (original/ kept as is)
    partial/<repo>@<revision>/...      resumable downloads (`*.part` + `*.part.json` sidecars)

Directories are created on demand, as `settings.home()` does for the home itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ossai import settings
from ossai.errors import BadRequest

MANIFEST = "manifest.json"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


def models_dir() -> Path:
    path = settings.home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def partial_dir() -> Path:
    path = settings.home() / "partial"
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_name(name: str) -> str:
    """A store name as one directory name: `openai/gpt-oss-20b` -> `openai--gpt-oss-20b`, `:` -> `__`."""
    safe = name.replace("/", "--").replace(":", "__")
    if not _SAFE.fullmatch(safe) or safe in (".", ".."):
        raise BadRequest(f"{name!r} is not a valid model name (letters, digits, . _ - / : @)")
    return safe


def model_dir(name: str) -> Path:
    return models_dir() / safe_name(name)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside `path`, fsync it, and rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
