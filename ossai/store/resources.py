"""The resource manager: what this machine has (CPUs, RAM, GPUs), what a model needs, and where it fits.

`ossai serve` asks for a `plan` before loading, so a model that cannot fit is refused with one readable
line instead of an out-of-memory kill minutes into loading. Detection is separate from the arithmetic
(`plan` takes a `Resources`), so tests simulate a 4 GB laptop or a two-GPU box without owning one.

Torch-free at import time, like the rest of `store`: NVIDIA GPUs come from NVML (`pynvml`, package
`nvidia-ml-py`, optional); torch is imported lazily, and only when NVML found nothing, to see ROCm (AMD)
GPUs or CUDA GPUs on a machine without NVML.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ossai.config import MXFP4_BLOCK, ModelConfig
from ossai.errors import BadRequest
from ossai.store.models import DEFAULT_CONTEXT, checkpoint_layout, read_config

log = logging.getLogger(__name__)

GB = 1e9  # figures for people are decimal GB, like `ossai list` and `ossai show`
MIB = 2**20
BF16_BYTES = 2  # attention, router, embedding and bias tensors are stored as bf16
MXFP4_BLOCK_BYTES = MXFP4_BLOCK // 2  # 32 fp4 values pack into 16 bytes, plus one E8M0 scale byte
KV_DTYPE_BYTES = {"cpu": 4, "cuda": 2}  # the engine keeps KV in its compute dtype: fp32 on CPU, bf16 on GPU
KV_CACHE_FRACTION = 0.1  # EngineConfig's default: the KV pool is this share of the device's memory
CPU_RESERVE = 512 * MIB  # the process itself: python, torch, activations, the server
GPU_RESERVE = 1024 * MIB  # CUDA context, activations, allocator slack; not in NVML's free figure yet

Vendor = Literal["nvidia", "amd"]


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU as torch will number it (`cuda:{index}`), with its memory in bytes."""

    index: int
    name: str
    vendor: Vendor
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class Resources:
    """What `detect` found. Tests build these by hand to simulate machines."""

    cpu_name: str
    physical_cores: int
    logical_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: tuple[Gpu, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu_name,
            "physical_cores": self.physical_cores,
            "logical_cores": self.logical_cores,
            "ram_total_bytes": self.ram_total_bytes,
            "ram_available_bytes": self.ram_available_bytes,
            "gpus": [
                {"index": g.index, "name": g.name, "vendor": g.vendor, "total_bytes": g.total_bytes,
                 "free_bytes": g.free_bytes}
                for g in self.gpus
            ],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a checkpoint needs, in bytes.

    `weights_bytes` is the tensor data computed from config.json (what a GPU holds once loaded);
    `file_bytes` is the safetensors files the loader maps (what the page cache holds on CPU). They differ
    by the files' small headers, or entirely when the files are not there yet.
    """

    config: ModelConfig
    layout: str
    weights_bytes: int
    file_bytes: int
    context_tokens: int
    kv_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes


@dataclass(frozen=True, slots=True)
class Plan:
    """Where the model goes and why it fits: the figures `ossai serve` prints before loading."""

    device: str  # "cpu" or "cuda:N": pass this, not the user's "auto", to the engine
    weights_bytes: int  # on CPU the mmapped files (headers included), on a GPU the tensor data
    kv_bytes: int
    available_bytes: int  # what the device offers this model after the reserve
    warnings: tuple[str, ...] = field(default=())

    @property
    def needed_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes

    def summary(self) -> str:
        return (
            f"device {self.device}, weights {self.weights_bytes / GB:.2f} GB, "
            f"KV {self.kv_bytes / GB:.2f} GB, available {self.available_bytes / GB:.2f} GB"
        )


# -- what a model needs ---------------------------------------------------------------------------------
def weight_bytes(config: ModelConfig) -> int:
    """Bytes of tensor data in a complete checkpoint: MXFP4 experts (blocks + scales), bf16 elsewhere.

    Computed from the config rather than read from files, so it is exact before a pull finishes and
    identical for both layouts (they hold the same tensors under different names).
    """
    c = config
    h, e, i = c.hidden_size, c.num_experts, c.intermediate_size
    qkv = c.q_dim + 2 * c.kv_dim
    bf16 = 2 * c.vocab_size * h + h  # embedding, unembedding, final norm
    per_layer = 2 * h + qkv * h + qkv + c.num_attention_heads + h * c.q_dim + h  # norms, qkv, sinks, out
    per_layer += e * h + e + e * 2 * i + e * h  # router weight/bias, mlp1/mlp2 biases
    mxfp4_values = e * (2 * i * h + h * i)  # mlp1 [E, 2I, H] and mlp2 [E, H, I]
    mxfp4 = mxfp4_values // MXFP4_BLOCK * (MXFP4_BLOCK_BYTES + 1)
    return BF16_BYTES * (bf16 + c.num_hidden_layers * per_layer) + c.num_hidden_layers * mxfp4


def estimate(
    checkpoint_dir: str | Path, context_tokens: int = DEFAULT_CONTEXT, kv_dtype_bytes: int = BF16_BYTES
) -> Estimate:
    """Weights and KV bytes for a checkpoint directory (either layout), read the way the loader reads it."""
    if context_tokens < 1:
        raise BadRequest(f"context_tokens must be at least 1, got {context_tokens}")
    layout, root = checkpoint_layout(Path(checkpoint_dir))
    _, config = read_config(Path(checkpoint_dir))
    files = sum(p.stat().st_size for p in root.glob("*.safetensors") if p.is_file())
    return Estimate(
        config=config,
        layout=layout,
        weights_bytes=weight_bytes(config),
        file_bytes=files,
        context_tokens=context_tokens,
        kv_bytes=config.kv_bytes(context_tokens, kv_dtype_bytes),
    )


# -- choosing the device --------------------------------------------------------------------------------
def plan(
    checkpoint_dir: str | Path,
    device: str = "auto",
    kv_cache_mb: float | None = None,
    context_tokens: int | None = None,
    resources: Resources | None = None,
) -> Plan:
    """Pick the device for a model and check it fits; raise `BadRequest` (one line) when it cannot.

    The KV figure is what the engine will allocate: `kv_cache_mb` when given, else KV for
    `context_tokens` when given, else the engine's default share of the device's memory.
    `device="auto"` takes the first GPU with room for weights + KV, else the CPU.
    CPU weights are mmapped, so the bound is MemTotal (the page cache can hold them all); being short of
    MemAvailable only costs paging, which is logged as a warning rather than refused.
    """
    res = resources if resources is not None else detect()
    est = estimate(checkpoint_dir, context_tokens or DEFAULT_CONTEXT)
    name = Path(checkpoint_dir).name
    match device.strip().lower():
        case "auto":
            refusals = []
            for gpu in res.gpus:
                candidate = _gpu_plan(est, gpu, kv_cache_mb, context_tokens)
                if candidate.needed_bytes <= candidate.available_bytes:
                    return candidate
                refusals.append(f"cuda:{gpu.index} has {candidate.available_bytes / GB:.2f} GB")
                log.info("%s does not fit cuda:%d: %s", name, gpu.index, candidate.summary())
            cpu = _cpu_plan(est, res, kv_cache_mb, context_tokens)
            _check(name, cpu, "; ".join(refusals))
            return cpu
        case "cpu":
            cpu = _cpu_plan(est, res, kv_cache_mb, context_tokens)
            _check(name, cpu)
            return cpu
        case spec if spec == "cuda" or spec.startswith("cuda:"):
            index_text = spec.partition(":")[2] or "0"
            if not index_text.isdigit():
                raise BadRequest(f"unknown device {device!r} (use auto, cpu or cuda[:N])")
            index = int(index_text)
            found = next((g for g in res.gpus if g.index == index), None)
            if found is None:
                have = f"only {len(res.gpus)} GPU(s) were detected" if res.gpus else "no GPU was detected"
                raise BadRequest(f"device {device!r} requested but {have}")
            gpu_plan = _gpu_plan(est, found, kv_cache_mb, context_tokens)
            _check(name, gpu_plan)
            return gpu_plan
        case _:
            raise BadRequest(f"unknown device {device!r} (use auto, cpu or cuda[:N])")


def _kv(est: Estimate, kind: str, kv_cache_mb: float | None, context: int | None, memory: int) -> int:
    if kv_cache_mb is not None:
        return int(kv_cache_mb * MIB)
    if context is not None:
        return est.config.kv_bytes(context, KV_DTYPE_BYTES[kind])
    return int(KV_CACHE_FRACTION * memory)  # the engine's own default (Runner: fraction of the memory)


def _cpu_plan(est: Estimate, res: Resources, kv_cache_mb: float | None, context: int | None) -> Plan:
    mapped = est.file_bytes or est.weights_bytes  # the mmapped files, headers and all
    kv = _kv(est, "cpu", kv_cache_mb, context, res.ram_total_bytes)
    warnings = []
    if mapped + kv > res.ram_available_bytes:
        warnings.append(
            f"weights + KV ({(mapped + kv) / GB:.2f} GB) exceed the memory available now "
            f"({res.ram_available_bytes / GB:.2f} GB): expect paging from disk and slow first requests"
        )
    available = max(0, res.ram_total_bytes - CPU_RESERVE)
    return Plan("cpu", mapped, kv, available, tuple(warnings))


def _gpu_plan(est: Estimate, gpu: Gpu, kv_cache_mb: float | None, context: int | None) -> Plan:
    # the engine measures free memory for its KV share after the weights are on the GPU
    kv = _kv(est, "cuda", kv_cache_mb, context, max(0, gpu.free_bytes - est.weights_bytes))
    return Plan(f"cuda:{gpu.index}", est.weights_bytes, kv, max(0, gpu.free_bytes - GPU_RESERVE))


def _check(name: str, chosen: Plan, others: str = "") -> None:
    if chosen.needed_bytes > chosen.available_bytes:
        where = "RAM" if chosen.device == "cpu" else f"free memory on {chosen.device}"
        tried = f" (GPUs: {others})" if others else ""
        raise BadRequest(
            f"{name} needs {chosen.needed_bytes / GB:.2f} GB (weights {chosen.weights_bytes / GB:.2f} GB"
            f" + KV {chosen.kv_bytes / GB:.2f} GB) but {chosen.device} has {chosen.available_bytes / GB:.2f}"
            f" GB of {where} after a reserve{tried}; try a smaller --kv-cache-mb or another --device"
        )
    for warning in chosen.warnings:
        log.warning("%s on %s: %s", name, chosen.device, warning)


# -- what this machine has ------------------------------------------------------------------------------
def detect() -> Resources:
    """CPUs, RAM and GPUs of this machine, as the engine will see them. Never raises for a missing GPU."""
    total, available = _memory()
    logical = os.cpu_count() or 1
    return Resources(
        cpu_name=cpu_name(),
        physical_cores=_physical_cores() or logical,
        logical_cores=logical,
        ram_total_bytes=total,
        ram_available_bytes=available,
        gpus=tuple(_nvml_gpus() or _torch_gpus()),
    )


def _memory(meminfo: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes; sysconf where there is no /proc (macOS)."""
    values: dict[str, int] = {}
    try:
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * 1024  # kB
    except OSError:
        pass
    if "MemTotal" in values:
        return values["MemTotal"], values.get("MemAvailable", values.get("MemFree", values["MemTotal"]))
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 0
    return total, total


def cpu_name() -> str:
    """The CPU's model name (x86 `model name`, ARM `Hardware`), for reports and benchmarks."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _physical_cores() -> int:
    """Distinct cores among the CPUs the kernel lists (hyper-threads share one)."""
    cores = set()
    for siblings in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            continue
    return len(cores)


def _visible(count: int, uuids: list[str]) -> list[int]:
    """NVML indices in torch's order, honouring CUDA_VISIBLE_DEVICES (integers or GPU UUIDs)."""
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(count))
    chosen: list[int] = []
    for entry in (e.strip() for e in spec.split(",")):
        if entry.isdigit() and int(entry) < count:
            chosen.append(int(entry))
        elif entry.startswith("GPU-") and (hit := [n for n, u in enumerate(uuids) if u.startswith(entry)]):
            chosen.append(hit[0])
        else:
            break  # CUDA stops at the first invalid entry
    return chosen


def _nvml_gpus() -> list[Gpu]:
    """NVIDIA GPUs through NVML; [] when nvidia-ml-py is missing or there is no driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses: no driver, no library
        log.debug("NVML unavailable: %s", exc)
        return []
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(n) for n in range(pynvml.nvmlDeviceGetCount())]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        gpus = []
        for index, nvml_index in enumerate(_visible(len(handles), uuids)):
            handle = handles[nvml_index]
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            gpus.append(Gpu(index, name, "nvidia", int(memory.total), int(memory.free)))
        return gpus
    except Exception as exc:
        log.warning("NVML could not describe the GPUs (%s); asking torch instead", exc)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown: %s", exc)


def _torch_gpus() -> list[Gpu]:
    """GPUs torch sees: AMD under a ROCm build, or NVIDIA when NVML is absent. [] without torch/GPUs."""
    try:
        import torch  # lazy: store stays torch-free at import; serve has torch loaded anyway
    except ImportError:
        return []
    try:
        if not torch.cuda.is_available():
            return []
        vendor: Vendor = "amd" if getattr(torch.version, "hip", None) else "nvidia"
        gpus = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(Gpu(index, torch.cuda.get_device_name(index), vendor, int(total), int(free)))
        return gpus
    except RuntimeError as exc:
        log.warning("torch could not describe the GPUs: %s", exc)
        return []


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
