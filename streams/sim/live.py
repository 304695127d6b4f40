"""A scenario run live: a quick backfill of recent history, then real time, optionally a shock.

Pure planning (no I/O): where a live run starts and ends in simulated time, its step, and the
blackout a demo adds to show an alert. ``streams.sim.run`` paces the events against the wall
clock: events of the past go out as fast as Kafka takes them, later ones when their time comes.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.core.regions import UNKNOWN_REGION
from streams.sim.scenario import Scenario, ShockSpec

#: What the demo's shock does: the region keeps a tenth of its hashrate, reached within 2 min.
SHOCK_FACTOR = 0.1
SHOCK_OVER_S = 120.0


@dataclass(frozen=True)
class LivePlan:
    """Simulated start (Unix s) and duration of a live run that reaches the wall clock at
    ``start_ts + backfill_s`` and then follows it."""

    start_ts: float
    duration_s: float
    backfill_s: float


def live_plan(scenario: Scenario, now: float, backfill_s: float,
              duration_s: float | None = None) -> LivePlan:
    """Backfill ``backfill_s`` of history, then run the scenario's duration (or ``duration_s``)
    in real time."""
    if backfill_s < 0:
        raise ValueError("backfill_s must be ≥ 0")
    live_s = scenario.duration if duration_s is None else duration_s
    return LivePlan(start_ts=now - backfill_s, duration_s=backfill_s + live_s,
                    backfill_s=backfill_s)


def largest_region(scenario: Scenario) -> str:
    """The scenario's largest leaf region by share (unknown excluded): the demo's default shock."""
    known = {code: pct for code, pct in scenario.regions.items() if code != UNKNOWN_REGION}
    if not known:
        raise ValueError("the scenario has no known region to shock")
    return max(known, key=lambda code: (known[code], code))


def with_step(scenario: Scenario, step_s: float | None) -> Scenario:
    """The scenario with another model step (finer steps make a live feed fresher)."""
    if step_s is None:
        return scenario
    return Scenario.model_validate({**scenario.model_dump(), "step_s": step_s})


def with_blackout(scenario: Scenario, region: str, at_s: float) -> Scenario:
    """The scenario plus a blackout of ``region`` (to ``SHOCK_FACTOR``) ``at_s`` into the run."""
    if region not in scenario.regions:
        raise ValueError(f"region {region!r} is not in scenario {scenario.name!r}; "
                         f"it has {', '.join(sorted(scenario.regions))}")
    shock = ShockSpec(name=f"demo-blackout-{region.lower()}", kind="blackout", region=region,
                      at=at_s, over=SHOCK_OVER_S, factor=SHOCK_FACTOR)
    return Scenario.model_validate({**scenario.model_dump(),
                                    "shocks": [*scenario.model_dump()["shocks"],
                                               shock.model_dump()]})
