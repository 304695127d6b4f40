"""Freshness: how long after a share is produced the published snapshot includes it.

A producer process paces single `share` events at a steady rate (1k, 10k, 50k events/s by
default), each with `ts` = the wall time at which it is produced, into a compactor + worker
that were started and ready beforehand. The bench polls the snapshot hash in Redis and keeps
every snapshot published. An event with time t counts as included from the first snapshot
whose `max_event_ts` ≥ t (the snapshot's newest event, merged over partitions; `settle_s`
moves `as_of` back but not `max_event_ts`); freshness = that snapshot's `published_at` − t,
for a sample of events (about 200 per second), leaving out each rate's first seconds (warm-up).
`visible` is the same measured to when the bench first saw the snapshot in Redis (≤ 20 ms
polling), which also counts the time to build and write it.

The pipeline's cadence sets most of the figure: the compactor flushes every
`compact_interval_s`, the worker takes batches within 0.2 s, and the worker writes partials and
the leader publishes every `snapshot_interval_s` (independent timers). Both intervals are set
here (default: the production defaults, 0.5 s each) and reported with the results. Faster is
not fresher on 2 cores: at 0.25 s the worker spends most of a core building partials and
snapshots, and events wait behind that work.

    .venv/bin/python -m bench.freshness [--rates 1000 10000 50000] [--duration 30]
        [--compact-interval 0.5] [--snapshot-interval 0.5] [--quick] [--profile]

Prints a table and writes bench/results/freshness.json.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from typing import Any

import numpy as np
import orjson

from bench.common import (
    POOLS,
    RESULTS_DIR,
    Compactor,
    SnapshotWatcher,
    SpyProfile,
    cpu_seconds,
    finish,
    free_port,
    isolated_run,
    machine,
    print_table,
    region_codes,
    started_worker,
    stop_processes,
    summarise_profile,
)
from streams.settings import Settings

PROFILE_DIR = RESULTS_DIR / "profiles"
RATES = (1_000, 10_000, 50_000)
SAMPLES_PER_S = 200
TICK_S = 0.005
TARGET_P99_S_AT_10K = 2.0


# ---- the paced producer (its own process) -------------------------------------------------------


def _paced_producer(settings: Settings, rate_hz: float, duration_s: float, out: Any) -> None:
    out.put(asyncio.run(_pace(settings, rate_hz, duration_s)))


async def _pace(settings: Settings, rate_hz: float, duration_s: float) -> dict[str, Any]:
    """Produce `rate_hz` shares per second for `duration_s`, each stamped when it is built;
    whole record batches per partition every few milliseconds (no per-message futures)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    from streams.kafka import client_options

    topic = settings.topics.shares
    producer = AIOKafkaProducer(**client_options(settings), linger_ms=0,
                                max_batch_size=1_048_576)
    await producer.start()
    rng = np.random.default_rng(int(rate_hz))
    names = [p for p, _ in POOLS]
    weights = np.array([w for _, w in POOLS])
    cycle = 1 << 16
    pools = rng.choice(len(names), cycle, p=weights / weights.sum()).tolist()
    regions = region_codes(50)
    region_idx = rng.integers(0, len(regions), cycle).tolist()
    diffs = (2 ** rng.integers(14, 21, cycle)).tolist()
    workers = [f"{w:016x}" for w in rng.integers(0, 1 << 40, cycle).tolist()]
    keys = [name.encode() for name in names]
    partitions = sorted(await producer.partitions_for(topic))
    partition_of = [DefaultPartitioner()(key, partitions, partitions) for key in keys]
    sample_every = max(1, int(rate_hz // SAMPLES_PER_S))
    samples: list[float] = []
    deliveries: list[Any] = []
    sent = 0
    start = time.time()
    try:
        while (elapsed := time.time() - start) < duration_s:
            due = int(rate_hz * elapsed) - sent
            builders: dict[int, Any] = {}
            for i in range(sent, sent + due):
                j = i % cycle
                ts = time.time()
                value = orjson.dumps({
                    "type": "share", "ts": ts, "pool": names[pools[j]], "worker": workers[j],
                    "region": regions[region_idx[j]], "difficulty": diffs[j], "accepted": True,
                })
                partition = partition_of[pools[j]]
                builder = builders.get(partition)
                if builder is None:
                    builder = builders[partition] = producer.create_batch()
                if builder.append(key=keys[pools[j]], value=value, timestamp=None) is None:
                    deliveries.append(await producer.send_batch(builder, topic,
                                                                partition=partition))
                    builder = builders[partition] = producer.create_batch()
                    builder.append(key=keys[pools[j]], value=value, timestamp=None)
                if i % sample_every == 0:
                    samples.append(ts)
            for partition, builder in builders.items():
                deliveries.append(await producer.send_batch(builder, topic, partition=partition))
            sent += due
            await asyncio.sleep(TICK_S)
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return {"sent": sent, "seconds": time.time() - start, "start": start, "samples": samples}


async def _produce_paced(settings: Settings, rate_hz: float, duration_s: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    proc = context.Process(target=_paced_producer, args=(settings, rate_hz, duration_s, out))
    proc.start()
    deadline = time.monotonic() + duration_s + 60
    try:
        while out.empty():
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"paced producer failed (exit code {proc.exitcode})")
            await asyncio.sleep(0.1)
        result: dict[str, Any] = out.get()
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return result


# ---- measuring ---------------------------------------------------------------------------------


def freshness(samples: np.ndarray, published: np.ndarray, newest: np.ndarray,
              observed: np.ndarray) -> dict[str, Any]:
    """Per sampled event time: delay to the first snapshot whose newest event is at or after it
    (snapshots in publication order; the newest event time taken as a running maximum)."""
    order = np.argsort(published)
    published, newest, observed = published[order], newest[order], observed[order]
    reached = np.maximum.accumulate(newest) if newest.size else newest
    index = np.searchsorted(reached, samples, side="left")
    included = index < reached.size
    delay = published[index[included]] - samples[included]
    visible = observed[index[included]] - samples[included]

    def pct(values: np.ndarray, q: float) -> float:
        return round(float(np.percentile(values, q)), 3) if values.size else float("nan")

    return {
        "samples": int(samples.size), "included": int(included.sum()),
        "not_included": int((~included).sum()),
        "p50_s": pct(delay, 50), "p90_s": pct(delay, 90), "p99_s": pct(delay, 99),
        "max_s": round(float(delay.max()), 3) if delay.size else float("nan"),
        "visible_p50_s": pct(visible, 50), "visible_p99_s": pct(visible, 99),
    }


async def _measure_rate(settings: Settings, rate_hz: float, duration_s: float, warmup_s: float,
                        compact_interval_s: float, snapshot_interval_s: float,
                        pids: dict[str, int], watcher: SnapshotWatcher) -> dict[str, Any]:
    """One rate: produce paced events, then the delay until a snapshot includes each sample."""
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    produced = await _produce_paced(settings, rate_hz, duration_s)
    # Let the last events through: a compaction, a take, a partial and a snapshot.
    await asyncio.sleep(2.0 + 2 * compact_interval_s + 3 * snapshot_interval_s)
    cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / produced["seconds"]
           for name, pid in pids.items()}
    samples = np.array(produced["samples"])
    samples = samples[samples >= produced["start"] + warmup_s]
    seen = watcher.seen
    return {
        "rate_hz": rate_hz,
        "produced": produced["sent"],
        "achieved_rate_hz": round(produced["sent"] / produced["seconds"], 1),
        **freshness(samples, np.array([s.published_at for s in seen]),
                    np.array([s.max_event_ts for s in seen]),
                    np.array([s.observed_at for s in seen])),
        "cpu_cores_used": {name: round(v, 3) for name, v in cpu.items()},
    }


async def measure(rates: list[float], duration_s: float, warmup_s: float,
                  compact_interval_s: float, snapshot_interval_s: float,
                  profile: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"setup": {
        "rates": rates, "duration_s": duration_s, "warmup_s": warmup_s,
        "samples_per_s": SAMPLES_PER_S, "partitions": 4, "pools": len(POOLS), "regions": 50,
        "settings": {"compact_interval_s": compact_interval_s,
                     "snapshot_interval_s": snapshot_interval_s,
                     "checkpoint_interval_s": Settings().checkpoint_interval_s,
                     "settle_s": Settings().settle_s, "worker_take_within_s": 0.2},
        "machine": machine(),
    }, "rates": []}
    async with isolated_run("fr", compact_interval_s=compact_interval_s,
                            snapshot_interval_s=snapshot_interval_s) as run:
        settings = run.settings
        worker, _ = await started_worker(settings, run.workdir, "worker")
        compactor = Compactor(settings, run.workdir, "compactor", free_port())
        watcher = SnapshotWatcher(settings)
        watcher.start()
        pids = {"compactor": compactor.proc.pid, "worker": worker.proc.pid}
        profiles: dict[str, SpyProfile] = {}
        try:
            # Warm-up (not measured): the compactor joins its group, the leader publishes.
            await _produce_paced(settings, 1_000, 3.0)
            deadline = time.monotonic() + 60
            while not watcher.seen and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if profile:
                PROFILE_DIR.mkdir(parents=True, exist_ok=True)
                profiles = {name: SpyProfile(pid, PROFILE_DIR / f"freshness-{name}.txt")
                            for name, pid in pids.items()}
            for rate_hz in rates:
                entry = await _measure_rate(settings, rate_hz, duration_s, warmup_s,
                                            compact_interval_s, snapshot_interval_s, pids, watcher)
                result["rates"].append(entry)
                print(f"{rate_hz:>8,.0f}/s: p50 {entry['p50_s']} s, p99 {entry['p99_s']} s",
                      flush=True)
        finally:
            for name, spy in profiles.items():
                spy.stop()
                result.setdefault("profiles", {})[name] = summarise_profile(spy.path)
            stop_processes(compactor, worker)
            await watcher.stop()
    at_10k = next((r for r in result["rates"] if r["rate_hz"] == 10_000), None)
    result["summary"] = {
        "freshness_p50_s_at_10k": at_10k["p50_s"] if at_10k else float("nan"),
        "freshness_p99_s_at_10k": at_10k["p99_s"] if at_10k else float("nan"),
        "target_p99_s_at_10k": TARGET_P99_S_AT_10K,
        "target_met": bool(at_10k and at_10k["p99_s"] < TARGET_P99_S_AT_10K),
    }
    return result


def report(result: dict[str, Any]) -> None:
    rows = [[f"{r['rate_hz']:,.0f}", r["achieved_rate_hz"], r["included"], r["not_included"],
             r["p50_s"], r["p90_s"], r["p99_s"], r["max_s"], r["visible_p99_s"],
             r["cpu_cores_used"]["compactor"], r["cpu_cores_used"]["worker"]]
            for r in result["rates"]]
    settings = result["setup"]["settings"]
    print_table(
        f"Freshness: produce → snapshot including the event (compact_interval_s "
        f"{settings['compact_interval_s']}, snapshot_interval_s {settings['snapshot_interval_s']})",
        ["rate/s", "achieved/s", "sampled", "missing", "p50 s", "p90 s", "p99 s", "max s",
         "visible p99 s", "compactor cores", "worker cores"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds left out per rate")
    parser.add_argument("--compact-interval", type=float, default=Settings().compact_interval_s)
    parser.add_argument("--snapshot-interval", type=float,
                        default=Settings().snapshot_interval_s)
    parser.add_argument("--quick", action="store_true", help="8 s per rate")
    parser.add_argument("--profile", action="store_true", help="py-spy the compactor and worker")
    args = parser.parse_args(argv)
    duration = 8.0 if args.quick else args.duration
    result = asyncio.run(measure(args.rates, duration, args.warmup, args.compact_interval,
                                 args.snapshot_interval, args.profile))
    return finish("freshness", result, args.quick, report)


if __name__ == "__main__":
    raise SystemExit(main())
