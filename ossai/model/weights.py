"""Finding, validating and memory-mapping gpt-oss checkpoints in either published layout.

- original: `original/config.json` (exactly the ModelConfig keys) + `model.safetensors` or
  `model--0000N-of-0000M.safetensors` shards, tensors named `block.N.attn.qkv.weight` and so on.
- hf: root `config.json` (transformers GptOssConfig) + `model-*.safetensors` shards listed by
  `model.safetensors.index.json`, tensors named `model.layers.N.self_attn.q_proj.weight` and so on.

The safetensors headers are parsed here (not by the safetensors package) so that every problem can be
reported as one sentence naming the file and the tensor. Tensor data is never read at load time: each
tensor is a view of a copy-on-write memory map of its file, so pages are read on first use and a loaded
model's resident memory stays at the checkpoint's size. MXFP4 experts stay packed (uint8).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ossai.config import MXFP4_BLOCK, ModelConfig
from ossai.errors import ModelLoadError
from ossai.model.mxfp4 import BYTES_PER_BLOCK

Layout = Literal["original", "hf"]

DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BF16": (torch.bfloat16, 2),
    "F16": (torch.float16, 2),
    "F32": (torch.float32, 4),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "I32": (torch.int32, 4),
    "I64": (torch.int64, 8),
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in `file`
    end: int


# -- the name maps ------------------------------------------------------------------------------------
# Internal names are the original layout's, except that the fused qkv projection is addressed as three
# row slices (q, k, v), which is how the HF layout stores it. A map entry is (on-disk name, row slice).


def internal_names(config: ModelConfig) -> list[str]:
    names = ["embedding.weight", "norm.scale", "unembedding.weight"]
    for n in range(config.num_hidden_layers):
        b = f"block.{n}"
        names += [f"{b}.attn.norm.scale", f"{b}.attn.sinks", f"{b}.attn.out.weight", f"{b}.attn.out.bias"]
        names += [f"{b}.attn.{p}.{w}" for p in "qkv" for w in ("weight", "bias")]
        names += [f"{b}.mlp.norm.scale", f"{b}.mlp.gate.weight", f"{b}.mlp.gate.bias"]
        names += [f"{b}.mlp.mlp{i}_{s}" for i in (1, 2) for s in ("weight.blocks", "weight.scales", "bias")]
    return names


_HF_SIMPLE = {
    "embedding.weight": "model.embed_tokens.weight",
    "unembedding.weight": "lm_head.weight",
    "norm.scale": "model.norm.weight",
    "attn.norm.scale": "input_layernorm.weight",
    "mlp.norm.scale": "post_attention_layernorm.weight",
    "attn.out.weight": "self_attn.o_proj.weight",
    "attn.out.bias": "self_attn.o_proj.bias",
    "attn.sinks": "self_attn.sinks",
    "mlp.gate.weight": "mlp.router.weight",
    "mlp.gate.bias": "mlp.router.bias",
    "mlp.mlp1_weight.blocks": "mlp.experts.gate_up_proj_blocks",
    "mlp.mlp1_weight.scales": "mlp.experts.gate_up_proj_scales",
    "mlp.mlp1_bias": "mlp.experts.gate_up_proj_bias",
    "mlp.mlp2_weight.blocks": "mlp.experts.down_proj_blocks",
    "mlp.mlp2_weight.scales": "mlp.experts.down_proj_scales",
    "mlp.mlp2_bias": "mlp.experts.down_proj_bias",
}


def source_of(name: str, config: ModelConfig, layout: Layout) -> tuple[str, slice | None]:
    """Where internal tensor `name` lives on disk: (stored name, row slice or None)."""
    parts = name.split(".")
    if parts[0] != "block":
        return (name if layout == "original" else _HF_SIMPLE[name]), None
    layer, rest = parts[1], ".".join(parts[2:])
    if rest[:7] in ("attn.q.", "attn.k.", "attn.v."):
        proj, kind = rest[5], rest[7:]
        if layout == "hf":
            return f"model.layers.{layer}.self_attn.{proj}_proj.{kind}", None
        q, kv = config.q_dim, config.kv_dim
        rows = {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv)}[proj]
        return f"block.{layer}.attn.qkv.{kind}", rows
    if layout == "original":
        return name, None
    return f"model.layers.{layer}.{_HF_SIMPLE[rest]}", None


def expected_tensors(config: ModelConfig, layout: Layout) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor a complete checkpoint holds: stored name -> (shape, safetensors dtype)."""
    c = config
    h, e, i, g = c.hidden_size, c.num_experts, c.intermediate_size, c.hidden_size // MXFP4_BLOCK
    gi = c.intermediate_size // MXFP4_BLOCK
    qkv = c.q_dim + 2 * c.kv_dim
    per_layer = {
        "attn.norm.scale": ((h,), "BF16"),
        "attn.qkv.weight": ((qkv, h), "BF16"),
        "attn.qkv.bias": ((qkv,), "BF16"),
        "attn.sinks": ((c.num_attention_heads,), "BF16"),
        "attn.out.weight": ((h, c.q_dim), "BF16"),
        "attn.out.bias": ((h,), "BF16"),
        "mlp.norm.scale": ((h,), "BF16"),
        "mlp.gate.weight": ((e, h), "BF16"),
        "mlp.gate.bias": ((e,), "BF16"),
        "mlp.mlp1_weight.blocks": ((e, 2 * i, g, BYTES_PER_BLOCK), "U8"),
        "mlp.mlp1_weight.scales": ((e, 2 * i, g), "U8"),
        "mlp.mlp1_bias": ((e, 2 * i), "BF16"),
        "mlp.mlp2_weight.blocks": ((e, h, gi, BYTES_PER_BLOCK), "U8"),
        "mlp.mlp2_weight.scales": ((e, h, gi), "U8"),
        "mlp.mlp2_bias": ((e, h), "BF16"),
    }
    table = {
        "embedding.weight": ((c.vocab_size, h), "BF16"),
        "norm.scale": ((h,), "BF16"),
        "unembedding.weight": ((c.vocab_size, h), "BF16"),
    }
    for n in range(c.num_hidden_layers):
        for rest, spec in per_layer.items():
            table[f"block.{n}.{rest}"] = spec
    if layout == "original":
        return table
    hf: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, spec in table.items():
        if ".attn.qkv." in name:
            layer, kind = name.split(".")[1], name.rsplit(".", 1)[1]
            for proj, rows in (("q", c.q_dim), ("k", c.kv_dim), ("v", c.kv_dim)):
                shape = (rows, h) if kind == "weight" else (rows,)
                hf[f"model.layers.{layer}.self_attn.{proj}_proj.{kind}"] = (shape, spec[1])
        else:
            hf[source_of(name, c, "hf")[0]] = spec
    return hf


# -- safetensors headers -------------------------------------------------------------------------------


def read_header(file: Path) -> dict[str, TensorInfo]:
    """Parse and check one safetensors header against the file's size."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{file}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelLoadError(f"{file}: corrupt or truncated safetensors header (declares {n} bytes)")
            raw = f.read(n)
    except OSError as exc:
        raise ModelLoadError(f"{file}: cannot read ({exc.strerror})") from exc
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{file}: corrupt safetensors header ({exc})") from exc
    base, data_size = 8 + n, size - 8 - n
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{file}: corrupt safetensors entry for tensor {name}") from exc
        if dtype not in DTYPES:
            raise ModelLoadError(f"{file}: tensor {name} has unsupported dtype {dtype}")
        if end - start != math.prod(shape) * DTYPES[dtype][1] or start < 0:
            raise ModelLoadError(f"{file}: tensor {name} has inconsistent data offsets")
        if end > data_size:
            raise ModelLoadError(
                f"{file}: truncated: tensor {name} ends at byte {base + end} but the file has {size} bytes"
            )
        out[name] = TensorInfo(name, file, dtype, shape, base + start, base + end)
    return out


# -- the checkpoint ------------------------------------------------------------------------------------


class Checkpoint:
    """A validated checkpoint directory; `get(name)` returns a memory-mapped tensor by internal name."""

    def __init__(self, root: Path, layout: Layout, config: ModelConfig, tensors: dict[str, TensorInfo]):
        self.root = root
        self.layout: Layout = layout
        self.config = config
        self.tensors = tensors
        self._maps: dict[Path, np.memmap] = {}

    @property
    def files(self) -> list[Path]:
        return sorted({t.file for t in self.tensors.values()})

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        root, layout = locate(Path(path))
        config = read_config(root / "config.json", layout)
        files = weight_files(root, layout)
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, info in read_header(file).items():
                if name in tensors:
                    raise ModelLoadError(f"{file}: tensor {name} is also in {tensors[name].file.name}")
                tensors[name] = info
        expected = expected_tensors(config, layout)
        for name, (shape, dtype) in expected.items():
            info = tensors.get(name)
            if info is None:
                raise ModelLoadError(f"{root}: missing tensor {name} (checked {len(files)} weight files)")
            if info.dtype != dtype:
                raise ModelLoadError(f"{info.file}: tensor {name} has dtype {info.dtype}, expected {dtype}")
            if info.shape != shape:
                raise ModelLoadError(
                    f"{info.file}: tensor {name} has shape {list(info.shape)}, expected {list(shape)}"
                )
        unexpected = sorted(set(tensors) - set(expected))
        if unexpected:
            file = tensors[unexpected[0]].file
            more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
            raise ModelLoadError(f"{file}: unexpected tensor {unexpected[0]}{more} for this config")
        return cls(root, layout, config, tensors)

    def _map(self, file: Path) -> np.memmap:
        if file not in self._maps:
            # mode "c" = MAP_PRIVATE: writable views for torch without ever writing to the file
            self._maps[file] = np.memmap(file, dtype=np.uint8, mode="c")
        return self._maps[file]

    def get(self, name: str) -> torch.Tensor:
        """The tensor for internal name `name`, as a view of the file mapping (no copy)."""
        stored, rows = source_of(name, self.config, self.layout)
        info = self.tensors[stored]
        dtype, itemsize = DTYPES[info.dtype]
        raw = torch.from_numpy(self._map(info.file)[info.start : info.end])
        if info.start % itemsize:  # unaligned in the file: the one case that needs a copy
            raw = raw.clone()
        tensor = raw.view(dtype).reshape(info.shape)
        return tensor if rows is None else tensor[rows]


def locate(path: Path) -> tuple[Path, Layout]:
    """The directory holding the config of the layout to load, and which layout it is."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: expected a checkpoint directory, got a file")
    original, config = path / "original", path / "config.json"
    # prefer original/ (the reference's layout) unless only the root has weights
    if (original / "config.json").is_file() and (any(original.glob("*.safetensors")) or not config.is_file()):
        return original, "original"
    if not config.is_file():
        raise ModelLoadError(
            f"{path}: missing config.json (neither the original/ nor the Hugging Face layout)"
        )
    data = _load_json(config)
    layout: Layout = "hf" if ("model_type" in data or "architectures" in data) else "original"
    return path, layout


def read_config(file: Path, layout: Layout) -> ModelConfig:
    data = _load_json(file)
    return (
        ModelConfig.from_hf(data, str(file)) if layout == "hf" else ModelConfig.from_original(data, str(file))
    )


def weight_files(root: Path, layout: Layout) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if layout == "hf" and index.is_file():
        weight_map = _load_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: no weight_map")
        files = sorted({root / str(f) for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise ModelLoadError(f"{f}: missing weight file (listed in {index.name})")
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{root}: no *.safetensors weight files")
    return files


def _load_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise ModelLoadError(f"{file}: cannot read ({exc.strerror})") from exc
    except ValueError as exc:
        raise ModelLoadError(f"{file}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file}: expected a JSON object")
    return data
