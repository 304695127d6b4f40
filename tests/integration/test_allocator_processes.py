"""The compactor and the worker run on jemalloc (HASHATLAS_ALLOCATOR, default) and on glibc's
malloc when told to: under glibc the worker's RSS crept up with fragmentation (#18)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.integration.pipeline_helpers import CliProcess, Compactor, Worker


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def wait_for_log(process: CliProcess, text: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in process.log_path.read_text(errors="replace"):
        assert process.proc.poll() is None, process.log_tail()
        assert time.monotonic() < deadline, process.log_tail()
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("role", ["worker", "compactor"])
async def test_pipeline_processes_run_on_jemalloc_by_default(
    isolated_settings: Settings, tmp_path: Path, role: str
) -> None:
    assert isolated_settings.allocator == "jemalloc"
    process = (Worker if role == "worker" else Compactor)(isolated_settings, tmp_path, role)
    try:  # it re-executes itself with jemalloc preloaded within its first seconds
        deadline = time.monotonic() + 30.0
        while "libjemalloc" not in mapped_libraries(process.proc.pid):
            assert process.proc.poll() is None, process.log_tail()
            assert time.monotonic() < deadline, process.log_tail()
            await asyncio.sleep(0.2)
        assert "allocator glibc" not in process.log_path.read_text(errors="replace")
    finally:
        process.stop()


async def test_a_worker_told_to_use_the_system_allocator_stays_on_glibc(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated_settings.model_copy(update={"allocator": "system"})
    worker = Worker(settings, tmp_path, "worker")
    try:
        await wait_for_log(worker, "[^Worker]: Ready")
        assert "libjemalloc" not in mapped_libraries(worker.proc.pid)
    finally:
        worker.stop()
