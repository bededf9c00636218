"""The CPU extension: built from source on first use (torch.utils.cpp_extension + ninja), cached.

`load()` returns the compiled module or None (with one warning) when no compiler is available, in which
case the plain-torch reference ops stay in place. `make run` / `make test` build it ahead of time.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import ModuleType

from ossai import settings

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name("mxfp4.cpp")]


def build_dir() -> Path:
    path = settings.kernel_cache() / "cpu"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def load(required: bool = False) -> ModuleType | None:
    try:
        from torch.utils import cpp_extension

        return cpp_extension.load(
            name="ossai_cpu_kernels",
            sources=[str(s) for s in SOURCES],
            # -fopenmp: at::parallel_for splits work across threads only when built with OpenMP
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-std=c++17"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir()),
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja: the reference path still works
        if required:
            raise
        log.warning("ossai: CPU kernels unavailable (%s); using the plain-torch reference ops", exc)
        return None
