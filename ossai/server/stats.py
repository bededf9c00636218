"""`GET /ossai/stats` (the figures of /metrics, and the machine's, as one JSON object for the web client's
dashboard) and `GET /ossai/stats/stream` (the same object as server-sent events every `interval` s).

CPU and memory come from psutil, GPUs from torch.cuda (see `_gpus`). The figures of the model pool and
the engines are the ones /metrics reports; tokens per second and recent times to first token come from
`Metrics.recent`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from ossai import __version__
from ossai.server.context import ServerContext, context
from ossai.server.streaming import dumps

router = APIRouter(prefix="/ossai/stats")
CPU_SAMPLE_S = 0.2  # callers within this long of the last sample share it


class _Cpu:
    """psutil's CPU percentages are measured between two calls; one shared sample, refreshed at most every
    `CPU_SAMPLE_S`, so several dashboards do not shorten each other's window to nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = 0.0
        self._sample: tuple[float, list[float]] = (0.0, [])
        self._process = psutil.Process(os.getpid())

    def prime(self) -> None:
        """Start the first measurement window (psutil's first call has nothing to compare with)."""
        with self._lock:
            psutil.cpu_percent(interval=None)
            psutil.cpu_percent(interval=None, percpu=True)
            self._at = time.monotonic()

    def sample(self) -> tuple[float, list[float]]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= CPU_SAMPLE_S or not self._sample[1]:
                total = psutil.cpu_percent(interval=None)
                per_core = psutil.cpu_percent(interval=None, percpu=True)
                self._sample, self._at = (total, per_core), now
            return self._sample

    def rss(self) -> int:
        return self._process.memory_info().rss


CPU = _Cpu()


def prime() -> None:
    """Called at app start, so the first /ossai/stats has a CPU window to report."""
    CPU.prime()


def _nvml_gpus() -> list[dict[str, Any]] | None:
    """Every NVIDIA GPU through NVML (the nvidia-ml-py package), which needs no CUDA context; None
    without it."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    out = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        out.append({"index": index, "name": name.decode() if isinstance(name, bytes) else name,
                    "utilization": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                    "memory_used": memory.used, "memory_total": memory.total})  # fmt: skip
    return out


def _gpus() -> list[dict[str, Any]]:
    """Each CUDA device: NVML's figures where NVML is installed, else torch's, but only once something
    (a model on the GPU) has initialised CUDA: asking torch first would create a context on every GPU,
    costing the memory the dashboard reports. Until then a device is listed without figures."""
    try:
        nvml = _nvml_gpus()
        if nvml is not None:
            return nvml
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for index in range(torch.cuda.device_count()):
            gpu: dict[str, Any] = {"index": index, "name": f"CUDA device {index}", "utilization": None,
                                   "memory_used": None, "memory_total": None}  # fmt: skip
            # only devices ossai already uses: a query elsewhere would create a context there
            if torch.cuda.is_initialized() and torch.cuda.memory_reserved(index) > 0:
                gpu["name"] = torch.cuda.get_device_name(index)
                free, total = torch.cuda.mem_get_info(index)
                gpu["memory_used"], gpu["memory_total"] = total - free, total
            out.append(gpu)
        return out
    except Exception:  # a broken driver must not break the dashboard
        return []


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    try:
        return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return None


def _machine() -> dict[str, Any]:
    """CPU, memory and GPUs. Blocking (psutil, CUDA): run off the event loop."""
    percent, per_core = CPU.sample()
    memory = psutil.virtual_memory()
    threads = psutil.cpu_count()
    return {
        "cpu": {"percent": percent, "per_core": per_core,
                "cores": psutil.cpu_count(logical=False) or threads, "threads": threads},
        "memory": {"total": memory.total, "used": memory.total - memory.available, "process_rss": CPU.rss()},
        "gpus": _gpus(),
    }  # fmt: skip


async def snapshot(ctx: ServerContext) -> dict[str, Any]:
    """The stats object of docs/web-client.md."""
    machine = await asyncio.to_thread(_machine)
    models = []
    running = waiting = 0
    kv_usage = 0.0
    for model in ctx.pool.loaded():  # on the event loop, where the pool changes
        status = model.to_json()
        stats = model.engine.stats()
        running, waiting = running + stats.running, waiting + stats.waiting
        kv_usage = max(kv_usage, stats.kv_usage)
        models.append({
            "name": model.name, "device": model.device, "memory_bytes": status["memory_bytes"],
            "context_length": status["context_length"], "expires_at": _iso(status["expires_at"]),
            "running": stats.running, "waiting": stats.waiting, "kv_usage": stats.kv_usage,
            "prefix_hit_rate": stats.prefix_hit_rate,
        })  # fmt: skip
    recent = ctx.metrics.recent
    now = time.time()
    return {
        "time": now,
        "uptime_s": round(now - ctx.started, 3),
        "version": __version__,
        **machine,
        "models": models,
        "requests": {"running": running, "waiting": waiting, "total": recent.requests},
        "tokens": {
            "generated_total": recent.generated_tokens,
            "prompt_total": recent.prompt_tokens,
            "tokens_per_s": round(recent.tokens_per_s(), 2),
        },
        "ttft": recent.ttft_summary(),
        "kv_usage": kv_usage,
    }


@router.get("")
async def stats(request: Request) -> dict:
    return await snapshot(context(request))


@router.get("/stream", include_in_schema=False)  # endless: no schema-driven client can call it
async def stats_stream(request: Request, interval: float = Query(1.0, ge=0.25, le=10)) -> StreamingResponse:
    ctx = context(request)

    async def frames() -> AsyncIterator[str]:
        while True:  # ends when the client goes away (Starlette cancels the response)
            started = time.monotonic()
            yield f"data: {dumps(await snapshot(ctx))}\n\n"
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)
