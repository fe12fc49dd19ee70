"""Keeps glibc malloc from handing large freed buffers back to the kernel between training steps.

By default glibc serves every allocation over 32 MiB (and, once trimmed, the heap's top) with
fresh pages from the kernel, so each training step page-faults its largest activations and
gradients in again, and element-wise ops over them run at the speed of the page faults.
``keep_freed_memory()`` turns mmap'd chunks and heap trimming off, so the resident memory stays
at the run's peak instead of breathing with every step.

It is process-wide and applies to later allocations; ``MOVINET_KEEP_FREED_MEMORY=0`` leaves the
allocator alone. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
_applied = False


def switched_off(variable: str) -> bool:
    """Whether the environment variable ``variable`` says 0 / false / no / off (unset: on)."""
    return os.environ.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


def keep_freed_memory() -> bool:
    """Sets glibc's M_MMAP_MAX to 0 and M_TRIM_THRESHOLD to 2 GiB - 1; returns whether they are set."""
    global _applied
    if _applied:
        return True
    if switched_off("MOVINET_KEEP_FREED_MEMORY"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _applied
