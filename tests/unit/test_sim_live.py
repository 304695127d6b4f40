"""A live simulation: backfill at once, then the wall clock; the demo's shock and step."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from streams.settings import Topics
from streams.sim.live import (
    SHOCK_FACTOR,
    largest_region,
    live_plan,
    with_blackout,
    with_step,
)
from streams.sim.model import Simulator, shock_effect
from streams.sim.run import drive
from tests.unit.test_sim import small


def test_live_plan_starts_backfill_ago_and_runs_the_scenario_after() -> None:
    scenario = small()
    plan = live_plan(scenario, now=1_800_000_000.0, backfill_s=3600.0)
    assert plan.start_ts == 1_800_000_000.0 - 3600.0
    assert plan.duration_s == 3600.0 + scenario.duration
    assert live_plan(scenario, 1_800_000_000.0, 600.0, duration_s=60.0).duration_s == 660.0
    with pytest.raises(ValueError, match="backfill_s"):
        live_plan(scenario, 1_800_000_000.0, -1.0)


def test_largest_region_ignores_unknown() -> None:
    scenario = small(regions={"ZZ": 50.0, "US-TX": 30.0, "KZ": 20.0})
    assert largest_region(scenario) == "US-TX"


def test_blackout_is_added_at_the_given_time_and_names_a_missing_region() -> None:
    scenario = small()
    region = largest_region(scenario)
    shocked = with_blackout(scenario, region, at_s=3720.0)
    added = shocked.shocks[-1]
    assert (added.region, added.kind, added.at, added.factor) == (region, "blackout", 3720.0,
                                                                  SHOCK_FACTOR)
    assert shocked.shocks[:-1] == scenario.shocks
    assert shock_effect(added, 3700.0) == 0.0 and shock_effect(added, 3720.0 + 3600.0) == 1.0
    with pytest.raises(ValueError, match="region 'XX' is not in scenario"):
        with_blackout(scenario, "XX", 10.0)


def test_with_step_changes_only_the_step() -> None:
    scenario = small(step_s=10.0)
    assert with_step(scenario, None) is scenario
    finer = with_step(scenario, 2.0)
    assert finer.step_s == 2.0
    assert finer.model_dump(exclude={"step_s"}) == scenario.model_dump(exclude={"step_s"})


def _event_time(value: bytes) -> float:
    event = orjson.loads(value)
    return float(event.get("end", event.get("ts", event.get("time", 0.0))))


def test_live_drive_backfills_at_once_then_follows_the_wall_clock() -> None:
    """A run that starts 600 s ago and lasts 603 s: the first 600 s go out at once, the rest
    as the wall clock reaches them; no event is sent before its time."""
    scenario = small(step_s=1.0)
    now = time.time()
    plan = live_plan(scenario, now, backfill_s=600.0, duration_s=3.0)
    outputs = Simulator(scenario, start_ts=plan.start_ts).steps(plan.duration_s)
    sent: list[tuple[float, float]] = []

    async def send(topic: str, value: bytes, key: bytes | None) -> None:
        sent.append((time.time(), _event_time(value)))

    asyncio.run(drive(outputs, send, topics=Topics(), truth_out=None, header=None, speed=None,
                      stop=asyncio.Event(), live=True))
    assert all(wall >= event_t - 0.01 for wall, event_t in sent)
    backfill = [wall for wall, event_t in sent if event_t <= now - 1.0]
    assert len(backfill) > 100 and max(backfill) - now < 2.0
    assert max(wall for wall, _ in sent) >= now + 2.0
