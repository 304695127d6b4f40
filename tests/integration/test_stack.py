"""The local stack scripts on their own ports and folder: idempotent, clean stop, clear errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from streams import stack
from streams.settings import Settings
from tests.conftest import free_port


@pytest.fixture()
def private_stack(tmp_path: Path) -> Settings:
    return Settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        state_dir=tmp_path / "stack",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_up_twice_is_harmless_and_down_leaves_nothing(private_stack: Settings,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    settings = private_stack
    try:
        stack.stack_up(settings)
        pids = {name: entry["pid"] for name, entry in stack.stack_status(settings).items()}
        stack.stack_up(settings)
        out = capsys.readouterr().out
        assert "kafka already running" in out and "redis already running" in out
        assert "topics already present" in out
        status = stack.stack_status(settings)
        assert {name: entry["pid"] for name, entry in status.items()} == pids
        assert all(entry["answering"] for entry in status.values())
    finally:
        stack.stack_down(settings)
    assert all(isinstance(pid, int) and not _alive(pid) for pid in pids.values())
    assert not any(entry["answering"] for entry in stack.stack_status(settings).values())
    assert not list((settings.state_dir / "run").glob("*.pid"))


def test_a_taken_port_is_named(private_stack: Settings) -> None:
    settings = private_stack
    host, port = settings.redis_host_port
    with socket.socket() as squatter:
        squatter.bind((host, port))
        squatter.listen()
        with pytest.raises(stack.StackError, match=rf"redis: port {host}:{port} is already"):
            stack.start_redis(settings)


def test_missing_java_is_named(private_stack: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.ensure_kafka(private_stack)  # cached jars: only java is missing below
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(stack.StackError, match="java not found"):
        stack.start_kafka(private_stack)


def test_a_broker_that_dies_at_start_points_at_its_log(private_stack: Settings) -> None:
    settings = private_stack.model_copy(update={"kafka_version": private_stack.kafka_version})
    stack.ensure_kafka(settings)
    (settings.state_dir / "run").mkdir(parents=True)
    (settings.state_dir / "logs").mkdir(parents=True)
    # A data folder formatted for another cluster makes the broker exit during start-up.
    data = settings.state_dir / "data" / "kafka"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("version=1\ncluster.id=bogus\nnode.id=99\n")
    with pytest.raises(stack.StackError, match=r"kafka exited with code .* log: .*kafka\.log"):
        stack.start_kafka(settings)


def test_kafka_cluster_ids_never_read_as_options() -> None:
    """One random id in 64 began with '-', and the storage tool took it for an option."""
    ids = [stack.kafka_cluster_id() for _ in range(5000)]
    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert all(len(cluster_id) == 22 for cluster_id in ids) and len(set(ids)) == len(ids)
