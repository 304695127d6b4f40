"""Redis restarts empty: the snapshot, recent blocks and history come back from the workers'
state and from Kafka, without operator action."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from streams.rediskeys import RedisKeys
from streams.settings import Settings
from streams.stack import port_open
from streams.topics import create_topics
from tests.conftest import free_port
from tests.integration.conftest import produce
from tests.integration.pipeline_helpers import Worker, read_snapshot, wait_for_snapshot


class RestartableRedis:
    """A private redis-server that can be killed and started again, empty, on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture()
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


def _batch(pool: str, region: str, t: float, count: int) -> dict[str, object]:
    d = 65536.0
    return {"type": "share_batch", "pool": pool, "region": region, "start": t,
            "end": t + 9.0, "count": count, "difficulty_sum": count * d,
            "difficulty_sq_sum": count * d * d}


def _history(client: redis.Redis, keys: RedisKeys, series: str) -> list[bytes]:
    return list(client.zrange(keys.history(series), 0, -1))


async def test_redis_restarting_empty_is_rebuilt(
    isolated_settings: Settings, restartable_redis: RestartableRedis, tmp_path: Path,
    test_data: Path,
) -> None:
    settings = isolated_settings.model_copy(update={"redis_url": restartable_redis.url})
    await create_topics(settings)
    keys = RedisKeys(settings.redis_prefix)
    await produce(settings, settings.topics.blocks,
                  (test_data / "real_blocks.jsonl").read_bytes().splitlines())
    await produce(settings, settings.topics.market,
                  [{"type": "price", "ts": 1_795_000_000.0, "btc_usd": 95_000.0}])
    worker = Worker(settings, tmp_path / "w", "w1")
    try:
        t0 = 1_795_000_000.0
        for minute in range(6):  # six minutes of event time, leader ticks between them
            batches = [_batch(pool, region, t0 + minute * 60 + s, 40)
                       for s in range(0, 60, 10)
                       for pool, region in (("foundry-usa", "US-TX"), ("antpool", "KZ"))]
            await produce(settings, settings.topics.compacted_shares, batches, key=b"k")
            await wait_for_snapshot(settings, lambda s, m=minute: s["as_of"] >= t0 + m * 60 + 57,
                                    60, [worker])
            await asyncio.sleep(1.5)
        client = redis.Redis.from_url(settings.redis_url)
        deadline = time.monotonic() + 30
        while len(_history(client, keys, "network")) < 5:
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.25)
        before = {series: _history(client, keys, series) for series in ("network", "US", "KZ")}
        blocks_before = client.zrange(keys.blocks, 0, -1)
        client.close()

        restartable_redis.kill()
        await asyncio.sleep(2.0)
        restartable_redis.start()
        started = time.monotonic()
        client = redis.Redis.from_url(settings.redis_url)
        # Empty at start (nothing loaded from disk); dbsize() would race the worker's partials,
        # which it writes every 0.5 s and may already have written again.
        assert client.info("persistence")["rdb_last_load_keys_loaded"] == 0
        deadline = time.monotonic() + 30
        while True:
            after = {series: _history(client, keys, series) for series in before}
            if read_snapshot(settings) and all(after[s][:len(before[s])] == before[s]
                                                for s in before) and client.zcard(keys.blocks):
                break
            assert time.monotonic() < deadline, f"not rebuilt: {after}\n{worker.log_tail()}"
            await asyncio.sleep(0.25)
        recovered_s = time.monotonic() - started
        assert client.zrange(keys.blocks, 0, -1) == blocks_before
        snapshot = read_snapshot(settings)
        assert snapshot is not None
        assert {r["region"] for r in snapshot["regions"] if r["observed"]} == {"US", "KZ"}
        assert orjson.loads(before["network"][0])["t"] == orjson.loads(after["network"][0])["t"]
        client.close()
        print(f"Redis rebuilt {recovered_s:.1f} s after it came back empty")
    finally:
        worker.stop()
