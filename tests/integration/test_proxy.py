"""The Stratum proxy between a real miner and a real pool, over real sockets, into real Kafka.

The pool (`tests.stratum_peers.StratumTestPool`) checks every share's SHA-256d proof of work;
the miner (`tests.stratum_peers`, run as its own process) does the work. What the proxy emits is
read back from Kafka and compared with what the pool counted as valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import resource
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.contracts import ShareBatchEvent, decode_input
from streams.core.intervals import compound_poisson_interval
from streams.proxy.accounting import worker_hash
from streams.proxy.server import KafkaBatchSink, ProxyConfig, StratumProxy
from streams.settings import Settings
from streams.topics import create_topics
from tests.conftest import free_port
from tests.stratum_peers import StratumTestPool

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POOL_ID = "test-pool"
SECRET = b"integration-test-secret-0123456789"
BASE_DIFFICULTY = 2.0**-16  # 65 536 expected hashes per share
HASHES_PER_DIFFICULTY = 2.0**32
IPV4 = re.compile(rb"\b\d{1,3}(?:\.\d{1,3}){3}\b")


@pytest.fixture(scope="module")
def block_722010(test_data: Path) -> dict[str, Any]:
    with open(test_data / "real_blocks.jsonl", encoding="utf-8") as handle:
        for raw in handle:
            block: dict[str, Any] = json.loads(raw)
            if block["height"] == 722010:
                return block
    raise AssertionError("block 722010 missing from real_blocks.jsonl")


async def new_topic(bootstrap: str) -> str:
    topic = f"proxy-test-{uuid.uuid4().hex[:10]}"
    await create_topics(Settings(kafka_bootstrap=bootstrap), plan={topic: 1})
    return topic


@asynccontextmanager
async def running_pool(block: dict[str, Any], vardiff_every: int = 0
                       ) -> AsyncIterator[StratumTestPool]:
    pool = StratumTestPool(block, BASE_DIFFICULTY, vardiff_every=vardiff_every)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


@asynccontextmanager
async def running_proxy(bootstrap: str, pool: StratumTestPool, topic: str,
                        **limits: Any) -> AsyncIterator[StratumProxy]:
    """An in-process proxy; on exit it stops and its batches are delivered to `topic`."""
    sink = KafkaBatchSink(Settings(kafka_bootstrap=bootstrap), topic, key=POOL_ID)
    sink.start()
    config = ProxyConfig(upstream_host="127.0.0.1", upstream_port=pool.port, pool_id=POOL_ID,
                         bind="127.0.0.1", port=0, batch_interval_s=1.0,
                         reconnect_initial_s=0.05, **limits)
    proxy = StratumProxy(config, sink, SECRET)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
        await sink.stop()
        assert sink.dropped == 0


async def run_miner(port: int, *options: str) -> dict[str, Any]:
    """The honest miner, as its own process; returns its report."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.stratum_peers", "miner", "--port", str(port), *options,
        cwd=PROJECT_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60.0)
    assert process.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


async def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Every record of the (one-partition) topic, up to its end offset now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    partition = TopicPartition(topic, 0)
    records: list[tuple[bytes | None, bytes]] = []
    try:
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        deadline = time.monotonic() + 20.0
        while await consumer.position(partition) < end and time.monotonic() < deadline:
            fetched = await consumer.getmany(partition, timeout_ms=500)
            records.extend((m.key, m.value) for m in fetched.get(partition, [])
                           if m.value is not None)
    finally:
        await consumer.stop()
    return records


async def emitted_batches(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """The proxy's events, each checked against the share_batch contract and its key."""
    records = await read_topic(bootstrap, topic)
    batches = []
    for key, value in records:
        assert key == POOL_ID.encode()
        event = decode_input(value)
        assert isinstance(event, ShareBatchEvent)
        batches.append(json.loads(value))
    return batches


def totals(batches: list[dict[str, Any]]) -> tuple[int, float, float]:
    return (sum(b["count"] for b in batches), sum(b["difficulty_sum"] for b in batches),
            sum(b["difficulty_sq_sum"] for b in batches))


def assert_proxy_matches_pool(batches: list[dict[str, Any]], pool: StratumTestPool) -> None:
    """Exact agreement; the difficulties are powers of two, so the float sums are exact."""
    count, difficulty_sum, difficulty_sq_sum = totals(batches)
    assert count == pool.valid_count
    assert difficulty_sum == sum(pool.valid_difficulties)
    assert difficulty_sq_sum == sum(d * d for d in pool.valid_difficulties)


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """True if the other side closed (EOF or reset) within the timeout."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            data = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            if not data:
                return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return False


def socket_closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


# ---- (1) honest mining -------------------------------------------------------------------------


async def test_mined_shares_are_credited_exactly_and_give_the_true_hashrate(
    block_722010: dict[str, Any], kafka_bootstrap: str
) -> None:
    """Exact agreement with the pool, and Σd·2³²/T inside its 95 % interval of the truth.

    The draw is fixed: the job sequence (vardiff every 16 shares, sent before the verdict the
    miner waits for) and the hash budget are deterministic, so every run finds the same shares
    (103, an estimate 24 % above the measured rate: z = 2.05 in the normal approximation, but
    inside the exact interval, which reaches further above). Changing the job layout or the
    budget redraws it, and one redraw in twenty falls outside a 95 % interval by construction.
    """
    topic = await new_topic(kafka_bootstrap)
    async with (
        running_pool(block_722010, vardiff_every=16) as pool,
        running_proxy(kafka_bootstrap, pool, topic) as proxy,
    ):
        report = await run_miner(proxy.port, "--worker", "alice.rig-1", "--hashes",
                                 "8000000", "--nonces-per-extranonce2", str(1 << 20))
    batches = await emitted_batches(kafka_bootstrap, topic)

    assert report["rejected"] == 0 and report["accepted"] == pool.valid_count
    assert set(pool.valid_difficulties) == {BASE_DIFFICULTY, 2 * BASE_DIFFICULTY}  # vardiff ran
    assert_proxy_matches_pool(batches, pool)
    assert {b["region"] for b in batches} == {"ZZ"}  # loopback has no country

    count, difficulty_sum, difficulty_sq_sum = totals(batches)
    seconds = report["seconds"]
    estimate = difficulty_sum * HASHES_PER_DIFFICULTY / seconds
    low, high = compound_poisson_interval(difficulty_sum, difficulty_sq_sum, 0.95)
    low_hs, high_hs = low * HASHES_PER_DIFFICULTY / seconds, high * HASHES_PER_DIFFICULTY / seconds
    measured = report["hashes"] / seconds
    expected_sum = report["hashes"] / HASHES_PER_DIFFICULTY
    z = (difficulty_sum - expected_sum) / math.sqrt(
        expected_sum * difficulty_sq_sum / difficulty_sum)
    print(f"\nproxy hashrate: miner measured {measured:,.0f} H/s over {seconds:.2f} s "
          f"({report['hashes']} hashes); {count} shares, estimate {estimate:,.0f} H/s, "
          f"95% interval [{low_hs:,.0f}, {high_hs:,.0f}] H/s, z = {z:.2f}")
    assert low_hs <= measured <= high_hs


# ---- (2) bad shares ----------------------------------------------------------------------------


async def test_shares_the_pool_rejects_are_not_credited(
    block_722010: dict[str, Any], kafka_bootstrap: str
) -> None:
    topic = await new_topic(kafka_bootstrap)
    async with (
        running_pool(block_722010) as pool,
        running_proxy(kafka_bootstrap, pool, topic) as proxy,
    ):
        report = await run_miner(proxy.port, "--hashes", "2000000", "--bad-shares")
        stats = dict(proxy.stats)
    batches = await emitted_batches(kafka_bootstrap, topic)

    assert pool.valid_count > 0
    assert set(pool.rejections) == {"duplicate share", "low difficulty share", "job not found"}
    assert all(n == pool.valid_count for n in pool.rejections.values())
    assert report["rejected"] == sum(pool.rejections.values()) == 3 * pool.valid_count
    assert_proxy_matches_pool(batches, pool)
    assert sum(b["rejected"] for b in batches) == stats["shares_rejected"] == report["rejected"]


# ---- (3) hostile clients -----------------------------------------------------------------------


GARBAGE = [
    b"\x00\xff\xfe\xfd\x16\x03\x01\n",
    b"GET / HTTP/1.1\r\nHost: pool\r\n\r\n",
    b"[1, 2, 3]\n",
    b'{"id": 1}\n',
    b'{"id": 1, "method": "mining.subscribe", "params": "nope"}\n',
    b'{"id": 1, "method": "mining.subscribe", "params": []}\n{not json}\n',
]


async def test_garbage_closes_only_the_client_that_sent_it(
    block_722010: dict[str, Any], kafka_bootstrap: str
) -> None:
    topic = await new_topic(kafka_bootstrap)
    async with (
        running_pool(block_722010) as pool,
        running_proxy(kafka_bootstrap, pool, topic) as proxy,
    ):
        miner = asyncio.create_task(run_miner(proxy.port, "--seconds", "4"))
        await asyncio.sleep(1.0)
        closed = []
        for payload in GARBAGE:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(payload)
            closed.append(await closed_by_peer(reader, 2.0))
            writer.close()
        attack_over = time.time()
        await asyncio.sleep(0.2)
        assert pool.open_connections == 1  # the one with a valid subscribe lost its upstream
        report = await miner
        stats = dict(proxy.stats)
    batches = await emitted_batches(kafka_bootstrap, topic)

    assert closed == [True] * len(GARBAGE)
    assert stats["closed_protocol_error"] == len(GARBAGE)
    assert not report["disconnected"] and report["rejected"] == 0
    assert sum(t > attack_over for t in report["accepted_at"]) > 5
    assert_proxy_matches_pool(batches, pool)


async def test_a_megabyte_line_closes_that_client_at_the_limit(
    block_722010: dict[str, Any], kafka_bootstrap: str
) -> None:
    topic = await new_topic(kafka_bootstrap)
    async with (
        running_pool(block_722010) as pool,
        running_proxy(kafka_bootstrap, pool, topic) as proxy,
    ):
        miner = asyncio.create_task(run_miner(proxy.port, "--seconds", "3"))
        await asyncio.sleep(1.0)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        huge = b'{"id": 1, "method": "mining.subscribe", "params": ["' + b"A" * 1_000_000
        sent_at = time.monotonic()
        writer.write(huge + b'"]}\n')
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        assert await closed_by_peer(reader, 2.0)
        closed_after = time.monotonic() - sent_at
        writer.close()
        attack_over = time.time()
        report = await miner
        stats = dict(proxy.stats)
    batches = await emitted_batches(kafka_bootstrap, topic)

    assert stats["closed_line_too_long"] == 1
    assert closed_after < 1.0
    assert not report["disconnected"] and report["rejected"] == 0
    assert sum(t > attack_over for t in report["accepted_at"]) > 5
    assert_proxy_matches_pool(batches, pool)


def _proc_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_ten_thousand_idle_connections_do_not_lock_out_a_miner(
    block_722010: dict[str, Any], kafka_bootstrap: str
) -> None:
    """The proxy runs as `hashatlas proxy` in its own process, capped at exactly as many
    connections as the idle clients open (spread over 200 loopback addresses, under the per-IP
    cap): the honest miner arriving last must get in (the oldest idle connection is dropped for
    it) and mine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 10_000 + 1_000
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    idle_count = min(10_000, soft - 1_000)
    print(f"\nidle connections: {idle_count} (descriptor limit {soft})")
    topic = await new_topic(kafka_bootstrap)
    port = free_port()
    env = dict(os.environ, HASHATLAS_KAFKA_BOOTSTRAP=kafka_bootstrap,
               HASHATLAS_TOPICS__SHARES=topic)
    async with running_pool(block_722010) as pool:
        command = ("import argparse, sys; from streams.commands import proxy; "
                   "p = argparse.ArgumentParser(); proxy.add_parser(p.add_subparsers()); "
                   "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", command, "proxy", "--upstream", f"127.0.0.1:{pool.port}",
            "--pool-id", POOL_ID, "--bind", "127.0.0.1", "--port", str(port),
            "--batch-interval", "1", "--max-connections", str(idle_count), "--max-per-ip", "64",
            "--handshake-timeout", "120", "--log-level", "warning",
            cwd=PROJECT_ROOT, env=env, stderr=asyncio.subprocess.PIPE)
        idle: list[socket.socket] = []
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "proxy did not start"
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)
            baseline_fds = _proc_fd_count(process.pid)
            loop = asyncio.get_running_loop()
            gate = asyncio.Semaphore(256)

            async def open_idle(number: int) -> None:
                sock = socket.socket()
                sock.setblocking(False)
                sock.bind((f"127.1.{number // 50 // 250}.{number // 50 % 250 + 1}", 0))
                idle.append(sock)
                async with gate:
                    await loop.sock_connect(sock, ("127.0.0.1", port))

            started = time.monotonic()
            await asyncio.gather(*(open_idle(n) for n in range(idle_count)))
            while _proc_fd_count(process.pid) < baseline_fds + idle_count:
                assert time.monotonic() - started < 30, "proxy did not accept every connection"
                await asyncio.sleep(0.1)
            print(f"opened and accepted {idle_count} idle connections in "
                  f"{time.monotonic() - started:.2f} s")

            report = await run_miner(port, "--seconds", "3")
            dropped = sum(socket_closed_by_peer(sock) for sock in idle)
        finally:
            for sock in idle:
                sock.close()
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 30)
    batches = await emitted_batches(kafka_bootstrap, topic)

    assert process.returncode == 0, err.decode()
    assert dropped == 1  # exactly one idle connection made room for the miner
    assert not report["disconnected"] and report["accepted"] > 10 and report["rejected"] == 0
    assert_proxy_matches_pool(batches, pool)


async def test_slow_loris_and_idle_clients_are_timed_out(
    block_722010: dict[str, Any], kafka_bootstrap: str
) -> None:
    topic = await new_topic(kafka_bootstrap)
    handshake_s, idle_s = 1.5, 2.0

    async def dribble(writer: asyncio.StreamWriter) -> None:
        with pytest.raises(ConnectionError):
            for byte in b'{"id": 1, "method": "mining.subscribe", "params": []':
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)

    async def lifetime(reader: asyncio.StreamReader, since: float) -> float:
        assert await closed_by_peer(reader, 10.0)
        return time.monotonic() - since

    async with (
        running_pool(block_722010) as pool,
        running_proxy(kafka_bootstrap, pool, topic,
                      handshake_timeout_s=handshake_s, idle_timeout_s=idle_s) as proxy,
    ):
        miner = asyncio.create_task(run_miner(proxy.port, "--seconds", "5"))
        await asyncio.sleep(0.5)
        opened = time.monotonic()
        loris = await asyncio.open_connection("127.0.0.1", proxy.port)
        dribbler = asyncio.create_task(dribble(loris[1]))
        half = await asyncio.open_connection("127.0.0.1", proxy.port)
        half[1].write(b'{"id": 1, "method": "mining.subscribe", "params": []}\n')
        silent = await asyncio.open_connection("127.0.0.1", proxy.port)
        quiet = await asyncio.open_connection("127.0.0.1", proxy.port)
        quiet[1].write(b'{"id": 1, "method": "mining.subscribe", "params": []}\n'
                       b'{"id": 2, "method": "mining.authorize", "params": ["q", "x"]}\n')
        assert b'"id":2' in (await quiet[0].readline() + await quiet[0].readline()
                             ).replace(b" ", b"")
        quiet_since = time.monotonic()
        lifetimes = await asyncio.gather(
            lifetime(loris[0], opened), lifetime(half[0], opened),
            lifetime(silent[0], opened), lifetime(quiet[0], quiet_since))
        await dribbler
        attack_over = time.time()
        report = await miner
        stats = dict(proxy.stats)
        for _, writer in (loris, half, silent, quiet):
            writer.close()
    batches = await emitted_batches(kafka_bootstrap, topic)

    print(f"\nclosed after (s): slow-loris {lifetimes[0]:.2f}, subscribed only "
          f"{lifetimes[1]:.2f}, silent {lifetimes[2]:.2f}, authorized then idle "
          f"{lifetimes[3]:.2f}")
    for closed_after in lifetimes[:3]:
        assert handshake_s <= closed_after < handshake_s + 1.0
    # The proxy saw the idle client's last bytes a round trip before `quiet_since`.
    assert idle_s - 0.1 <= lifetimes[3] < idle_s + 1.0
    assert stats["closed_handshake_timeout"] == 3 and stats["closed_idle"] == 1
    assert not report["disconnected"] and report["rejected"] == 0
    assert sum(t > attack_over for t in report["accepted_at"]) > 5
    assert_proxy_matches_pool(batches, pool)


async def test_one_address_cannot_take_every_slot(
    block_722010: dict[str, Any], kafka_bootstrap: str
) -> None:
    topic = await new_topic(kafka_bootstrap)
    async with (
        running_pool(block_722010) as pool,
        running_proxy(kafka_bootstrap, pool, topic,
                      max_connections=60, max_connections_per_ip=20) as proxy,
    ):
        flood = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(100)]
        still_open = 100 - sum(await asyncio.gather(
            *(closed_by_peer(reader, 1.0) for reader, _ in flood)))
        report = await run_miner(proxy.port, "--seconds", "2", "--source-ip", "127.0.0.2")
        stats = dict(proxy.stats)
        for _, writer in flood:
            writer.close()
    batches = await emitted_batches(kafka_bootstrap, topic)

    assert still_open == 20 and stats["refused_per_ip"] == 80
    assert not report["disconnected"] and report["accepted"] > 5 and report["rejected"] == 0
    assert_proxy_matches_pool(batches, pool)


# ---- (4) upstream failure ----------------------------------------------------------------------


async def test_pool_connection_loss_is_hidden_from_the_miner(
    block_722010: dict[str, Any], kafka_bootstrap: str
) -> None:
    topic = await new_topic(kafka_bootstrap)
    async with (
        running_pool(block_722010) as pool,
        running_proxy(kafka_bootstrap, pool, topic) as proxy,
    ):
        miner = asyncio.create_task(run_miner(proxy.port, "--seconds", "4"))
        await asyncio.sleep(1.5)
        assert pool.valid_count > 0
        dropped_at = time.time()
        assert pool.drop_connections() == 1
        report = await miner
        stats = dict(proxy.stats)
    batches = await emitted_batches(kafka_bootstrap, topic)

    assert report["reconnects"] == 0 and not report["disconnected"]  # same miner connection
    assert pool.connections_opened == 2 and stats["upstream_reconnects"] == 1
    assert report["set_extranonce"] == 1
    assert report["extranonce1_seen"] == ["5a000001", "5a000002"]
    assert pool.valid_by_connection[2] > 5
    assert sum(t > dropped_at for t in report["accepted_at"]) == pool.valid_by_connection[2]
    # Shares whose verdict was lost with the connection are not credited (the pool never
    # counted them either).
    assert_proxy_matches_pool(batches, pool)


async def test_miner_that_cannot_take_a_new_extranonce_is_asked_to_reconnect(
    block_722010: dict[str, Any], kafka_bootstrap: str
) -> None:
    topic = await new_topic(kafka_bootstrap)
    async with (
        running_pool(block_722010) as pool,
        running_proxy(kafka_bootstrap, pool, topic) as proxy,
    ):
        miner = asyncio.create_task(run_miner(proxy.port, "--seconds", "4",
                                              "--no-extranonce-subscribe"))
        await asyncio.sleep(1.5)
        dropped_at = time.time()
        pool.drop_connections()
        report = await miner
    batches = await emitted_batches(kafka_bootstrap, topic)

    assert report["reconnects"] == 1 and report["set_extranonce"] == 0
    assert not report["disconnected"]
    assert pool.connections_opened == 3  # first session, the proxy's retry, the miner's return
    assert pool.valid_by_connection[3] > 5
    assert sum(t > dropped_at for t in report["accepted_at"]) == pool.valid_by_connection[3]
    assert_proxy_matches_pool(batches, pool)


# ---- (5) privacy -------------------------------------------------------------------------------


async def test_events_carry_no_addresses_and_no_worker_names(
    block_722010: dict[str, Any], kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hashatlas.proxy")
    topic = await new_topic(kafka_bootstrap)
    worker = "alice.rig-7"
    async with (
        running_pool(block_722010) as pool,
        running_proxy(kafka_bootstrap, pool, topic) as proxy,
    ):
        report = await run_miner(proxy.port, "--worker", worker, "--source-ip", "127.0.0.2",
                                 "--hashes", "1000000")
    records = await read_topic(kafka_bootstrap, topic)
    batches = await emitted_batches(kafka_bootstrap, topic)

    assert report["accepted"] > 0 and sum(b["count"] for b in batches) == report["accepted"]
    assert all(b["workers"] == 1 for b in batches if b["count"])
    secrets = [worker.encode(), b"alice", b"rig-7", b"127.0.0.2",
               worker_hash(SECRET, worker).encode(), worker_hash(SECRET, worker)[:16].encode()]
    for key, value in records:
        for raw in (key or b"", value):
            assert not IPV4.search(raw), raw
            assert not any(secret in raw for secret in secrets), raw
    assert {key for key, _ in records} == {POOL_ID.encode()}
    logged = caplog.text
    assert "127.0.0.2" not in logged and worker not in logged


# ---- Kafka delivery ----------------------------------------------------------------------------


async def test_batches_wait_for_kafka_in_a_bounded_buffer(kafka_bootstrap: str) -> None:
    """Kafka unreachable at first: the sink keeps only the newest `max_buffered` batches and
    delivers them, in order, once the broker answers."""
    topic = await new_topic(kafka_bootstrap)
    kafka_host, _, kafka_port = kafka_bootstrap.rpartition(":")
    gateway_port = free_port()  # nothing listens here yet: Kafka is "down"
    sink = KafkaBatchSink(Settings(kafka_bootstrap=f"127.0.0.1:{gateway_port}"), topic,
                          key=POOL_ID, max_buffered=5, retry_initial_s=0.1, retry_max_s=0.2)
    sink.start()
    events = [{"type": "share_batch", "start": 1000.0 + n, "end": 1001.0 + n, "pool": POOL_ID,
               "region": "US", "count": 1, "difficulty_sum": 2.0, "difficulty_sq_sum": 4.0}
              for n in range(8)]
    sink.offer(events)
    assert (sink.buffered, sink.dropped) == (5, 3)
    await asyncio.sleep(0.5)  # several failed connection attempts
    assert sink.delivered == 0

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kafka_reader, kafka_writer = await asyncio.open_connection(kafka_host, int(kafka_port))
        await asyncio.gather(pipe(reader, kafka_writer), pipe(kafka_reader, writer))

    gateway = await asyncio.start_server(forward, "127.0.0.1", gateway_port)  # Kafka is back
    try:
        await sink.stop(drain_timeout_s=20.0)
    finally:
        gateway.close()
    assert (sink.delivered, sink.dropped, sink.buffered) == (5, 3, 0)
    delivered = [json.loads(value) for _, value in await read_topic(kafka_bootstrap, topic)]
    assert delivered == events[3:]
