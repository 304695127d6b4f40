"""Soak: the whole pipeline under a steady feed for a long time; do memory, lag and freshness
stay flat?

On a Kafka and a Redis of its own (free ports, a state folder under the temp dir: never the
user's stack), a `hashatlas compactor`,
one `hashatlas worker` and the `hashatlas api` run as subprocesses while this process feeds
`shares` at a steady rate (default 2,000 single `share` events/s plus 100 `share_batch`/s, event
time = wall time, keyed by pool) and polls the API a few times a second, as a dashboard would.

Event time first runs compressed: the feed starts `--backlog-hours` (default 24) behind the wall
clock and its event time advances `--speed` times faster than wall time (default 96: 24 h in
15 min) until it reaches the wall clock, then at wall time. So the longest window (24 h) fills
within minutes and the rest of the run is the steady state. While it catches up the feed sends
`--catch-up-share-rate` and `--catch-up-batch-rate` events/s (each share then lands in a bucket
of its own, and the compactor writes about a batch per share). The warm-up (that catch-up plus
`--warmup-minutes`) is left out of the verdicts. Every `--every` seconds it samples:

- RSS of the compactor, the worker and the API (/proc VmRSS);
- consumer lag, end offset minus committed offset summed over partitions, of the compactor's
  group on `shares` and the workers' group on `share-batches` (that topic is transactional: its
  end also counts one commit marker per transaction, so a caught-up worker shows a few; and a
  worker commits only what a checkpoint covers, every `checkpoint_interval_s`), and the
  worker's applied lag: end offset minus the offsets the published snapshot covers
  (`inputs.partitions`), i.e. what the estimate does not reflect yet;
- freshness: `published_at − max_event_ts` of the snapshot in Redis (how far behind the newest
  event the published estimate is) and `now − published_at` (its age);
- what the feed sent and what it could not (errors; the feed never drops on purpose).

At the end, over the samples after the warm-up, it judges each series by a rule:

- worker and compactor RSS: the least-squares slope < `--max-rss-slope` MiB/min (0.05);
- lags, publish delay and snapshot age (and the API's RSS): flat, i.e. the second half's mean
  and its slope extrapolated over the second half within a tolerance of the first half's mean
  (`TOLERANCES`);

prints the verdicts and exits with status 1 if any fails:

    .venv/bin/python -m bench.soak [--minutes 120] [--share-rate 2000] [--batch-rate 100]
                                   [--every 10] [--backlog-hours 24] [--speed 96]
                                   [--catch-up-share-rate 200] [--catch-up-batch-rate 20]
                                   [--warmup-minutes 5] [--trace-worker]

`--trace-worker` runs the worker under tracemalloc (`bench/traced_cli.py`) and prints the
allocation sites that grew most between the first snapshot after warm-up and the last.
Prints a table as it goes and writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.common import (
    MINING_REGIONS,
    POOLS,
    RESULTS_DIR,
    Compactor,
    Worker,
    free_port,
    isolated_run,
    machine,
    print_table,
    rss_mb,
    started_worker,
    status_mb,
    stop_processes,
    wait_for_log,
)
from streams import stack
from streams.kafka import client_options
from streams.rediskeys import RedisKeys
from streams.settings import Settings, settings_env

TICK_S = 0.1
API_POLL_S = 0.25


@dataclass
class Feed:
    """What the feed has sent so far."""

    shares: int = 0
    batches: int = 0
    errors: int = 0
    behind_s: float = 0.0  # how far the feed lags its own schedule (it waits, never drops)
    max_behind_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)


@dataclass
class Sample:
    t_s: float
    compactor_rss_mb: float
    worker_rss_mb: float
    api_rss_mb: float
    compactor_lag: int
    worker_lag: int
    worker_applied_lag: int
    publish_delay_s: float
    snapshot_age_s: float
    shares_sent: int
    batches_sent: int
    feed_errors: int
    feed_behind_s: float
    api_statuses: dict[str, int]
    worker_malloc_in_use_mb: float = math.nan
    worker_malloc_free_mb: float = math.nan
    worker_rss_anon_mb: float = math.nan
    worker_rss_file_mb: float = math.nan


@dataclass(frozen=True)
class EventClock:
    """Event time that starts `backlog_s` behind the wall clock and runs `speed` times faster
    until it reaches it, then keeps to it."""

    backlog_s: float
    speed: float

    @property
    def catch_up_s(self) -> float:
        """Wall seconds until event time reaches the wall clock."""
        return self.backlog_s / (self.speed - 1.0) if self.speed > 1.0 else 0.0

    def behind_s(self, elapsed_s: float) -> float:
        return max(0.0, self.backlog_s - (self.speed - 1.0) * elapsed_s)


@dataclass(frozen=True)
class Rates:
    """Events per second: single shares and share batches, once event time has caught up and
    while it catches up (each share then falls in a bucket of its own, so the compactor writes
    about one batch per share: the worker could not keep up with the demo's rate)."""

    shares: float
    batches: float
    catch_up_shares: float
    catch_up_batches: float


async def feed_steadily(settings: Settings, rates: Rates, feed: Feed, clock: EventClock,
                        stopping: asyncio.Event) -> None:
    """Single shares and batches at fixed rates, stamped with the event clock's time."""
    producer = AIOKafkaProducer(**client_options(settings), linger_ms=20, acks=1)
    await producer.start()
    rng = np.random.default_rng(7)
    names = [p for p, _ in POOLS]
    weights = np.array([w for _, w in POOLS])
    weights /= weights.sum()
    regions = list(MINING_REGIONS)
    pending: set[asyncio.Future[Any]] = set()
    started = time.monotonic()
    tick = 0

    def settled(future: asyncio.Future[Any]) -> None:
        pending.discard(future)
        if future.exception() is not None:
            feed.errors += 1
            if len(feed.error_samples) < 5:
                feed.error_samples.append(repr(future.exception()))

    try:
        while not stopping.is_set():
            tick += 1
            due = started + tick * TICK_S
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            feed.behind_s = max(0.0, time.monotonic() - due)
            feed.max_behind_s = max(feed.max_behind_s, feed.behind_s)
            behind = clock.behind_s(time.monotonic() - started)
            now = time.time() - behind
            share_rate = rates.catch_up_shares if behind else rates.shares
            batch_rate = rates.catch_up_batches if behind else rates.batches
            n_shares = int(rng.poisson(share_rate * TICK_S))
            n_batches = int(rng.poisson(batch_rate * TICK_S))
            pools = rng.choice(len(names), n_shares + n_batches, p=weights)
            places = rng.integers(0, len(regions), n_shares + n_batches)
            diffs = 2.0 ** rng.integers(14, 21, n_shares + n_batches)
            for i in range(n_shares + n_batches):
                pool, region = names[pools[i]], regions[places[i]]
                if i < n_shares:
                    body: dict[str, Any] = {"type": "share", "ts": now, "pool": pool,
                                            "region": region, "difficulty": float(diffs[i])}
                else:
                    count = int(rng.integers(1, 200))
                    body = {"type": "share_batch", "pool": pool, "region": region,
                            "start": now - 1.0, "end": now, "count": count,
                            "difficulty_sum": count * float(diffs[i]),
                            "difficulty_sq_sum": count * float(diffs[i]) ** 2}
                future = await producer.send(settings.topics.shares, orjson.dumps(body),
                                             key=pool.encode())
                pending.add(future)
                future.add_done_callback(settled)
            feed.shares += n_shares
            feed.batches += n_batches
        if pending:
            await asyncio.wait(pending)
    finally:
        await producer.stop()


async def poll_api(port: int, counts: dict[str, int], stopping: asyncio.Event) -> None:
    """A dashboard's polling: the current estimate a few times a second (counts by status;
    503 is expected only until the first snapshot)."""
    url = f"http://127.0.0.1:{port}/v1/estimates/current"

    def get() -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
                return str(response.status)
        except urllib.error.HTTPError as error:
            return str(error.code)
        except OSError as error:
            return type(error).__name__

    while not stopping.is_set():
        status = await asyncio.to_thread(get)
        counts[status] = counts.get(status, 0) + 1
        await asyncio.sleep(API_POLL_S)


class Lag:
    """End offsets minus a group's committed offsets, summed over a topic's partitions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = AIOKafkaAdminClient(**client_options(settings))
        self.consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()

    async def stop(self) -> None:
        await self.admin.close()
        with contextlib.suppress(asyncio.CancelledError):  # aiokafka 0.14, group-less stop
            await self.consumer.stop()

    async def ends(self, topic: str, partitions: int) -> dict[int, int]:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: int(o) for tp, o in (await self.consumer.end_offsets(tps)).items()}

    async def of(self, group: str, topic: str, partitions: int) -> int:
        ends = await self.ends(topic, partitions)
        committed = {tp.partition: meta.offset
                     for tp, meta in (await self.admin.list_consumer_group_offsets(group)).items()
                     if tp.topic == topic}
        return sum(end - max(committed.get(p, 0), 0) for p, end in ends.items())

    async def applied(self, topic: str, partitions: int, covered: dict[str, int]) -> int:
        ends = await self.ends(topic, partitions)
        return sum(end - int(covered.get(str(p), 0)) for p, end in ends.items())


async def wait_http(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the API exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            await asyncio.sleep(0.2)
    raise TimeoutError("the API did not answer /healthz")


def flatness(samples: list[Sample], name: str) -> dict[str, Any]:
    """First-half and second-half means and the second half's slope per minute."""
    times = np.array([s.t_s for s in samples])
    values = np.array([float(getattr(s, name)) for s in samples])
    half = len(samples) // 2
    first, second = values[:half], values[half:]
    slope = (float(np.polyfit(times[half:] / 60.0, second, 1)[0])
             if len(second) >= 3 and np.ptp(times[half:]) > 0 else math.nan)
    return {"first_half_mean": float(first.mean()) if len(first) else math.nan,
            "second_half_mean": float(second.mean()) if len(second) else math.nan,
            "second_half_slope_per_min": slope,
            "max": float(values.max()) if len(values) else math.nan}


# What "flat" means for each series: the second half's mean within `abs` (or `rel` of the first
# half's mean, whichever is larger) of the first half's, and its slope, extrapolated over the
# second half's length, within the same tolerance.
TOLERANCES: dict[str, tuple[float, float]] = {
    "compactor_rss_mb": (20.0, 0.10), "worker_rss_mb": (20.0, 0.10), "api_rss_mb": (20.0, 0.10),
    # Lags in messages, absolute only: relative to a backlog's mean, a worker hundreds of
    # thousands of messages behind passed as flat (#18's first soak).
    "compactor_lag": (5_000.0, 0.0), "worker_lag": (2_000.0, 0.0),
    "worker_applied_lag": (2_000.0, 0.0),
    "publish_delay_s": (2.0, 0.5), "snapshot_age_s": (2.0, 0.5),
}


def verdict(stats: dict[str, Any], name: str, second_half_min: float) -> bool:
    absolute, relative = TOLERANCES[name]
    allowed = max(absolute, relative * abs(stats["first_half_mean"]))
    moved = abs(stats["second_half_mean"] - stats["first_half_mean"])
    drift = abs(stats["second_half_slope_per_min"]) * second_half_min
    return bool(moved <= allowed and (math.isnan(drift) or drift <= allowed))


#: Series whose rule is a bound on the slope after warm-up, not flatness.
RSS_SLOPE_RULED = ("compactor_rss_mb", "worker_rss_mb")
#: Reported, not ruled: where the worker's RSS goes (malloc's live bytes or its kept free ones;
#: anonymous or file-backed pages).
WORKER_MEMORY_SERIES = ("worker_malloc_in_use_mb", "worker_malloc_free_mb",
                        "worker_rss_anon_mb", "worker_rss_file_mb")


def rss_slope(samples: list[Sample], name: str) -> float:
    """Least-squares slope in MiB/min over the samples (after warm-up)."""
    if len(samples) < 3:
        return math.nan
    points = [(s.t_s / 60.0, float(getattr(s, name))) for s in samples]
    points = [(t, v) for t, v in points if math.isfinite(v)]
    if len(points) < 3:
        return math.nan
    times, values = zip(*points, strict=True)
    return float(np.polyfit(times, values, 1)[0])


@contextlib.asynccontextmanager
async def private_stack(folder: Path) -> AsyncIterator[dict[str, Any]]:
    """A Kafka and a Redis of the soak's own on free ports; yields the settings that name
    them."""
    overrides: dict[str, Any] = {
        "kafka_bootstrap": f"127.0.0.1:{free_port()}", "kafka_controller_port": free_port(),
        "redis_url": f"redis://127.0.0.1:{free_port()}/0", "state_dir": folder,
    }
    settings = Settings(**overrides)
    stack.ensure_dirs(settings)
    try:  # in a thread: start_kafka runs its own event loop to ask Kafka whether it is ready
        await asyncio.to_thread(stack.start_kafka, settings)
        await asyncio.to_thread(stack.start_redis, settings)
        yield overrides
    finally:
        stack.stop_service(stack.redis_service(settings), settings)
        stack.stop_service(stack.kafka_service(settings), settings)


class TracedWorker(Worker):
    """A `hashatlas worker` run by `bench/traced_cli.py` (tracemalloc snapshots in `folder`)."""

    def __init__(self, settings: Settings, workdir: Path, folder: Path, start_s: float,
                 every_s: float) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "worker.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**settings_env(settings), "SOAK_TRACE_DIR": str(folder),
               "SOAK_TRACE_START_S": str(start_s), "SOAK_TRACE_EVERY_S": str(every_s)}
        self.metrics_port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("traced_cli.py")), "worker",
             "--loglevel", "info", "--metrics-port", str(self.metrics_port)],
            cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT)


def heap_growth(folder: Path, after_s: float, top: int = 15) -> dict[str, Any]:
    """What grew most between the second tracemalloc snapshot at or after `after_s` and the
    last, by allocation site (the innermost six frames)."""
    import tracemalloc

    paths = sorted(folder.glob("snapshot-*.pickle"))
    # The first snapshot is taken as tracing starts: compare from the second.
    late = [p for p in paths if int(p.stem.split("-")[1]) >= after_s][1:]
    if len(late) < 2:
        return {"note": "fewer than two snapshots after warm-up"}
    first, last = (tracemalloc.Snapshot.load(str(p)) for p in (late[0], late[-1]))
    minutes = (int(late[-1].stem.split("-")[1]) - int(late[0].stem.split("-")[1])) / 60.0
    diffs = last.compare_to(first, "traceback")
    rows = [{"kib": round(d.size_diff / 1024, 1), "blocks": d.count_diff,
             "where": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}"
                       for f in d.traceback[-6:]]} for d in diffs[:top]]
    return {"minutes": minutes, "from": late[0].name, "to": late[-1].name,
            "traced_mib_from": sum(s.size for s in first.statistics("filename")) / 2**20,
            "traced_mib_to": sum(s.size for s in last.statistics("filename")) / 2**20,
            "top": rows}


def announce(args: argparse.Namespace, clock: EventClock, warmup_s: float, workdir: Path
             ) -> None:
    headers = ["t s", "compactor MiB", "worker MiB", "api MiB", "compactor lag", "worker lag",
               "applied lag", "publish delay s", "age s", "shares", "errors",
               "malloc in use MiB", "malloc free MiB", "worker anon MiB",
               "worker file MiB"]
    print(f"soak: {args.share_rate:g} shares/s + {args.batch_rate:g} share_batch/s "
          f"for {args.minutes:g} min, a sample every {args.every:g} s; event time "
          f"{args.backlog_hours:g} h behind at {args.speed:g}x (fed "
          f"{args.catch_up_share_rate:g} + {args.catch_up_batch_rate:g}/s) until "
          f"{clock.catch_up_s:.0f} s, warm-up until {warmup_s:.0f} s; logs in {workdir}")
    print("  ".join(headers), flush=True)


def check_alive(procs: dict[str, subprocess.Popen[bytes]], workdir: Path) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise RuntimeError(f"the {name} exited ({proc.returncode}); logs in {workdir}")


def malloc_mb(metrics_port: int) -> dict[str, float]:
    """The worker's ``hashatlas_malloc_bytes`` gauges in MiB, by state (empty until reported)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith('hashatlas_malloc_bytes{state="'):
            state = line.split('"')[1]
            out[state] = float(line.rsplit(" ", 1)[1]) / 2**20
    return out


async def take_sample(settings: Settings, redis: aioredis.Redis, lag: Lag, feed: Feed,
                      api_counts: dict[str, int], started: float, pids: dict[str, int],
                      worker_metrics_port: int) -> Sample:
    """RSS of each process, consumer lags, the snapshot's delay and age, the feed's counts,
    and what malloc holds in the worker (in use, and free but kept until its next trim) and
    its RSS split into anonymous and file-backed pages."""
    malloc = await asyncio.to_thread(malloc_mb, worker_metrics_port)
    keys = RedisKeys(settings.redis_prefix)
    worker = status_mb(pids["worker"], ("VmRSS", "RssAnon", "RssFile"))
    fields = await redis.hmget(keys.snapshot, ["json", "published_at"])
    body = orjson.loads(fields[0]) if fields[0] else {}
    published = float(fields[1]) if fields[1] else math.nan
    return Sample(
        t_s=round(time.monotonic() - started, 1),
        compactor_rss_mb=rss_mb(pids["compactor"])[0],
        worker_rss_mb=worker["VmRSS"],
        api_rss_mb=rss_mb(pids["api"])[0],
        compactor_lag=await lag.of(f"{settings.app_id}-compactor", settings.topics.shares,
                                   settings.partitions.shares),
        worker_lag=await lag.of(settings.app_id, settings.topics.compacted_shares,
                                settings.partitions.compacted_shares),
        worker_applied_lag=await lag.applied(
            settings.topics.compacted_shares, settings.partitions.compacted_shares,
            body.get("inputs", {}).get("partitions", {})),
        publish_delay_s=published - float(body.get("max_event_ts") or math.nan),
        snapshot_age_s=time.time() - published,
        shares_sent=feed.shares, batches_sent=feed.batches,
        feed_errors=feed.errors, feed_behind_s=feed.behind_s,
        api_statuses=dict(api_counts),
        worker_malloc_in_use_mb=malloc.get("in_use", math.nan),
        worker_malloc_free_mb=malloc.get("free", math.nan),
        worker_rss_anon_mb=worker["RssAnon"], worker_rss_file_mb=worker["RssFile"],
    )


def print_sample(sample: Sample) -> None:
    print("  ".join(str(round(v, 1) if isinstance(v, float) else v) for v in (
        sample.t_s, sample.compactor_rss_mb, sample.worker_rss_mb, sample.api_rss_mb,
        sample.compactor_lag, sample.worker_lag, sample.worker_applied_lag,
        sample.publish_delay_s, sample.snapshot_age_s, sample.shares_sent, sample.feed_errors,
        sample.worker_malloc_in_use_mb, sample.worker_malloc_free_mb,
        sample.worker_rss_anon_mb, sample.worker_rss_file_mb)),
          flush=True)


async def start_worker(args: argparse.Namespace, settings: Settings, workdir: Path,
                       trace_folder: Path, warmup_s: float) -> tuple[Worker, int]:
    """The worker under test (traced with ``--trace-worker``), ready, and its metrics port."""
    if not args.trace_worker:
        return await started_worker(settings, workdir, "worker")
    worker = TracedWorker(settings, workdir, trace_folder, warmup_s, args.trace_every)
    await wait_for_log(worker.log_path, "[^Worker]: Ready", worker.proc, 120.0)
    return worker, worker.metrics_port


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    clock = EventClock(args.backlog_hours * 3600.0, args.speed)
    warmup_s = clock.catch_up_s + args.warmup_minutes * 60.0
    folder = Path(tempfile.mkdtemp(prefix="hashatlas-soak-"))
    async with private_stack(folder / "stack") as stack, \
            isolated_run("soak", **stack) as run:
        settings = run.settings.model_copy(update={"malloc_trim": not args.no_malloc_trim,
                                                   "allocator": args.allocator})
        compactor = Compactor(settings, run.workdir, "compactor", metrics_port=free_port())
        trace_folder = folder / "trace"
        worker, worker_metrics_port = await start_worker(args, settings, run.workdir,
                                                         trace_folder, warmup_s)
        api_port = free_port()
        api_log = open(run.workdir / "api.log", "wb")  # noqa: SIM115 - closed below
        api = subprocess.Popen([sys.executable, "-m", "streams.cli", "api", "--port",
                                str(api_port)], cwd=run.workdir, env=settings_env(settings),
                               stdout=api_log, stderr=subprocess.STDOUT)
        redis = aioredis.Redis.from_url(settings.redis_url)
        lag = Lag(settings)
        feed = Feed()
        api_counts: dict[str, int] = {}
        stopping = asyncio.Event()
        samples: list[Sample] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            await wait_http(api_port, api)
            await lag.start()
            rates = Rates(args.share_rate, args.batch_rate, args.catch_up_share_rate,
                          args.catch_up_batch_rate)
            tasks = [asyncio.create_task(feed_steadily(settings, rates, feed, clock, stopping)),
                     asyncio.create_task(poll_api(api_port, api_counts, stopping))]
            started = time.monotonic()
            end = started + args.minutes * 60.0
            announce(args, clock, warmup_s, run.workdir)
            while time.monotonic() < end:
                await asyncio.sleep(min(args.every, max(0.0, end - time.monotonic())))
                check_alive({"compactor": compactor.proc, "worker": worker.proc, "api": api},
                            run.workdir)
                sample = await take_sample(settings, redis, lag, feed, api_counts, started,
                                           {"compactor": compactor.proc.pid,
                                            "worker": worker.proc.pid, "api": api.pid},
                                           worker_metrics_port)
                samples.append(sample)
                print_sample(sample)
        finally:
            stopping.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await task
            await lag.stop()
            await redis.aclose()
            api.terminate()
            api.wait(timeout=30)
            api_log.close()
            stop_processes(worker, compactor)
    heap = heap_growth(trace_folder, warmup_s) if args.trace_worker else None
    shutil.rmtree(folder, ignore_errors=True)
    return judged(args, samples, feed, api_counts, warmup_s, heap)


def judged(args: argparse.Namespace, samples: list[Sample], feed: Feed,
           api_counts: dict[str, int], warmup_s: float,
           heap: dict[str, Any] | None) -> dict[str, Any]:
    """The verdicts over the samples after warm-up, and everything measured."""
    steady = [s for s in samples if s.t_s >= warmup_s]
    elapsed_s = samples[-1].t_s if samples else 0.0
    second_half_min = (steady[-1].t_s - steady[len(steady) // 2].t_s) / 60.0 if steady else 0.0
    stats = {name: flatness(steady, name) for name in TOLERANCES}
    slopes = {name: rss_slope(steady, name) for name in RSS_SLOPE_RULED}
    passed = {name: verdict(stats[name], name, second_half_min)
              for name in TOLERANCES if name not in RSS_SLOPE_RULED}
    passed.update({name: bool(slope < args.max_rss_slope) for name, slope in slopes.items()})
    return {
        "benchmark": "soak",
        "machine": machine(),
        "parameters": {"minutes": args.minutes, "allocator": args.allocator,
                       "share_rate_hz": args.share_rate,
                       "batch_rate_hz": args.batch_rate, "sample_every_s": args.every,
                       "backlog_hours": args.backlog_hours, "speed": args.speed,
                       "catch_up_share_rate_hz": args.catch_up_share_rate,
                       "catch_up_batch_rate_hz": args.catch_up_batch_rate,
                       "warmup_s": warmup_s, "max_rss_slope_mib_per_min": args.max_rss_slope,
                       "traced_worker": args.trace_worker, "api_poll_s": API_POLL_S,
                       "compact_interval_s": Settings().compact_interval_s,
                       "snapshot_interval_s": Settings().snapshot_interval_s},
        "feed": {"shares": feed.shares, "batches": feed.batches, "errors": feed.errors,
                 "max_behind_s": feed.max_behind_s,
                 "error_samples": feed.error_samples,
                 "mean_share_rate_hz": feed.shares / elapsed_s if elapsed_s else math.nan},
        "api_polls": api_counts,
        "tolerances": {k: {"abs": a, "rel": r} for k, (a, r) in TOLERANCES.items()},
        "steady_samples": len(steady),
        "stats": stats,
        "rss_slope_mib_per_min": slopes,
        "malloc_slope_mib_per_min": {name: rss_slope(steady, name)
                                     for name in WORKER_MEMORY_SERIES},
        "passed": passed,
        "heap_growth": heap,
        "samples": [asdict(s) for s in samples],
    }


def report(result: dict[str, Any]) -> None:
    rows = []
    for name, stats in result["stats"].items():
        rule = (f"slope < {result['parameters']['max_rss_slope_mib_per_min']:g}/min"
                if name in RSS_SLOPE_RULED else "flat")
        rows.append([name, stats["first_half_mean"], stats["second_half_mean"],
                     result["rss_slope_mib_per_min"].get(name, stats["second_half_slope_per_min"]),
                     stats["max"], rule, "pass" if result["passed"][name] else "FAIL"])
    print_table(f"after warm-up ({result['steady_samples']} samples from "
                f"{result['parameters']['warmup_s']:.0f} s): first half vs second half",
                ["series", "1st half mean", "2nd half mean", "slope/min", "max", "rule",
                 "verdict"], rows)
    feed = result["feed"]
    polls = ", ".join(f"{n} × {status}" for status, n in sorted(result["api_polls"].items()))
    print(f"\nfeed: {feed['shares']:,} shares + {feed['batches']:,} batches "
          f"({feed['mean_share_rate_hz']:,.0f} shares/s), {feed['errors']} send errors, at "
          f"most {feed['max_behind_s']:.2f} s behind schedule; API polls: {polls}")
    malloc = result.get("malloc_slope_mib_per_min", {})
    print("worker memory slopes after warm-up (malloc; anonymous / file-backed pages): "
          + ", ".join(f"{name} {slope:+.3f} MiB/min" for name, slope in malloc.items()))
    heap = result.get("heap_growth")
    if heap and "top" in heap:
        print(f"\nworker heap (tracemalloc) {heap['traced_mib_from']:.1f} -> "
              f"{heap['traced_mib_to']:.1f} MiB over {heap['minutes']:.1f} min; grew most:")
        for row in heap["top"]:
            print(f"  {row['kib']:+10.1f} KiB {row['blocks']:+8d} blocks  "
                  + " <- ".join(reversed(row["where"])))
    failed = [k for k, v in result["passed"].items() if not v]
    print("PASS: every rule held" if not failed else "FAIL: " + ", ".join(failed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--share-rate", type=float, default=2000.0, help="share events/s")
    parser.add_argument("--batch-rate", type=float, default=100.0, help="share_batch events/s")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--backlog-hours", type=float, default=24.0,
                        help="how far behind the wall clock event time starts")
    parser.add_argument("--speed", type=float, default=96.0,
                        help="event seconds per wall second until event time catches up")
    parser.add_argument("--catch-up-share-rate", type=float, default=200.0,
                        help="share events/s while event time catches up")
    parser.add_argument("--catch-up-batch-rate", type=float, default=20.0,
                        help="share_batch events/s while event time catches up")
    parser.add_argument("--warmup-minutes", type=float, default=5.0,
                        help="left out of the verdicts after event time has caught up")
    parser.add_argument("--max-rss-slope", type=float, default=0.05,
                        help="MiB/min allowed for the worker's and the compactor's RSS")
    parser.add_argument("--no-malloc-trim", action="store_true",
                        help="run the worker with HASHATLAS_MALLOC_TRIM=false (malloc keeps "
                             "freed memory, as before #18's fix)")
    parser.add_argument("--allocator", choices=["jemalloc", "system"], default="jemalloc",
                        help="HASHATLAS_ALLOCATOR of the worker (system: glibc's malloc, as "
                             "before #18's fix; the compactor keeps its own default, glibc)")
    parser.add_argument("--trace-worker", action="store_true",
                        help="run the worker under tracemalloc and report what grew")
    parser.add_argument("--trace-every", type=float, default=60.0,
                        help="seconds between tracemalloc snapshots")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "soak.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on ^C: clean up
    result = asyncio.run(soak(args))
    report(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"written: {args.output}")
    sys.exit(0 if all(result["passed"].values()) else 1)


if __name__ == "__main__":
    main()
