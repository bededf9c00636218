"""The models a server serves, and the ones it has loaded.

Two modes, chosen by `ossai serve`:
- pinned (`ossai serve MODEL`): one model, loaded before the server listens and kept for its lifetime;
  any other name is a 404, and `keep_alive` is accepted but changes nothing.
- store (`ossai serve` with no MODEL): every model in the store, loaded on the first request that names
  it and unloaded `keep_alive` after its last request (the server's `--keep-alive`, or the request's own
  `keep_alive` as in Ollama: a duration, seconds, 0 = at once, negative = never). At most `max_loaded`
  models are loaded, and together they must fit the memory plan of the resource manager; to make room the
  least recently used idle model is unloaded first.

A request leases its model from the moment its route names it until its response, streamed or not, has
been sent (`LeaseMiddleware` releases the leases after the ASGI call returns), so a model is never
unloaded under a running request. Loads run one at a time, in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from starlette.types import ASGIApp, Receive, Scope, Send

from ossai.config import EngineConfig, ModelConfig
from ossai.engine import Engine
from ossai.errors import BadRequest, Busy, Conflict, NotFound, OssaiError
from ossai.store import models as store
from ossai.store import resources

log = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0  # seconds, Ollama's default
DEFAULT_MAX_LOADED = 3  # Ollama's default on a CPU-only machine
ROOM_WAIT_S = 300.0  # how long a request waits for a busy model to become evictable before a 503
LEASES_KEY = "ossai_leases"  # in the ASGI scope's state: the leases a request holds
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: float | str | None, default: float | None) -> float | None:
    """Seconds to keep a model after its last request; None means forever.

    Ollama's forms: a number of seconds, or a Go duration ("5m", "1h30m", "250ms"); negative = forever.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadRequest(f"keep_alive must be a duration or a number of seconds, got {value!r}", "keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise BadRequest(
                    f"keep_alive: {value!r} is not a duration (like 30s, 5m, 1h) or a number of seconds",
                    "keep_alive",
                ) from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    return None if seconds < 0 else seconds


@dataclass(frozen=True, slots=True)
class Entry:
    """A model the server can serve, loaded or not: what listings and /api/show report."""

    name: str
    directory: Path
    config: ModelConfig
    size: int  # bytes of the checkpoint's files
    modified: float  # epoch seconds


@dataclass(eq=False)
class Loaded:
    entry: Entry
    engine: Engine
    device: str
    needed_bytes: int  # weights + KV, as the resource plan counted them
    keep_alive: float | None  # seconds after the last release; None = never unloaded
    pinned: bool = False
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # epoch seconds; None while leased or kept forever

    @property
    def name(self) -> str:
        return self.entry.name

    def idle(self) -> bool:
        return self.leases == 0 and not self.pinned

    def to_json(self) -> dict[str, Any]:
        """The figures of /api/ps and `ossai ps`."""
        on_gpu = self.device != "cpu"
        return {
            "name": self.name,
            "path": str(self.entry.directory),
            "device": self.device,
            "size": self.entry.size,
            "size_vram": self.needed_bytes if on_gpu else 0,
            "memory_bytes": self.needed_bytes,
            "context_length": self.engine.max_model_len,
            "expires_at": self.expires_at,
            "requests": self.leases,
        }


def _entry_from_dir(name: str, directory: Path) -> Entry:
    _, config = store.read_config(directory)
    files = [p for p in directory.rglob("*.safetensors") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    modified = max((p.stat().st_mtime for p in files), default=time.time())
    return Entry(name, directory, config, size, modified)


def entry_for_engine(name: str, engine: Engine) -> Entry:
    """The pinned model's entry, described by its loaded checkpoint."""
    checkpoint = engine.checkpoint
    if checkpoint is None:
        return Entry(name, Path(name), engine.config, 0, time.time())
    modified = max((f.stat().st_mtime for f in checkpoint.files), default=time.time())
    return Entry(name, Path(checkpoint.root), engine.config, checkpoint.size_bytes, modified)


class ModelPool:
    """Names to engines: pinned, or loaded from the store on demand (see the module docstring)."""

    def __init__(
        self,
        engine_config: EngineConfig | None = None,
        *,
        keep_alive: float | None = DEFAULT_KEEP_ALIVE,
        max_loaded: int = DEFAULT_MAX_LOADED,
        engine_cls: type[Engine] = Engine,
        detect: Callable[[], resources.Resources] = resources.detect,
        on_change: Callable[[list[dict[str, Any]]], None] | None = None,
    ):
        if max_loaded < 1:
            raise BadRequest(f"max loaded models must be at least 1, got {max_loaded}")
        self.engine_config = engine_config or EngineConfig()
        self.keep_alive = keep_alive
        self.max_loaded = max_loaded
        self.engine_cls = engine_cls
        self.detect = detect
        self.on_change = on_change
        self.pinned: Loaded | None = None
        self._loaded: dict[str, Loaded] = {}
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Event()  # set on every release/unload: wakes the reaper (room waiters poll)
        self._reaper: asyncio.Task | None = None

    @classmethod
    def fixed(cls, name: str, engine: Engine, needed_bytes: int = 0, **kwargs: Any) -> ModelPool:
        """Pinned mode: `engine` (owned by the caller) is the only model."""
        pool = cls(engine.engine_config, **kwargs)
        entry = entry_for_engine(name, engine)
        pool.pinned = Loaded(entry, engine, str(engine.device), needed_bytes, None, pinned=True)
        pool._loaded[name] = pool.pinned
        return pool

    # -- names -------------------------------------------------------------------------------------------
    @property
    def default_name(self) -> str | None:
        return self.pinned.name if self.pinned else None

    def store_name(self, name: str) -> str:
        """The store's name for a requested one: as given, or without Ollama's `:latest` tag."""
        for candidate in (name, name.removesuffix(":latest")):
            with contextlib.suppress(NotFound, BadRequest):
                return store.get(candidate).name
        raise NotFound(f"model {name!r} not found; see GET /v1/models, or pull it first", "model")

    def resolve(self, name: str) -> str:
        name = name.strip()
        if self.pinned is not None:
            if name.removesuffix(":latest") == self.pinned.name.removesuffix(":latest"):
                return self.pinned.name
            raise NotFound(f"model {name!r} not found; this server serves {self.pinned.name!r}", "model")
        for candidate in (name, name.removesuffix(":latest")):
            if candidate in self._loaded:
                return candidate
        return self.store_name(name)

    def entries(self) -> list[Entry]:
        """Every model this server can serve: the pinned one, or the store's."""
        if self.pinned is not None:
            return [self.pinned.entry]
        found = []
        for manifest in store.list_models():
            try:
                found.append(self.entry(manifest.name))
            except OssaiError as exc:  # a linked import whose directory went away: not servable
                log.warning("%s: %s", manifest.name, exc)
        return found

    def entry(self, name: str) -> Entry:
        resolved = self.resolve(name)
        if resolved in self._loaded:
            return self._loaded[resolved].entry
        return _entry_from_dir(resolved, store.get(resolved).directory)

    def loaded(self) -> list[Loaded]:
        return sorted(self._loaded.values(), key=lambda m: m.name)

    def engines(self) -> list[tuple[str, Engine]]:
        return [(m.name, m.engine) for m in self.loaded()]

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    # -- leases ------------------------------------------------------------------------------------------
    async def acquire(self, name: str, keep_alive: float | str | None = None) -> Loaded:
        """The loaded model for `name`, loading it if needed; the caller must `release` it."""
        seconds = parse_keep_alive(keep_alive, self.keep_alive)
        resolved = self.resolve(name)
        self._start_reaper()
        model = self._loaded.get(resolved)
        if model is None:
            async with self._load_lock:
                model = self._loaded.get(resolved)
                if model is None:
                    model = await self._load(resolved, seconds)
        model.leases += 1
        model.expires_at = None
        if not model.pinned:
            model.keep_alive = seconds
        return model

    def release(self, model: Loaded) -> None:
        model.leases -= 1
        model.last_used = time.monotonic()
        if model.leases == 0 and not model.pinned and model.keep_alive is not None:
            model.expires_at = time.time() + model.keep_alive
        self._changed.set()
        self.publish()

    async def unload(self, name: str, when_idle: bool = False) -> bool:
        """Unload `name` now; True if it was unloaded. A pinned or unloaded model is left as it is; one in
        use is a Conflict, or with `when_idle` is unloaded as soon as its last request ends."""
        model = self._loaded.get(self.resolve(name))
        if model is None or model.pinned:
            return False
        if model.leases:
            if when_idle:
                model.keep_alive = 0.0
                return False
            raise Conflict(f"{model.name} is generating for {model.leases} request(s); try again when done")
        await self._unload(model)
        return True

    # -- loading and unloading ---------------------------------------------------------------------------
    async def _load(self, name: str, keep_alive: float | None) -> Loaded:
        directory = store.get(name).directory
        entry = await asyncio.to_thread(_entry_from_dir, name, directory)
        plan = await self._make_room(entry)
        config = dataclasses.replace(self.engine_config, device=plan.device)
        log.info("loading %s on %s (%s)", name, plan.device, plan.summary())
        started = time.perf_counter()
        engine = await asyncio.to_thread(self.engine_cls.load, directory, config=config)
        try:
            await asyncio.to_thread(lambda: engine.max_model_len)  # build the KV pool now, not mid-request
        except BaseException:
            await asyncio.to_thread(engine.close)
            raise
        model = Loaded(entry, engine, plan.device, plan.needed_bytes, keep_alive)
        self._loaded[name] = model
        log.info("loaded %s in %.1f s", name, time.perf_counter() - started)
        self.publish()
        return model

    async def _make_room(self, entry: Entry) -> resources.Plan:
        """The new model's plan, after unloading least recently used idle models until it fits."""
        deadline = time.monotonic() + ROOM_WAIT_S
        device, kv_mb = self.engine_config.device, self.engine_config.kv_cache_mb
        while True:
            self._changed.clear()
            refusal: OssaiError | None = None
            try:
                plan = await asyncio.to_thread(
                    lambda: resources.plan(entry.directory, device, kv_mb, resources=self.detect())
                )
                # mmapped CPU weights are not in MemAvailable's accounting: count the loaded ones here
                on_cpu = sum(m.needed_bytes for m in self._loaded.values() if m.device == "cpu")
                if plan.device == "cpu" and plan.needed_bytes + on_cpu > plan.available_bytes:
                    refusal = Busy(
                        f"{entry.name} needs {plan.needed_bytes / 1e9:.2f} GB and the loaded models hold "
                        f"{on_cpu / 1e9:.2f} GB of the {plan.available_bytes / 1e9:.2f} GB available"
                    )
                elif len(self._loaded) >= self.max_loaded:
                    refusal = Busy(f"{self.max_loaded} model(s) are loaded, the most this server keeps")
                else:
                    return plan
            except BadRequest as exc:  # does not fit even now; it may once others are unloaded
                if not self._loaded:
                    raise
                refusal = exc
            victims = sorted((m for m in self._loaded.values() if m.idle()), key=lambda m: m.last_used)
            if victims:
                log.info("unloading %s to make room for %s", victims[0].name, entry.name)
                await self._unload(victims[0])
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or all(m.pinned for m in self._loaded.values()):
                raise Busy(f"cannot load {entry.name}: {refusal}; every loaded model is in use")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))

    async def _unload(self, model: Loaded) -> None:
        self._loaded.pop(model.name, None)
        self._changed.set()
        await asyncio.to_thread(model.engine.close)
        on_gpu = model.engine.device.type == "cuda"
        model.engine = None  # type: ignore[assignment]  # drop the weights with the last reference
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        log.info("unloaded %s", model.name)
        self.publish()

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Unload models whose keep-alive ran out, waking at the next expiry or on any release."""
        while True:
            now = time.time()
            for model in list(self._loaded.values()):
                if model.idle() and model.expires_at is not None and model.expires_at <= now:
                    await self._unload(model)
            expiries = [m.expires_at for m in self._loaded.values() if m.idle() and m.expires_at]
            timeout = max(0.0, min(expiries) - time.time()) if expiries else None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=timeout)

    async def close(self) -> None:
        """Unload everything this pool loaded (the pinned engine belongs to its caller)."""
        if self._reaper is not None:
            self._reaper.cancel()
        for model in list(self._loaded.values()):
            if not model.pinned:
                await self._unload(model)

    def publish(self) -> None:
        """Tell `on_change` what is loaded (the server's status file for `ossai ps` and `ossai rm`)."""
        if self.on_change is not None:
            try:
                self.on_change([m.to_json() for m in self.loaded()])
            except OSError as exc:  # the status file is a convenience; serving goes on
                log.warning("could not record the loaded models: %s", exc)


class LeaseMiddleware:
    """Gives each HTTP request a list to hold its model leases, and releases them once the response
    (including a streamed body) has been sent or the client has gone."""

    def __init__(self, app: ASGIApp, pool: ModelPool):
        self.app = app
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        leases: list[Loaded] = []
        scope.setdefault("state", {})[LEASES_KEY] = leases
        try:
            await self.app(scope, receive, send)
        finally:
            for model in leases:
                self.pool.release(model)


def leases_of(scope: Scope) -> list[Loaded]:
    try:
        return scope["state"][LEASES_KEY]
    except KeyError:
        raise RuntimeError("LeaseMiddleware is not installed") from None
