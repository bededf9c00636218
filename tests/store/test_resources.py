"""The resource manager: estimates checked by hand, device choice and refusals on simulated machines."""

from __future__ import annotations

import json
import logging
import math
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ossai.cli import app
from ossai.errors import BadRequest
from ossai.model.weights import DTYPES, expected_tensors
from ossai.store import resources
from ossai.store.resources import CPU_RESERVE, GPU_RESERVE, MIB, Gpu, Resources
from ossai.testing.checkpoint import PRESETS

GB = 10**9
SHAPE_20B = PRESETS["20b"]
WEIGHTS_20B = 13_761_264_768  # the tensor bytes of gpt-oss-20b's shape (MXFP4 experts, bf16 elsewhere)


def machine(ram_gb: float, available_gb: float | None = None, gpus: tuple[Gpu, ...] = ()) -> Resources:
    total = int(ram_gb * GB)
    available = total if available_gb is None else int(available_gb * GB)
    return Resources("simulated", 8, 16, total, available, gpus)


def gpu(index: int, free_gb: float, total_gb: float = 80.0) -> Gpu:
    return Gpu(index, f"Simulated GPU {index}", "nvidia", int(total_gb * GB), int(free_gb * GB))


@pytest.fixture
def ckpt_20b(tmp_path: Path) -> Path:
    """A 20b-shape checkpoint without its 13 GB of files: config.json only (estimates use the config)."""
    directory = tmp_path / "gpt-oss-20b"
    (directory / "original").mkdir(parents=True)
    (directory / "original" / "config.json").write_text(json.dumps(SHAPE_20B.to_original()))
    return directory


# -- estimates ----------------------------------------------------------------------------------------------
def test_20b_estimate_matches_a_hand_computation(ckpt_20b):
    est = resources.estimate(ckpt_20b, context_tokens=8192, kv_dtype_bytes=2)
    assert est.layout == "original" and est.file_bytes == 0
    assert est.weights_bytes == WEIGHTS_20B
    # 24 layers alternate sliding/full: 12 full layers hold 8192 positions, 12 sliding ones their 128;
    # each position: keys + values, 8 KV heads * 64 dims, bf16
    assert est.kv_bytes == (12 * 8192 + 12 * 128) * 2 * 8 * 64 * 2 == 204_472_320
    assert est.total_bytes == WEIGHTS_20B + 204_472_320
    # shorter than the window: every layer holds just the context
    assert resources.estimate(ckpt_20b, 100, 4).kv_bytes == 24 * 100 * 2 * 512 * 4


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_weight_bytes_agree_with_the_loaders_tensor_table(preset):
    config = PRESETS[preset]
    for layout in ("original", "hf"):
        table = expected_tensors(config, layout)
        assert resources.weight_bytes(config) == sum(
            math.prod(shape) * DTYPES[dtype][1] for shape, dtype in table.values()
        )


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_estimate_reads_the_files_of_the_layout_the_loader_uses(tiny_checkpoints, layout):
    directory = tiny_checkpoints(0, layout)
    est = resources.estimate(directory, context_tokens=1024)
    root = directory / "original" if layout == "original" else directory
    assert est.layout == layout
    assert est.file_bytes == sum(p.stat().st_size for p in root.glob("*.safetensors"))
    # files = tensor data + small JSON headers
    assert 0 < est.file_bytes - est.weights_bytes < 64 * 1024 * len(list(root.glob("*.safetensors")))


def test_estimate_rejects_an_empty_context(ckpt_20b):
    with pytest.raises(BadRequest, match="context_tokens"):
        resources.estimate(ckpt_20b, 0)


# -- plans on simulated machines -----------------------------------------------------------------------------
def test_20b_on_an_8gb_machine_is_refused_with_the_figures(ckpt_20b):
    with pytest.raises(BadRequest) as info:
        resources.plan(ckpt_20b, device="cpu", resources=machine(8))
    message = str(info.value)
    kv = int(0.1 * 8 * GB)  # the engine's default KV share of RAM
    assert f"needs {(WEIGHTS_20B + kv) / GB:.2f} GB" in message  # 14.56
    assert f"has {(8 * GB - CPU_RESERVE) / GB:.2f} GB" in message  # 7.46
    assert "gpt-oss-20b" in message and "\n" not in message


def test_20b_fits_a_32gb_machine_on_cpu(ckpt_20b):
    plan = resources.plan(ckpt_20b, device="cpu", kv_cache_mb=1024, resources=machine(32))
    assert plan.device == "cpu" and plan.warnings == ()
    assert (plan.weights_bytes, plan.kv_bytes) == (WEIGHTS_20B, 1024 * MIB)
    assert plan.available_bytes == 32 * GB - CPU_RESERVE
    assert plan.summary() == "device cpu, weights 13.76 GB, KV 1.07 GB, available 31.46 GB"


def test_cpu_short_of_available_memory_warns_instead_of_refusing(ckpt_20b, caplog):
    # the weights are mmapped: MemTotal bounds them, a low MemAvailable only means paging
    with caplog.at_level(logging.WARNING, logger="ossai.store.resources"):
        plan = resources.plan(ckpt_20b, "cpu", kv_cache_mb=512, resources=machine(16, available_gb=6))
    assert plan.device == "cpu" and len(plan.warnings) == 1
    assert "paging" in caplog.text and "6.00 GB" in caplog.text


def test_context_tokens_sizes_the_kv_in_the_devices_dtype(ckpt_20b):
    cpu = resources.plan(ckpt_20b, "cpu", context_tokens=8192, resources=machine(64))
    assert cpu.kv_bytes == 2 * 204_472_320  # fp32 KV on CPU
    cuda = resources.plan(ckpt_20b, "cuda", context_tokens=8192, resources=machine(64, gpus=(gpu(0, 40),)))
    assert (cuda.device, cuda.kv_bytes) == ("cuda:0", 204_472_320)  # bf16 on GPU


def test_auto_picks_the_first_gpu_with_room(ckpt_20b):
    box = machine(64, gpus=(gpu(0, 12, 16), gpu(1, 70)))
    plan = resources.plan(ckpt_20b, "auto", kv_cache_mb=2048, resources=box)
    assert plan.device == "cuda:1"
    assert plan.available_bytes == 70 * GB - GPU_RESERVE
    both = resources.plan(
        ckpt_20b, "auto", kv_cache_mb=2048, resources=machine(64, gpus=(gpu(0, 70), gpu(1, 70)))
    )
    assert both.device == "cuda:0"


def test_auto_picks_cpu_without_a_gpu_or_when_none_has_room(ckpt_20b):
    assert resources.plan(ckpt_20b, "auto", resources=machine(64)).device == "cpu"
    small = machine(64, gpus=(gpu(0, 8, 8), gpu(1, 12, 12)))
    assert resources.plan(ckpt_20b, "auto", kv_cache_mb=1024, resources=small).device == "cpu"


def test_auto_refuses_when_nothing_fits_and_says_what_it_tried(ckpt_20b):
    with pytest.raises(BadRequest) as info:
        resources.plan(ckpt_20b, "auto", kv_cache_mb=1024, resources=machine(8, gpus=(gpu(0, 8, 8),)))
    message = str(info.value)
    assert "cuda:0 has 6.93 GB" in message and "cpu has 7.46 GB" in message and "\n" not in message


def test_a_gpu_too_small_is_refused_when_named(ckpt_20b):
    with pytest.raises(BadRequest, match=r"needs 14\.84 GB .* cuda:0 has 10\.93 GB"):
        resources.plan(ckpt_20b, "cuda:0", kv_cache_mb=1024, resources=machine(64, gpus=(gpu(0, 12),)))


@pytest.mark.parametrize(
    ("device", "gpus", "message"),
    [
        ("cuda", (), "no GPU was detected"),
        ("cuda:2", (gpu(0, 80), gpu(1, 80)), "only 2 GPU"),
        ("cuda:x", (gpu(0, 80),), "unknown device"),
        ("tpu", (), "unknown device"),
    ],
)
def test_bad_device_requests(ckpt_20b, device, gpus, message):
    with pytest.raises(BadRequest, match=message):
        resources.plan(ckpt_20b, device, resources=machine(64, gpus=gpus))


# -- detection ----------------------------------------------------------------------------------------------
def test_detect_this_machine(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML: import fails like a missing package
    found = resources.detect()
    assert found.ram_total_bytes >= found.ram_available_bytes > 0
    assert 1 <= found.physical_cores <= found.logical_cores
    assert found.cpu_name
    json.dumps(found.to_json())


def _fake_nvml(names: list[str], free_gb: list[float], fail_init: bool = False) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")

    def init() -> None:
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: len(names)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda n: n  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: names[h].encode()  # type: ignore[attr-defined]  # older: bytes
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-{h}abc"  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(  # type: ignore[attr-defined]
        total=80 * GB, free=int(free_gb[h] * GB)
    )
    return nvml


def test_detect_reads_nvidia_gpus_through_nvml_in_torchs_order(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(["A", "B", "C"], [10, 20, 30]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = resources.detect().gpus
    assert [(g.index, g.name, g.vendor, g.free_bytes) for g in gpus] == [
        (0, "A", "nvidia", 10 * GB), (1, "B", "nvidia", 20 * GB), (2, "C", "nvidia", 30 * GB)
    ]  # fmt: skip
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-0")  # torch's cuda:0 is NVML's 2, cuda:1 is 0
    assert [(g.index, g.name) for g in resources.detect().gpus] == [(0, "C"), (1, "A")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert resources.detect().gpus == ()


def test_detect_without_a_driver_has_no_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(["A"], [10], fail_init=True))
    monkeypatch.setattr(resources, "_torch_gpus", lambda: [])
    assert resources.detect().gpus == ()


# -- ossai serve --------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a stand-in Engine.load: the test only needs serve up to loading."""


def test_serve_refuses_before_loading_and_prints_its_plan(tiny, monkeypatch):
    from ossai.engine import Engine

    loaded: list[str] = []

    def load(path, config=None, **kwargs):
        loaded.append(config.device)
        raise _Stop

    monkeypatch.setattr(Engine, "load", load)
    monkeypatch.setattr(resources, "detect", lambda: machine(0.6))  # a 600 MB machine
    runner = CliRunner()
    refused = runner.invoke(app, ["serve", str(tiny), "--device", "auto"])
    assert isinstance(refused.exception, BadRequest) and loaded == []
    assert "needs" in str(refused.exception) and "cpu has 0.06 GB" in str(refused.exception)

    monkeypatch.setattr(resources, "detect", lambda: machine(16, gpus=(gpu(0, 1, 1), gpu(1, 40))))
    started = runner.invoke(app, ["serve", str(tiny), "--device", "auto"])
    assert isinstance(started.exception, _Stop) and loaded == ["cuda:1"]
    assert "ossai: plan: device cuda:1, weights 0.05 GB, KV " in started.stderr
