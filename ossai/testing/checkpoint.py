"""Random-weight gpt-oss checkpoints in the exact official on-disk formats, for tests and benchmarks.

    python -m ossai.testing.checkpoint --preset tiny --seed 0 --out /tmp/tiny
    python -m ossai.testing.checkpoint --preset 20b --layers 4 --layout hf --seed 0 --out /tmp/20b-4l

Real tensor names, dtypes and shapes; MXFP4 experts with magnitudes like a trained model's (per-block
scales around 1/sqrt(fan_in)). Every tensor is drawn from a generator seeded by (seed, tensor name), so the
two layouts written with the same seed hold the same weights. Files are streamed tensor by tensor (no
whole-model buffer), which writes a 13 GB 20b-shape checkpoint in a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ossai.config import MXFP4_BLOCK, ModelConfig
from ossai.model.weights import DTYPES, Layout, expected_tensors, internal_names, source_of

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        num_hidden_layers=4, num_experts=8, experts_per_token=4, vocab_size=201088, hidden_size=64,
        intermediate_size=64, head_dim=16, num_attention_heads=8, num_key_value_heads=2,
    ),
    "20b": ModelConfig(num_hidden_layers=24, num_experts=32),
    "120b": ModelConfig(num_hidden_layers=36, num_experts=128),
}  # fmt: skip

HF_SHARD_BYTES = 4_800_000_000  # ~ the official HF shards
ORIGINAL_SHARD_BYTES = 16_000_000_000  # 20b's original/ is one file, 120b's is seven
FP4_STD = math.sqrt(sum(v * v for v in (0, 0.5, 1, 1.5, 2, 3, 4, 6)) / 8)  # std of a uniform random nibble


def tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def make_original_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The random tensor stored under original-layout `name`."""
    rng = np.random.default_rng(tensor_seed(seed, name))
    if name.endswith(".blocks"):
        return torch.from_numpy(np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape).copy())
    if name.endswith(".scales"):
        # fan-in = blocks per row * 32; aim the weights' std at 1/sqrt(fan_in), jitter one binade
        fan_in = shape[-1] * MXFP4_BLOCK
        centre = 127 + round(math.log2(1.0 / (FP4_STD * math.sqrt(fan_in))))
        return torch.from_numpy(rng.integers(centre - 1, centre + 2, size=shape, dtype=np.uint8))
    if name.endswith("norm.scale"):
        values = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
    elif name.endswith("sinks"):
        values = rng.standard_normal(shape, dtype=np.float32)
    elif name.endswith("bias"):
        values = 0.02 * rng.standard_normal(shape, dtype=np.float32)
    elif name == "embedding.weight":
        values = rng.standard_normal(shape, dtype=np.float32)
    else:  # linear weights [out, in]
        values = rng.standard_normal(shape, dtype=np.float32) / math.sqrt(shape[-1])
    return torch.from_numpy(values).to(torch.bfloat16)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


def write_safetensors(path: Path, specs: dict[str, tuple[tuple[int, ...], str]], make, metadata=None) -> int:
    """Stream tensors into one safetensors file: header first (offsets from the specs), then data.

    `make(name)` returns each tensor. Wider dtypes go first so every tensor is aligned to its itemsize.
    """
    order = sorted(specs, key=lambda n: (-DTYPES[specs[n][1]][1], n))
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name in order:
        shape, dtype = specs[name]
        size = math.prod(shape) * DTYPES[dtype][1]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            shape, dtype = specs[name]
            t = make(name)
            if tuple(t.shape) != tuple(shape) or t.dtype != DTYPES[dtype][0]:
                raise AssertionError(f"{name}: made {tuple(t.shape)} {t.dtype}, header says {shape} {dtype}")
            f.write(tensor_bytes(t))
    os.replace(tmp, path)
    return offset


def _shards(specs: dict[str, tuple[tuple[int, ...], str]], limit: int, at_least: int) -> list[list[str]]:
    """Split tensor names (in model order) into shards of about `limit` bytes."""
    sizes = {n: math.prod(s) * DTYPES[d][1] for n, (s, d) in specs.items()}
    count = max(at_least, math.ceil(sum(sizes.values()) / limit))
    target = sum(sizes.values()) / count
    shards: list[list[str]] = [[]]
    filled = 0.0
    for name in specs:
        if filled >= target and len(shards) < count:
            shards.append([])
            filled = 0.0
        shards[-1].append(name)
        filled += sizes[name]
    return shards


def write_checkpoint(
    config: ModelConfig, out: Path, layout: Layout = "original", seed: int = 0, progress: bool = False
) -> Path:
    """Write a random checkpoint; returns the directory that holds its config.json."""
    originals = expected_tensors(config, "original")

    def original(name: str) -> torch.Tensor:
        return make_original_tensor(name, originals[name][0], seed)

    if layout == "original":
        root = out / "original"
        root.mkdir(parents=True, exist_ok=True)
        specs = originals

        def make(name: str) -> torch.Tensor:
            return original(name)

        shards = _shards(specs, ORIGINAL_SHARD_BYTES, 1)
        names = ["model.safetensors"] if len(shards) == 1 else [
            f"model--{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
        ]  # fmt: skip
        (root / "config.json").write_text(json.dumps(config.to_original(), indent=2) + "\n")
        dtypes = {
            n: {"U8": "FP4" if n.endswith(".blocks") else "UE8"}.get(d, d) for n, (_, d) in specs.items()
        }
        (root / "dtypes.json").write_text(json.dumps(dtypes, indent=2) + "\n")
    else:
        root = out
        root.mkdir(parents=True, exist_ok=True)
        specs = expected_tensors(config, "hf")
        stored_to_internal = {source_of(n, config, "hf")[0]: n for n in internal_names(config)}

        def make(name: str) -> torch.Tensor:
            internal = stored_to_internal[name]
            stored, rows = source_of(internal, config, "original")
            t = original(stored)
            return t if rows is None else t[rows].contiguous()

        shards = _shards(specs, HF_SHARD_BYTES, 2)
        # the official converter names shards 00000..0000N "of" N (an off-by-one kept for fidelity)
        names = [f"model-{i:05d}-of-{len(shards) - 1:05d}.safetensors" for i in range(len(shards))]
        (root / "config.json").write_text(json.dumps(config.to_hf(), indent=2) + "\n")
        (root / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012],
             "pad_token_id": 199999, "transformers_version": "4.55.0.dev0"}, indent=2) + "\n")  # fmt: skip

    total = 0
    weight_map = {}
    started = time.monotonic()
    for i, (file_name, shard) in enumerate(zip(names, shards, strict=True)):
        total += write_safetensors(root / file_name, {n: specs[n] for n in shard}, make)
        weight_map.update(dict.fromkeys(shard, file_name))
        if progress:
            print(
                f"  wrote {file_name} ({i + 1}/{len(names)}, {time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
    if layout == "hf":
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ossai.testing.checkpoint",
        description="Write a random-weight gpt-oss checkpoint in the official on-disk format.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--layers", type=int, help="override num_hidden_layers")
    parser.add_argument("--experts", type=int, help="override num_experts")
    parser.add_argument("--layout", choices=["original", "hf"], default="original")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output directory (created)")
    args = parser.parse_args(argv)
    config = PRESETS[args.preset]
    overrides = {"num_hidden_layers": args.layers, "num_experts": args.experts}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if config.experts_per_token > config.num_experts:
        config = dataclasses.replace(config, experts_per_token=config.num_experts)
    started = time.monotonic()
    root = write_checkpoint(config, args.out, args.layout, args.seed, progress=True)
    size = sum(f.stat().st_size for f in root.glob("*.safetensors"))
    print(f"{root}: {args.layout} layout, {config.num_hidden_layers} layers, {config.num_experts} experts, "
          f"{size / 1e9:.2f} GB in {time.monotonic() - started:.0f} s", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
