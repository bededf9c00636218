"""The bundled ossai-demo: packed by training.package, verified and unpacked into the store on first use,
and the default MODEL when none is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ossai.cli import app
from ossai.errors import ModelLoadError, NotFound
from ossai.model.weights import Checkpoint
from ossai.store import demo, import_model, list_models, models
from training.package import pack


@pytest.fixture(scope="module")
def sparse(tiny_checkpoints, tmp_path_factory) -> Path:
    """A random tiny checkpoint whose embedding rows past the first 1000 are zero, like the trained demo's
    unused tokens (random rows would not compress)."""
    out = tmp_path_factory.mktemp("sparse")
    shutil.copytree(tiny_checkpoints(0, "original"), out, dirs_exist_ok=True)
    weights = out / "original" / "model.safetensors"
    tensors = load_file(weights)
    for name in ("embedding.weight", "unembedding.weight"):
        tensors[name][1000:] = 0
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


@pytest.fixture
def bundle(sparse, tmp_path, monkeypatch) -> Path:
    """A demo archive packed from `sparse`, in place of the shipped one."""
    out = tmp_path / "data"
    archive = pack(sparse, {"steps": 1}, out)
    monkeypatch.setattr(demo, "ARCHIVE", archive)
    monkeypatch.setattr(demo, "RECORD", out / demo.RECORD.name)
    return archive


def test_unpacked_verified_and_registered_once(bundle, sparse):
    manifest = demo.ensure()
    assert manifest.name == "ossai-demo" and manifest.mode == "bundled"
    assert manifest.extra["description"] == demo.DESCRIPTION
    Checkpoint.open(models.resolve("ossai-demo"))  # loads through the normal path
    source = sparse / "original" / "model.safetensors"
    unpacked = models.resolve("ossai-demo") / "original" / "model.safetensors"
    assert unpacked.read_bytes() == source.read_bytes()
    assert demo.ensure().added == manifest.added  # not unpacked twice
    assert [m.name for m in list_models()] == ["ossai-demo"]


def test_a_retrained_demo_replaces_the_unpacked_one(bundle, sparse, tmp_path, monkeypatch):
    old = demo.ensure()
    retrained = tmp_path / "retrained"
    shutil.copytree(sparse, retrained)
    weights = retrained / "original" / "model.safetensors"
    tensors = load_file(weights)
    tensors["embedding.weight"][:10] += 1
    save_file(tensors, weights, metadata={"format": "pt"})
    archive = pack(retrained, {"steps": 2}, tmp_path / "data2")  # what a newer ossai ships
    monkeypatch.setattr(demo, "ARCHIVE", archive)
    monkeypatch.setattr(demo, "RECORD", archive.parent / demo.RECORD.name)
    new = demo.ensure()
    assert new.revision != old.revision and new.extra["training"] == {"steps": 2}
    unpacked = models.resolve("ossai-demo") / "original" / "model.safetensors"
    assert unpacked.read_bytes() == weights.read_bytes()
    assert demo.ensure().added == new.added  # and then kept


def test_a_damaged_archive_is_refused_and_nothing_registered(bundle):
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        demo.ensure()
    assert list_models() == []


def test_packing_is_deterministic(sparse, tmp_path):
    a = pack(sparse, {}, tmp_path / "a")
    b = pack(sparse, {}, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size < 20 * 2**20
    record = json.loads((tmp_path / "a" / demo.RECORD.name).read_text())
    assert sorted(record["files"]) == [
        "original/config.json",
        "original/dtypes.json",
        "original/model.safetensors",
    ]


def test_default_model(bundle, tiny_checkpoints):
    assert demo.default_model() == "ossai-demo"  # empty store: the demo, unpacked
    import_model(tiny_checkpoints(1, "original"), "other", "link", Checkpoint.open)
    with pytest.raises(NotFound, match="name one"):
        demo.default_model()
    listed = {m["name"]: m for m in json.loads(CliRunner().invoke(app, ["list", "--json"]).stdout)}
    assert listed["ossai-demo"]["extra"]["description"] == demo.DESCRIPTION


def test_generate_without_a_model_uses_the_demo(bundle):
    result = CliRunner().invoke(app, ["generate", "--prompt", "hi", "--max-tokens", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert "using ossai-demo" in result.stderr and len(json.loads(result.stdout)["tokens"]) == 2


def test_not_bundled(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "ARCHIVE", tmp_path / "none.tar.xz")
    with pytest.raises(NotFound, match="not bundled"):
        demo.ensure()
