"""import / list / show / rm round trips, `resolve` for MODEL arguments, and the one-line CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fakehub import REPO
from typer.testing import CliRunner

from ossai import settings
from ossai.cli import app
from ossai.errors import BadRequest, ModelLoadError, NotFound
from ossai.model.weights import Checkpoint
from ossai.store import import_model, list_models, models, paths, remove, resolve, show

runner = CliRunner()


def _cli(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_import_link_list_show_rm(tiny_checkpoints, layout):
    source = tiny_checkpoints(0, layout)
    result = _cli("import", str(source), "--name", f"tiny-{layout}")
    assert result.exit_code == 0, result.output
    assert resolve(f"tiny-{layout}") == source.resolve()
    listed = json.loads(_cli("list", "--json").stdout)
    assert [m["name"] for m in listed] == [f"tiny-{layout}"]
    assert listed[0]["layout"] == layout and listed[0]["mode"] == "link"
    assert listed[0]["size"] == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    info = json.loads(_cli("show", f"tiny-{layout}", "--json").stdout)
    assert (info["layers"], info["experts"], info["experts_per_token"]) == (4, 8, 4)
    assert info["parameters"] > 0 and info["context_length"] == 4096 * 32
    kv = info["memory_estimate"]["kv_cache_bytes"]
    # 2 full layers hold 8192 positions, 2 sliding ones their 128; (k, v) * kv heads * head_dim * bf16
    assert kv == (2 * 8192 + 2 * 128) * 2 * 2 * 16 * 2
    assert info["memory_estimate"]["total_bytes"] == info["size"] + kv
    text = _cli("show", f"tiny-{layout}").stdout
    assert "memory needed" in text and "MXFP4" in text
    assert f"tiny-{layout}" in _cli("list").stdout
    assert _cli("rm", f"tiny-{layout}", input="n\n").exit_code == 1  # declined
    assert list_models()
    assert _cli("rm", f"tiny-{layout}", "-y").exit_code == 0
    assert list_models() == [] and source.is_dir()  # a link's own files stay


def test_import_copy_hashes_and_survives_the_source(tiny_checkpoints, tmp_path):
    import shutil

    source = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints(0, "original"), source)
    manifest = import_model(source, "copied", "copy", Checkpoint.open)
    assert manifest.path is None and all(len(f["sha256"]) == 64 for f in manifest.files)
    shutil.rmtree(source)
    Checkpoint.open(resolve("copied"))
    remove("copied")
    assert not paths.model_dir("copied").exists()


def test_import_rejects_a_broken_checkpoint(tiny_checkpoints, tmp_path):
    import shutil

    source = tmp_path / "broken"
    shutil.copytree(tiny_checkpoints(0, "original"), source)
    weights = source / "original" / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size - 100)
    for mode in ("link", "copy"):
        with pytest.raises(ModelLoadError):
            import_model(source, "broken", mode, Checkpoint.open)
    assert list_models() == []
    result = _cli("import", str(tmp_path / "missing"))
    assert isinstance(result.exception, NotFound)


def test_duplicate_names_and_bad_names(tiny):
    import_model(tiny, "one", "link", Checkpoint.open)
    with pytest.raises(BadRequest, match="already in the store"):
        import_model(tiny, "one", "link", Checkpoint.open)
    with pytest.raises(BadRequest, match="not a valid model name"):
        import_model(tiny, "../escape", "link", Checkpoint.open)


def test_a_model_without_manifest_is_not_listed(tiny):
    half = paths.model_dir("half-written")
    half.mkdir(parents=True)
    (half / "original").mkdir()
    assert list_models() == []
    with pytest.raises(NotFound):
        resolve("half-written")


def test_resolve(tiny, tmp_path):
    assert resolve(str(tiny)) == tiny
    with pytest.raises(NotFound, match="no such checkpoint directory or stored model; see `ossai list`"):
        resolve(str(tmp_path / "nothing"))
    with pytest.raises(NotFound):
        resolve("gpt-oss:20b")
    import_model(tiny, "gpt-oss:20b", "link", Checkpoint.open)
    assert resolve("gpt-oss:20b") == resolve(REPO) == tiny.resolve()
    with pytest.raises(NotFound, match="no model named"):
        show("absent")


def test_manifest_written_atomically(tiny):
    manifest = import_model(tiny, "atomic", "link", Checkpoint.open)
    directory = paths.model_dir("atomic")
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json"]
    assert models.get("atomic") == manifest


def test_generate_accepts_a_store_name(tiny):
    import_model(tiny, "tiny", "link", Checkpoint.open)
    args = ["generate", "tiny", "--raw", "--tokens", "1,2,3", "--max-tokens", "3", "--temperature", "0"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout.strip().splitlines()[-1])["tokens"]) == 3


def test_cli_errors_are_one_line(fake_hub, tmp_path):
    fake_hub.repos[REPO].token = "secret"
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    cases = [
        (["pull", "gpt-oss:20b"], "needs a token: run `hf auth login`"),
        (["pull", "nobody/nothing"], "no such model repo nobody/nothing on the hub"),
        (["show", "nothing"], "no model named 'nothing'"),
        (["rm", "nothing", "-y"], "no model named 'nothing'"),
        (["import", str(tmp_path)], "missing config.json"),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "ossai.cli", *args], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
    assert not (settings.home() / "models").exists() or list_models() == []


def test_rm_removes_a_damaged_manifest(tiny):
    import_model(tiny, "damaged", "link", Checkpoint.open)
    (paths.model_dir("damaged") / paths.MANIFEST).write_text("{not json")
    assert list_models() == []
    with pytest.raises(ModelLoadError, match="unreadable manifest"):
        show("damaged")
    assert _cli("rm", "damaged", "-y").exit_code == 0
    assert not paths.model_dir("damaged").exists() and tiny.is_dir()
