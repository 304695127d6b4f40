"""Running real workers and compactors against the real Kafka and Redis, for the tests."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.core.regions import country_of
from streams.core.shares import ShareWindows
from streams.kafka import client_options
from streams.pipeline.state import new_share_windows
from streams.rediskeys import RedisKeys
from streams.settings import Settings, settings_env


class CliProcess:
    """One ``hashatlas`` subprocess with its own working folder and log."""

    def __init__(self, settings: Settings, workdir: Path, name: str, args: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args],
            cwd=workdir, env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def wait_for(process: CliProcess, condition: Callable[[], bool], timeout_s: float,
                   what: str) -> float:
    """Seconds until ``condition()`` holds; fails with the process's log if it exits first or
    ``timeout_s`` passes."""
    started = time.monotonic()
    while not condition():
        assert process.proc.poll() is None, f"process exited:\n{process.log_tail()}"
        assert time.monotonic() - started < timeout_s, f"no {what}:\n{process.log_tail()}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def wait_for_log(process: CliProcess, text: str, timeout_s: float) -> float:
    """Seconds until ``text`` appears in the process's log."""
    return await wait_for(process, lambda: text in process.log_path.read_text(errors="replace"),
                          timeout_s, repr(text))


class Worker(CliProcess):
    """One ``hashatlas worker``."""

    def __init__(self, settings: Settings, workdir: Path, name: str, metrics_port: int = 0):
        super().__init__(settings, workdir, name,
                         ["worker", "--loglevel", "info", "--metrics-port", str(metrics_port)])


class Compactor(CliProcess):
    """One ``hashatlas compactor`` (its transactional id from ``name``)."""

    def __init__(self, settings: Settings, workdir: Path, name: str, metrics_port: int = 0):
        super().__init__(settings, workdir, name,
                         ["compactor", "--instance", name, "--metrics-port", str(metrics_port)])


POOLS = ("foundry-usa", "antpool", "f2pool", "viabtc", "binance-pool")
REGIONS = ("US-TX", "US-GA", "US", "CN-SC", "KZ", "CA", "RU", "MY")


def share_batches(n: int, t0: float, span_s: float, seed: int) -> list[dict[str, Any]]:
    """``n`` share_batch events in event-time order over ``span_s`` seconds."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        start = t0 + i * span_s / n + float(rng.uniform(0, 0.5))
        count = int(rng.integers(1, 400))
        diffs = rng.choice([16384.0, 65536.0, 262144.0], count)
        out.append({
            "type": "share_batch", "pool": str(rng.choice(POOLS)),
            "region": str(rng.choice(REGIONS)), "start": start,
            "end": start + float(rng.uniform(0, 5)), "count": count,
            "difficulty_sum": float(diffs.sum()), "difficulty_sq_sum": float((diffs**2).sum()),
        })
    return out


async def produce_keyed(settings: Settings, topic: str, events: list[dict[str, Any]]) -> None:
    """Send events keyed by pool (as proxies do) and wait until Kafka has them all."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5,
                                acks="all")
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, value=orjson.dumps(event), key=event["pool"].encode())
        await producer.flush()
    finally:
        await producer.stop()


def assert_matches_core(snapshot: dict[str, Any], expected: dict[str, float]) -> None:
    """Every region's sample hashrate equals the core's on the same events (no loss, no
    double count: either would move at least one region by far more than 1e-9)."""
    got = {r["region"]: r["sample_hashrate_hs"] for r in snapshot["regions"]
           if r["observed"]}  # reference-list countries the sample does not see hold 0
    assert set(got) == {k for k, v in expected.items() if v > 0}
    off = {region: got[region] / value - 1 for region, value in expected.items()
           if value > 0 and got[region] != pytest.approx(value, rel=1e-9)}
    assert not off, f"regions off the core (relative error): {off}; inputs {snapshot['inputs']}"
    assert snapshot["network"]["sample_hashrate_hs"] == pytest.approx(
        sum(expected.values()), rel=1e-9)
    assert sum(r["share"] for r in snapshot["regions"]) == pytest.approx(1.0, abs=1e-9)


def read_snapshot(settings: Settings) -> dict[str, Any] | None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.hget(RedisKeys(settings.redis_prefix).snapshot, "json")
    finally:
        client.close()
    return orjson.loads(raw) if raw else None


async def wait_for_snapshot(
    settings: Settings, ready: Callable[[dict[str, Any]], bool], timeout_s: float,
    workers: list[Worker] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    snapshot = None
    while time.monotonic() < deadline:
        snapshot = read_snapshot(settings)
        if snapshot is not None and ready(snapshot):
            return snapshot
        await asyncio.sleep(0.25)
    logs = "\n---\n".join(w.log_tail() for w in workers)
    raise AssertionError(f"no matching snapshot within {timeout_s} s; last: "
                         f"{orjson.dumps(snapshot)[:1500]!r}\nworker logs:\n{logs}")


def offsets_reached(expected: Mapping[int, int], as_of: float | None = None
                    ) -> Callable[[dict[str, Any]], bool]:
    """A snapshot that includes every partition up to the expected next offsets (and, with
    ``as_of``, whose partitions were all evaluated at that instant)."""
    def ready(snapshot: dict[str, Any]) -> bool:
        inputs = snapshot.get("inputs", {})
        seen = inputs.get("partitions", {})
        if not all(int(seen.get(str(p), -1)) >= n for p, n in expected.items() if n):
            return False
        if as_of is None:
            return True
        evaluated = inputs.get("evaluated_at", {}).values()
        return snapshot["as_of"] == as_of and all(t == as_of for t in evaluated)
    return ready


def core_regional_sample(events: list[dict[str, Any]], settings: Settings,
                         as_of: float) -> dict[str, float]:
    """The core's own sample hashrate per country over the headline window, same events."""
    windows: ShareWindows = new_share_windows(settings)
    for e in events:
        if e["type"] == "share":
            windows.add_share(e["pool"], e["region"], e["ts"], e["difficulty"])
        else:
            windows.add_batch(e["pool"], e["region"], e["start"], e["end"], e["count"],
                              e["difficulty_sum"], e["difficulty_sq_sum"])
    out: dict[str, float] = {}
    for (_, region), est in windows.estimates(as_of, settings.headline_window_s).items():
        country = country_of(region)
        out[country] = out.get(country, 0.0) + est.hashrate_hs
    return out


async def _assigned_consumer(settings: Settings, topic: str, isolation_level: str
                             ) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    tps = [TopicPartition(topic, p) for p in await partitions_of(settings, topic)]
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False,
                                isolation_level=isolation_level)
    await consumer.start()
    consumer.assign(tps)
    return consumer, tps


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    """The topic's partition ids, from the broker (a consumer knows only what it subscribed)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(int(p["partition"]) for p in described[0]["partitions"])
    if not partitions:
        raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")
    return partitions


async def stop_quietly(consumer: AIOKafkaConsumer) -> None:
    with contextlib.suppress(asyncio.CancelledError):  # aiokafka 0.14 on a group-less stop
        await consumer.stop()


async def topic_ends(settings: Settings, topic: str) -> dict[int, int]:
    """High watermark of each partition."""
    consumer, tps = await _assigned_consumer(settings, topic, "read_uncommitted")
    try:
        return {tp.partition: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await stop_quietly(consumer)


async def data_ends(settings: Settings, topic: str) -> dict[int, int]:
    """Per partition, the offset after the last committed data message: what a worker's
    `next_offset` reaches on a transactional topic (whose end also counts commit markers)."""
    consumer, tps = await _assigned_consumer(settings, topic, "read_committed")
    try:
        ends = await consumer.end_offsets(tps)
        out: dict[int, int] = {}
        for tp in tps:
            end = int(ends[tp])
            if end == 0:
                continue
            consumer.seek(tp, max(0, end - 64))
            last = -1
            deadline = time.monotonic() + 30.0
            while await consumer.position(tp) < end and time.monotonic() < deadline:
                records = await consumer.getmany(tp, timeout_ms=200)
                for message in records.get(tp, []):
                    last = message.offset
            if last < 0:
                raise RuntimeError(f"no committed data found before offset {end} in {tp}")
            out[tp.partition] = last + 1
        return out
    finally:
        await stop_quietly(consumer)
