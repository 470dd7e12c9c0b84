"""glibc malloc tuning for a proxy worker's bulk buffers.

Why: a worker moving bulk bodies allocates and frees buffers of 256 KiB and
more many times a second (an upstream read, h11's body slices, a
``send_all``'s sealed records). glibc serves chunks at or above
``M_MMAP_THRESHOLD`` with a fresh ``mmap`` and unmaps them on free, and trims
the heap top once ``M_TRIM_THRESHOLD`` is free there; its dynamic threshold
only partly adapts. Each time the pages come back they are faulted in and
zeroed by the kernel again: ``perf`` on one-core bulk showed ~8% of the
inline worker's CPU in page faults, page clearing and unmapping
(``exc_page_fault``, ``clear_page_erms``, ``unmap_page_range``).

A fixed mmap threshold above those buffer sizes and a trim threshold well
above a worker's working set keep the freed pages in the heap for reuse.
The cost is that a worker gives back memory freed at its heap top only above
``TRIM_THRESHOLD_BYTES``; memory in use is unchanged.

Not glibc (musl, macOS): nothing to tune, ``tune()`` returns False.
"""
from __future__ import annotations

import ctypes
import ctypes.util

#: glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Chunks below this come from the heap (a bulk buffer is 256 KiB to ~1 MiB).
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
#: Free memory at the heap top kept for reuse before it is returned.
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024


def tune() -> bool:
    """Set both thresholds for this process; True if glibc took them."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
