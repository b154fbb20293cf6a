"""The C heap (glibc's malloc), without torch: keeping freed memory for the
CPU trunks (cpu_kernels) and handing it back after a managed node's
cleanup (ros.memory). Elsewhere than glibc (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free memory at the top of the heap beyond this goes back to the system.
TRIM_THRESHOLD_BYTES = 1 << 30


@lru_cache(maxsize=1)
def libc() -> ctypes.CDLL | None:
    """The C library, when it is glibc (mallopt and malloc_trim exist)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c"))
        lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None
    return lib


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Serve large blocks from the heap instead of fresh mmaps, and keep up
    to TRIM_THRESHOLD_BYTES of freed memory there (once per process;
    False where the C library is not glibc)."""
    lib = libc()
    if lib is None:
        return False
    ok = lib.mallopt(_M_MMAP_MAX, 0) == 1 and lib.mallopt(_M_TRIM_THRESHOLD,
                                                          TRIM_THRESHOLD_BYTES) == 1
    log.debug("glibc heap keeps freed memory: %s", ok)
    return ok


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): free heap pages back to the system; False
    where there is none."""
    lib = libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True
