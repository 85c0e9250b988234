"""Large CPU tensors without a page fault per touch: glibc's ``malloc`` keeps freed big blocks.

glibc serves every allocation above its mmap threshold (128 KiB, raised on the fly up to
32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed, so each such tensor
pays the kernel's page faults on its first touch, every time. A population's activations are
that size: K=1024 MLP members hold (1024, 100, 100) floats (40 MB) per layer and step, and on a
2-core machine ``relu`` of one took 13.5 ms instead of 2 ms, the whole step 102 ms instead of
72 ms (``perf/reference_population.py``). ``keep_large_blocks`` raises both thresholds, so freed
blocks stay in the heap and are reused, as a GPU's caching allocator reuses its blocks. It
changes no value, only how memory is recycled: the process's resident size stays at its peak.

The CLI's process calls it (``python -m lightning_opt``); a program of its own may too. It does
nothing off glibc, or where the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` (theirs stands).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: every tensor of a population this project trains


def keep_large_blocks() -> bool:
    """Keep freed blocks up to 1 GiB in glibc's heap; whether it was set."""
    if any(f"MALLOC_{name}_THRESHOLD_" in os.environ for name in ("MMAP", "TRIM")):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _THRESHOLD)
    )
