"""Keep the CPU backend's step memory mapped between steps.

XLA:CPU allocates each program's temporaries (234 MiB for the demo's SFT step) in one block per execution.
With asynchronous dispatch that happens on a worker thread, whose glibc arena serves a block that size
with a fresh ``mmap`` and returns it with ``munmap``: every step faults its temporaries in again, page by
page (~60k faults and a fifth of the step's CPU time as system time, ``bench/cpu_heap.py``). Executed on
the calling thread instead, the block comes from glibc's main heap, which keeps it mapped once ``mallopt``
turns off ``mmap`` for large blocks and trimming of the heap's top.

Only the command line applies this (``main``): it is process-wide, and a library must not change the
allocator of the program that imports it.
"""

from __future__ import annotations

import ctypes
import logging
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = -1  # never give the heap's top back: the next step needs it again (mallopt(3): -1 disables trimming)


def synchronous_cpu():
    """Run CPU programs on the calling thread. Must come before the first backend use: JAX reads it when it
    creates the CPU client. GPU and TPU programs are unaffected."""
    import jax
    jax.config.update("jax_cpu_enable_async_dispatch", False)


def keep_heap_mapped() -> bool:
    """On the CPU backend with glibc: serve large blocks from the main heap and keep them mapped after free.
    Returns whether it applied; elsewhere (an accelerator, macOS, musl) it changes nothing."""
    import jax
    if jax.default_backend() != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    logging.info("CPU steps run synchronously on the main heap%s", "" if applied else " (mallopt refused)")
    return applied
