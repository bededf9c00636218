"""`ossai pull` against the fake hub: full downloads, resume, corruption, retries, auth, 404, disk space."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakehub import REPO, layout_size
from typer.testing import CliRunner

from ossai import settings
from ossai.cli import app
from ossai.errors import BadRequest, Busy, ModelLoadError, NotFound
from ossai.model.weights import Checkpoint
from ossai.store import hub, models

runner = CliRunner()
BIG = "original/model.safetensors"


def _pull(*args: str):
    return runner.invoke(app, ["pull", *args])


def _ranges(fake_hub, path: str = BIG) -> list[str | None]:
    """The Range headers of the requests that served `path`'s bytes (the CDN side of the redirect)."""
    return [r for m, p, r in fake_hub.requests if p.startswith("/_cdn/") and p.endswith(path)]


def _partials() -> list[Path]:
    return sorted(p for p in (settings.home() / "partial").rglob("*.part") if p.is_file())


def test_pull_original_layout_end_to_end(fake_hub, repo_dir):
    result = _pull("gpt-oss:20b")
    assert result.exit_code == 0, result.output
    manifest = models.get("gpt-oss:20b")
    assert manifest.source == REPO and manifest.layout == "original"
    paths = {f["path"] for f in manifest.files}
    assert paths == {"original/config.json", "original/dtypes.json", BIG}
    assert manifest.size == layout_size(repo_dir, "original")
    served = [p for m, p, _ in fake_hub.requests if "/resolve/" in p]
    assert not any("metal/" in p or (p.endswith(".safetensors") and "original" not in p) for p in served)
    assert fake_hub.bytes_served == manifest.size  # each byte once
    Checkpoint.open(models.resolve("gpt-oss:20b"))  # loads as a checkpoint
    assert models.resolve(REPO) == models.resolve("gpt-oss:20b")
    big = next(f for f in manifest.files if f["path"] == BIG)
    assert big["sha256"] == models.sha256_file(repo_dir / BIG)
    leftovers = [p.name for p in (settings.home() / "partial").iterdir()]
    assert leftovers == ["openai--gpt-oss-20b@main.lock"]  # flock's file; no partial data


def test_pull_hf_layout_and_revision(fake_hub, repo_dir):
    result = _pull(f"{REPO}@main", "--layout", "hf")
    assert result.exit_code == 0, result.output
    manifest = models.get("gpt-oss:20b")
    assert manifest.layout == "hf" and manifest.revision == fake_hub.repos[REPO].sha
    assert not any(f["path"].startswith(("original/", "metal/")) for f in manifest.files)
    assert manifest.size == layout_size(repo_dir, "hf")
    Checkpoint.open(manifest.directory)


def test_resume_within_one_run_after_a_dropped_connection(fake_hub, repo_dir):
    size = layout_size(repo_dir, "original")
    fake_hub.faults.drop_after = {BIG: 40_000_000}
    manifest = hub.pull("gpt-oss:20b", validate=Checkpoint.open)
    assert manifest.size == size
    ranges = _ranges(fake_hub)
    assert len(ranges) == 2 and ranges[0] is None
    assert 35_000_000 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= 40_000_000
    assert fake_hub.bytes_served < 1.5 * size


def test_resume_across_runs(fake_hub, repo_dir):
    size = layout_size(repo_dir, "original")
    fake_hub.faults.drop_after = {BIG: 35_000_000}
    fake_hub.faults.file_status = [0, 0, 0, 503, 503, 503, 503]  # the drop, then 503s
    first = _pull("gpt-oss:20b")
    assert first.exit_code == 1 and "run the same command to resume" in str(first.exception)
    assert models.list_models() == []  # nothing listed half-way
    (kept,) = [p.stat().st_size for p in _partials()]
    assert 30_000_000 < kept <= 35_000_000
    fake_hub.faults.file_status.clear()
    second = _pull("gpt-oss:20b")
    assert second.exit_code == 0, second.output
    assert fake_hub.bytes_served < 1.5 * size
    assert _ranges(fake_hub)[-1] == f"bytes={kept}-"
    Checkpoint.open(models.resolve("gpt-oss:20b"))


def test_interrupt_leaves_a_resumable_partial(fake_hub, repo_dir):
    class Interrupt:
        seen = 0

        def start(self, path, total, done, sha256=None):
            pass

        def advance(self, nbytes):
            self.seen += nbytes
            if self.seen > 40_000_000:
                raise KeyboardInterrupt

        def finish(self, path):
            pass

    with pytest.raises(KeyboardInterrupt):
        hub.pull("gpt-oss:20b", progress=Interrupt())
    assert models.list_models() == [] and _partials()
    hub.pull("gpt-oss:20b", validate=Checkpoint.open)
    assert fake_hub.bytes_served < 1.5 * layout_size(repo_dir, "original")


def test_corrupted_file_is_detected_and_not_registered(fake_hub):
    fake_hub.faults.corrupt = {BIG}
    result = _pull("gpt-oss:20b")
    assert result.exit_code == 1
    assert f"file {BIG} failed its sha256 check; the partial file was removed" in str(result.exception)
    assert models.list_models() == [] and not _partials()
    assert not (settings.home() / "models" / "gpt-oss__20b" / "manifest.json").exists()
    fake_hub.faults.corrupt = set()
    assert _pull("gpt-oss:20b").exit_code == 0


def test_503s_are_retried(fake_hub):
    fake_hub.faults.info_status = [503, 502]
    fake_hub.faults.file_status = [503, 429]
    assert _pull("gpt-oss:20b").exit_code == 0
    infos = [p for m, p, _ in fake_hub.requests if p.startswith("/api/")]
    assert len(infos) == 3


def test_persistent_503_gives_up_with_a_clear_error(fake_hub):
    fake_hub.faults.info_status = [503] * 10
    result = _pull("gpt-oss:20b")
    assert result.exit_code == 1
    assert "failed after 4 attempt(s): HTTP 503" in str(result.exception)


def test_401_without_token_says_how_to_log_in(fake_hub, monkeypatch):
    fake_hub.repos[REPO].token = "secret"
    with pytest.raises(hub.PullError, match=r"needs a token: run `hf auth login`.*or set HF_TOKEN"):
        hub.pull("gpt-oss:20b")
    monkeypatch.setenv("HF_TOKEN", "wrong")
    with pytest.raises(hub.PullError, match="refused HF_TOKEN"):
        hub.pull("gpt-oss:20b")
    monkeypatch.setenv("HF_TOKEN", "secret")
    assert hub.pull("gpt-oss:20b").name == "gpt-oss:20b"


def test_unknown_repo_is_a_clear_404(fake_hub):
    with pytest.raises(NotFound, match="no such model repo nobody/nothing on the hub"):
        hub.pull("nobody/nothing")
    with pytest.raises(BadRequest, match="not a model to pull"):
        hub.pull("gpt-oss:7b")


def test_refuses_when_disk_space_is_short(fake_hub, monkeypatch):
    monkeypatch.setattr(hub, "FREE_SPACE_MARGIN", 1 << 62)
    with pytest.raises(BadRequest, match="not enough disk space"):
        hub.pull("gpt-oss:20b")
    assert fake_hub.bytes_served == 0


def test_stale_partials_are_dropped_when_the_remote_changes(fake_hub, repo_dir, tmp_path):
    fake_hub.faults.drop_after = {BIG: 5_000_000}
    fake_hub.faults.file_status = [0, 0, 0, 503, 503, 503, 503]
    with pytest.raises(hub.PullError):
        hub.pull("gpt-oss:20b")
    work = hub.partial_root(REPO, "main")
    sidecar = json.loads((work / (BIG + ".part.json")).read_text())
    sidecar["sha256"] = "0" * 64  # as if the remote file had changed since
    (work / (BIG + ".part.json")).write_text(json.dumps(sidecar))
    (work / "original" / "orphan.bin.part").write_bytes(b"x")
    fake_hub.faults.file_status.clear()
    hub.pull("gpt-oss:20b", validate=Checkpoint.open)
    ranges = _ranges(fake_hub)
    assert ranges[-1] is None  # started over
    assert not work.exists()


def test_a_second_pull_is_a_no_op_and_layouts_replace_each_other(fake_hub, repo_dir):
    first = hub.pull("gpt-oss:20b", validate=Checkpoint.open)
    served = fake_hub.bytes_served
    assert hub.pull("gpt-oss:20b") == first and fake_hub.bytes_served == served
    hub.pull("gpt-oss:20b", layout="hf", validate=Checkpoint.open)  # the other layout replaces it
    (only,) = models.list_models()
    assert only.layout == "hf" and not (only.directory / "original").exists()


def test_select_files_takes_one_layout_and_never_metal():
    names = ["config.json", "model-1.safetensors", "metal/model.bin", ".gitattributes"]
    names += ["original/config.json", "original/model.safetensors", "README.md"]
    files = [hub.RemoteFile(p, 1, None) for p in names]
    assert [f.path for f in hub.select_files(files, "original")] == [
        "original/config.json",
        "original/model.safetensors",
    ]
    assert [f.path for f in hub.select_files(files, "hf")] == [
        "config.json",
        "model-1.safetensors",
        "README.md",
    ]
    with pytest.raises(BadRequest):
        hub.select_files(files, "metal")
    with pytest.raises(NotFound, match="no original-layout weights"):
        hub.select_files(files[:1], "original")


def test_a_checkpoint_that_does_not_load_is_not_registered(fake_hub):
    def refuse(path: Path) -> None:
        raise ModelLoadError("no good")

    with pytest.raises(ModelLoadError, match="downloaded but does not load: no good"):
        hub.pull("gpt-oss:20b", validate=refuse)
    assert models.list_models() == [] and not hub.partial_root(REPO, "main").exists()


def test_concurrent_pulls_of_one_repo_are_refused(fake_hub):
    with hub._locked(hub.partial_root(REPO, "main")), pytest.raises(Busy, match="another `ossai pull`"):
        hub.pull("gpt-oss:20b")


def test_cli_ctrl_c_says_how_to_resume(fake_hub, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "pull", interrupted)
    result = _pull("gpt-oss:20b")
    assert result.exit_code == 130
    assert "interrupted; run the same command to resume" in result.output


def test_pull_does_not_replace_an_import_of_the_same_name(fake_hub, tiny):
    models.import_model(tiny, "gpt-oss:20b", "link", Checkpoint.open)
    with pytest.raises(BadRequest, match="already in the store as an import"):
        hub.pull("gpt-oss:20b")
    assert fake_hub.bytes_served == 0 and models.resolve("gpt-oss:20b") == tiny.resolve()


def test_cli_prints_a_line_per_file_without_a_terminal(fake_hub):
    result = _pull("gpt-oss:20b")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == [
        "original/config.json",
        "original/dtypes.json",
        BIG,
    ]
    assert "MB/s" in lines[2] and lines[-1].startswith("pulled gpt-oss:20b (openai/gpt-oss-20b@")
