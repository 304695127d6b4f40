"""Run a `hashatlas` command (as `python -m streams.cli`) with tracemalloc on, writing a snapshot
of the Python heap every `SOAK_TRACE_EVERY_S` seconds (default 60) into
`SOAK_TRACE_DIR`, so that a soak can compare what grew between two of them:

    python -m bench.traced_cli worker --loglevel info

Used by `bench/soak.py --trace-worker`. Tracing from the start would slow the imports alone
tenfold here, hence the delay; once on, it slows allocations several times, so a traced run's
RSS and freshness figures are not the untraced ones.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path

FRAMES = 8


def dump_forever(folder: Path, start_s: float, every_s: float) -> None:
    """Start tracing after `start_s` seconds, then a snapshot every `every_s` seconds, named by
    seconds since the process started."""
    started = time.monotonic()
    time.sleep(start_s)
    tracemalloc.start(FRAMES)
    while True:
        elapsed = time.monotonic() - started
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        snapshot.dump(str(folder / f"snapshot-{int(elapsed):06d}.pickle"))
        time.sleep(every_s)


def main() -> None:
    folder = Path(os.environ["SOAK_TRACE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    start_s = float(os.environ.get("SOAK_TRACE_START_S", "0"))
    every_s = float(os.environ.get("SOAK_TRACE_EVERY_S", "60"))
    threading.Thread(target=dump_forever, args=(folder, start_s, every_s), daemon=True).start()
    sys.argv = ["hashatlas", *sys.argv[1:]]
    runpy.run_module("streams.cli", run_name="__main__")


if __name__ == "__main__":
    main()
