"""Manifests, import, list, show and rm: the store's bookkeeping, with no torch and no network.

A model is one directory under `models/` plus its `manifest.json`, which is written last (temp file +
rename), so an interrupted import or pull never leaves a model listed that is not complete. `--link`
imports record the checkpoint's own path instead of holding a copy. Validation of the weights is injected
(`validate`, e.g. `ossai.model.weights.Checkpoint.open`) so this module stays importable without torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ossai.config import ModelConfig
from ossai.errors import BadRequest, ModelLoadError, NotFound
from ossai.store import paths

ALIASES = {"gpt-oss:20b": "openai/gpt-oss-20b", "gpt-oss:120b": "openai/gpt-oss-120b"}
DEFAULT_CONTEXT = 8192  # tokens of KV cache in show's memory estimate
HASH_CHUNK = 1 << 20

Mode = Literal["link", "copy", "pull"]
Validator = Callable[[Path], object]


@dataclass(slots=True)
class Manifest:
    """What `manifest.json` holds. `path` is set for linked imports: the checkpoint lives there."""

    name: str
    source: str  # hub repo id, or the imported directory
    revision: str | None  # the commit sha pulled (None for imports)
    layout: str  # "original" or "hf"
    files: list[dict[str, Any]]  # {"path", "size", "sha256" (None when not computed)}
    size: int
    added: str  # ISO 8601, UTC
    mode: str = "pull"
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        """The checkpoint directory to hand to `Engine.load`."""
        return Path(self.path) if self.path else paths.model_dir(self.name)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def store_name(repo: str) -> str:
    """The store name of a hub repo: its alias if it has one, else the repo id."""
    return next((alias for alias, target in ALIASES.items() if target == repo), repo)


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- reading -------------------------------------------------------------------------------------------
def list_models() -> list[Manifest]:
    """Every complete model, by name. Directories without a manifest (interrupted writes) are skipped."""
    found = []
    for manifest in sorted(paths.models_dir().glob(f"*/{paths.MANIFEST}")):
        try:
            found.append(Manifest.from_json(json.loads(manifest.read_text())))
        except (OSError, ValueError, TypeError):
            continue  # a damaged manifest: not listed, `rm` still removes it by name
    return sorted(found, key=lambda m: m.name)


def get(name: str) -> Manifest:
    name = name.strip()
    file = paths.model_dir(name) / paths.MANIFEST
    if not file.is_file() and name in ALIASES.values():
        file = paths.model_dir(store_name(name)) / paths.MANIFEST
    if not file.is_file():
        raise NotFound(f"no model named {name!r} in the store; see `ossai list` or `ossai pull {name}`")
    try:
        return Manifest.from_json(json.loads(file.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{file}: unreadable manifest ({exc}); `ossai rm {name}` removes it") from exc


def resolve(name_or_path: str | Path) -> Path:
    """A checkpoint directory for MODEL arguments: an existing directory is itself, else a store name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        return get(str(name_or_path)).directory
    except (NotFound, BadRequest):
        raise NotFound(
            f"{name_or_path}: no such checkpoint directory or stored model; see `ossai list` / `ossai pull`"
        ) from None


def checkpoint_layout(directory: Path) -> tuple[str, Path]:
    """(layout, directory holding its config.json), by the same rule as the weights loader, torch-free."""
    original, root = directory / "original", directory / "config.json"
    if (original / "config.json").is_file() and (any(original.glob("*.safetensors")) or not root.is_file()):
        return "original", original
    if not root.is_file():
        raise ModelLoadError(f"{directory}: missing config.json (neither the original/ nor the HF layout)")
    data = _read_json(root)
    return ("hf" if "model_type" in data or "architectures" in data else "original"), directory


def read_config(directory: Path) -> tuple[str, ModelConfig]:
    layout, root = checkpoint_layout(directory)
    data = _read_json(root / "config.json")
    source = str(root / "config.json")
    config = ModelConfig.from_hf(data, source) if layout == "hf" else ModelConfig.from_original(data, source)
    return layout, config


def show(name: str, context: int = DEFAULT_CONTEXT) -> dict[str, Any]:
    """The figures `ossai show` prints: architecture, sizes, files and an estimate of the memory needed."""
    manifest = get(name)
    layout, config = read_config(manifest.directory)
    kv = config.kv_bytes(context)  # bf16 keys and values; sliding layers hold only their window
    return {
        "name": manifest.name,
        "source": manifest.source,
        "revision": manifest.revision,
        "layout": layout,
        "path": str(manifest.directory),
        "architecture": "gpt-oss (mixture of experts)",
        "parameters": config.param_count(),
        "layers": config.num_hidden_layers,
        "experts": config.num_experts,
        "experts_per_token": config.experts_per_token,
        "quantization": "MXFP4 experts, BF16 elsewhere",
        "context_length": config.max_context,
        "size": manifest.size,
        "files": manifest.files,
        "added": manifest.added,
        "memory_estimate": {"context": context, "kv_cache_bytes": kv, "total_bytes": manifest.size + kv},
    }


# -- writing -------------------------------------------------------------------------------------------
def register(manifest: Manifest) -> Manifest:
    """Make a model visible: its files are already in place, the manifest goes last (atomic rename)."""
    paths.atomic_write_json(paths.model_dir(manifest.name) / paths.MANIFEST, manifest.to_json())
    return manifest


def remove(name: str) -> Manifest:
    """Unlist first (drop the manifest), then delete the files; a linked checkpoint's files stay."""
    try:
        manifest = get(name)
    except ModelLoadError:  # a damaged manifest: remove what is there
        manifest = Manifest(name, "", None, "", [], 0, "")
    directory = paths.model_dir(manifest.name)
    (directory / paths.MANIFEST).unlink()
    shutil.rmtree(directory, ignore_errors=True)
    return manifest


def import_model(
    path: str | Path, name: str | None, mode: Literal["link", "copy"], validate: Validator
) -> Manifest:
    """Register an existing checkpoint directory after validating it fully with `validate`."""
    source = Path(path).expanduser().resolve()
    if not source.is_dir():
        raise NotFound(f"{path}: no such checkpoint directory")
    name = name or source.name
    target = paths.model_dir(name)
    if (target / paths.MANIFEST).exists():
        raise BadRequest(f"a model named {name!r} is already in the store; `ossai rm {name}` first")
    validate(source)
    layout, _ = read_config(source)
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    entries = [{"path": p.relative_to(source).as_posix(), "size": p.stat().st_size} for p in files]
    if mode == "copy":
        staging = target.with_name(f".{target.name}.importing")
        shutil.rmtree(staging, ignore_errors=True)
        for entry, file in zip(entries, files, strict=True):
            entry["sha256"] = _copy_hashing(file, staging / entry["path"])
        validate(staging)  # the copy, not just the source, must load
        shutil.rmtree(target, ignore_errors=True)  # a leftover without a manifest
        staging.rename(target)
    else:
        for entry in entries:
            entry["sha256"] = None  # not hashed: a link import must not read 60 GB
        target.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(
        name=name,
        source=str(source),
        revision=None,
        layout=layout,
        files=entries,
        size=sum(e["size"] for e in entries),
        added=now(),
        mode=mode,
        path=str(source) if mode == "link" else None,
    )
    return register(manifest)


def _copy_hashing(src: Path, dst: Path) -> str:
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(HASH_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
    return digest.hexdigest()


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{file}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file}: expected a JSON object")
    return data
