"""Memory: resident size of the compactor and the worker with a million distinct miners.

Single `share` events from `--workers` distinct worker ids (every id appears: the ids cycle
through a permutation) over `--regions` regions and 12 pools, spread over `--span` seconds of
event time, go through the compactor and the worker end to end. Neither keeps anything per miner:
the compactor sums per (pool, region, 10 s bucket) within a flush, the worker keeps ring buffers
per (pool, region), so both should stay flat however many miners there are. The bench samples
both processes' RSS (/proc VmRSS) every half second from the compactor's start until the
snapshot covers every share and for `--hold` seconds after (checkpoints and snapshots of the
full state), and reads the kernel's peak (VmHWM) before stopping them. The worker's RSS right
after it is ready (no state yet) is the baseline. The worker's CPU during the hold (no input)
is what its periodic partials, snapshots and checkpoints cost with that many keys.

    .venv/bin/python -m bench.memory [--workers 1000000] [--shares 2000000] [--regions 200]
                                     [--span 900] [--quick]

Prints a table and writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.common import (
    POOLS,
    Compactor,
    RssSampler,
    SnapshotWatcher,
    cpu_seconds,
    data_ends,
    finish,
    free_port,
    isolated_run,
    machine,
    print_table,
    produce_keyed,
    region_codes,
    rss_mb,
    share_chunks,
    started_worker,
    stop_processes,
    topic_ends,
    wait_group_caught_up,
)
from streams.rediskeys import RedisKeys

TARGET_WORKER_RSS_MB = 1024.0


async def measure(workers: int, shares: int, regions: int, span_s: float,
                  hold_s: float) -> dict[str, Any]:
    codes = region_codes(regions)
    result: dict[str, Any] = {"setup": {
        "distinct_workers": min(workers, shares), "shares": shares, "regions": regions,
        "pools": len(POOLS), "event_time_span_s": span_s, "hold_s": hold_s, "partitions": 4,
        "settings": "defaults", "machine": machine(),
    }}
    async with isolated_run("mem") as run:
        settings = run.settings
        loaded = await produce_keyed(settings, settings.topics.shares, share_chunks(
            shares, seed=3, t0=time.time() - span_s - 60.0, rate_hz=shares / span_s,
            regions=codes, workers=workers))
        print(f"loaded {loaded.messages:,} shares in {loaded.seconds:.1f} s", flush=True)
        worker, _ = await started_worker(settings, run.workdir, "worker")
        idle_rss, _ = rss_mb(worker.proc.pid)
        watcher = SnapshotWatcher(settings)
        watcher.start()
        compactor = Compactor(settings, run.workdir, "compactor", free_port())
        sampler = RssSampler({"compactor": compactor.proc.pid, "worker": worker.proc.pid}, 0.5)
        sampler.start()
        timeout_s = 120 + shares / 20_000
        started = time.time()
        rss: dict[str, dict[str, float]] | None = None
        try:
            ends = await topic_ends(settings, settings.topics.shares)
            await wait_group_caught_up(settings, f"{settings.app_id}-compactor", ends,
                                       settings.topics.shares, timeout_s)
            expected = await data_ends(settings, settings.topics.compacted_shares)
            seen = await watcher.wait_including(expected, timeout_s)
            cpu_before = cpu_seconds(worker.proc.pid)
            await asyncio.sleep(hold_s)
            # No input now: what the partials, snapshots and checkpoints of the state cost.
            idle_cores = (cpu_seconds(worker.proc.pid) - cpu_before) / hold_s
            rss = await sampler.stop()
            snapshot = await _snapshot(settings.redis_url, settings.redis_prefix)
        finally:
            if rss is None:
                await sampler.stop()
            stop_processes(compactor, worker)
            await watcher.stop()
    result["processes"] = rss
    result["worker_idle_rss_mb"] = round(idle_rss, 1)
    result["share_batches"] = sum(expected.values())
    result["seconds_to_snapshot"] = round(seen.published_at - started, 1)
    result["worker_cpu_cores_without_input"] = round(idle_cores, 3)
    result["snapshot"] = {
        "countries": len(snapshot["regions"]), "subdivisions": len(snapshot["subdivisions"]),
        "max_event_ts": snapshot["max_event_ts"],
    }
    step = max(1, len(sampler.timeline) // 40)
    result["timeline"] = sampler.timeline[::step]
    worker_peak = rss["worker"]["peak_rss_mb"]
    result["summary"] = {
        "worker_rss_mb_1m_workers": worker_peak,
        "compactor_rss_mb_1m_workers": rss["compactor"]["peak_rss_mb"],
        "target_worker_rss_mb": TARGET_WORKER_RSS_MB,
        "target_met": worker_peak < TARGET_WORKER_RSS_MB,
    }
    return result


async def _snapshot(redis_url: str, prefix: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.hget(RedisKeys(prefix).snapshot, "json")
    finally:
        await client.aclose()
    body: dict[str, Any] = orjson.loads(raw) if raw else {}
    return body


def report(result: dict[str, Any]) -> None:
    setup = result["setup"]
    rows = [[name, p["rss_mb"], p["sampled_max_rss_mb"], p["peak_rss_mb"]]
            for name, p in result["processes"].items()]
    rows.append(["worker (ready, no state)", result["worker_idle_rss_mb"], "", ""])
    print_table(
        f"Memory: {setup['distinct_workers']:,} distinct workers, {setup['regions']} regions, "
        f"{setup['pools']} pools, {setup['shares']:,} shares over {setup['event_time_span_s']:.0f}"
        f" s of event time ({result['share_batches']:,} share_batch messages)",
        ["process", "RSS at end MiB", "max sampled MiB", "peak (VmHWM) MiB"], rows)
    print(f"snapshot: {result['snapshot']['countries']} countries, "
          f"{result['snapshot']['subdivisions']} subdivisions; worker CPU with the full state "
          f"and no input: {result['worker_cpu_cores_without_input']} cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1_000_000)
    parser.add_argument("--shares", type=int, default=None, help="default: 2 × workers")
    parser.add_argument("--regions", type=int, default=200)
    parser.add_argument("--span", type=float, default=900.0, help="seconds of event time")
    parser.add_argument("--hold", type=float, default=6.0,
                        help="seconds to keep sampling once the snapshot covers everything")
    parser.add_argument("--quick", action="store_true", help="100k workers, 200k shares")
    args = parser.parse_args(argv)
    workers = 100_000 if args.quick else args.workers
    shares = args.shares or 2 * workers
    result = asyncio.run(measure(workers, shares, args.regions, args.span, args.hold))
    return finish("memory", result, args.quick, report)


if __name__ == "__main__":
    raise SystemExit(main())
