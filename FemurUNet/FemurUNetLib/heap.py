"""Keep freed memory in the process while a job churns through large temporary arrays (glibc only).

glibc gives every freed block above its trim threshold back to the kernel, and the next array of the same size
page-faults it in again: a quarter of phantom generation was kernel time. Inside ``freed_memory_kept`` freed
blocks stay in the heap and are reused; on exit the thresholds are those glibc's own adaptive rule reaches in a
process that has freed large blocks (setting them at all ends that rule), and the heap is trimmed.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024       # glibc's adaptive maximum: smaller blocks come from the heap
ADAPTED_TRIM_THRESHOLD = 2 * MMAP_THRESHOLD    # what glibc's adaptive rule pairs with it
KEPT_TRIM_THRESHOLD = 512 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def _glibc():
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") and hasattr(libc, "gnu_get_libc_version"):
            return libc
    return None


@contextlib.contextmanager
def freed_memory_kept():
    """Within: freed blocks up to 512 MB stay in the heap (elsewhere than glibc: nothing changes)."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, ADAPTED_TRIM_THRESHOLD)
        libc.malloc_trim(0)
