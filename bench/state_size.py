"""State size per series once the longest window has filled: what a worker's memory is bounded by.

A worker keeps, per (pool, region) series of each partition it owns, two rings of buckets
(`ShareWindows`): fine (10 s buckets over the longest window up to 1 h, plus lateness and two
buckets) and coarse (300 s buckets over 24 h, plus the same). Their size is fixed per series;
what fills with event time is which slots hold data (and so the checkpoint and, as pages are
first written, RSS). This bench fills every slot of both rings for `--series` series (a batch in
every fine bucket of the last hour and every coarse bucket of the day), then runs a second day
of event time through them and measures, after each day:

- the rings' bytes per series (numpy arrays, rows allocated / rows used);
- the checkpoint (compressed, as in the changelog and Faust's table) and the peak of Python
  memory while it is built (tracemalloc), per series;
- the partial written to Redis every tick;
- the CPU of a checkpoint (every `checkpoint_interval_s`) and of a partial (every
  `snapshot_interval_s`), per series;
- this process's RSS.

    .venv/bin/python -m bench.state_size [--series 600]

Writes bench/results/state_size.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

from bench.common import MINING_REGIONS, POOLS, RESULTS_DIR, machine, print_table, rss_mb
from streams.pipeline.state import ShareBatchPartition
from streams.settings import Settings

DAY_S = 86_400.0
HOUR_S = 3_600.0
REPEATS = 5


def series_names(count: int) -> list[tuple[str, str]]:
    pools = [p for p, _ in POOLS]
    names = [(p, r) for r in MINING_REGIONS for p in pools]
    if count > len(names):
        raise ValueError(f"at most {len(names)} series")
    return names[:count]


def fill_day(state: ShareBatchPartition, names: list[tuple[str, str]], day_end: float,
             settings: Settings) -> None:
    """A batch per series in every coarse bucket of the day and every fine bucket of its last
    hour, in event-time order (the rings then hold data in every slot)."""
    times = [day_end - DAY_S + i * settings.coarse_bucket_s
             for i in range(int((DAY_S - HOUR_S) / settings.coarse_bucket_s))]
    times += [day_end - HOUR_S + i * settings.fine_bucket_s
              for i in range(int(HOUR_S / settings.fine_bucket_s))]
    for t in times:
        for pool, region in names:
            state.apply(orjson.dumps({
                "type": "share_batch", "pool": pool, "region": region, "start": t + 1.0,
                "end": t + 2.0, "count": 10, "difficulty_sum": 10 * 65536.0,
                "difficulty_sq_sum": 10 * 65536.0**2}), t + 3.0)
        state.windows.expire(t)


def measure(state: ShareBatchPartition, names: list[tuple[str, str]], t_eval: float,
            settings: Settings) -> dict[str, Any]:
    windows = state.windows
    rings = (windows._fine, windows._coarse)
    capacity = rings[0].index.shape[0]
    ring_bytes = sum(r.index.nbytes + r.data.nbytes for r in rings)
    tracemalloc.start()
    checkpoint = state.checkpoint()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    partial = orjson.dumps(state.partial(t_eval, settings.windows_s))
    series = len(names)
    started = time.process_time()
    for _ in range(REPEATS):
        state.checkpoint()
    checkpoint_cpu_s = (time.process_time() - started) / REPEATS
    started = time.process_time()
    for _ in range(REPEATS):
        orjson.dumps(state.partial(t_eval, settings.windows_s))
    partial_cpu_s = (time.process_time() - started) / REPEATS
    return {
        "series": windows.key_count, "rows_allocated": capacity,
        "slots_held": windows.stored_buckets(),
        "ring_bytes_per_series_used": ring_bytes / capacity,
        "ring_bytes_per_series": ring_bytes / series,
        "checkpoint_bytes_per_series": len(checkpoint) / series,
        "checkpoint_build_peak_bytes_per_series": peak / series,
        "partial_bytes_per_series": len(partial) / series,
        "checkpoint_cpu_us_per_series": checkpoint_cpu_s / series * 1e6,
        "partial_cpu_us_per_series": partial_cpu_s / series * 1e6,
        "rss_mib": rss_mb(os.getpid())[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=600)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "state_size.json")
    args = parser.parse_args()
    settings = Settings()
    names = series_names(args.series)
    state = ShareBatchPartition.restore(None, settings)
    t0 = 1_790_000_000.0
    rows = []
    result: dict[str, Any] = {"benchmark": "state_size", "machine": machine(),
                              "windows_s": settings.windows_s, "after_day": {}}
    for day in (1, 2):
        fill_day(state, names, t0 + day * DAY_S, settings)
        figures = measure(state, names, t0 + day * DAY_S, settings)
        result["after_day"][str(day)] = figures
        rows.append([day, *figures.values()])
    print_table(f"state of {args.series} series after each day of event time",
                ["day", "series", "rows alloc", "slots held", "ring B/row", "ring B/series",
                 "checkpoint B/series", "build peak B/series", "partial B/series",
                 "checkpoint µs/series", "partial µs/series", "RSS MiB"],
                rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
