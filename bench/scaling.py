"""Scaling: one worker process against two on the 2 cores (share_batch path), and what the
whole network's share flow would need.

A pre-loaded `share-batches` topic (4 partitions, keyed by pool) is read to the end by a fresh
consumer group of one worker, then by a fresh group of two (started together; Faust rebalances
as the second joins, which is part of the cost). Two rates per run: end to end (first progress
reported by a worker → first snapshot covering every batch) and steady (slope of the offsets the
snapshots cover, between 20% and 90% of the topic: no start-up, no tail).

The capacity plan then takes the measured per-core rates (this run's worker rate, the
compactor's from bench/results/throughput.json unless given) and the assumptions below, and
works out compactors, workers and partitions for the whole network sending single shares.

    .venv/bin/python -m bench.scaling [--batches 1000000] [--quick] [--network-ehs 700]
                                      [--difficulty 65536] [--compactor-rate R]

Prints tables and writes bench/results/scaling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from typing import Any

from bench.common import (
    POOLS,
    Run,
    SeenSnapshot,
    SnapshotWatcher,
    Worker,
    batch_chunks,
    cpu_seconds,
    finish,
    free_port,
    isolated_run,
    machine,
    print_table,
    produce_keyed,
    rate,
    region_codes,
    results_dir,
    stop_processes,
    topic_ends,
    wait_first_progress,
    wait_for_log,
)
from streams.core.units import HASHES_PER_DIFFICULTY
from streams.settings import Settings

MEAN_BATCH_SHARES = 500.0
# Capacity-plan assumptions (stated in the output).
HEADROOM = 0.5  # run at half a core's rate: a backlog after an outage drains at 2× the inflow
ACTIVE_KEYS = 5_000  # (pool, region) pairs with shares at any time: ~50 pools × ~100 regions
BOUNDARY_SPLIT = 1.1  # batches cut at 10 s bucket edges within a flush
COMPACT_INTERVAL_S = Settings().compact_interval_s
DIFFICULTIES = (16_384.0, 65_536.0, 262_144.0, 1_048_576.0)


async def workers_run(run: Run, count: int, expected: dict[int, int], messages: int,
                      shares: int) -> dict[str, Any]:
    """`count` workers of a fresh group read the pre-loaded topic to the end."""
    settings = run.derived(f"w{count}")
    topic = settings.topics.compacted_shares
    watcher = SnapshotWatcher(settings)
    watcher.start()
    ports = [free_port() for _ in range(count)]
    workers = [Worker(settings, run.workdir / f"w{count}-{i}", f"worker{i}", metrics_port=port)
               for i, port in enumerate(ports)]
    timeout_s = 120 + messages / 2_000
    try:
        t_first, before = await wait_first_progress(ports, topic, timeout_s)
        cpu_first = [cpu_seconds(w.proc.pid) for w in workers]
        seen = await watcher.wait_including(expected, timeout_s)
        cpu = sum(cpu_seconds(w.proc.pid) - c for w, c in zip(workers, cpu_first, strict=True))
        for worker in workers:  # every worker did come up (not one doing all the work)
            await wait_for_log(worker.log_path, "[^Worker]: Ready", worker.proc, 10)
    finally:
        stop_processes(*workers)
        await watcher.stop()
    measured = messages - before
    seconds = seen.published_at - t_first
    steady = steady_rate(watcher.seen, expected)
    return {
        "workers": count,
        "measured": measured,
        "seconds": round(seconds, 3),
        "messages_per_s": round(rate(measured, seconds), 1),
        "steady_messages_per_s": round(steady, 1),
        "shares_per_s": round(rate(measured * shares / messages, seconds), 1),
        "cpu_us_per_message": round(1e6 * cpu / measured, 2),
        "snapshots_seen": len(watcher.seen),
    }


def steady_rate(seen: list[SeenSnapshot], expected: dict[int, int],
                low: float = 0.2, high: float = 0.9) -> float:
    """Messages/s between the snapshots that first cover `low` and `high` of the topic."""
    total = sum(expected.values())
    points = [(s.published_at, sum(min(s.partitions.get(p, 0), n) for p, n in expected.items()))
              for s in seen]
    first = next((p for p in points if p[1] >= low * total), None)
    last = next((p for p in points if p[1] >= high * total), None)
    if first is None or last is None or last[0] <= first[0]:
        return math.nan
    return (last[1] - first[1]) / (last[0] - first[0])


def capacity_plan(compactor_rate: float, worker_rate: float, two_worker_speedup: float,
                  network_hs: float, difficulty: float) -> dict[str, Any]:
    """Compactors, workers and partitions for the whole network's single shares."""
    def plan_for(d: float) -> dict[str, Any]:
        shares_per_s = network_hs / (d * HASHES_PER_DIFFICULTY)
        compactors = math.ceil(shares_per_s / (compactor_rate * HEADROOM))
        biggest_pool = max(w for _, w in POOLS) / sum(w for _, w in POOLS)
        hot_partition_cores = biggest_pool * shares_per_s / (compactor_rate * HEADROOM)
        # Every active key is flushed once per compact interval (keys live on one partition).
        batches_per_s = ACTIVE_KEYS * BOUNDARY_SPLIT / COMPACT_INTERVAL_S
        workers = max(1, math.ceil(batches_per_s / (worker_rate * HEADROOM)))
        return {
            "difficulty": d,
            "shares_per_s": round(shares_per_s),
            "compactor_cores": compactors,
            "shares_partitions": 1 << math.ceil(math.log2(max(compactors, 1))),
            "biggest_pool_cores": round(hot_partition_cores, 1),
            "share_batches_per_s": round(batches_per_s),
            "workers": workers,
            "share_batches_partitions": max(4, 1 << math.ceil(math.log2(workers))),
        }

    return {
        "assumptions": {
            "network_hashrate_ehs": network_hs / 1e18,
            "typical_difficulty": difficulty,
            "why_typical": "vardiff aims at a share every few seconds per machine: a 100 TH/s "
                           "ASIC at difficulty 65,536 sends one every 2.8 s",
            "headroom": HEADROOM,
            "active_pool_region_keys": ACTIVE_KEYS,
            "bucket_boundary_split": BOUNDARY_SPLIT,
            "compact_interval_s": COMPACT_INTERVAL_S,
            "compactor_events_per_s_per_core": round(compactor_rate),
            "worker_batches_per_s_per_core": round(worker_rate),
            "two_worker_speedup_measured": round(two_worker_speedup, 2),
            "keying": "shares keyed by pool: each (pool, region) lives on one partition, so "
                      "the batch rate does not grow with the number of compactors; a pool "
                      "larger than one compactor core must be keyed finer (pool + proxy)",
        },
        "central": plan_for(difficulty),
        "by_difficulty": [plan_for(d) for d in DIFFICULTIES],
    }


def compactor_rate_from_throughput(quick: bool) -> float | None:
    path = results_dir(quick) / "throughput.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text()).get("summary", {})
    value = summary.get("compactor_events_per_s") or summary.get("pipeline_events_per_s")
    return float(value) if value else None


async def measure(batches: int, network_ehs: float, difficulty: float,
                  compactor_rate: float | None, quick: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"setup": {
        "batches": batches, "mean_shares_per_batch": MEAN_BATCH_SHARES, "partitions": 4,
        "settings": "defaults", "machine": machine(),
    }}
    async with isolated_run("sc") as run:
        settings = run.settings
        loaded = await produce_keyed(settings, settings.topics.compacted_shares, batch_chunks(
            batches, seed=4, t0=time.time() - 3600.0, rate_hz=5_000.0,
            regions=region_codes(50), mean_shares=MEAN_BATCH_SHARES))
        print(f"loaded {loaded.messages:,} share_batch events in {loaded.seconds:.1f} s",
              flush=True)
        expected = await topic_ends(settings, settings.topics.compacted_shares)
        runs = []
        for count in (1, 2):
            entry = await workers_run(run, count, expected, loaded.messages, loaded.shares)
            print(f"{count} worker(s): {entry['messages_per_s']:,.0f} msg/s end to end, "
                  f"{entry['steady_messages_per_s']:,.0f} steady", flush=True)
            runs.append(entry)
    one, two = runs
    speedup = two["steady_messages_per_s"] / one["steady_messages_per_s"]
    if math.isnan(speedup):
        speedup = two["messages_per_s"] / one["messages_per_s"]
    result["runs"] = runs
    worker_rate = one["steady_messages_per_s"]
    if math.isnan(worker_rate):
        worker_rate = one["messages_per_s"]
    compactor = compactor_rate or compactor_rate_from_throughput(quick)
    result["capacity_plan"] = (
        capacity_plan(compactor, worker_rate, speedup, network_ehs * 1e18, difficulty)
        if compactor else {"skipped": "no compactor rate: run bench/throughput.py first"})
    result["summary"] = {
        "one_worker_events_per_s": one["messages_per_s"],
        "two_worker_events_per_s": two["messages_per_s"],
        "one_worker_steady_per_s": one["steady_messages_per_s"],
        "two_worker_steady_per_s": two["steady_messages_per_s"],
        "two_worker_speedup": round(speedup, 3),
    }
    return result


def report(result: dict[str, Any]) -> None:
    print_table("Scaling (share_batch path, 4 partitions, 2 cores)",
                ["workers", "msg/s end to end", "msg/s steady", "shares/s", "CPU µs/msg",
                 "seconds"],
                [[r["workers"], r["messages_per_s"], r["steady_messages_per_s"],
                  r["shares_per_s"], r["cpu_us_per_message"], r["seconds"]]
                 for r in result["runs"]])
    plan = result["capacity_plan"]
    if "skipped" in plan:
        print(plan["skipped"])
        return
    print_table(
        f"Whole network as single shares ({plan['assumptions']['network_hashrate_ehs']:.0f} EH/s,"
        f" headroom {HEADROOM:.0%}, {ACTIVE_KEYS:,} active pool×region keys)",
        ["difficulty", "shares/s", "compactor cores", "shares partitions",
         "biggest pool (cores)", "batches/s", "workers", "share-batches partitions"],
        [[p["difficulty"], float(p["shares_per_s"]), p["compactor_cores"],
          p["shares_partitions"], p["biggest_pool_cores"], float(p["share_batches_per_s"]),
          p["workers"], p["share_batches_partitions"]] for p in plan["by_difficulty"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100k batches")
    parser.add_argument("--network-ehs", type=float, default=700.0)
    parser.add_argument("--difficulty", type=float, default=65_536.0,
                        help="typical vardiff share difficulty")
    parser.add_argument("--compactor-rate", type=float, default=None,
                        help="compactor events/s per core (default: from throughput.json)")
    args = parser.parse_args(argv)
    batches = 100_000 if args.quick else args.batches
    result = asyncio.run(measure(batches, args.network_ehs, args.difficulty,
                                 args.compactor_rate, args.quick))
    return finish("scaling", result, args.quick, report)


if __name__ == "__main__":
    raise SystemExit(main())
