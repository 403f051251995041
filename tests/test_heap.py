"""gpu_vgm.heap: with glibc keeping freed memory, a fit's temporaries stop faulting in anew."""

import os
import subprocess
import sys

import pytest


def _glibc():
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        return False


# In a thread, as run's fits: rounds of 6 and of 16 arrays of 8 MB each, allocated and freed.
# 16 outgrow a thread's first 64 MB heap; glibc deletes the second one once it is free
# unless heap.TOP_PAD keeps room.
CHURN = """
import resource, sys, threading
import numpy as np
from gpu_vgm import heap

if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()

def rounds(count):
    for _ in range(20):
        arrays = [np.ones(1_000_000) for _ in range(count)]
        del arrays

def work(out):
    rounds(16)  # the first rounds fault their pages in whatever glibc keeps
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    rounds(6)
    rounds(16)
    out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

out = []
thread = threading.Thread(target=work, args=(out,))
thread.start()
thread.join()
print(out[0])
"""


def _page_faults(mode):
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not _glibc(), reason="mallopt settings exist in glibc only")
def test_freed_memory_is_kept_for_reuse():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 10_000 and kept < 2_000, (default, kept)
