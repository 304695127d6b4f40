"""malloc's figures and its trim, on this machine's C library (glibc in CI and in production)."""

from __future__ import annotations

import os

import pytest

from streams.allocator import heap_stats, release_free_memory
from streams.metrics import MALLOC_BYTES, report_malloc

pytestmark = pytest.mark.skipif(heap_stats() is None, reason="not glibc")

CHUNK = 512  # below glibc's mmap threshold: served from the heap arena


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fragmented_heap(megabytes: int) -> tuple[list[bytes], int]:
    """Fill the heap with small chunks, then free all but every 64th: most pages hold only free
    chunks, but they sit below live ones, so malloc cannot shrink the heap on its own. Also
    gives malloc's free bytes while every chunk was alive (earlier holes filled first)."""
    chunks = [os.urandom(CHUNK) for _ in range(megabytes * 2**20 // CHUNK)]
    filled = heap_stats()
    assert filled is not None
    survivors = chunks[::64]
    del chunks
    return survivors, filled.free_bytes


def test_freed_chunks_show_as_free_and_trim_returns_their_pages() -> None:
    survivors, free_while_filled = fragmented_heap(64)
    held = heap_stats()
    assert held is not None
    assert held.free_bytes - free_while_filled > 40 * 2**20
    rss_held = rss_bytes()
    assert release_free_memory()
    assert rss_held - rss_bytes() > 30 * 2**20
    assert len(survivors) > 0


def test_report_malloc_exports_both_states() -> None:
    survivors, _ = fragmented_heap(16)
    report_malloc(trim=False)
    free = MALLOC_BYTES.labels("free")._value.get()
    in_use = MALLOC_BYTES.labels("in_use")._value.get()
    assert free > 8 * 2**20
    assert in_use >= len(survivors) * CHUNK
