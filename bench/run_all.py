"""Every performance benchmark, one after the other, and the figures in one file.

Runs bench/throughput.py, freshness.py, memory.py, scaling.py (after throughput: it reads the
compactor's rate from it) and api_latency.py, each in its own process, then collects their
headline figures into bench/results/latest.json (the keys `check_regression.py` compares), with
the machine and the commit. A bench that fails is reported and its figures are left out; the
exit code is then non-zero. --quick scales every bench down to a functional check of a few
minutes and writes everything under bench/results/quick/ instead, so a quick run never replaces
full figures (nor is compared with them).

    .venv/bin/python -m bench.run_all [--quick] [--only throughput freshness ...]

`make bench` runs it in full.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from typing import Any

from bench.common import PROJECT_ROOT, machine, print_table, results_dir

BENCHES = ("throughput", "freshness", "memory", "scaling", "api_latency")
# latest.json key ← (bench result file, path inside it)
FIGURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "pipeline_events_per_s": ("throughput", ("summary", "pipeline_events_per_s")),
    "compactor_events_per_s": ("throughput", ("summary", "compactor_events_per_s")),
    "ceiling_events_per_s": ("throughput", ("summary", "ceiling_events_per_s")),
    "naive_faust_events_per_s": ("throughput", ("summary", "naive_faust_events_per_s")),
    "pipeline_to_ceiling": ("throughput", ("summary", "pipeline_to_ceiling")),
    "pipeline_to_naive": ("throughput", ("summary", "pipeline_to_naive")),
    "batch_pipeline_messages_per_s": ("throughput", ("summary",
                                                     "batch_pipeline_messages_per_s")),
    "batch_pipeline_shares_per_s": ("throughput", ("summary", "batch_pipeline_shares_per_s")),
    "batch_naive_faust_messages_per_s": ("throughput", ("summary",
                                                        "batch_naive_faust_messages_per_s")),
    "batch_worker_to_naive": ("throughput", ("summary", "batch_worker_to_naive")),
    "freshness_p50_s_at_10k": ("freshness", ("summary", "freshness_p50_s_at_10k")),
    "freshness_p99_s_at_10k": ("freshness", ("summary", "freshness_p99_s_at_10k")),
    "worker_rss_mb_1m_workers": ("memory", ("summary", "worker_rss_mb_1m_workers")),
    "compactor_rss_mb_1m_workers": ("memory", ("summary", "compactor_rss_mb_1m_workers")),
    "one_worker_events_per_s": ("scaling", ("summary", "one_worker_events_per_s")),
    "two_worker_events_per_s": ("scaling", ("summary", "two_worker_events_per_s")),
    "two_worker_speedup": ("scaling", ("summary", "two_worker_speedup")),
    "api_rps": ("api_latency", ("api_rps",)),
    "api_p99_ms": ("api_latency", ("api_p99_ms",)),
    "bare_api_rps": ("api_latency", ("bare_api_rps",)),
    "api_ratio_to_bare": ("api_latency", ("api_ratio_to_bare",)),
}


def command(bench: str, quick: bool) -> list[str]:
    script = ["-m", f"bench.{bench}"]  # run from the project root (cwd), as a module
    if bench == "api_latency":
        output = ["--output", str(results_dir(quick) / "api_latency.json")]
        return [sys.executable, *script, *output,
                *(["--duration", "3", "--rounds", "1"] if quick else [])]
    return [sys.executable, *script, *(["--quick"] if quick else [])]


def figure(results: dict[str, Any], source: str, path: tuple[str, ...]) -> float | None:
    value: Any = results.get(source)
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def git_commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every bench scaled down")
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    args = parser.parse_args(argv)

    status: dict[str, dict[str, Any]] = {}
    for bench in BENCHES:
        if bench not in args.only:
            continue
        print(f"\n=== {bench} ===", flush=True)
        started = time.monotonic()
        done = subprocess.run(command(bench, args.quick), cwd=PROJECT_ROOT, check=False)
        status[bench] = {"exit_code": done.returncode,
                         "seconds": round(time.monotonic() - started, 1)}

    folder = results_dir(args.quick)
    results: dict[str, Any] = {}
    for bench in BENCHES:
        path = folder / f"{bench}.json"
        ran_ok = status.get(bench, {}).get("exit_code") == 0
        if ran_ok and path.exists():
            results[bench] = json.loads(path.read_text())
    latest: dict[str, Any] = {}
    for key, (source, path_in) in FIGURES.items():
        value = figure(results, source, path_in)
        if value is not None:
            latest[key] = value
    latest["setup"] = {
        "quick": args.quick,
        "benches": status,
        "commit": git_commit(),
        "machine": machine(),
        "scale": {name: body.get("setup", {}) for name, body in results.items()},
    }
    folder.mkdir(parents=True, exist_ok=True)
    latest_path = folder / "latest.json"
    latest_path.write_text(json.dumps(latest, indent=2) + "\n")

    print_table(str(latest_path.relative_to(PROJECT_ROOT))
                + (" (quick: not comparable with a full run)" if args.quick else ""),
                ["figure", "value"], [[k, v] for k, v in latest.items() if k != "setup"])
    failed = [name for name, s in status.items() if s["exit_code"] != 0]
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
