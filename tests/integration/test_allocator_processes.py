"""Workers run on jemalloc (HASHATLAS_ALLOCATOR, default: under glibc their RSS crept up with
fragmentation, #18) and the compactor on glibc's malloc (HASHATLAS_COMPACTOR_ALLOCATOR, default:
jemalloc's purging of its fetch buffers cost it CPU, #13); each takes the other when told to."""

from __future__ import annotations

from pathlib import Path

from streams.settings import Settings
from streams.stack.process import port_open
from tests.conftest import free_port
from tests.integration.pipeline_helpers import CliProcess, Compactor, Worker, wait_for


def mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


async def runs_on_jemalloc(process: CliProcess) -> None:
    """Wait until the process has re-executed itself with jemalloc preloaded."""
    try:
        await wait_for(process, lambda: "libjemalloc" in mapped_libraries(process.proc.pid),
                       30.0, "libjemalloc mapped")
        assert "allocator glibc" not in process.log_path.read_text(errors="replace")
    finally:
        process.stop()


async def stays_on_glibc(process: CliProcess, metrics_port: int) -> None:
    """Wait until the process serves its metrics (it is past any re-execution), then check
    jemalloc was never mapped."""
    try:
        await wait_for(process, lambda: port_open("127.0.0.1", metrics_port, 1.0), 60.0,
                       "metrics served")
        assert "libjemalloc" not in mapped_libraries(process.proc.pid)
    finally:
        process.stop()


async def test_a_worker_runs_on_jemalloc_by_default(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    assert isolated_settings.allocator == "jemalloc"
    await runs_on_jemalloc(Worker(isolated_settings, tmp_path, "worker"))


async def test_a_worker_told_to_use_the_system_allocator_stays_on_glibc(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated_settings.model_copy(update={"allocator": "system"})
    port = free_port()
    await stays_on_glibc(Worker(settings, tmp_path, "worker", port), port)


async def test_the_compactor_stays_on_glibc_by_default(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    assert isolated_settings.compactor_allocator == "system"
    port = free_port()
    await stays_on_glibc(Compactor(isolated_settings, tmp_path, "compactor", port), port)


async def test_a_compactor_told_to_use_jemalloc_runs_on_it(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    settings = isolated_settings.model_copy(update={"compactor_allocator": "jemalloc"})
    await runs_on_jemalloc(Compactor(settings, tmp_path, "compactor"))
