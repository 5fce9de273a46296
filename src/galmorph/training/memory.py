"""Keep freed memory in the process's heap while training (BENCHMARKS.md "Freed memory kept in the heap").

glibc hands every freed block above its mmap threshold (128 KiB, then grown dynamically) back to the kernel and
trims the heap's free top, so each training step maps its activations afresh and takes a page fault per 4 KiB it
touches: 7-8x the faults, and ResNet-18 trains 1.12-1.18x slower on 2 cores here (BENCHMARKS.md). Raising
both thresholds with mallopt(3) makes glibc reuse that memory instead. The cost is that the process keeps its peak
memory until it exits, which a training process would reach again at its next step anyway.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
# blocks up to this size come from the heap: 1 GiB covers ResNet-50's activations at 128 px and batch 128; some
# glibc builds refuse more than HEAP_MAX_SIZE / 2 (32 MiB on 64-bit), which is then what is asked for
MMAP_THRESHOLDS = (1024 * 1024 * 1024, 32 * 1024 * 1024)
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top before glibc trims it


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this whole process (they last until it exits).

    Returns whether both were set: False where the C library is not glibc (macOS, musl, Windows; nothing is
    changed) or glibc refuses a threshold. The numbers training computes do not change, only where its memory
    comes from.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mmap first: setting either threshold freezes glibc's dynamic one, which would otherwise stay at 128 KiB
    if not any(mallopt(M_MMAP_THRESHOLD, value) for value in MMAP_THRESHOLDS):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
