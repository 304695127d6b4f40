"""Run a scenario: events to Kafka (or a JSONL file), truth to a JSONL file, paced or flat out.

The thin edge around :class:`streams.sim.model.Simulator`. Shares (``share``, ``share_batch``) go
to the shares topic keyed by pool id, blocks to the blocks topic keyed by height, prices to the
market topic. Events carry simulated timestamps that start at ``start`` (default: now); with
``speed`` X one wall-clock second covers X simulated seconds, ``speed=None`` runs as fast as the
producer takes them, and ``live`` sends each step when the wall clock reaches its end (a start in
the past is backfilled as fast as the producer takes it, then the run follows the clock). At
most ``max_in_flight`` sends are unacknowledged at any time, so a slow broker slows the simulator
instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from streams.settings import Settings, Topics
from streams.sim.live import live_plan
from streams.sim.model import Simulator, StepOutput
from streams.sim.scenario import Scenario

DEFAULT_MAX_IN_FLIGHT = 20_000
PROGRESS_EVERY_S = 30.0


def route(event: dict[str, Any], topics: Topics) -> tuple[str, bytes | None]:
    """Topic and key of an input event (CONTRACTS.md: shares by pool, blocks by height)."""
    kind = event["type"]
    if kind in ("share", "share_batch"):
        return topics.shares, str(event["pool"]).encode()
    if kind == "block":
        return topics.blocks, str(event["height"]).encode()
    if kind == "price":
        return topics.market, None
    raise ValueError(f"no topic for event type {kind!r}")


@dataclass
class RunSummary:
    """What a run sent, for the closing line and for tests."""

    steps: int = 0
    simulated_s: float = 0.0
    wall_s: float = 0.0
    events: Counter[str] = field(default_factory=Counter)
    truth_points: int = 0
    stopped_early: bool = False

    def line(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.events.items()))
        state = " (stopped early)" if self.stopped_early else ""
        return (f"simulated {self.simulated_s / 3600:.2f} h in {self.wall_s:.1f} s wall{state}: "
                f"{counts}; {self.truth_points} truth points")


class _Pacer:
    """Sleeps so that simulated time advances ``speed`` times faster than the wall clock, or,
    ``live``, until the wall clock reaches the simulated time."""

    def __init__(self, sim_start: float, speed: float | None, live: bool = False) -> None:
        self.sim_start = sim_start
        self.speed = speed
        self.live = live
        self.wall_start = time.monotonic()

    async def wait_until(self, sim_t: float) -> None:
        if self.live:
            delay = sim_t - time.time()
        elif self.speed is None:
            return
        else:
            delay = self.wall_start + (sim_t - self.sim_start) / self.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


Send = Callable[[str, bytes, bytes | None], Awaitable[asyncio.Future[Any] | None]]


async def drive(steps: Iterator[StepOutput], send: Send, *, topics: Topics,
                truth_out: IO[bytes] | None, header: dict[str, Any] | None,
                speed: float | None, stop: asyncio.Event,
                max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, live: bool = False) -> RunSummary:
    """Send every step's events in order (paced), write truth, bound unacknowledged sends."""
    summary = RunSummary()
    pending: deque[asyncio.Future[Any]] = deque()
    started = time.monotonic()
    last_progress = started
    pacer: _Pacer | None = None
    if truth_out is not None and header is not None:
        truth_out.write(orjson.dumps(header) + b"\n")
    for output in steps:
        if pacer is None:
            pacer = _Pacer(output.t, speed, live)
        if stop.is_set():
            summary.stopped_early = True
            break
        await pacer.wait_until(output.end)
        if output.truth is not None and truth_out is not None:
            truth_out.write(orjson.dumps(output.truth) + b"\n")
            summary.truth_points += 1
        for event in output.events:
            topic, key = route(event, topics)
            future = await send(topic, orjson.dumps(event), key)
            summary.events[event["type"]] += 1
            if future is not None:
                pending.append(future)
                while len(pending) > max_in_flight:
                    await pending.popleft()
        summary.steps += 1
        summary.simulated_s = output.end - (pacer.sim_start)
        now = time.monotonic()
        if now - last_progress >= PROGRESS_EVERY_S:
            last_progress = now
            summary.wall_s = now - started
            print(f"hashatlas simulate: {summary.line()}", file=sys.stderr, flush=True)
    while pending:
        await pending.popleft()
    summary.wall_s = time.monotonic() - started
    return summary


def _install_stop(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run_to_file(simulator: Simulator, duration_s: float, events_path: Path,
                      truth_path: Path | None, topics: Topics) -> RunSummary:
    """Write the events as JSONL (one event per line, in send order) instead of to Kafka."""
    stop = asyncio.Event()
    _install_stop(asyncio.get_running_loop(), stop)
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(events_path, "wb"))
        truth_out = files.enter_context(open(truth_path, "wb")) if truth_path else None

        async def send(topic: str, value: bytes, key: bytes | None) -> None:
            out.write(value + b"\n")

        return await drive(simulator.steps(duration_s), send, topics=topics,
                           truth_out=truth_out, header=simulator.header(duration_s),
                           speed=None, stop=stop)


async def run_to_kafka(simulator: Simulator, duration_s: float, settings: Settings,
                       truth_path: Path | None, speed: float | None,
                       max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                       live: bool = False) -> RunSummary:
    """Produce the events to Kafka with aiokafka (acks=all), paced by ``speed`` or ``live``."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka import client_options

    stop = asyncio.Event()
    _install_stop(asyncio.get_running_loop(), stop)
    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=20,
                                max_batch_size=512 * 1024,
                                max_request_size=settings.max_message_bytes)
    await producer.start()
    try:
        with contextlib.ExitStack() as files:
            truth_out = files.enter_context(open(truth_path, "wb")) if truth_path else None

            async def send(topic: str, value: bytes, key: bytes | None) -> asyncio.Future[Any]:
                return await producer.send(topic, value=value, key=key)

            return await drive(simulator.steps(duration_s), send, topics=settings.topics,
                               truth_out=truth_out, header=simulator.header(duration_s),
                               speed=speed, stop=stop, max_in_flight=max_in_flight,
                               live=live)
    finally:
        await producer.stop()


def run_simulation(scenario: Scenario, settings: Settings, *, start_ts: float | None = None,
                   duration_s: float | None = None, speed: float | None = 1.0,
                   seed: int | None = None, single_share_fraction: float | None = None,
                   truth_path: Path | None = None, dry_run: Path | None = None,
                   live_backfill_s: float | None = None) -> RunSummary:
    """Run a scenario to Kafka or, with ``dry_run``, to a file; returns what was sent.

    Without ``start_ts``, a run faster than real time starts in the past so that it ends at
    the wall clock: its events are never further ahead of it than the pipeline accepts
    (``max_future_skew_s``). With ``live_backfill_s``, the run starts that long ago, catches up
    at once and then follows the wall clock for the scenario's duration (or ``duration_s``)."""
    duration = scenario.duration if duration_s is None else duration_s
    live = live_backfill_s is not None and dry_run is None
    if live_backfill_s is not None:
        plan = live_plan(scenario, time.time(), live_backfill_s, duration_s)
        start_ts, duration = plan.start_ts, plan.duration_s
    elif start_ts is None:
        ahead_s = duration if speed is None else duration * max(0.0, 1.0 - 1.0 / speed)
        start_ts = time.time() - ahead_s
    simulator = Simulator(
        scenario, start_ts=start_ts, seed=seed,
        single_share_fraction=single_share_fraction, truth_step_s=settings.history_step_s,
    )
    if dry_run is not None:
        return asyncio.run(run_to_file(simulator, duration, dry_run, truth_path, settings.topics))
    return asyncio.run(run_to_kafka(simulator, duration, settings, truth_path, speed, live=live))
