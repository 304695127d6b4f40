"""The C allocator's view of this process's heap, and handing its free pages back to the system.

Why: a long-running process that allocates and frees many short-lived buffers (Kafka batches,
JSON, partials) can see its RSS climb while its live data stay the same size: glibc's malloc
keeps freed chunks inside its arenas, and a chunk below the top of an arena is not returned on
its own. ``mallinfo2`` tells the two apart (bytes in use against bytes free but held) and
``malloc_trim(0)`` returns every free page to the system. Written for glibc ≥ 2.33 (which has
``mallinfo2``); on another C library both functions do nothing and say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


@dataclass(frozen=True)
class HeapStats:
    """What malloc holds for this process, in bytes."""

    in_use_bytes: int  # allocated chunks, in the arenas and mmapped
    free_bytes: int  # free chunks the arenas keep (the part ``malloc_trim`` can give back)
    mmapped_bytes: int  # large chunks mapped on their own (returned when freed)


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


def heap_stats() -> HeapStats | None:
    """The allocator's figures now, or None where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return None
    info = libc.mallinfo2()
    return HeapStats(in_use_bytes=info.uordblks + info.hblkhd, free_bytes=info.fordblks,
                     mmapped_bytes=info.hblkhd)


def release_free_memory() -> bool:
    """Return malloc's free pages to the system; True when some memory was released."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
