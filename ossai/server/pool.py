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
import datetime as dt
import gc
import logging
import math
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
from ossai.store import resources, servers

log = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0  # seconds, Ollama's default
DEFAULT_MAX_LOADED = 3  # Ollama's default on a CPU-only machine
ROOM_WAIT_S = 300.0  # how long a request waits for a busy model to become evictable before a 503
ROOM_POLL_S = 0.5
FOREVER_S = 100 * 365 * 86400.0  # a keep-alive longer than this is "forever"
_NUMBER = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
LEASES_KEY = "ossai_leases"  # in the ASGI scope's state: the leases a request holds
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: float | str | None, default: float | None) -> float | None:
    """Seconds to keep a model after its last request; None means forever.

    Ollama's forms: a number of seconds, or a Go duration ("5m", "1h30m", "250ms"); negative = forever.
    Anything past a century is forever too; NaN and infinities are refused.
    """
    if value is None or value == "":
        return default
    problem = f"keep_alive: {value!r} is not a duration (like 30s, 5m, 1h) or a number of seconds"
    if isinstance(value, bool):
        raise BadRequest(problem, "keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        parts = _DURATION.findall(body)
        if _NUMBER.fullmatch(body):
            seconds = sign * float(body)
        elif parts and "".join(n + u for n, u in parts) == body:
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
        else:
            raise BadRequest(problem, "keep_alive")
    if not math.isfinite(seconds):
        raise BadRequest(problem, "keep_alive")
    return None if seconds < 0 or seconds > FOREVER_S else seconds


@dataclass(frozen=True, slots=True)
class Entry:
    """A model the server can serve, loaded or not: what listings and /api/show report."""

    name: str
    directory: Path
    config: ModelConfig
    size: int  # bytes of the checkpoint's files
    modified: float  # epoch seconds

    @classmethod
    def of(cls, manifest: store.Manifest) -> Entry:
        _, config = store.read_config(manifest.directory)
        added = dt.datetime.fromisoformat(manifest.added).timestamp() if manifest.added else time.time()
        return cls(manifest.name, manifest.directory, config, manifest.size, added)

    @classmethod
    def of_engine(cls, name: str, engine: Engine) -> Entry:
        """The pinned model's entry, described by its loaded checkpoint."""
        checkpoint = engine.checkpoint
        if checkpoint is None:
            return cls(name, Path(name), engine.config, 0, time.time())
        modified = max((f.stat().st_mtime for f in checkpoint.files), default=time.time())
        return cls(name, Path(checkpoint.root), engine.config, checkpoint.size_bytes, modified)


@dataclass(eq=False)
class Loaded:
    entry: Entry
    engine: Engine
    device: str
    needed_bytes: int  # weights + KV, as the resource plan counted them (0: not planned)
    keep_alive: float | None = None  # seconds after the last release; None = never unloaded
    pinned: bool = False
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # epoch seconds, set when the last lease goes; None = not counting

    @property
    def name(self) -> str:
        return self.entry.name

    def idle(self) -> bool:
        return self.leases == 0 and not self.pinned

    def expiry(self) -> float | None:
        """When it will be unloaded if nothing uses it (epoch seconds); None = not by keep-alive."""
        if self.pinned or self.keep_alive is None:
            return None
        return self.expires_at if self.leases == 0 else time.time() + self.keep_alive

    def to_json(self) -> dict[str, Any]:
        """The figures of /api/ps and `ossai ps`: memory is weights + KV (the files' size if unplanned)."""
        memory = self.needed_bytes or self.entry.size
        return {
            "name": self.name,
            "path": str(self.entry.directory),
            "device": self.device,
            "memory_bytes": memory,
            "vram_bytes": memory if self.device != "cpu" else 0,
            "context_length": self.engine.max_model_len,
            "expires_at": self.expiry(),
            "requests": self.leases,
        }


class ModelPool:
    """Names to engines: pinned, or loaded from the store on demand (see the module docstring).

    One lock orders loads, unloads and deletions, so a plan is never made while memory is still held by
    a model being unloaded, and a model being deleted cannot be loaded again halfway. Waiting for room
    happens outside the lock."""

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
        self._lock = asyncio.Lock()
        self._released = asyncio.Event()  # wakes the reaper when a keep-alive starts counting
        self._reaper: asyncio.Task | None = None

    @classmethod
    def fixed(cls, name: str, engine: Engine, needed_bytes: int = 0, **kwargs: Any) -> ModelPool:
        """Pinned mode: `engine` (owned by the caller) is the only model."""
        pool = cls(engine.engine_config, **kwargs)
        pool.pinned = Loaded(
            Entry.of_engine(name, engine), engine, str(engine.device), needed_bytes, pinned=True
        )
        pool._loaded[name] = pool.pinned
        return pool

    # -- names -------------------------------------------------------------------------------------------
    @property
    def default_name(self) -> str | None:
        return self.pinned.name if self.pinned else None

    def manifest(self, name: str) -> store.Manifest:
        """The stored model for a requested name: as given, or without Ollama's `:latest` tag."""
        for candidate in (name, name.removesuffix(":latest")):
            with contextlib.suppress(NotFound, BadRequest):
                return store.get(candidate)
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
        return self.manifest(name).name

    def entries(self) -> list[Entry]:
        """Every model this server can serve: the pinned one, or the store's."""
        if self.pinned is not None:
            return [self.pinned.entry]
        found = []
        for manifest in store.list_models():
            try:
                found.append(Entry.of(manifest))
            except OssaiError as exc:  # a linked import whose directory went away: not servable
                log.warning("%s: %s", manifest.name, exc)
        return found

    def entry(self, name: str) -> Entry:
        resolved = self.resolve(name)
        loaded = self._loaded.get(resolved)
        return loaded.entry if loaded is not None else Entry.of(self.manifest(resolved))

    def loaded(self) -> list[Loaded]:
        return sorted(self._loaded.values(), key=lambda m: m.name)

    def engines(self) -> list[tuple[str, Engine]]:
        return [(m.name, m.engine) for m in self.loaded()]

    # -- leases ------------------------------------------------------------------------------------------
    async def acquire(self, name: str, keep_alive: float | str | None = None) -> Loaded:
        """The loaded model for `name`, loading it if needed; the caller must `release` it."""
        seconds = parse_keep_alive(keep_alive, self.keep_alive)
        resolved = self.resolve(name)
        self._start_reaper()
        deadline = time.monotonic() + ROOM_WAIT_S
        while (model := self._loaded.get(resolved)) is None:
            async with self._lock:
                if resolved in self._loaded:
                    continue
                entry = await asyncio.to_thread(lambda: Entry.of(self.manifest(resolved)))
                plan = await self._make_room(entry, give_up=time.monotonic() > deadline)
                if plan is not None:
                    model = await self._load(entry, plan)
                    break
            await asyncio.sleep(ROOM_POLL_S)  # every loaded model is busy: wait outside the lock
        model.leases += 1
        if not model.pinned:
            model.keep_alive = seconds
        if model.leases == 1:
            self.publish()
        return model

    def release(self, model: Loaded) -> None:
        model.leases -= 1
        model.last_used = time.monotonic()
        if model.leases == 0:
            if not model.pinned and model.keep_alive is not None:
                model.expires_at = time.time() + model.keep_alive
            self._released.set()
            self.publish()

    async def unload(self, name: str, when_idle: bool = False) -> bool:
        """Unload `name` now; True if it was unloaded. A pinned or unloaded model is left as it is; one in
        use is a Conflict, or with `when_idle` is unloaded as soon as its last request ends."""
        async with self._lock:
            model = self._loaded.get(self.resolve(name))
            if model is None or model.pinned:
                return False
            if model.leases:
                if when_idle:
                    model.keep_alive = 0.0
                    return False
                raise _in_use(model)
            await self._unload(model)
            return True

    async def delete(self, name: str) -> store.Manifest:
        """Remove a stored model, unloading it first; refused while this or another server uses it."""
        async with self._lock:
            manifest = await asyncio.to_thread(self.manifest, name)
            pinned = self.pinned
            if pinned is not None and servers.holds(pinned.entry.directory, "", manifest.directory):
                raise Conflict(
                    f"{manifest.name} is the model this server was started with; it cannot be deleted"
                )
            model = self._loaded.get(manifest.name)
            if model is not None:
                if model.leases:
                    raise _in_use(model)
                await self._unload(model)
            await asyncio.to_thread(servers.check_unused, manifest.name, manifest.directory)
            return await asyncio.to_thread(store.remove, manifest.name)

    # -- loading and unloading (callers hold the lock) ---------------------------------------------------
    async def _load(self, entry: Entry, plan: resources.Plan) -> Loaded:
        config = dataclasses.replace(self.engine_config, device=plan.device)
        log.info("loading %s on %s (%s)", entry.name, plan.device, plan.summary())
        started = time.perf_counter()
        building = asyncio.ensure_future(asyncio.to_thread(self._build, entry.directory, config))
        try:
            engine = await asyncio.shield(building)
        except asyncio.CancelledError:  # the server is stopping: close the engine once it exists
            building.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().close())
            raise
        model = Loaded(entry, engine, plan.device, plan.needed_bytes)
        self._loaded[entry.name] = model
        log.info("loaded %s in %.1f s", entry.name, time.perf_counter() - started)
        self.publish()
        return model

    def _build(self, directory: Path, config: EngineConfig) -> Engine:
        engine = self.engine_cls.load(directory, config=config)
        try:
            engine.max_model_len  # noqa: B018  # build the KV pool now, not in the first request
        except BaseException:
            engine.close()
            raise
        return engine

    async def _make_room(self, entry: Entry, give_up: bool) -> resources.Plan | None:
        """The new model's plan, after unloading least recently used idle models until it fits; None
        when only busy models stand in the way (the caller waits and asks again)."""
        device, kv_mb = self.engine_config.device, self.engine_config.kv_cache_mb
        while True:
            refusal: OssaiError
            try:
                plan = await asyncio.to_thread(
                    lambda: resources.plan(entry.directory, device, kv_mb, resources=self.detect())
                )
            except BadRequest as exc:
                # on CPU the bound is the machine's RAM; on a GPU, loaded models may be what is in the way
                if not any(m.device != "cpu" for m in self._loaded.values()):
                    raise
                refusal = exc
            else:
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
            victims = sorted((m for m in self._loaded.values() if m.idle()), key=lambda m: m.last_used)
            if victims:
                log.info("unloading %s to make room for %s", victims[0].name, entry.name)
                await self._unload(victims[0])
                continue
            if give_up or all(m.pinned for m in self._loaded.values()):
                raise Busy(f"cannot load {entry.name}: {refusal}; every loaded model is in use")
            return None

    async def _unload(self, model: Loaded) -> None:
        if self._loaded.get(model.name) is not model:
            return  # already unloaded (and perhaps loaded again since)
        del self._loaded[model.name]
        engine = model.engine
        await asyncio.to_thread(engine.close)
        on_gpu = engine.device.type == "cuda"
        del engine, model.engine  # drop the weights with the last reference
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        log.info("unloaded %s", model.name)
        self.publish()

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Unload models whose keep-alive ran out, waking at the next expiry or when one starts counting."""
        while True:
            try:
                async with self._lock:
                    now = time.time()
                    for model in list(self._loaded.values()):
                        if model.idle() and model.expires_at is not None and model.expires_at <= now:
                            await self._unload(model)
            except Exception:  # never let one failed unload stop every later expiry
                log.exception("unloading an expired model failed")
            expiries = [m.expires_at for m in self._loaded.values() if m.idle() and m.expires_at is not None]
            timeout = max(0.0, min(expiries) - time.time()) if expiries else None
            self._released.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), timeout=timeout)

    async def close(self) -> None:
        """Unload everything this pool loaded (the pinned engine belongs to its caller)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        async with self._lock:
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


def _in_use(model: Loaded) -> Conflict:
    return Conflict(f"{model.name} is generating for {model.leases} request(s); try again when done")


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
