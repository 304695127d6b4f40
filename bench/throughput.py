"""Pipeline throughput on the real Kafka and Redis: hashatlas against a bare consumer and a naive
Faust agent, same run, same data.

Two pre-loaded topics (keyed by pool, 4 partitions): N single `share` events (CONTRACTS.md
shape, ~140 bytes) and M `share_batch` events. Each is read by

(a) a bare aiokafka consumer that only decodes the JSON (orjson): the ceiling;
(b) a naive Faust agent, `async for value in stream` + decode, one event at a time (on the
    first `--naive-max` messages: its rate is steady and the whole topic would take minutes);
(b') on share_batch events only, the same Faust agent consuming as the worker does
    (`noack_take` batches, every event acked): what Faust's batching costs by itself;
(c) hashatlas end to end into Redis. Single shares: the worker is started and ready, then the
    compactor drains `shares` into `share-batches` while the worker applies them; share_batch
    events: the worker alone on a pre-loaded `share-batches` topic.

Each is its own process (one core at most each). Rates are measured from the first progress the
process reports (the messages before it excluded) to (a, b) its last message or (c) the
publication of the first snapshot whose `inputs.partitions` covers every message, so (c)
includes the snapshot cadence (partials and snapshot each every `snapshot_interval_s`). CPU time
per message (from /proc) is reported too: it is far less sensitive to a busy machine than the
wall rates.

    .venv/bin/python -m bench.throughput [--shares 5000000] [--batches 1000000] [--quick]
                                         [--profile]

Prints a table and writes bench/results/throughput.json (--quick: 1M shares, 100k batches,
into bench/results/quick/; at that size the snapshot cadence weighs on (c)). With --profile,
py-spy samples the compactor and the worker (profiles in bench/results/profiles/, summaries in
the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import sys
import tempfile
import time
from typing import Any

import orjson

from bench.common import (
    RESULTS_DIR,
    Compactor,
    Loaded,
    Run,
    SnapshotWatcher,
    SpyProfile,
    batch_chunks,
    cpu_seconds,
    data_ends,
    finish,
    free_port,
    isolated_run,
    machine,
    print_table,
    process_counters,
    produce_keyed,
    rate,
    region_codes,
    share_chunks,
    started_worker,
    stop_processes,
    summarise_profile,
    topic_ends,
    wait_first_progress,
    wait_group_caught_up,
)
from streams.pipeline.faust_app import TAKE_WITHIN_S
from streams.pipeline.worker import TAKE_MAX
from streams.settings import Settings

PROFILE_DIR = RESULTS_DIR / "profiles"
REGIONS = 50
WORKERS = 100_000
SHARE_RATE_HZ = 100_000.0  # event-time rate of the share stream (a busy pool's proxies)
BATCH_RATE_HZ = 5_000.0
MEAN_BATCH_SHARES = 500.0
TARGETS = {
    "pipeline_events_per_s_min": 100_000.0,
    "pipeline_to_ceiling_min": 0.40,
    "pipeline_to_naive_min": 5.0,
    "batch_shares_per_s_min": 1_000_000.0,
    "batch_worker_to_naive_min": 0.80,
}


# ---- (a) and (b): the reference consumers, each in its own process ------------------------------


def _bare_consumer(settings: Settings, topic: str, expected: int, out: Any) -> None:
    asyncio.run(_bare_consume(settings, topic, expected, out))


async def _bare_consume(settings: Settings, topic: str, expected: int, out: Any) -> None:
    from aiokafka import AIOKafkaConsumer

    from streams.kafka import client_options

    consumer = AIOKafkaConsumer(
        topic, **client_options(settings), auto_offset_reset="earliest", enable_auto_commit=False,
        max_partition_fetch_bytes=8_388_608, fetch_max_bytes=67_108_864,
    )
    await consumer.start()
    loads = orjson.loads
    count, first_count = 0, 0
    first_wall = first_cpu = 0.0
    deadline = time.monotonic() + 60 + expected / 20_000
    try:
        while count < expected and time.monotonic() < deadline:
            records = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for messages in records.values():
                for message in messages:
                    loads(message.value)
                count += len(messages)
            if not first_count and count:
                first_count, first_wall, first_cpu = count, time.time(), time.process_time()
        out.put({"messages": count, "measured": count - first_count,
                 "seconds": time.time() - first_wall, "cpu_s": time.process_time() - first_cpu})
    finally:
        await consumer.stop()


def _naive_faust(settings: Settings, topic: str, partitions: int, app_id: str, expected: int,
                 take: bool, log_path: str, datadir: str, out: Any) -> None:
    """A Faust agent that only decodes: one event at a time (`async for value in stream`), or,
    with `take`, the way the hashatlas worker consumes (`noack_take` batches, each event acked
    after), which isolates what Faust's batching costs from what the worker does with events."""
    import faust

    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    app = faust.App(app_id, broker=f"kafka://{settings.kafka_bootstrap}", store="memory://",
                    web_enabled=False, topic_partitions=partitions,
                    consumer_auto_offset_reset="earliest", datadir=datadir)
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    progress = {"count": 0, "wall": 0.0, "cpu": 0.0}

    def counted(n: int) -> None:
        if not progress["count"]:
            progress["wall"], progress["cpu"] = time.time(), time.process_time()
            progress["first"] = n
        progress["count"] += n
        if progress["count"] >= expected:
            out.put({"messages": progress["count"],
                     "measured": progress["count"] - progress["first"],
                     "seconds": time.time() - progress["wall"],
                     "cpu_s": time.process_time() - progress["cpu"]})
            progress["count"] = -(10**18)  # report once

    @app.agent(source)
    async def decode(stream: Any) -> None:
        if take:
            async for events in stream.noack_take(TAKE_MAX, within=TAKE_WITHIN_S):
                for event in events:
                    orjson.loads(event.value)
                for event in events:
                    await stream.ack(event)
                counted(len(events))
        else:
            async for value in stream:
                orjson.loads(value)
                counted(1)

    sys.argv = ["naive-faust", "worker", "-l", "warn", "--without-web"]
    app.main()


async def _in_process(target: Any, args: tuple[Any, ...], timeout_s: float) -> dict[str, Any]:
    """Run a reference consumer in a fresh process; its result, then stop it."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    proc = context.Process(target=target, args=(*args, out))
    proc.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not out.empty():
                result: dict[str, Any] = out.get()
                break
            if not proc.is_alive():
                raise RuntimeError(f"{target.__name__} exited with {proc.exitcode}")
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError(f"{target.__name__} did not finish within {timeout_s} s")
    finally:
        proc.terminate()
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return _with_rates(result)


def _with_rates(result: dict[str, Any]) -> dict[str, Any]:
    result["messages_per_s"] = rate(result["measured"], result["seconds"])
    result["cpu_us_per_message"] = 1e6 * result["cpu_s"] / max(result["measured"], 1)
    return result


CEILING_RUNS = 3


async def bare_ceiling(settings: Settings, topic: str, expected: int,
                       runs: int = CEILING_RUNS) -> dict[str, Any]:
    """The bare consumer's drain of the topic, median of ``runs``: one drain of identical code
    swung from 236,000 to 303,000 shares/s between runs, and the pipeline's ratio to it
    inherited the swing."""
    drains = [await _in_process(_bare_consumer, (settings, topic, expected),
                                120 + expected / 10_000) for _ in range(runs)]
    drains.sort(key=lambda drain: drain["messages_per_s"])
    median = dict(drains[len(drains) // 2])
    median["runs_messages_per_s"] = [round(drain["messages_per_s"], 1) for drain in drains]
    return median


async def naive_agent(run: Run, topic: str, partitions: int, expected: int, name: str,
                      take: bool = False) -> dict[str, Any]:
    log = str(run.workdir / f"{name}.log")
    app_id = f"{run.run_id}-{name}"
    # Faust's data directory defaults to "<app id>-data" in the working directory: the
    # agent's goes to a temporary one, removed once its process has stopped.
    with tempfile.TemporaryDirectory(prefix=f"{app_id}-") as datadir:
        return await _in_process(
            _naive_faust,
            (run.settings, topic, partitions, app_id, expected, take, log, datadir),
            120 + expected / 1_000,
        )


# ---- (c): hashatlas ---------------------------------------------------------------------------


def _profiles(pids: dict[str, int], label: str, enabled: bool) -> dict[str, SpyProfile]:
    if not enabled:
        return {}
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    return {name: SpyProfile(pid, PROFILE_DIR / f"{label}-{name}.txt")
            for name, pid in pids.items()}


def _finish_profiles(profiles: dict[str, SpyProfile]) -> dict[str, Any]:
    out = {}
    for name, profile in profiles.items():
        profile.stop()
        out[name] = {"file": str(profile.path.relative_to(RESULTS_DIR.parents[1])),
                     **summarise_profile(profile.path)}
    return out


async def hashatlas_single_shares(run: Run, loaded: Loaded, profile: bool) -> dict[str, Any]:
    """Compactor + worker, from the compactor's first progress to the snapshot covering all."""
    settings = run.settings
    timeout_s = 120 + loaded.messages / 10_000
    worker, _ = await started_worker(settings, run.workdir, "worker")
    watcher = SnapshotWatcher(settings)
    watcher.start()
    compactor_port = free_port()
    compactor = Compactor(settings, run.workdir, "compactor", compactor_port)
    pids = {"compactor": compactor.proc.pid, "worker": worker.proc.pid}
    profiles: dict[str, SpyProfile] = {}
    try:
        t_first, before = await wait_first_progress([compactor_port], settings.topics.shares,
                                                    timeout_s)
        counters_first = {name: process_counters(pid) for name, pid in pids.items()}
        profiles = _profiles(pids, "shares", profile)
        shares_ends = await topic_ends(settings, settings.topics.shares)
        t_drained = await wait_group_caught_up(settings, f"{settings.app_id}-compactor",
                                               shares_ends, settings.topics.shares, timeout_s)
        expected = await data_ends(settings, settings.topics.compacted_shares)
        seen = await watcher.wait_including(expected, timeout_s)
        used = {name: process_counters(pid) - counters_first[name]
                for name, pid in pids.items()}
    finally:
        profile_summary = _finish_profiles(profiles)
        stop_processes(compactor, worker)
        await watcher.stop()
    measured = loaded.messages - before
    batches = sum(expected.values())
    return {
        "events": loaded.messages,
        "measured": measured,
        "seconds": seen.published_at - t_first,
        "events_per_s": rate(measured, seen.published_at - t_first),
        "compactor_drained_s": t_drained - t_first,
        "compactor_events_per_s": rate(measured, t_drained - t_first),
        "share_batches": batches,
        "shares_per_batch": loaded.messages / batches if batches else math.nan,
        "cpu_us_per_event": {name: 1e6 * (c.user_s + c.system_s) / measured
                             for name, c in used.items()},
        "cpu_split_per_event": {name: c.per_event(measured) for name, c in used.items()},
        "profiles": profile_summary,
    }


async def hashatlas_batches(run: Run, loaded: Loaded, profile: bool) -> dict[str, Any]:
    """The worker alone on pre-loaded `share-batches`, to the snapshot covering every batch."""
    settings = run.settings
    timeout_s = 120 + loaded.messages / 2_000
    expected = await topic_ends(settings, settings.topics.compacted_shares)
    watcher = SnapshotWatcher(settings)
    watcher.start()
    worker, port = await started_worker(settings, run.workdir, "batch-worker")
    profiles: dict[str, SpyProfile] = {}
    try:
        t_first, before = await wait_first_progress([port], settings.topics.compacted_shares,
                                                    timeout_s)
        cpu_first = cpu_seconds(worker.proc.pid)
        profiles = _profiles({"worker": worker.proc.pid}, "batches", profile)
        seen = await watcher.wait_including(expected, timeout_s)
        cpu = cpu_seconds(worker.proc.pid) - cpu_first
    finally:
        profile_summary = _finish_profiles(profiles)
        stop_processes(worker)
        await watcher.stop()
    measured = loaded.messages - before
    seconds = seen.published_at - t_first
    return {
        "messages": loaded.messages,
        "measured": measured,
        "seconds": seconds,
        "messages_per_s": rate(measured, seconds),
        "shares_per_s": rate(measured * loaded.shares / loaded.messages, seconds),
        "cpu_us_per_message": 1e6 * cpu / measured,
        "profiles": profile_summary,
    }


# ---- the whole benchmark ------------------------------------------------------------------------


async def measure(shares: int, batches: int, naive_max: int, profile: bool) -> dict[str, Any]:
    t0 = time.time() - 3600.0
    result: dict[str, Any] = {"setup": {
        "shares": shares, "batches": batches, "regions": REGIONS, "pools": 12,
        "distinct_workers": WORKERS, "share_rate_event_time_hz": SHARE_RATE_HZ,
        "mean_shares_per_batch": MEAN_BATCH_SHARES, "partitions": 4, "profiled": profile,
        "naive_faust_messages_max": naive_max,
        "settings": {name: getattr(Settings(), name) for name in (
            "compact_interval_s", "snapshot_interval_s", "checkpoint_interval_s")},
        "machine": machine(),
    }}

    async with isolated_run("tp") as run:
        settings = run.settings
        loaded = await load_shares(settings, shares, t0)
        print(f"loaded {loaded.messages:,} shares ({loaded.mean_bytes:.0f} B each) "
              f"in {loaded.seconds:.1f} s", flush=True)
        bare = await bare_ceiling(settings, settings.topics.shares, loaded.messages)
        print(f"(a) bare: {bare['messages_per_s']:,.0f}/s", flush=True)
        naive = await naive_agent(run, settings.topics.shares, 4,
                                  min(naive_max, loaded.messages), "naive")
        print(f"(b) naive Faust: {naive['messages_per_s']:,.0f}/s", flush=True)
        pipeline = await hashatlas_single_shares(run, loaded, profile)
        print(f"(c) hashatlas: {pipeline['events_per_s']:,.0f}/s", flush=True)
        result["shares"] = {"message_bytes": round(loaded.mean_bytes, 1), "bare": bare,
                            "naive_faust": naive, "hashatlas": pipeline}

    async with isolated_run("tpb") as run:
        settings = run.settings
        loaded = await load_batches(settings, batches, t0)
        print(f"loaded {loaded.messages:,} share_batch events ({loaded.mean_bytes:.0f} B each, "
              f"{loaded.shares:,} shares) in {loaded.seconds:.1f} s", flush=True)
        topic = settings.topics.compacted_shares
        bare_b = await bare_ceiling(settings, topic, loaded.messages)
        print(f"(a) bare: {bare_b['messages_per_s']:,.0f}/s", flush=True)
        naive_b = await naive_agent(run, topic, 4, min(naive_max, loaded.messages), "naive")
        print(f"(b) naive Faust: {naive_b['messages_per_s']:,.0f}/s", flush=True)
        take_b = await naive_agent(run, topic, 4, min(naive_max, loaded.messages), "take",
                                   take=True)
        print(f"(b') Faust noack_take + decode + ack: {take_b['messages_per_s']:,.0f}/s",
              flush=True)
        worker_b = await hashatlas_batches(run, loaded, profile)
        print(f"(c) hashatlas worker: {worker_b['messages_per_s']:,.0f}/s", flush=True)
        result["batches"] = {"message_bytes": round(loaded.mean_bytes, 1),
                             "shares": loaded.shares, "bare": bare_b, "naive_faust": naive_b,
                             "faust_take": take_b, "hashatlas": worker_b}

    result["summary"] = summary(result)
    return result


async def load_shares(settings: Settings, count: int, t0: float) -> Loaded:
    """Produce the single-share workload (event times from t0) to the raw shares topic."""
    return await produce_keyed(settings, settings.topics.shares, share_chunks(
        count, seed=1, t0=t0, rate_hz=SHARE_RATE_HZ, regions=region_codes(REGIONS),
        workers=WORKERS))


async def load_batches(settings: Settings, count: int, t0: float) -> Loaded:
    """Produce the share_batch workload (event times from t0) to the compacted topic."""
    return await produce_keyed(settings, settings.topics.compacted_shares, batch_chunks(
        count, seed=2, t0=t0, rate_hz=BATCH_RATE_HZ, regions=region_codes(REGIONS),
        mean_shares=MEAN_BATCH_SHARES))


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (the keys `run_all.py` collects) and the targets."""
    shares, batches = result["shares"], result["batches"]
    pipeline = shares["hashatlas"]["events_per_s"]
    ceiling = shares["bare"]["messages_per_s"]
    naive = shares["naive_faust"]["messages_per_s"]
    batch_rate = batches["hashatlas"]["messages_per_s"]
    naive_b = batches["naive_faust"]["messages_per_s"]
    out = {
        "pipeline_events_per_s": round(pipeline, 1),
        "compactor_events_per_s": round(shares["hashatlas"]["compactor_events_per_s"], 1),
        "ceiling_events_per_s": round(ceiling, 1),
        "naive_faust_events_per_s": round(naive, 1),
        "pipeline_to_ceiling": round(pipeline / ceiling, 3),
        "pipeline_to_naive": round(pipeline / naive, 2),
        "batch_pipeline_messages_per_s": round(batch_rate, 1),
        "batch_pipeline_shares_per_s": round(batches["hashatlas"]["shares_per_s"], 1),
        "batch_ceiling_messages_per_s": round(batches["bare"]["messages_per_s"], 1),
        "batch_naive_faust_messages_per_s": round(naive_b, 1),
        "batch_faust_take_messages_per_s": round(batches["faust_take"]["messages_per_s"], 1),
        "batch_worker_to_naive": round(batch_rate / naive_b, 3),
    }
    out["targets_met"] = {
        "pipeline_events_per_s": pipeline >= TARGETS["pipeline_events_per_s_min"],
        "pipeline_to_ceiling": out["pipeline_to_ceiling"] >= TARGETS["pipeline_to_ceiling_min"],
        "pipeline_to_naive": out["pipeline_to_naive"] >= TARGETS["pipeline_to_naive_min"],
        "batch_shares_per_s": out["batch_pipeline_shares_per_s"]
        >= TARGETS["batch_shares_per_s_min"],
        "batch_worker_to_naive": out["batch_worker_to_naive"]
        >= TARGETS["batch_worker_to_naive_min"],
    }
    return out


def report(result: dict[str, Any]) -> None:
    rows = []
    for data_set, unit in (("shares", "events"), ("batches", "messages")):
        body = result[data_set]
        for name, label in (("bare", "(a) bare aiokafka + orjson"),
                            ("naive_faust", "(b) naive Faust agent"),
                            ("faust_take", "(b') Faust noack_take + ack"),
                            ("hashatlas", "(c) hashatlas")):
            if name not in body:
                continue
            entry = body[name]
            per_s = entry.get("messages_per_s", entry.get("events_per_s"))
            cpu = entry.get("cpu_us_per_message")
            if cpu is None:
                cpu = sum(entry["cpu_us_per_event"].values())
            rows.append([data_set, label, per_s, entry["seconds"], cpu])
        rows.append([data_set, f"{unit} measured", float(body["hashatlas"]["measured"]), "", ""])
    print_table("Throughput (same run, same data)",
                ["data", "consumer", "msg/s", "seconds", "CPU µs/msg"], rows)
    summary_rows = [[k, v] for k, v in result["summary"].items() if k != "targets_met"]
    summary_rows += [[f"target: {k}", "met" if v else "NOT met"]
                     for k, v in result["summary"]["targets_met"].items()]
    print_table("Summary", ["figure", "value"], summary_rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shares", type=int, default=5_000_000)
    parser.add_argument("--batches", type=int, default=1_000_000)
    parser.add_argument("--naive-max", type=int, default=1_000_000,
                        help="the naive agent reads at most this many (its rate is steady)")
    parser.add_argument("--quick", action="store_true",
                        help="1M shares, 100k batches, naive agent 100k")
    parser.add_argument("--profile", action="store_true", help="py-spy the compactor and worker")
    args = parser.parse_args(argv)
    shares, batches, naive_max = ((1_000_000, 100_000, 100_000) if args.quick
                                  else (args.shares, args.batches, args.naive_max))
    result = asyncio.run(measure(shares, batches, naive_max, args.profile))
    return finish("throughput", result, args.quick, report)


if __name__ == "__main__":
    raise SystemExit(main())
