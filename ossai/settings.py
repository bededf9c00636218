"""Every OSSAI_* environment variable, read in one place.

OSSAI_HOME     where ossai keeps its data (models, the responses database, the tokenizer); ~/.ossai
OSSAI_API_KEY  an API key `ossai serve` requires, in addition to --api-key
OSSAI_DEBUG    show tracebacks for unexpected errors on the command line
OSSAI_KERNEL_CACHE  where the CPU kernels are compiled; ~/.cache/ossai/kernels
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The ossai home directory, created on first use."""
    path = Path(os.environ.get("OSSAI_HOME") or Path.home() / ".ossai").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_cache() -> Path:
    return Path(
        os.environ.get("OSSAI_KERNEL_CACHE") or Path.home() / ".cache" / "ossai" / "kernels"
    ).expanduser()


def api_keys() -> tuple[str, ...]:
    key = os.environ.get("OSSAI_API_KEY", "").strip()
    return (key,) if key else ()


def debug() -> bool:
    return os.environ.get("OSSAI_DEBUG", "") not in ("", "0", "false")


def as_dict() -> dict[str, str]:
    """The settings in force, for the start-up log (the API key is masked)."""
    return {
        "OSSAI_HOME": str(home()),
        "OSSAI_API_KEY": "set" if api_keys() else "unset",
        "OSSAI_DEBUG": str(debug()),
    }
