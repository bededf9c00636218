"""Pack an exported checkpoint as the bundled ossai-demo: `ossai/store/data/ossai-demo.tar.xz` and its record.

    python -m training.package CHECKPOINT_DIR [--training-json FILE]

The tar is deterministic (sorted names, zero mtimes and owners) and xz -9 compressed, so the same weights
give the same bytes and the same sha256. Retraining replaces both files: commit them in one commit and the
old archive is no longer in the tree (history keeps each training once).
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import tarfile
from pathlib import Path
from typing import Any

from ossai.store import demo, models

FILES = ("original/config.json", "original/dtypes.json", "original/model.safetensors")
LIMIT = 20 * 2**20  # the archive must stay small enough to live in the repository


def pack(checkpoint: Path, training: dict[str, Any] | None = None, out: Path = demo.DATA) -> Path:
    """Write the archive and its record into `out`; returns the archive."""
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in FILES:
            data = (checkpoint / rel).read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    archive = out / demo.ARCHIVE.name
    archive.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    if archive.stat().st_size > LIMIT:
        raise SystemExit(f"{archive}: {archive.stat().st_size / 2**20:.1f} MiB, over the 20 MiB limit")
    record = {
        "sha256": models.sha256_file(archive),
        "files": {rel: models.sha256_file(checkpoint / rel) for rel in FILES},
        "training": training or {},
    }
    (out / demo.RECORD.name).write_text(json.dumps(record, indent=2) + "\n")
    return archive


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--training-json", type=Path, help="training facts to record (command, steps, loss)")
    args = parser.parse_args()
    training = json.loads(args.training_json.read_text()) if args.training_json else {}
    archive = pack(args.checkpoint, training)
    print(f"{archive}: {archive.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
