"""The compactor and the worker run on jemalloc (HASHATLAS_ALLOCATOR, default) and on glibc's
malloc when told to: under glibc the worker's RSS crept up with fragmentation (#18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings
from tests.integration.pipeline_helpers import Compactor, Worker, wait_for, wait_for_log


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("role", ["worker", "compactor"])
async def test_pipeline_processes_run_on_jemalloc_by_default(
    isolated_settings: Settings, tmp_path: Path, role: str
) -> None:
    assert isolated_settings.allocator == "jemalloc"
    process = (Worker if role == "worker" else Compactor)(isolated_settings, tmp_path, role)
    try:  # it re-executes itself with jemalloc preloaded within its first seconds
        await wait_for(process, lambda: "libjemalloc" in mapped_libraries(process.proc.pid),
                       30.0, "libjemalloc mapped")
        assert "allocator glibc" not in process.log_path.read_text(errors="replace")
    finally:
        process.stop()


async def test_a_worker_told_to_use_the_system_allocator_stays_on_glibc(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated_settings.model_copy(update={"allocator": "system"})
    worker = Worker(settings, tmp_path, "worker")
    try:
        await wait_for_log(worker, "[^Worker]: Ready", 120.0)
        assert "libjemalloc" not in mapped_libraries(worker.proc.pid)
    finally:
        worker.stop()
