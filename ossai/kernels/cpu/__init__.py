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


# The instruction sets the source has paths for, best first. "native" is what `-march=native` gives this
# CPU; the others switch the wider paths off, so tests check every path on a machine that has them all.
ISA_FLAGS = {
    "native": [],
    "avx2": ["-mno-avx512f"],
    "portable": ["-mno-avx512f", "-mno-avx2", "-mno-fma"],
}


def build_dir(isa: str = "native") -> Path:
    path = settings.kernel_cache() / ("cpu" if isa == "native" else f"cpu-{isa}")
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def load(required: bool = False, isa: str = "native") -> ModuleType | None:
    try:
        from torch.utils import cpp_extension

        return cpp_extension.load(
            name="ossai_cpu_kernels" if isa == "native" else f"ossai_cpu_kernels_{isa}",
            sources=[str(s) for s in SOURCES],
            # -fopenmp: at::parallel_for splits work across threads only when built with OpenMP
            extra_cflags=["-O3", "-march=native", *ISA_FLAGS[isa], "-fopenmp", "-std=c++17"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir(isa)),
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja: the reference path still works
        if required:
            raise
        log.warning("ossai: CPU kernels unavailable (%s); using the plain-torch reference ops", exc)
        return None
