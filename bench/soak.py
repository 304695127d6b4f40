"""Soak: the whole pipeline under a steady feed for a long time; do memory, lag and freshness
stay flat?

On the running local stack (its own topics, groups and Redis prefix), a `hashatlas compactor`,
one `hashatlas worker` and the `hashatlas api` run as subprocesses while this process feeds
`shares` at a steady rate (default 2,000 single `share` events/s plus 100 `share_batch`/s, event
time = wall time, keyed by pool) and polls the API a few times a second, as a dashboard would.
Every `--every` seconds it samples:

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

At the end it compares the second half of the run with the first (means, and the least-squares
slope over the second half) and says whether each stayed flat:

    .venv/bin/python bench/soak.py [--minutes 30] [--share-rate 2000] [--batch-rate 100]
                                   [--every 10]

Prints a table as it goes and writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    MINING_REGIONS,
    POOLS,
    RESULTS_DIR,
    Compactor,
    free_port,
    isolated_run,
    machine,
    print_table,
    rss_mb,
    started_worker,
    stop_processes,
)
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


async def feed_steadily(settings: Settings, share_rate: float, batch_rate: float, feed: Feed,
                        stopping: asyncio.Event) -> None:
    """Single shares and batches at fixed rates, stamped with the wall time they are sent."""
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
            now = time.time()
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
    "compactor_lag": (5_000.0, 0.5), "worker_lag": (2_000.0, 0.5),
    "worker_applied_lag": (2_000.0, 0.5),
    "publish_delay_s": (2.0, 0.5), "snapshot_age_s": (2.0, 0.5),
}


def verdict(stats: dict[str, Any], name: str, second_half_min: float) -> bool:
    absolute, relative = TOLERANCES[name]
    allowed = max(absolute, relative * abs(stats["first_half_mean"]))
    moved = abs(stats["second_half_mean"] - stats["first_half_mean"])
    drift = abs(stats["second_half_slope_per_min"]) * second_half_min
    return bool(moved <= allowed and (math.isnan(drift) or drift <= allowed))


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    async with isolated_run("soak") as run:
        settings = run.settings
        keys = RedisKeys(settings.redis_prefix)
        compactor = Compactor(settings, run.workdir, "compactor", metrics_port=free_port())
        worker, _ = await started_worker(settings, run.workdir, "worker")
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
            tasks = [asyncio.create_task(feed_steadily(settings, args.share_rate,
                                                       args.batch_rate, feed, stopping)),
                     asyncio.create_task(poll_api(api_port, api_counts, stopping))]
            started = time.monotonic()
            end = started + args.minutes * 60.0
            headers = ["t s", "compactor MiB", "worker MiB", "api MiB", "compactor lag",
                       "worker lag", "applied lag", "publish delay s", "age s", "shares",
                       "errors"]
            print(f"soak: {args.share_rate:g} shares/s + {args.batch_rate:g} share_batch/s "
                  f"for {args.minutes:g} min, a sample every {args.every:g} s")
            print("  ".join(headers), flush=True)
            while time.monotonic() < end:
                await asyncio.sleep(min(args.every, max(0.0, end - time.monotonic())))
                for name, proc in (("compactor", compactor.proc), ("worker", worker.proc),
                                   ("api", api)):
                    if proc.poll() is not None:
                        raise RuntimeError(f"the {name} exited ({proc.returncode}); logs in "
                                           f"{run.workdir}")
                fields = await redis.hmget(keys.snapshot, ["json", "published_at"])
                body = orjson.loads(fields[0]) if fields[0] else {}
                published = float(fields[1]) if fields[1] else math.nan
                sample = Sample(
                    t_s=round(time.monotonic() - started, 1),
                    compactor_rss_mb=rss_mb(compactor.proc.pid)[0],
                    worker_rss_mb=rss_mb(worker.proc.pid)[0],
                    api_rss_mb=rss_mb(api.pid)[0],
                    compactor_lag=await lag.of(f"{settings.app_id}-compactor",
                                               settings.topics.shares, settings.partitions.shares),
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
                )
                samples.append(sample)
                print("  ".join(str(round(v, 1) if isinstance(v, float) else v) for v in (
                    sample.t_s, sample.compactor_rss_mb, sample.worker_rss_mb,
                    sample.api_rss_mb, sample.compactor_lag, sample.worker_lag,
                    sample.worker_applied_lag, sample.publish_delay_s, sample.snapshot_age_s,
                    sample.shares_sent, sample.feed_errors)), flush=True)
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

    elapsed_s = samples[-1].t_s if samples else 0.0
    second_half_min = (elapsed_s - samples[len(samples) // 2].t_s) / 60.0 if samples else 0.0
    stats = {name: flatness(samples, name) for name in TOLERANCES}
    flat = {name: verdict(stats[name], name, second_half_min) for name in TOLERANCES}
    return {
        "benchmark": "soak",
        "machine": machine(),
        "parameters": {"minutes": args.minutes, "share_rate_hz": args.share_rate,
                       "batch_rate_hz": args.batch_rate, "sample_every_s": args.every,
                       "api_poll_s": API_POLL_S,
                       "compact_interval_s": Settings().compact_interval_s,
                       "snapshot_interval_s": Settings().snapshot_interval_s},
        "feed": {"shares": feed.shares, "batches": feed.batches, "errors": feed.errors,
                 "max_behind_s": feed.max_behind_s,
                 "error_samples": feed.error_samples,
                 "mean_share_rate_hz": feed.shares / elapsed_s if elapsed_s else math.nan},
        "api_polls": api_counts,
        "tolerances": {k: {"abs": a, "rel": r} for k, (a, r) in TOLERANCES.items()},
        "stats": stats,
        "flat": flat,
        "samples": [asdict(s) for s in samples],
    }


def report(result: dict[str, Any]) -> None:
    rows = []
    for name, stats in result["stats"].items():
        rows.append([name, stats["first_half_mean"], stats["second_half_mean"],
                     stats["second_half_slope_per_min"], stats["max"],
                     "flat" if result["flat"][name] else "NOT FLAT"])
    print_table("first half vs second half", ["series", "1st half mean", "2nd half mean",
                                              "2nd half slope/min", "max", "verdict"], rows)
    feed = result["feed"]
    polls = ", ".join(f"{n} × {status}" for status, n in sorted(result["api_polls"].items()))
    print(f"\nfeed: {feed['shares']:,} shares + {feed['batches']:,} batches "
          f"({feed['mean_share_rate_hz']:,.0f} shares/s), {feed['errors']} send errors, at "
          f"most {feed['max_behind_s']:.2f} s behind schedule; API polls: {polls}")
    everything = all(result["flat"].values())
    print("RSS, lag and freshness stayed flat" if everything else
          "NOT flat: " + ", ".join(k for k, v in result["flat"].items() if not v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--share-rate", type=float, default=2000.0, help="share events/s")
    parser.add_argument("--batch-rate", type=float, default=100.0, help="share_batch events/s")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "soak.json")
    args = parser.parse_args()
    result = asyncio.run(soak(args))
    report(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
