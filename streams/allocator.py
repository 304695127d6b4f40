"""Which C allocator a pipeline process runs on, what it holds, and handing free pages back.

Why: a long-running process that allocates and frees many short-lived buffers (Kafka batches,
JSON, partials) can see its RSS climb while its live data stay the same size. With glibc's
malloc the worker's free-but-held chunks grew ~0.55 MiB/min in the soak (#18): the holes sit
between live chunks, are smaller than a page, and ``malloc_trim`` cannot return them. jemalloc
(Debian's ``libjemalloc2``) packs allocations by size class and purges unused pages on a timer,
so pipeline processes re-execute themselves with it preloaded when it is installed.

glibc figures come from ``mallinfo2`` (glibc ≥ 2.33), jemalloc's from ``mallctl`` stats
(jemalloc 5.x); on another C library both functions do nothing and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from dataclasses import dataclass

JEMALLOC_SONAME = "libjemalloc.so.2"

_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


@dataclass(frozen=True)
class HeapStats:
    """What the allocator holds for this process, in bytes."""

    in_use_bytes: int  # allocated to the program
    free_bytes: int  # resident in the allocator's pages but not allocated (fragmentation)


@functools.cache
def _process() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def jemalloc_loaded() -> bool:
    """True when this process's malloc is jemalloc (it exports ``mallctl``)."""
    return hasattr(_process(), "mallctl")


def jemalloc_installed() -> bool:
    return ctypes.util.find_library("jemalloc") is not None


def reexec_with_jemalloc() -> str:
    """Run this same command again with jemalloc preloaded, when it is installed and not loaded
    yet; returns (when it does not replace the process) the allocator in use and why."""
    if jemalloc_loaded():
        return "jemalloc"
    if JEMALLOC_SONAME in os.environ.get("LD_PRELOAD", ""):
        return "glibc (jemalloc was preloaded but did not load)"
    if not jemalloc_installed():
        return "glibc (jemalloc not installed: apt-get install libjemalloc2)"
    preload = " ".join(filter(None, [JEMALLOC_SONAME, os.environ.get("LD_PRELOAD")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "LD_PRELOAD": preload})
    raise AssertionError("unreachable: execve replaces the process")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not (hasattr(libc, "mallinfo2") and hasattr(libc, "malloc_trim")):
        return None
    libc.mallinfo2.restype = _MallInfo2
    libc.mallinfo2.argtypes = []
    libc.malloc_trim.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def _mallctl_size(name: str) -> int:
    value = ctypes.c_size_t(0)
    size = ctypes.c_size_t(ctypes.sizeof(value))
    if _process().mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0):
        raise OSError(f"mallctl {name} failed")
    return value.value


def _jemalloc_stats() -> HeapStats:
    epoch = ctypes.c_uint64(1)  # writing the epoch refreshes jemalloc's cached statistics
    _process().mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.sizeof(epoch))
    allocated = _mallctl_size("stats.allocated")
    resident = _mallctl_size("stats.resident")
    return HeapStats(allocated, max(resident - allocated, 0))


def heap_stats() -> HeapStats | None:
    """The allocator's figures now, or None where it is neither jemalloc nor glibc."""
    if jemalloc_loaded():
        return _jemalloc_stats()
    libc = _glibc()
    if libc is None:
        return None
    info = libc.mallinfo2()
    return HeapStats(info.uordblks + info.hblkhd, info.fordblks)


def release_free_memory() -> bool:
    """Return glibc malloc's free pages to the system; True when some memory was released.
    jemalloc needs no call: it purges unused pages on its own decay timer."""
    libc = None if jemalloc_loaded() else _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
