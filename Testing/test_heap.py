"""freed_memory_kept: inside it the pages of freed large arrays are reused (no new page faults); after it,
freed memory goes back to the kernel again.

Measured in a fresh interpreter: in a test worker that has already churned memory, freed holes inside the heap
are reused anyway and the 'before' count says nothing."""
import platform
import resource
import subprocess
import sys

import numpy as np
import pytest

BLOCKS, BLOCK = 16, 8 * 1024 * 1024     # 128 MiB in 8 MiB arrays, like a phantom's slab temporaries


def faults_of_reallocating() -> int:
    """Page faults of allocating BLOCKS arrays after the same arrays were allocated and freed."""
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [np.ones(BLOCK, np.uint8) for _ in range(BLOCKS)]
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del blocks
    return faults


def faults_before_inside_after() -> tuple[int, int, int]:
    from FemurUNetLib.heap import _glibc, freed_memory_kept
    assert _glibc() is not None, "glibc's mallopt not found"
    before = faults_of_reallocating()
    with freed_memory_kept():
        kept = faults_of_reallocating()
    return before, kept, faults_of_reallocating()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only (elsewhere the context is empty)")
def test_freed_pages_are_reused_inside_and_returned_after():
    run = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    before, kept, after = map(int, run.stdout.split())
    assert kept < 100 and before > 1000 and after > 1000, (before, kept, after)


if __name__ == "__main__":
    print(*faults_before_inside_after())
