"""Process-level allocator tuning for simulation workloads (glibc on Linux; elsewhere a no-op).

A Monte-Carlo evaluation allocates and frees tensors of a few to tens of MB many times per candidate. glibc
serves blocks above its mmap threshold with fresh mappings and hands freed memory at the top of the heap back to
the OS once it exceeds its trim threshold, so the next tensor of that size page-faults its memory in again: on
the development VM ~1.8 us per 4 KiB page, 3,000-5,000 faults per batch of 64 noisy 64x64 mesh matrices and
~16,000 per Monte-Carlo scoring of the example CNN (measured with getrusage; bench/mesh.py reports the count).
:func:`keep_freed_memory` raises both thresholds, so freed memory stays in the heap for the next tensor.
"""

from __future__ import annotations

import ctypes
import resource
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (glibc malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
"""Blocks up to this size come from the heap: glibc's largest value on 64-bit (malloc.h, DEFAULT_MMAP_THRESHOLD_MAX)."""
TRIM_THRESHOLD_BYTES = 256 << 20
"""Freed memory the heap keeps for reuse. Assumption (no source): a few times the largest working set of an
evaluation of the bundled examples (tens of MB), small against the memory a worker is allowed."""

_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (forked children inherit them); idempotent.

    Returns whether the tuning is in effect: False where the C library is not glibc (macOS, musl, Windows).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl's mallopt ignores these parameters
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    return _applied


def page_faults() -> int:
    """Minor page faults of this process so far (getrusage): what `keep_freed_memory` avoids."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
