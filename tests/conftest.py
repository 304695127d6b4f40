"""Shared fixtures: the test session's own Kafka and Redis (real, never mocks, on free ports and in
a temporary folder, so a user's running stack or demo is never touched) and tests/data.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.net import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The user's HASHATLAS_* variables describe the user's stack, not the test session's.
for _name in [name for name in os.environ if name.startswith("HASHATLAS_")]:
    del os.environ[_name]
TEST_DATA = PROJECT_ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private real redis-server on a free port for the whole test session; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (hashatlas stack up installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start within 10 s")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def redis_url(redis_server: str) -> Iterator[str]:
    """The session Redis, flushed before each test that uses it."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private single-node Kafka (KRaft) on free ports for the whole test session."""
    from streams import stack
    from streams.settings import Settings

    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port(),
        state_dir=tmp_path_factory.mktemp("kafka-stack"),
    )
    stack.ensure_dirs(settings)
    try:
        stack.start_kafka(settings)
    except stack.StackError as exc:
        pytest.fail(f"the test session's Kafka did not start: {exc}")
    yield settings.kafka_bootstrap
    stack.stop_service(stack.kafka_service(settings), settings)
