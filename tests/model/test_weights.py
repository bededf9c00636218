"""Checkpoint discovery, validation errors and memory-mapped loading."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ossai.config import ModelConfig
from ossai.errors import ModelLoadError
from ossai.model.weights import Checkpoint, expected_tensors
from ossai.testing.checkpoint import PRESETS, write_checkpoint


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def test_both_layouts_hold_the_same_weights(tiny_checkpoints):
    hf = Checkpoint.open(tiny_checkpoints(0, "hf"))
    orig = Checkpoint.open(tiny_checkpoints(0, "original"))
    assert (hf.layout, orig.layout) == ("hf", "original")
    assert hf.config == orig.config == PRESETS["tiny"]
    names = [
        "embedding.weight",
        "block.1.attn.k.weight",
        "block.2.attn.v.bias",
        "block.3.mlp.mlp1_bias",
        "block.3.mlp.mlp1_weight.blocks",
        "block.0.mlp.mlp2_weight.scales",
        "unembedding.weight",
    ]
    for name in names:
        assert torch.equal(hf.get(name), orig.get(name)), name
    assert len(list(hf.root.glob("model-*.safetensors"))) >= 2  # sharded, with an index


def test_original_dir_and_repo_root_both_load(tiny_checkpoints):
    root = tiny_checkpoints(0, "original")
    assert Checkpoint.open(root).root == root / "original"
    assert Checkpoint.open(root / "original").layout == "original"


def test_full_size_tensor_tables_match_the_published_checkpoints():
    # total_size of openai/gpt-oss-20b's model.safetensors.index.json, and 48 FP4 + 48 UE8 + 267 BF16 tensors
    table = expected_tensors(PRESETS["20b"], "original")
    assert len(table) == 363
    assert sum(torch.Size(s).numel() * (2 if d == "BF16" else 1) for s, d in table.values()) == 13_761_264_768
    assert table["block.0.mlp.mlp1_weight.blocks"] == ((32, 5760, 90, 16), "U8")
    assert table["block.23.attn.qkv.weight"] == ((5120, 2880), "BF16")
    assert expected_tensors(PRESETS["120b"], "hf")["model.layers.35.mlp.experts.down_proj_scales"] == (
        (128, 2880, 90),
        "U8",
    )
    assert abs(PRESETS["20b"].param_count() / 1e9 - 20.91) < 0.01
    assert abs(PRESETS["120b"].param_count() / 1e9 - 116.83) < 0.01


def _rewrite_header(file: Path, edit) -> None:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    file.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "original/model.safetensors").unlink(), "no *.safetensors"),
        (lambda d: (d / "original/config.json").unlink(), "missing config.json"),
        (lambda d: os.truncate(d / "original/model.safetensors", 10_000_000), "truncated: tensor"),
        (lambda d: os.truncate(d / "original/model.safetensors", 4), "not a safetensors file"),
        (lambda d: (d / "original/model.safetensors").write_bytes(b"\xff" * 64), "corrupt or truncated"),
        (lambda d: (d / "original/config.json").write_text("{not json"), "invalid JSON"),
        (
            lambda d: (d / "original/config.json").write_text(
                json.dumps({**PRESETS["tiny"].to_original(), "num_layers": 3})
            ),
            "unknown config keys num_layers",
        ),
        (
            lambda d: (d / "original/config.json").write_text(
                json.dumps({**PRESETS["tiny"].to_original(), "hidden_size": "big"})
            ),
            "hidden_size must be a number",
        ),
        (
            lambda d: (d / "original/config.json").write_text(
                json.dumps({**PRESETS["tiny"].to_original(), "num_hidden_layers": 5})
            ),
            "missing tensor block.4",
        ),
        (
            lambda d: _rewrite_header(
                d / "original/model.safetensors",
                lambda h: h["block.1.attn.sinks"].update(dtype="F16"),
            ),
            "block.1.attn.sinks has dtype F16, expected BF16",
        ),
        (
            lambda d: _rewrite_header(
                d / "original/model.safetensors",
                lambda h: h["block.0.mlp.gate.bias"].update(shape=[2, 4]),
            ),
            "block.0.mlp.gate.bias has shape [2, 4], expected [8]",
        ),
    ],
)
def test_bad_checkpoints_give_one_readable_error(tiny, tmp_path, damage, message):
    ckpt = _copy(tiny, tmp_path)
    damage(ckpt)
    with pytest.raises(ModelLoadError, match=re.escape(message)) as info:
        Checkpoint.open(ckpt)
    assert "\n" not in str(info.value)


def test_hf_config_with_unknown_key_or_missing_index_file(tiny_checkpoints, tmp_path):
    ckpt = _copy(tiny_checkpoints(0, "hf"), tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "frobnicate": 1}))
    with pytest.raises(ModelLoadError, match="unknown config keys frobnicate"):
        Checkpoint.open(ckpt)
    (ckpt / "config.json").write_text(json.dumps(config))
    next(ckpt.glob("model-00001-*.safetensors")).unlink()
    with pytest.raises(ModelLoadError, match="missing weight file"):
        Checkpoint.open(ckpt)


def test_config_validation():
    with pytest.raises(ModelLoadError, match="experts_per_token"):
        ModelConfig(num_experts=2, experts_per_token=4)
    with pytest.raises(ModelLoadError, match="multiple of 32"):
        ModelConfig(hidden_size=100)


def test_cli_reports_a_bad_checkpoint_in_one_line(tiny, tmp_path):
    ckpt = _copy(tiny, tmp_path)
    os.truncate(ckpt / "original/model.safetensors", 1_000_000)
    proc = subprocess.run(
        [sys.executable, "-m", "ossai.cli", "generate", str(ckpt), "--raw", "--tokens", "1,2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "truncated" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


RSS_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    from ossai.engine import Engine

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    torch.ones(1)  # settle torch's own allocations first
    base = rss()
    engine = Engine.load(sys.argv[1])
    loaded = rss()
    engine.logits(list(range(1000, 1064)))
    with torch.inference_mode():  # touch every byte of every weight
        for buf in engine.model.buffers():
            buf.view(torch.uint8).flatten()[::4096].sum()  # reads a byte of every page, copies nothing big
    print(json.dumps({"load": loaded - base, "touched": rss() - base, "size": engine.checkpoint.size_bytes}))
    """
)


def test_loading_maps_weights_instead_of_copying(tmp_path):
    # large enough (~0.75 GB) that a copy would stand out above torch's own ~50 MB of allocations
    config = ModelConfig(num_hidden_layers=2, num_experts=16, hidden_size=768, intermediate_size=768,
                         head_dim=64, num_attention_heads=8, num_key_value_heads=2)  # fmt: skip
    root = write_checkpoint(config, tmp_path, "original", seed=0)
    proc = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(root)], capture_output=True, text=True, check=True
    )
    figures = json.loads(proc.stdout)
    assert figures["load"] < 0.05 * figures["size"]  # nothing is read at load time
    assert figures["touched"] <= 1.15 * figures["size"], figures
