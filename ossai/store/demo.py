"""ossai-demo: the tiny gpt-oss trained by `training/` and shipped inside the package, so ossai works the
minute it is installed (no download).

The checkpoint travels as one xz-compressed tar of its `original/` directory (the embedding rows of tokens
it never saw are zero and compress away). On first use it is checked against the sha256 recorded beside it,
unpacked into a staging directory, and registered in the store like any imported model (manifest last),
so everything that takes MODEL, lists models or serves the store sees it as `ossai-demo`.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from ossai.errors import ModelLoadError, NotFound
from ossai.store import models, paths

NAME = "ossai-demo"
DESCRIPTION = "a tiny model for trying ossai — pull gpt-oss:20b for real use"
DATA = Path(__file__).with_name("data")
ARCHIVE = DATA / "ossai-demo.tar.xz"
RECORD = DATA / "ossai-demo.json"  # {"sha256": archive digest, "files": {path: sha256}, "training": {...}}


def bundled() -> bool:
    return ARCHIVE.is_file() and RECORD.is_file()


def _record() -> dict[str, Any]:
    try:
        data = json.loads(RECORD.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{RECORD}: unreadable ({exc}); reinstall ossai") from exc
    return data


def ensure() -> models.Manifest:
    """The demo model in the store, unpacked and verified on first use, and again when ossai ships a
    retrained one (the stored copy's revision is the archive's digest)."""
    try:
        stored = models.get(NAME)
        if stored.mode != "bundled" or not bundled() or stored.revision == _record()["sha256"][:12]:
            return stored
    except NotFound:
        pass
    if not bundled():
        raise NotFound(f"{NAME} is not bundled in this build of ossai; pull a model: ossai pull gpt-oss:20b")
    record = _record()
    if models.sha256_file(ARCHIVE) != record["sha256"]:
        raise ModelLoadError(f"{ARCHIVE}: sha256 mismatch (a damaged install); reinstall ossai")
    target = paths.model_dir(NAME)
    staging = target.with_name(f".{target.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(ARCHIVE, "r:xz") as tar:
        tar.extractall(staging, filter="data")  # refuses absolute paths, links out, devices
    entries = []
    for rel, digest in sorted(record["files"].items()):
        file = staging / rel
        if not file.is_file() or models.sha256_file(file) != digest:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelLoadError(f"{ARCHIVE}: {rel} is missing or damaged; reinstall ossai")
        entries.append({"path": rel, "size": file.stat().st_size, "sha256": digest})
    shutil.rmtree(target, ignore_errors=True)  # a leftover without a manifest
    staging.rename(target)
    manifest = models.Manifest(
        name=NAME,
        source="bundled with ossai",
        revision=record["sha256"][:12],
        layout="original",
        files=entries,
        size=sum(e["size"] for e in entries),
        added=models.now(),
        mode="bundled",
        extra={"description": DESCRIPTION, "training": record.get("training", {})},
    )
    return models.register(manifest)


def default_model() -> str:
    """The MODEL to use when none is named: the only stored model, else the demo model (unpacked now)."""
    stored = [m.name for m in models.list_models()]
    if len(stored) == 1:
        return stored[0]
    if not stored:
        return ensure().name
    raise NotFound(f"several models are stored ({', '.join(stored)}); name one (see ossai list)")
