"""CPU per event of the compactor + worker (single shares) and of the worker alone
(`share_batch`), without the reference consumers of `bench/throughput.py`: a short run for
comparing two checkouts or two settings, alternated, when `make bench` swings with the host.

    .venv/bin/python -m bench.pipeline_cpu LABEL [--shares 2000000] [--batches 120000]

Needs the default stack (`hashatlas stack up`); prints one JSON line. To compare with an older
checkout, copy this file into that checkout's `bench/` and run it there with its own venv,
alternating the two; CPU seconds per event (user + system, /proc) move less with the host's
load than the rates do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench import throughput
from bench.common import isolated_run


async def measure(label: str, shares: int, batches: int) -> dict[str, Any]:
    t0 = time.time() - 3600.0
    out: dict[str, Any] = {"label": label, "shares": shares, "batches": batches}
    async with isolated_run("cpus") as run:
        loaded = await throughput.load_shares(run.settings, shares, t0)
        result = await throughput.hashatlas_single_shares(run, loaded, False)
        out["single_shares"] = {key: result[key] for key in (
            "events_per_s", "compactor_events_per_s", "cpu_us_per_event", "cpu_split_per_event")}
    async with isolated_run("cpub") as run:
        loaded = await throughput.load_batches(run.settings, batches, t0)
        result = await throughput.hashatlas_batches(run, loaded, False)
        out["share_batches"] = {key: result[key] for key in (
            "messages_per_s", "cpu_us_per_message")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("label")
    parser.add_argument("--shares", type=int, default=2_000_000)
    parser.add_argument("--batches", type=int, default=120_000)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.label, args.shares, args.batches))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
