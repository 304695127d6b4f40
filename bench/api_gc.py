"""Where the API's tail latency went: its collector's pauses, with the start-up heap frozen or not.

Serves the latency bench's snapshot (bench/api_latency.py: private redis-server, ~50 regions)
from the API twice per round: as shipped (start-up heap frozen, api/lifespan.py) and with the
heap unfrozen again right after start-up (the API before 2026-12-07). The server times every
collection of generations 1 and 2 (``gc.callbacks``) into a file; each server takes the latency
bench's load generator for a phase at a fixed rate, then a closed-loop phase. Prints, per
variant and round, the full (generation-2) collections, their longest and total pause, and the
phases' p99 and max latency.

    .venv/bin/python -m bench.api_gc [--duration 10] [--rounds 2] [--rate 1000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from bench import api_latency
from tests.net import free_port

VARIANTS = ("frozen", "unfrozen")


def serve(port: int, log_path: str, unfrozen: bool) -> None:
    """The API on ``port``, logging each generation-1/2 collection as "generation ms"."""
    import uvicorn

    import api.main
    from api.lifespan import app_lifespan

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    started: list[float] = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] >= 1:
            log.write(f"{info['generation']} {(time.perf_counter() - started[0]) * 1e3:.3f}\n")

    @asynccontextmanager
    async def unfrozen_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with app_lifespan(app):
            gc.unfreeze()
            yield

    if unfrozen:
        api.main.app_lifespan = unfrozen_lifespan
    gc.callbacks.append(timed)
    uvicorn.run(api.main.create_app(), host="127.0.0.1", port=port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning")


def pauses(log_path: Path) -> dict[str, Any]:
    rows = [line.split() for line in log_path.read_text().splitlines()]
    full = [float(ms) for generation, ms in rows if generation == "2"]
    return {"gen1_collections": sum(1 for generation, _ in rows if generation == "1"),
            "gen2_collections": len(full), "gen2_max_ms": round(max(full, default=0.0), 2),
            "gen2_total_ms": round(sum(full), 1)}


def one_server(variant: str, env: dict[str, str], args: argparse.Namespace,
               workdir: str) -> dict[str, Any]:
    """Start the API, wait (start-up collections are not counted), load it, read its log."""
    port = free_port()
    log_path = Path(workdir, f"{variant}-{port}.log")
    command = [sys.executable, "-m", "bench.api_gc", "serve", str(port), str(log_path)]
    proc = subprocess.Popen([*command, *(["--unfrozen"] if variant == "unfrozen" else [])],
                            cwd=api_latency.PROJECT_ROOT, env=env)
    try:
        api_latency.wait_for_http(f"http://127.0.0.1:{port}/openapi.json")
        log_path.write_text("")
        fixed = api_latency.measure("fixed", port, args.connections, args.rate, args.duration)
        closed = api_latency.measure("max", port, args.connections, args.rate, args.duration)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"variant": variant, **pauses(log_path),
            "fixed_p99_ms": fixed.p99_ms, "fixed_max_ms": fixed.max_ms,
            "closed_rps": closed.requests_per_s, "closed_p99_ms": closed.p99_ms,
            "closed_max_ms": closed.max_ms}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with api_latency.private_redis() as redis_url, tempfile.TemporaryDirectory() as workdir:
        api_latency.write_snapshot(redis_url, api_latency.realistic_snapshot(time.time()))
        env = {**os.environ, "HASHATLAS_REDIS_URL": redis_url,
               "HASHATLAS_REDIS_PREFIX": api_latency.PREFIX, "HASHATLAS_STALE_AFTER_S": "3600"}
        for round_index in range(args.rounds):
            for variant in VARIANTS:
                result = {"round": round_index + 1, **one_server(variant, env, args, workdir)}
                print(json.dumps(result), flush=True)
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(int(argv[1]), argv[2], unfrozen="--unfrozen" in argv)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--connections", type=int, default=32)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
