"""The proxy's edge: miner sockets, pool sockets and the Kafka producer, around the pure parts.

One pool connection per miner connection. Why not one shared upstream with the extranonce space
subdivided among miners: a shared session would authorize every miner under one worker, so the
pool could no longer pay, rate (vardiff) or ban miners one by one, and a proxy bug in cutting
extranonce2 would silently make shares invalid. Per-miner upstreams leave the pool's view of each
miner unchanged, so the proxy can be put in front of a pool without the pool changing anything;
the cost is one extra socket per miner, which the connection limits account for.

Hardening, so that one broken or hostile client cannot stop the others:
- a line longer than `max_line_bytes`, bytes that are not JSON-RPC, or a client that does not
  read what it is sent (`max_write_buffer_bytes`) closes that client only;
- `max_connections_per_ip` caps one address; at `max_connections` the oldest connection that has
  not yet authorized is dropped to make room, and only when every connection is authorized is
  the newcomer refused — idle sockets cannot lock honest miners out;
- a client must be authorized by the pool within `handshake_timeout_s` of connecting, and an
  authorized one that sends nothing for `idle_timeout_s` is closed;
- no pool connection is opened before the client has sent a valid handshake request, so idle
  sockets cost the pool nothing.
Timeouts are enforced by one sweeper task for all connections, not a timer per socket.

Upstream reconnect: when the pool connection fails the miner stays connected; the proxy
reconnects with exponential backoff and jitter and replays the handshake (see
`streams.proxy.protocol` for what the miner is told when the extranonce changes).

Batches go to Kafka through `KafkaBatchSink`: a bounded in-memory queue (oldest batches dropped
and counted when Kafka stays away longer than the queue holds), an idempotent producer, and
retries with backoff for whatever the producer could not deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from streams.proxy.accounting import (
    CountryLookup,
    ShareAccountant,
    account_of,
    region_of_ip,
    worker_hash,
)
from streams.proxy.protocol import (
    DEFAULT_MAX_LINE_BYTES,
    LineSplitter,
    LineTooLong,
    ProtocolError,
    RelayOutput,
    StratumRelay,
    parse_message,
)
from streams.settings import Settings

log = logging.getLogger("hashatlas.proxy")

READ_CHUNK_BYTES = 65536
STABLE_UPSTREAM_S = 10.0
"""A pool connection that lasted this long resets the reconnect backoff."""


@dataclass(frozen=True)
class ProxyConfig:
    """Where to listen, which pool to relay to, and the limits that protect the proxy."""

    upstream_host: str
    upstream_port: int
    pool_id: str
    bind: str = "0.0.0.0"
    port: int = 3333
    batch_interval_s: float = 5.0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_upstream_line_bytes: int = 256 * 1024
    max_connections: int = 4096
    max_connections_per_ip: int = 64
    handshake_timeout_s: float = 15.0
    idle_timeout_s: float = 600.0
    upstream_connect_timeout_s: float = 10.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_write_buffer_bytes: int = 1 << 20
    listen_backlog: int = 1024


class BatchSink(Protocol):
    """Where finished ``share_batch`` events go; `offer` must not block."""

    def offer(self, events: list[dict[str, Any]]) -> None: ...


class KafkaBatchSink:
    """Delivers batches to one Kafka topic, keyed by pool id, with bounded buffering."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        key: str,
        max_buffered: int = 10_000,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        send_chunk: int = 500,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.key = key.encode("utf-8")
        self.max_buffered = max_buffered
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.send_chunk = send_chunk
        self.delivered = 0
        self.dropped = 0
        self._queue: deque[bytes] = deque()
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def buffered(self) -> int:
        return len(self._queue) + self._in_flight

    def offer(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if self.buffered >= self.max_buffered and self._queue:
                self._queue.popleft()
                self.dropped += 1
                log.warning("Kafka backlog full: dropped the oldest batch (%d so far)",
                            self.dropped)
            self._queue.append(orjson.dumps(event))
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-batch-sink")

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Deliver what is buffered (up to the timeout), then close the producer."""
        self._stopping = True
        self._wakeup.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
        except TimeoutError:
            log.warning("Kafka unreachable at shutdown: %d batches not delivered", self.buffered)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        from streams.kafka import client_options

        producer: AIOKafkaProducer | None = None
        delay = self.retry_initial_s
        try:
            while True:
                if not self._queue:
                    if self._stopping:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                if producer is None:
                    candidate = AIOKafkaProducer(
                        **client_options(self.settings), acks="all", enable_idempotence=True,
                        linger_ms=20, request_timeout_ms=15_000,
                    )
                    try:
                        await candidate.start()
                    except (KafkaError, OSError) as exc:
                        await candidate.stop()
                        log.warning("Kafka not reachable (%s); retrying in %.1f s", exc, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2.0, self.retry_max_s)
                        continue
                    producer = candidate
                chunk = [self._queue.popleft()
                         for _ in range(min(self.send_chunk, len(self._queue)))]
                self._in_flight = len(chunk)
                failed = await self._send(producer, chunk, KafkaError)
                self._in_flight = 0
                self.delivered += len(chunk) - len(failed)
                if failed:
                    self._queue.extendleft(reversed(failed))
                    while self.buffered > self.max_buffered:
                        self._queue.popleft()
                        self.dropped += 1
                    log.warning("Kafka delivery failed for %d batches; retrying in %.1f s",
                                len(failed), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2.0, self.retry_max_s)
                else:
                    delay = self.retry_initial_s
        finally:
            if producer is not None:
                await producer.stop()

    async def _send(self, producer: Any, chunk: list[bytes], error_type: type[Exception]
                    ) -> list[bytes]:
        """Send a chunk; return the values that were not acknowledged, in order."""
        futures: list[asyncio.Future[Any] | None] = []
        for value in chunk:
            try:
                futures.append(await producer.send(self.topic, value=value, key=self.key))
            except error_type:
                futures.append(None)
        results = await asyncio.gather(
            *(future for future in futures if future is not None), return_exceptions=True
        )
        outcome = iter(results)
        failed = []
        for value, future in zip(chunk, futures, strict=True):
            if future is None or isinstance(next(outcome), BaseException):
                failed.append(value)
        return failed


class _Session:
    """One miner connection and its pool connection."""

    def __init__(
        self, proxy: StratumProxy, number: int, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter, ip: str, region: str,
    ) -> None:
        self.proxy = proxy
        self.number = number
        self.reader = reader
        self.writer = writer
        self.ip = ip
        self.region = region
        self.relay = StratumRelay()
        self.connected_at = time.monotonic()
        self.last_activity = self.connected_at
        self.authorized = False
        self.closed = False
        self.close_reason = ""
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.upstream_task: asyncio.Task[None] | None = None
        #: worker name → (its hash, its account's hash)
        self._worker_hashes: dict[str, tuple[str, str]] = {}

    # -- miner side --

    async def serve_miner(self) -> None:
        splitter = LineSplitter(self.proxy.config.max_line_bytes)
        reason = "miner disconnected"
        try:
            while not self.closed:
                data = await self.reader.read(READ_CHUNK_BYTES)
                if not data:
                    break
                self.last_activity = time.monotonic()
                for line in splitter.feed(data):
                    self.apply(self.relay.from_miner(parse_message(line)))
                    if self.closed:
                        return
                    if self.upstream_task is None and self.relay.wants_upstream:
                        self.upstream_task = asyncio.create_task(self._upstream_loop())
        except LineTooLong as exc:
            reason = str(exc)
            self.proxy.count("closed_line_too_long")
            self.close(reason, abort=True)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            self.proxy.count("closed_protocol_error")
            self.close(reason, abort=True)
        except (ConnectionError, OSError) as exc:
            reason = f"miner connection failed: {exc}"
        finally:
            self.close(reason)

    def apply(self, out: RelayOutput) -> None:
        """Carry out what the relay decided."""
        for line in out.to_upstream:
            self._write_upstream(line)
        for line in out.to_miner:
            self._write_miner(line)
        if out.credited or out.rejected:
            now = self.proxy.clock()
            for share in out.credited:
                hashed = self._worker_hashes.get(share.worker)
                if hashed is None:
                    if len(self._worker_hashes) >= self.relay.max_workers:
                        self._worker_hashes.clear()
                    hashed = (worker_hash(self.proxy.secret, share.worker),
                              worker_hash(self.proxy.secret, account_of(share.worker)))
                    self._worker_hashes[share.worker] = hashed
                self.proxy.accountant.credit(self.region, share.difficulty, hashed[0], now,
                                             account=hashed[1])
            if out.rejected:
                self.proxy.accountant.reject(self.region, now, out.rejected)
            self.proxy.count("shares_credited", len(out.credited))
            self.proxy.count("shares_rejected", out.rejected)
        if out.lost:
            self.proxy.count("shares_lost", out.lost)
        if self.relay.authorized and not self.authorized and not self.closed:
            self.authorized = True
            self.proxy.note_authorized(self)
        if out.close_miner:
            self.close(out.close_miner)

    def _write_miner(self, line: bytes) -> None:
        if self.closed:
            return
        self.writer.write(line)
        if self.writer.transport.get_write_buffer_size() > self.proxy.config.max_write_buffer_bytes:
            self.proxy.count("closed_slow_reader")
            self.close("miner does not read what it is sent", abort=True)

    def close(self, reason: str, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        log.debug("session %d closed: %s", self.number, reason)
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()
        if self.upstream_writer is not None:
            self.upstream_writer.transport.abort()
        if self.upstream_task is not None:
            self.upstream_task.cancel()
        self.proxy.forget(self)

    # -- pool side --

    def _write_upstream(self, line: bytes) -> None:
        writer = self.upstream_writer
        if writer is None or writer.transport.is_closing():
            return
        writer.write(line)
        if writer.transport.get_write_buffer_size() > self.proxy.config.max_write_buffer_bytes:
            log.warning("session %d: pool does not read; reconnecting", self.number)
            writer.transport.abort()

    async def _upstream_loop(self) -> None:
        config = self.proxy.config
        delay = config.reconnect_initial_s
        while not self.closed:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(config.upstream_host, config.upstream_port),
                    config.upstream_connect_timeout_s,
                )
            except (OSError, TimeoutError) as exc:
                log.warning("session %d: pool unreachable (%s); retrying in %.1f s",
                            self.number, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2.0, config.reconnect_max_s)
                continue
            if self.relay.upstream_connections:
                self.proxy.count("upstream_reconnects")
            self.upstream_writer = writer
            connected_at = time.monotonic()
            self.apply(self.relay.upstream_connected())
            reason = await self._pump_upstream(reader)
            writer.transport.abort()
            self.upstream_writer = None
            self.apply(self.relay.upstream_lost())
            if self.closed:
                return
            if time.monotonic() - connected_at >= STABLE_UPSTREAM_S:
                delay = config.reconnect_initial_s
            log.info("session %d: pool connection ended (%s); reconnecting in %.1f s",
                     self.number, reason, delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2.0, config.reconnect_max_s)

    async def _pump_upstream(self, reader: asyncio.StreamReader) -> str:
        splitter = LineSplitter(self.proxy.config.max_upstream_line_bytes)
        try:
            while not self.closed:
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    return "the pool closed the connection"
                for line in splitter.feed(data):
                    out = self.relay.from_upstream(parse_message(line))
                    self.apply(out)
                    if out.reconnect_upstream:
                        return out.reconnect_upstream
            return "miner gone"
        except ProtocolError as exc:
            return f"the pool sent something that is not Stratum ({exc})"
        except (ConnectionError, OSError) as exc:
            return f"pool connection failed ({exc})"


class StratumProxy:
    """The listening server: admits miners, runs their sessions, cuts and hands over batches."""

    def __init__(
        self,
        config: ProxyConfig,
        sink: BatchSink,
        secret: bytes,
        country_lookup: CountryLookup | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if country_lookup is None:
            import iptocc

            country_lookup = iptocc.country_code
        self.config = config
        self.sink = sink
        self.secret = secret
        self.country_lookup = country_lookup
        self.clock = clock
        self.accountant = ShareAccountant(config.pool_id, config.batch_interval_s, clock())
        self.stats: Counter[str] = Counter()
        self._sessions: dict[int, _Session] = {}
        self._unauthorized: OrderedDict[int, _Session] = OrderedDict()
        self._per_ip: Counter[str] = Counter()
        self._authorized_regions: Counter[str] = Counter()
        self._numbers = 0
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("proxy is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._sessions)

    def count(self, name: str, amount: int = 1) -> None:
        if amount:
            self.stats[name] += amount

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._admit, self.config.bind, self.config.port, backlog=self.config.listen_backlog,
            limit=READ_CHUNK_BYTES,
        )
        self._tasks = [
            asyncio.create_task(self._cut_batches(), name="proxy-batches"),
            asyncio.create_task(self._sweep(), name="proxy-sweeper"),
        ]
        log.info("listening on %s:%d, relaying to %s:%d as pool %r", self.config.bind, self.port,
                 self.config.upstream_host, self.config.upstream_port, self.config.pool_id)

    async def stop(self) -> None:
        """Stop accepting, close every session, and hand over the last (partial) batches."""
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions.values())
        for session in sessions:
            session.close("proxy shutting down")
        upstream_tasks = [session.upstream_task for session in sessions
                          if session.upstream_task is not None]
        waiting = [*self._handlers, *upstream_tasks]
        if waiting:
            await asyncio.wait(waiting, timeout=5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        events = self.accountant.flush_all(self.clock(), self._authorized_regions)
        if events:
            self.sink.offer(events)

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        if self._per_ip[ip] >= self.config.max_connections_per_ip:
            self.count("refused_per_ip")
            writer.transport.abort()
            return
        if len(self._sessions) >= self.config.max_connections:
            if not self._unauthorized:
                self.count("refused_full")
                writer.transport.abort()
                return
            oldest = next(iter(self._unauthorized.values()))
            self.count("evicted_unauthorized")
            oldest.close("connection limit reached: oldest unauthorized connection dropped",
                         abort=True)
        self._numbers += 1
        session = _Session(self, self._numbers, reader, writer, ip,
                           region_of_ip(ip, self.country_lookup))
        self._sessions[session.number] = session
        self._unauthorized[session.number] = session
        self._per_ip[ip] += 1
        self.count("accepted")
        await session.serve_miner()

    def note_authorized(self, session: _Session) -> None:
        self._unauthorized.pop(session.number, None)
        self._authorized_regions[session.region] += 1

    def forget(self, session: _Session) -> None:
        if self._sessions.pop(session.number, None) is None:
            return
        self._unauthorized.pop(session.number, None)
        self._per_ip[session.ip] -= 1
        if self._per_ip[session.ip] <= 0:
            del self._per_ip[session.ip]
        if session.authorized:
            self._authorized_regions[session.region] -= 1
            if self._authorized_regions[session.region] <= 0:
                del self._authorized_regions[session.region]

    async def _cut_batches(self) -> None:
        interval = self.config.batch_interval_s
        while True:
            now = self.clock()
            await asyncio.sleep((math.floor(now / interval) + 1) * interval - now + 1e-3)
            events = self.accountant.flush(self.clock(), self._authorized_regions)
            if events:
                self.sink.offer(events)

    async def _sweep(self) -> None:
        config = self.config
        period = max(0.05, min(1.0, config.handshake_timeout_s / 4, config.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            while self._unauthorized:
                oldest = next(iter(self._unauthorized.values()))
                if now - oldest.connected_at < config.handshake_timeout_s:
                    break
                self.count("closed_handshake_timeout")
                oldest.close("not authorized in time", abort=True)
            for session in list(self._sessions.values()):
                if session.authorized and now - session.last_activity > config.idle_timeout_s:
                    self.count("closed_idle")
                    session.close("idle", abort=True)
