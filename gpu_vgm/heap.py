"""glibc malloc settings for the process that fits (``run``'s client).

Each of scikit-learn's 100 EM iterations allocates and frees arrays of several MB. By
default glibc hands such memory back to the kernel (it trims the heap's top, or unmaps) and
takes it again on the next iteration, one page fault per 4 KiB: 220,000-360,000 faults and
0.5-0.75 s of system time in a 3.3 s fit of a 100k-row sample. Kept for reuse, the same fit
faults about 6,000 times.
"""

import ctypes
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap, not from mmap: glibc's largest dynamic threshold. Set it
# together with the others: setting any one fixes the dynamic threshold where it is, often
# 128 KiB, and then every array is mapped and faulted in anew (the fit took twice as long).
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 256 * 2**20  # free memory kept at the main heap's top
# A thread's heap is deleted once free unless this much room is kept: the fits run in threads.
TOP_PAD = 64 * 2**20


def keep_freed_memory():
    """Have glibc keep freed memory for reuse; True where set, False elsewhere (musl, macOS:
    their allocators are left as they are). Process-wide and for the process's life."""
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt  # this process's own C library
    except (ValueError, OSError, AttributeError):  # no such name, or no mallopt
        return False
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_TOP_PAD, TOP_PAD),
    )
    return all([mallopt(name, value) == 1 for name, value in settings])
