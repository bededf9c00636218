"""Fixtures for the store tests: a fake hub serving a random tiny gpt-oss repo (both layouts + metal/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
from fakehub import REPO, FakeHub

from ossai.store import hub
from ossai.testing.checkpoint import PRESETS, write_checkpoint


@pytest.fixture(scope="session")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the official repo: HF layout at the root, original/, metal/."""
    root = tmp_path_factory.mktemp("hub-repo")
    write_checkpoint(PRESETS["tiny"], root, "hf", 0)
    write_checkpoint(PRESETS["tiny"], root, "original", 0)
    (root / "metal").mkdir()
    (root / "metal" / "model.bin").write_bytes(b"\0" * 4096)  # must never be fetched
    (root / "README.md").write_text("# a random tiny gpt-oss\n")
    (root / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    return root


@pytest.fixture
def fake_hub(repo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.add(REPO, repo_dir)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        no_token = str(repo_dir.parent / "no-such-token")  # ignore a token the developer stored
        monkeypatch.setenv("HF_TOKEN_PATH", no_token)
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", no_token)
        monkeypatch.setattr(hub, "RETRY_DELAYS", (0.01, 0.02, 0.04))
        monkeypatch.setattr(hub, "FREE_SPACE_MARGIN", 0)
        yield server
