"""Shared plumbing for the pipeline benchmarks on the real local Kafka and Redis.

Every run gets its own topics, consumer groups and Redis prefix (one random run id, which every
name starts with), so benchmarks can run next to the tests and each other, and `isolated_run`
deletes what the run created on the way out so the broker's disk does not fill.

What is measured is measured from outside the processes under test, with the clocks they
already expose: the Prometheus counters (when consumption starts), the consumer groups' committed
offsets (when the compactor is through), and the snapshot in Redis (`published_at`, the offsets
it covers in `inputs.partitions`, `max_event_ts`), so the code under test runs unmodified.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from streams.kafka import client_options
from streams.rediskeys import RedisKeys
from streams.settings import Partitions, Settings, Topics
from streams.topics import create_topics
from tests.integration.pipeline_helpers import (
    Compactor,
    Worker,
)

# End offsets as the pipeline tests read them, re-exported for the benchmarks.
from tests.integration.pipeline_helpers import data_ends as data_ends
from tests.integration.pipeline_helpers import topic_ends as topic_ends
from tests.net import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
WORK_ROOT = Path(tempfile.gettempdir()) / "hashatlas-bench"

# Pools with rough shares of the network (the share stream is keyed by pool, as CONTRACTS.md says).
POOLS: tuple[tuple[str, float], ...] = (
    ("foundry-usa", 0.30), ("antpool", 0.18), ("viabtc", 0.12), ("f2pool", 0.10),
    ("binance-pool", 0.06), ("mara-pool", 0.05), ("spiderpool", 0.05), ("luxor", 0.04),
    ("sbicrypto", 0.03), ("braiins-pool", 0.03), ("ocean", 0.02), ("secpool", 0.02),
)
# Where hashrate is (countries and the subdivisions pools report), before the rest of ISO 3166.
MINING_REGIONS = (
    "US-TX", "US-GA", "US-NY", "US-WA", "US-KY", "US-ND", "US", "CN-SC", "CN-XJ", "CN-NM",
    "CN-YN", "CN", "KZ", "CA-QC", "CA-AB", "CA", "RU", "DE", "MY", "IE", "IR", "NO", "SE",
    "PY", "AE", "ET", "IS", "FI", "GE", "BR", "AR", "VE", "UZ", "KG", "TH", "ID", "VN", "UA",
    "BY", "FR", "NL", "GB", "BT", "OM", "SA", "QA", "CL", "MX", "NZ", "AU",
)


def region_codes(count: int) -> list[str]:
    """`count` valid region codes: the mining regions first, then other ISO 3166-1 countries."""
    import pycountry

    codes = list(MINING_REGIONS[:count])
    others = sorted(str(c.alpha_2) for c in pycountry.countries)
    codes.extend(c for c in others if c not in MINING_REGIONS)
    if count > len(codes):
        raise ValueError(f"only {len(codes)} region codes available")
    return codes[:count]


# ---- isolated runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One isolated benchmark run: its settings (names all start with `run_id`) and log folder."""

    run_id: str
    settings: Settings
    workdir: Path

    def derived(self, suffix: str, **updates: Any) -> Settings:
        """Same topics, another consumer group and Redis prefix (a second, independent pipeline
        over the same data)."""
        return self.settings.model_copy(update={
            "app_id": f"{self.run_id}-{suffix}",
            "redis_prefix": f"{self.run_id}-{suffix}",
            **updates,
        })


def run_settings(run_id: str, shares_partitions: int, batches_partitions: int,
                 **overrides: Any) -> Settings:
    """Settings whose topics, groups and Redis prefix belong to `run_id` alone."""
    topics = Topics(**{name: f"{run_id}-{value}" for name, value in Topics().model_dump().items()})
    return Settings(
        topics=topics,
        partitions=Partitions(shares=shares_partitions, compacted_shares=batches_partitions),
        app_id=run_id,
        redis_prefix=run_id,
        metrics_port_base=0,
        **overrides,
    )


@contextlib.asynccontextmanager
async def isolated_run(label: str, shares_partitions: int = 4, batches_partitions: int = 4,
                       **overrides: Any) -> AsyncIterator[Run]:
    """Create a run's topics; afterwards delete every topic and Redis key the run made."""
    run_id = f"bench{label}-{uuid.uuid4().hex[:8]}"
    settings = run_settings(run_id, shares_partitions, batches_partitions, **overrides)
    workdir = WORK_ROOT / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    await create_topics(settings)
    try:
        yield Run(run_id, settings, workdir)
    finally:
        try:
            await asyncio.wait_for(delete_run_topics(settings, run_id), 120)
        finally:
            await asyncio.wait_for(delete_redis_prefix(settings, run_id), 60)


async def delete_run_topics(settings: Settings, run_id: str) -> list[str]:
    """Delete the run's topics, Faust's changelog and assignor topics included."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(run_id)]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


async def delete_redis_prefix(settings: Settings, prefix: str) -> None:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i:i + 500])
    finally:
        await client.aclose()


# ---- synthetic events ------------------------------------------------------------------------


@dataclass
class EventChunk:
    """Keyed messages ready to produce, and how many shares they stand for."""

    keys: list[bytes]
    values: list[bytes]
    shares: int


def _pool_choice(rng: np.random.Generator, size: int) -> npt.NDArray[np.int64]:
    weights = np.array([w for _, w in POOLS])
    return rng.choice(len(POOLS), size=size, p=weights / weights.sum())


def share_chunks(count: int, *, seed: int, t0: float, rate_hz: float, regions: Sequence[str],
                 workers: int, chunk: int = 10_000) -> Iterator[EventChunk]:
    """Single `share` events as a live feed sends them: Poisson arrivals in time order, pool by
    network share, vardiff difficulties 2^14..2^20, worker ids cycling through a permutation of
    `workers` ids (so with `count` ≥ `workers` every worker appears)."""
    rng = np.random.default_rng(seed)
    pool_names = [p for p, _ in POOLS]
    pool_keys = [p.encode() for p in pool_names]
    worker_order = rng.permutation(workers)
    t = t0
    for first in range(0, count, chunk):
        size = min(chunk, count - first)
        ts = t + np.cumsum(rng.exponential(1.0 / rate_hz, size))
        t = float(ts[-1])
        pools = _pool_choice(rng, size).tolist()
        region_idx = rng.integers(0, len(regions), size).tolist()
        diffs = (2 ** rng.integers(14, 21, size)).tolist()
        worker_ids = worker_order[(np.arange(first, first + size) % workers)].tolist()
        times = np.round(ts, 3).tolist()
        values = [
            orjson.dumps({
                "type": "share", "ts": times[i], "pool": pool_names[pools[i]],
                "worker": f"{worker_ids[i]:016x}", "region": regions[region_idx[i]],
                "difficulty": diffs[i], "accepted": True,
            })
            for i in range(size)
        ]
        yield EventChunk([pool_keys[p] for p in pools], values, size)


def batch_chunks(count: int, *, seed: int, t0: float, rate_hz: float, regions: Sequence[str],
                 mean_shares: float, chunk: int = 10_000) -> Iterator[EventChunk]:
    """`share_batch` events as proxies send them: each sums one (pool, region) over up to one
    10-second bucket, `count` shares geometric with mean `mean_shares`, vardiff difficulties."""
    rng = np.random.default_rng(seed)
    pool_names = [p for p, _ in POOLS]
    pool_keys = [p.encode() for p in pool_names]
    t = t0
    for first in range(0, count, chunk):
        size = min(chunk, count - first)
        ts = t + np.cumsum(rng.exponential(1.0 / rate_hz, size))
        t = float(ts[-1])
        starts = np.floor(ts / 10.0) * 10.0
        ends = np.minimum(ts, starts + 9.999)
        pools = _pool_choice(rng, size).tolist()
        region_idx = rng.integers(0, len(regions), size).tolist()
        counts = rng.geometric(1.0 / mean_shares, size)
        mean_diff = 2.0 ** rng.integers(14, 21, size)
        dsum = counts * mean_diff
        dsq = counts * mean_diff * mean_diff * 1.5
        rows = zip(starts.tolist(), np.round(ends, 3).tolist(), pools, region_idx,
                   counts.tolist(), dsum.tolist(), dsq.tolist(), strict=True)
        values = [
            orjson.dumps({
                "type": "share_batch", "start": s, "end": e, "pool": pool_names[p],
                "region": regions[r], "count": c, "difficulty_sum": d, "difficulty_sq_sum": q,
            })
            for s, e, p, r, c, d, q in rows
        ]
        yield EventChunk([pool_keys[p] for p in pools], values, int(counts.sum()))


@dataclass
class Loaded:
    """What `produce_keyed` wrote."""

    messages: int = 0
    shares: int = 0
    bytes: int = 0
    seconds: float = 0.0
    per_partition: dict[int, int] = field(default_factory=dict)

    @property
    def mean_bytes(self) -> float:
        return self.bytes / self.messages if self.messages else 0.0


async def produce_keyed(settings: Settings, topic: str, chunks: Iterable[EventChunk]) -> Loaded:
    """Pre-load a topic fast: whole record batches per partition (the Kafka default partitioner
    on the key, as a keyed send would), no per-message futures."""
    producer = AIOKafkaProducer(**client_options(settings), max_batch_size=1_048_576,
                                max_request_size=4_194_304, linger_ms=0)
    await producer.start()
    loaded = Loaded()
    started = time.monotonic()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partition_of: dict[bytes, int] = {}
        builders: dict[int, Any] = {}
        deliveries: list[asyncio.Future[Any]] = []
        for chunk in chunks:
            for key, value in zip(chunk.keys, chunk.values, strict=True):
                partition = partition_of.get(key)
                if partition is None:
                    partition = DefaultPartitioner()(key, partitions, partitions)
                    partition_of[key] = partition
                builder = builders.get(partition)
                if builder is None:
                    builder = builders[partition] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None) is None:
                    deliveries.append(await producer.send_batch(builder, topic,
                                                                partition=partition))
                    builder = builders[partition] = producer.create_batch()
                    builder.append(key=key, value=value, timestamp=None)
                loaded.per_partition[partition] = loaded.per_partition.get(partition, 0) + 1
                loaded.bytes += len(value)
            loaded.messages += len(chunk.values)
            loaded.shares += chunk.shares
        for partition, builder in builders.items():
            if builder.record_count():
                deliveries.append(await producer.send_batch(builder, topic, partition=partition))
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    loaded.seconds = time.monotonic() - started
    return loaded


# ---- reading Kafka state -----------------------------------------------------------------------


async def wait_group_caught_up(settings: Settings, group: str, ends: dict[int, int],
                               topic: str, timeout_s: float, poll_s: float = 0.1) -> float:
    """Wall time at which `group` has committed every partition of `topic` to its end."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            committed = await admin.list_consumer_group_offsets(group)
            done = {tp.partition: meta.offset for tp, meta in committed.items()
                    if tp.topic == topic}
            if all(done.get(p, -1) >= end for p, end in ends.items() if end):
                return time.time()
            await asyncio.sleep(poll_s)
    finally:
        await admin.close()
    raise TimeoutError(f"group {group} did not catch up on {topic} within {timeout_s} s")


# ---- the processes under test -------------------------------------------------------------------


def stop_processes(*processes: Worker | Compactor) -> None:
    """Stop every process, even when stopping one of them fails (then raise that)."""
    failures: list[BaseException] = []
    for process in processes:
        try:
            process.stop()
        except Exception as error:  # each must get its chance to stop
            failures.append(error)
    if failures:
        raise failures[0]


async def started_worker(settings: Settings, workdir: Path, name: str,
                         timeout_s: float = 120.0) -> tuple[Worker, int]:
    """A `hashatlas worker` subprocess that has logged Faust's 'Ready', and its metrics port."""
    port = free_port()
    worker = Worker(settings, workdir, name, metrics_port=port)
    try:
        await wait_for_log(worker.log_path, "[^Worker]: Ready", worker.proc, timeout_s)
    except BaseException:
        worker.stop()
        raise
    return worker, port


async def wait_for_log(path: Path, text: str, proc: subprocess.Popen[bytes],
                       timeout_s: float) -> float:
    """Wall time at which `text` appeared in a process's log (Faust logs '[^Worker]: Ready')."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return time.time()
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}); log: {path}")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{text!r} not in {path} within {timeout_s} s")


def read_counter(port: int, metric: str, label: str) -> float:
    """Current value of one labelled Prometheus counter of a process (0 if not yet set)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    prefix = f"{metric}{{{label}}} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


async def wait_first_progress(ports: Sequence[int], topic: str, timeout_s: float,
                              poll_s: float = 0.02) -> tuple[float, float]:
    """(wall time, messages consumed so far) when the processes first report consumption of
    `topic`: the start of a measured interval, the messages before it excluded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = []
        for port in ports:
            with contextlib.suppress(OSError):
                counts.append(read_counter(port, "hashatlas_events_consumed_total",
                                           f'topic="{topic}"'))
        if sum(counts) > 0:
            return time.time(), sum(counts)
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"no consumption of {topic} within {timeout_s} s")


def status_mb(pid: int, names: tuple[str, ...]) -> dict[str, float]:
    """Memory fields of /proc/PID/status in MiB (e.g. VmRSS, VmHWM; RssAnon and RssFile split
    RSS into anonymous pages, where heap growth shows, and file-backed ones); NaN for a field
    missing or a process gone."""
    values = dict.fromkeys(names, math.nan)
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = float(rest.split()[0]) / 1024.0
    return values


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB, from /proc (VmRSS, VmHWM)."""
    values = status_mb(pid, ("VmRSS", "VmHWM"))
    return values["VmRSS"], values["VmHWM"]


@dataclass(frozen=True)
class ProcessCounters:
    """A process's CPU seconds and minor page faults so far (/proc/PID/stat): the split says
    whether extra CPU is the program's own (user) or the kernel's, e.g. refaulting memory an
    allocator handed back (#13)."""

    user_s: float
    system_s: float
    minor_faults: float

    def __sub__(self, other: ProcessCounters) -> ProcessCounters:
        return ProcessCounters(self.user_s - other.user_s, self.system_s - other.system_s,
                               self.minor_faults - other.minor_faults)

    def per_event(self, events: float) -> dict[str, float]:
        """µs of user and system CPU and minor faults per 1,000 events."""
        return {"user_us": 1e6 * self.user_s / events, "system_us": 1e6 * self.system_s / events,
                "minor_faults_per_kevent": 1e3 * self.minor_faults / events}


def process_counters(pid: int) -> ProcessCounters:
    """What the process has used so far (NaN once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ProcessCounters(math.nan, math.nan, math.nan)
    tick = os.sysconf("SC_CLK_TCK")
    return ProcessCounters(int(fields[11]) / tick, int(fields[12]) / tick, float(fields[7]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat)."""
    counters = process_counters(pid)
    return counters.user_s + counters.system_s


class RssSampler:
    """Samples the RSS of named processes in the background: each one's maximum, and a
    timeline of (seconds since start, {name: MiB})."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.25) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.max_mb: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.timeline: list[tuple[float, dict[str, float]]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        started = time.monotonic()
        while True:
            point = {}
            for name, pid in self.pids.items():
                current, _ = rss_mb(pid)
                if not math.isnan(current):  # NaN: the process is gone
                    self.max_mb[name] = max(self.max_mb[name], current)
                    point[name] = round(current, 1)
            self.timeline.append((round(time.monotonic() - started, 2), point))
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, dict[str, float]]:
        """Per process: sampled max RSS and the kernel's peak (VmHWM), read before it exits."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        out = {}
        for name, pid in self.pids.items():
            current, peak = rss_mb(pid)
            out[name] = {"rss_mb": round(current, 1), "sampled_max_rss_mb":
                         round(self.max_mb[name], 1), "peak_rss_mb": round(peak, 1)}
        return out


# ---- the snapshot in Redis ----------------------------------------------------------------------


@dataclass(frozen=True)
class SeenSnapshot:
    published_at: float
    observed_at: float
    max_event_ts: float
    partitions: dict[int, int]

    def includes(self, expected: dict[int, int]) -> bool:
        return all(self.partitions.get(p, -1) >= n for p, n in expected.items() if n)


class SnapshotWatcher:
    """Polls the run's snapshot hash and keeps every distinct snapshot published."""

    def __init__(self, settings: Settings, poll_s: float = 0.02) -> None:
        self.key = RedisKeys(settings.redis_prefix).snapshot
        self.redis = aioredis.Redis.from_url(settings.redis_url)
        self.poll_s = poll_s
        self.seen: list[SeenSnapshot] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last: bytes | str = b""
        while True:
            published = await self.redis.hget(self.key, "published_at")
            if published and published != last:
                last = published
                raw = await self.redis.hget(self.key, "json")
                if raw:
                    body = orjson.loads(raw)
                    partitions = body.get("inputs", {}).get("partitions", {})
                    self.seen.append(SeenSnapshot(
                        float(published), time.time(), float(body.get("max_event_ts") or 0.0),
                        {int(p): int(o) for p, o in partitions.items()},
                    ))
            await asyncio.sleep(self.poll_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop polling; never raises (it runs in teardown, before processes are stopped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.aclose(), 5)

    def first_including(self, expected: dict[int, int]) -> SeenSnapshot | None:
        return next((s for s in self.seen if s.includes(expected)), None)

    async def wait_including(self, expected: dict[int, int], timeout_s: float) -> SeenSnapshot:
        if not any(expected.values()):
            raise ValueError("nothing expected: every partition is empty")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.first_including(expected)
            if found is not None:
                return found
            if self._task is not None and self._task.done():
                self._task.result()  # the poller failed: raise its error, not a timeout
            await asyncio.sleep(0.05)
        last = self.seen[-1].partitions if self.seen else None
        raise TimeoutError(f"no snapshot covering {expected} within {timeout_s} s; last: {last}")


# ---- reporting ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = math.nan
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gb": mem_gb,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table on stdout."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in text:
        print("  ".join(v.rjust(w) if i else v.ljust(w)
                        for i, (v, w) in enumerate(zip(row, widths, strict=True))))


def results_dir(quick: bool) -> Path:
    """Where a bench writes its JSON: quick runs apart, so they never replace full figures."""
    return RESULTS_DIR / "quick" if quick else RESULTS_DIR


def write_result(name: str, body: dict[str, Any], quick: bool) -> Path:
    folder = results_dir(quick)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(body, indent=2, default=float) + "\n")
    return path


def finish(name: str, result: dict[str, Any], quick: bool,
           report: Callable[[dict[str, Any]], None]) -> int:
    """The end of every bench's main: mark the scale, print the table, write the JSON."""
    result["setup"]["quick"] = quick
    report(result)
    print(f"\nwrote {write_result(name, result, quick)}")
    return 0


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


# ---- profiling ----------------------------------------------------------------------------------


class SpyProfile:
    """py-spy sampling a running process (attached by pid: the process runs unmodified)."""

    def __init__(self, pid: int, path: Path, rate_hz: int = 200) -> None:
        binary = Path(sys.executable).parent / "py-spy"
        if not binary.exists():
            raise FileNotFoundError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.path = path
        self.proc = subprocess.Popen(
            [str(binary), "record", "--pid", str(pid), "--format", "raw", "--rate",
             str(rate_hz), "--nonblocking", "-o", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Where the samples of a py-spy raw (collapsed stacks) profile went, as % of samples:
    functions on top of the stack (self), self time by package (first path component:
    `streams`, `aiokafka`, `faust`, `numpy`, `asyncio`...), and the project's own functions
    anywhere on the stack (inclusive)."""
    self_samples: dict[str, int] = {}
    packages: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"samples": 0, "self": [], "self_by_package": [], "project_inclusive": []}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        name, source = frames[-1]
        self_samples[name] = self_samples.get(name, 0) + count
        package = source.split("/", 1)[0] if "/" in source else source
        packages[package] = packages.get(package, 0) + count
        for name in {n for n, src in frames if src.startswith(("streams/", "api/"))}:
            inclusive[name] = inclusive.get(name, 0) + count

    def ranked(table: dict[str, int]) -> list[list[Any]]:
        best = sorted(table.items(), key=lambda item: -item[1])[:top]
        return [[name, round(100.0 * n / total, 1)] for name, n in best]

    return {"samples": total, "self": ranked(self_samples),
            "self_by_package": ranked(packages), "project_inclusive": ranked(inclusive)}


def _frame(frame: str) -> tuple[str, str]:
    """'ingest (streams/pipeline/compactor.py:130)' → ('ingest (streams/pipeline/compactor.py)',
    'streams/...')."""
    name, _, where = frame.partition(" (")
    source = where.rstrip(")").rsplit(":", 1)[0]
    return (f"{name} ({source})" if source else name), source
