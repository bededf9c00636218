"""Shared fixtures: random tiny checkpoints in both layouts, and a private OSSAI_HOME for every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from ossai.testing.checkpoint import PRESETS, write_checkpoint


@pytest.fixture(autouse=True)
def _ossai_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("ossai-home")
    monkeypatch.setenv("OSSAI_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory):
    """(seed, layout) -> directory of a random tiny checkpoint; written once per session."""
    made: dict[tuple[int, str], Path] = {}

    def get(seed: int = 0, layout: str = "original") -> Path:
        key = (seed, layout)
        if key not in made:
            out = tmp_path_factory.mktemp(f"tiny-{seed}-{layout}")
            write_checkpoint(PRESETS["tiny"], out, layout, seed)  # type: ignore[arg-type]
            made[key] = out
        return made[key]

    return get


@pytest.fixture(scope="session")
def tiny(tiny_checkpoints) -> Path:
    return tiny_checkpoints(0, "original")
