"""How much serving from Redis costs: GET /v1/estimates/current against a bare FastAPI app.

Starts a private redis-server (or uses --redis-url), writes a realistic snapshot (~50 regions,
built by the API tests' helpers in tests/integration/api_helpers.py) the way the pipeline does,
then runs two uvicorn processes (uvloop + httptools, no access log): the real API, and a bare
FastAPI app that returns the same snapshot bytes as a constant (so the comparison isolates what
the API adds: the Redis round trip, the staleness check, the ETag and the middleware, not the
body size). The bare app goes through FastAPI's routing; the API
answers this path ahead of routing (api/fastpath.py, CurrentEstimateFastPath) and lets concurrent
requests share one Redis read, so under load it can beat the bare app; at the fixed rate the
requests rarely overlap and nearly each one makes its own Redis round trip.

A load generator in a separate process drives each server, in interleaved rounds (so load from
other processes on the machine falls on both alike; the median round is reported):

* closed loop, many keep-alive connections, as fast as the server answers: requests/s (max),
  and the server process's CPU time per request (less sensitive to a busy machine);
* open loop at a fixed rate (default 1,000 req/s): p50/p99 latency, measured from each request's
  *scheduled* send time, so a stalled server cannot hide its queueing (no coordinated omission).

Prints a table and writes bench/results/api_latency.json. Targets: API ≥ 70% of bare requests/s,
p99 < 10 ms at 1,000 req/s. Traffic goes to 127.0.0.1 only; every phase is bounded in time.

    .venv/bin/python -m bench.api_latency [--duration 10] [--rounds 3] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from fastapi import FastAPI
from starlette.responses import Response

from streams.models.snapshot import EstimateSnapshot
from streams.rediskeys import RedisKeys
from tests.integration.api_helpers import make_snapshot, publish_snapshot, region_entry
from tests.net import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]

RESULTS_FILE = PROJECT_ROOT / "bench" / "results" / "api_latency.json"
BODY_FILE_ENV = "HASHATLAS_BENCH_BODY_FILE"
PREFIX = "hashatlas-bench"
PATH = "/v1/estimates/current"
TARGET_RATIO = 0.70
TARGET_P99_MS = 10.0

# (code, name, share of the network): CCAF's Jan 2022 map, spread over ~50 regions.
COUNTRIES = [
    ("US", "United States", 0.3784), ("CN", "China", 0.2111), ("KZ", "Kazakhstan", 0.1322),
    ("CA", "Canada", 0.0648), ("RU", "Russian Federation", 0.0466), ("DE", "Germany", 0.0336),
    ("MY", "Malaysia", 0.0250), ("IE", "Ireland", 0.0198), ("IR", "Iran", 0.0150),
    ("NO", "Norway", 0.0090), ("SE", "Sweden", 0.0080), ("PY", "Paraguay", 0.0070),
    ("AE", "United Arab Emirates", 0.0060), ("ET", "Ethiopia", 0.0055), ("IS", "Iceland", 0.0050),
    ("FI", "Finland", 0.0040), ("GE", "Georgia", 0.0035), ("BR", "Brazil", 0.0030),
    ("AR", "Argentina", 0.0028), ("VE", "Venezuela", 0.0025), ("UZ", "Uzbekistan", 0.0022),
    ("KG", "Kyrgyzstan", 0.0020), ("TH", "Thailand", 0.0018), ("ID", "Indonesia", 0.0016),
    ("VN", "Viet Nam", 0.0015), ("UA", "Ukraine", 0.0014), ("BY", "Belarus", 0.0013),
    ("FR", "France", 0.0012), ("NL", "Netherlands", 0.0011), ("GB", "United Kingdom", 0.0010),
    ("CH", "Switzerland", 0.0009), ("AU", "Australia", 0.0008), ("JP", "Japan", 0.0007),
    ("KR", "Korea, Republic of", 0.0006), ("IN", "India", 0.0005), ("MX", "Mexico", 0.0005),
    ("CL", "Chile", 0.0004), ("BT", "Bhutan", 0.0004), ("ZZ", "Unknown", 0.0150),
]
SUBDIVISIONS = [
    ("US-TX", "Texas", 0.1400), ("US-GA", "Georgia", 0.0500), ("US-NY", "New York", 0.0450),
    ("US-KY", "Kentucky", 0.0300), ("US-ND", "North Dakota", 0.0200),
    ("CN-XJ", "Xinjiang", 0.0800), ("CN-SC", "Sichuan", 0.0600),
    ("CA-QC", "Quebec", 0.0300), ("CA-AB", "Alberta", 0.0200), ("RU-IRK", "Irkutsk", 0.0150),
]


def realistic_snapshot(published_at: float) -> EstimateSnapshot:
    """The API tests' snapshot (``make_snapshot``) with every region above, just published."""
    regions = [
        region_entry(code, name, share,
                     [sub for sub, _, _ in SUBDIVISIONS if sub.startswith(code + "-")])
        for code, name, share in COUNTRIES + SUBDIVISIONS]
    return make_snapshot(published_at, as_of=published_at - 0.2, regions=regions)


def write_snapshot(redis_url: str, snapshot: EstimateSnapshot) -> bytes:
    """As the snapshot publisher does: one MULTI/EXEC with the snapshot and region entries."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return publish_snapshot(client, snapshot, f"bench-{snapshot.as_of}", RedisKeys(PREFIX))
    finally:
        client.close()


def bare_app_factory() -> FastAPI:
    """The baseline: FastAPI returning a constant body (uvicorn --factory, from BODY_FILE_ENV)."""
    body = Path(os.environ[BODY_FILE_ENV]).read_bytes()
    app = FastAPI()

    @app.get(PATH)
    async def constant() -> Response:
        return Response(body, media_type="application/json")

    return app


# ---- processes -----------------------------------------------------------------------------------


def wait_for_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


@contextmanager
def private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; pass --redis-url")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextmanager
def uvicorn_server(app: str, env: dict[str, str], *extra: str) -> Iterator[tuple[int, int]]:
    """A uvicorn process serving ``app``; yields its port and process id."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
               "--loop", "uvloop", "--http", "httptools", "--no-access-log",
               "--log-level", "warning", *extra]
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, **env})
    try:
        wait_for_http(f"http://127.0.0.1:{port}/openapi.json")
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- load generator (runs in its own process) ----------------------------------------------------


class KeepAliveConnection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection with one request in flight at a time."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.response_end: int | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.response_end is None:
            header_end = self.buffer.find(b"\r\n\r\n")
            if header_end < 0:
                return
            headers = bytes(self.buffer[:header_end + 2]).lower()  # each line ends in CRLF
            marker = headers.find(b"content-length:")
            length = int(headers[marker + 15:headers.find(b"\r\n", marker)]) if marker >= 0 else 0
            self.response_end = header_end + 4 + length
        if len(self.buffer) >= self.response_end and self.waiter is not None:
            status = int(self.buffer[9:12])
            del self.buffer[:self.response_end]
            self.response_end = None
            self.waiter.set_result(status)
            self.waiter = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))

    async def request(self, raw: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_ratio: float = 0.0  # the load generator's CPU time / wall time (1.0 = one core)


def summarise(latencies_s: list[float], errors: int, seconds: float) -> LoadResult:
    values = np.array(latencies_s) * 1000.0 if latencies_s else np.array([float("nan")])
    return LoadResult(requests=len(latencies_s), errors=errors, seconds=round(seconds, 3),
                      requests_per_s=round(len(latencies_s) / seconds, 1),
                      p50_ms=round(float(np.percentile(values, 50)), 3),
                      p99_ms=round(float(np.percentile(values, 99)), 3),
                      max_ms=round(float(values.max()), 3))


async def open_connections(port: int, count: int) -> list[KeepAliveConnection]:
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(count):
        _, protocol = await loop.create_connection(KeepAliveConnection, "127.0.0.1", port)
        connections.append(protocol)
    return connections


async def closed_loop(port: int, raw: bytes, connections: int, duration_s: float) -> LoadResult:
    """Every connection sends its next request as soon as the last one is answered."""
    pool = await open_connections(port, connections)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def drive(connection: KeepAliveConnection) -> None:
        nonlocal errors
        while (sent := time.perf_counter()) < deadline:
            status = await connection.request(raw)
            if status == 200:
                latencies.append(time.perf_counter() - sent)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(drive(connection) for connection in pool))
    elapsed = time.perf_counter() - started
    for connection in pool:
        assert connection.transport is not None
        connection.transport.close()
    return summarise(latencies, errors, elapsed)


async def open_loop(port: int, raw: bytes, connections: int, rate: float,
                    duration_s: float) -> LoadResult:
    """Requests scheduled at a fixed rate; latency counts from the scheduled time."""
    pool = await open_connections(port, connections)
    idle: asyncio.Queue[KeepAliveConnection] = asyncio.Queue()
    for connection in pool:
        idle.put_nowait(connection)
    latencies: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        connection = await idle.get()
        try:
            status = await connection.request(raw)
        finally:
            idle.put_nowait(connection)
        if status == 200:
            latencies.append(time.perf_counter() - scheduled)
        else:
            errors += 1

    total = int(rate * duration_s)
    tasks = []
    started = time.perf_counter()
    for index in range(total):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration_s + 30)
    elapsed = time.perf_counter() - started
    for connection in pool:
        assert connection.transport is not None
        connection.transport.close()
    return summarise(latencies, errors, elapsed)


def run_load(mode: str, port: int, connections: int, rate: float, duration_s: float,
             results: Any) -> None:
    """Entry point of the load-generator process. Its collector is off while it measures (as
    timeit's is): a collection of the generator's own heap stalls every request in flight, and
    latency counted from the scheduled send time would charge that stall to the server."""
    import gc

    import uvloop

    gc.collect()
    gc.freeze()
    gc.disable()
    raw = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    cpu_before = time.process_time()
    if mode == "max":
        result = uvloop.run(closed_loop(port, raw, connections, duration_s))
    else:
        result = uvloop.run(open_loop(port, raw, connections, rate, duration_s))
    result.client_cpu_ratio = round((time.process_time() - cpu_before) / result.seconds, 3)
    results.put(asdict(result))


def measure(mode: str, port: int, connections: int, rate: float, duration_s: float) -> LoadResult:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    proc = context.Process(target=run_load,
                           args=(mode, port, connections, rate, duration_s, results))
    proc.start()
    deadline = time.monotonic() + duration_s + 60
    while True:
        try:
            outcome = results.get(timeout=0.5)
            break
        except queue.Empty:
            if not proc.is_alive() or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"load generator failed ({mode} on port {port})") from None
    proc.join(timeout=10)
    return LoadResult(**outcome)


# ---- the benchmark -------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    """One load phase against one server, with the server's CPU cost per answered request."""

    load: LoadResult
    server_cpu_us_per_request: float


def run_phase(mode: str, server: tuple[int, int], args: argparse.Namespace) -> Phase:
    port, pid = server
    cpu_before = process_cpu_s(pid)
    load = measure(mode, port, args.connections, args.rate, args.duration)
    cpu_used = process_cpu_s(pid) - cpu_before
    return Phase(load, round(cpu_used / max(1, load.requests) * 1e6, 1))


def median_phase(phases: list[Phase], mode: str) -> Phase:
    """The round with the median throughput (max phases) or median p99 (fixed-rate phases)."""
    if mode == "max":
        ranked = sorted(phases, key=lambda phase: phase.load.requests_per_s)
    else:
        ranked = sorted(phases, key=lambda phase: phase.load.p99_ms)
    return ranked[len(phases) // 2]


def _measure_rounds(args: argparse.Namespace, api_server: tuple[int, int],
                    bare_server: tuple[int, int]
                    ) -> dict[str, dict[str, list[Phase]]]:
    """Rounds that interleave the two servers, so load from other processes on the machine
    falls on both alike."""
    rounds: dict[str, dict[str, list[Phase]]] = {
        name: {"max": [], "fixed": []} for name in ("api", "bare")}
    servers = {"api": api_server, "bare": bare_server}
    for port, _ in servers.values():  # warm-up
        measure("max", port, args.connections, args.rate, min(2.0, args.duration))
    for round_index in range(args.rounds):
        for mode in ("max", "fixed"):
            for name, server in servers.items():
                phase = run_phase(mode, server, args)
                rounds[name][mode].append(phase)
                print(f"  round {round_index + 1} {name:4s} {mode:5s} "
                      f"{phase.load.requests_per_s:8.0f} req/s  "
                      f"p50 {phase.load.p50_ms:6.2f} ms  "
                      f"p99 {phase.load.p99_ms:6.2f} ms"
                      f"  server {phase.server_cpu_us_per_request:6.1f} µs CPU/req"
                      f"  errors {phase.load.errors}", flush=True)
    return rounds


def _summarise(rounds: dict[str, dict[str, list[Phase]]]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for name, modes in rounds.items():
        at_max = median_phase(modes["max"], "max")
        at_rate = median_phase(modes["fixed"], "fixed")
        summary[name] = {"max_rps": at_max.load.requests_per_s, "p50_ms": at_rate.load.p50_ms,
                         "p99_ms": at_rate.load.p99_ms,
                         "server_cpu_us_per_request": at_max.server_cpu_us_per_request}
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    with private_redis() if args.redis_url is None else _given(args.redis_url) as redis_url:
        body = write_snapshot(redis_url, realistic_snapshot(time.time()))
        env = {"HASHATLAS_REDIS_URL": redis_url, "HASHATLAS_REDIS_PREFIX": PREFIX,
               # the snapshot must stay fresh for the whole run (no stale re-serialising)
               "HASHATLAS_STALE_AFTER_S": "3600"}
        with tempfile.NamedTemporaryFile(suffix=".json") as body_file:
            body_file.write(body)
            body_file.flush()
            print(f"snapshot: {len(COUNTRIES) + len(SUBDIVISIONS)} regions, {len(body)} bytes; "
                  f"{args.rounds} rounds of {args.duration:g} s phases, "
                  f"{args.connections} connections", flush=True)
            with uvicorn_server(
                "api.main:create_app", env, "--factory",
            ) as api_server, uvicorn_server(
                "api_latency:bare_app_factory", {BODY_FILE_ENV: body_file.name},
                "--factory", "--app-dir", str(Path(__file__).parent),
            ) as bare_server:
                rounds = _measure_rounds(args, api_server, bare_server)
    summary = _summarise(rounds)
    api, bare = summary["api"], summary["bare"]
    ratio = api["max_rps"] / bare["max_rps"]
    return {
        "api_rps": api["max_rps"],
        "api_p50_ms": api["p50_ms"],
        "api_p99_ms": api["p99_ms"],
        "bare_api_rps": bare["max_rps"],
        "bare_api_p99_ms": bare["p99_ms"],
        "api_ratio_to_bare": round(ratio, 3),
        "targets": {"ratio_to_bare_min": TARGET_RATIO, "p99_ms_max": TARGET_P99_MS,
                    "ratio_met": ratio >= TARGET_RATIO, "p99_met": api["p99_ms"] < TARGET_P99_MS},
        "summary": summary,
        "rounds": {name: {mode: [asdict(phase) for phase in phases]
                          for mode, phases in modes.items()}
                   for name, modes in rounds.items()},
        "setup": {"path": PATH, "body_bytes": len(body),
                  "regions": len(COUNTRIES) + len(SUBDIVISIONS), "rate": args.rate,
                  "duration_s": args.duration, "rounds": args.rounds,
                  "connections": args.connections, "cpus": os.cpu_count(),
                  "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                  "server": "uvicorn, 1 process, uvloop, httptools, no access log",
                  "summary": "median round of each (max: by req/s; fixed rate: by p99)",
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed rate, req/s")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--redis-url", default=None, help="use this Redis (default: private)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    args = parser.parse_args()
    report = run(args)
    print()
    print(f"{'':6s}{'max req/s':>11s}{'p50 ms':>9s}{'p99 ms':>9s}{'CPU µs/req':>12s}"
          f"   (p50/p99 at {args.rate:.0f} req/s; median of {args.rounds} rounds)")
    for name, row in report["summary"].items():
        print(f"{name:6s}{row['max_rps']:11.0f}{row['p50_ms']:9.2f}{row['p99_ms']:9.2f}"
              f"{row['server_cpu_us_per_request']:12.1f}")
    print(f"api / bare = {report['api_ratio_to_bare']:.2f} (target ≥ {TARGET_RATIO}); "
          f"api p99 at {args.rate:.0f} req/s = {report['api_p99_ms']:.2f} ms "
          f"(target < {TARGET_P99_MS} ms)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
