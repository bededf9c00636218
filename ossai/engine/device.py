"""Choosing the device, the compute dtype and the thread count."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ossai.errors import BadRequest


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when a GPU is usable, else cpu; 'cuda:N' checked against what is present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BadRequest(f"unknown device {device!r} (use auto, cpu or cuda[:N])") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadRequest(f"device {device!r} requested but no CUDA/ROCm GPU is available to torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadRequest(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif dev.type != "cpu":
        raise BadRequest(f"unsupported device {device!r} (use auto, cpu or cuda[:N])")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    # CPU: fp32 activations (bf16 weights upcast per op) match the reference math exactly and are what
    # the CPU kernels accumulate in. GPU: bf16 like the reference's triton path.
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads share a core's FPUs)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def set_threads(threads: int | None) -> int:
    n = threads or physical_cores()
    if n < 1:
        raise BadRequest(f"threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    return n
