"""Issue #14's detection cases over many simulated maps: slow moves, subdivisions, cold starts.

The world is bench/shift_detection.py's (Poisson share counts in a 300 s sliding window, one
update a minute, real noise wandering with 30 min correlation) on the CCAF January 2022 map with
the US split into Texas (4.25 %, CCAF's December 2021 state map as in scenarios/*.yaml) and the
rest of the US; the US is tracked as the sum of both, Texas as its subdivision, and every
replicate is one map (mirror effects act within it). Each case runs `replicates` maps through
`ShiftEngine` (the code ShiftDetector runs) and counts:

* abrupt: KZ (13.22 %) loses 10 points at once, after a day running / 2 min and 30 min after a
  cold start; caught = a KZ "down" alert within 10 min;
* ramp_12h / ramp_3d: KZ loses 10 points linearly over 12 h / 3 days (after 1 / 3 days running);
  caught before the ramp ends + 2 h / before it ends;
* curtailment: US-TX at 70 % for 4 h (falling over 15 min, back at once); caught = a US-TX
  "down" alert within 30 min of the onset; recovery = within 60 min of the return, the alert
  resolves "recovered" or a US-TX "up" alert fires;
* quiet week: no shock; every alert on any region or subdivision (US, US-TX, US-other too) is a
  false alarm, per map-week. Mirror alerts after the KZ drop (other regions "up") are counted too.

Run: `.venv/bin/python -m bench.shift_cases [--replicates 300] [--seed 1] [--world scenario]`;
writes bench/results/shift_cases.json. `--world floor` uses real noise = the detector's floor
(bench/shift_detection.py's world, far noisier than the scenarios'), `--world floor_x1.8` real
noise 1.8x the floor (the floor of the original calibration, noise_scale 0.022).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.shift_detection import (
    DAY_MIN,
    JAN_2022,
    WEEK_MIN,
    Events,
    FloatArray,
    World,
    factor_for_drop,
    run_engine,
    simulate_shares,
)
from streams.core.shifts import ShiftParams

#: Jan 2022 with the US split: Texas 4.25 % (CCAF Dec 2021 state map), the rest of the US.
LEAVES = {"US-TX": 4.25, "US-other": JAN_2022["US"] - 4.25,
          **{k: v for k, v in JAN_2022.items() if k != "US"}}  # fmt: skip
NAMES = [*LEAVES, "US"]
PARENT = [NAMES.index("US"), NAMES.index("US"), *[-1] * (len(LEAVES) - 2), -1]
AGGREGATES = [[0, 1]]
WORLDS = {
    # Like the scenario worlds (scenarios/*.yaml: 1 % hashrate wander per leaf, 30 min): a
    # region's share sd ≈ 0.01 · s; here c·√s with c = 0.003 (≈ 0.01·s at s ≈ 9 %), with a rich
    # sample (CCAF's partners: thousands of shares a second).
    "scenario": World(rate_per_s=2000.0, noise_scale=0.003),
    "floor": World(),
    # Real noise 1.8x the floor: the floor of the original calibration (noise_scale 0.022).
    "floor_x1.8": World(noise_scale=0.022),
}


def run_case(params: ShiftParams, shock: Any, *, minutes: int, replicates: int, world: World,
             seed: int) -> Events:
    chunks = simulate_shares(np.array(list(LEAVES.values())), shock, minutes=minutes,
                             replicates=replicates, world=world, rng=np.random.default_rng(seed),
                             aggregates=AGGREGATES)
    return run_engine(params, chunks, PARENT)


def path(region: str, start_min: float, ramp_min: float, factor: float,
         back_min: float | None = None) -> Any:
    """Hashrate factors: `region` × factor reached linearly over ramp_min, back at back_min."""
    index = list(LEAVES).index(region)

    def factors(minutes: FloatArray) -> FloatArray:
        out = np.ones((minutes.size, len(LEAVES)))
        progress = np.clip((minutes - start_min) / max(ramp_min, 1e-9), 0.0, 1.0)
        out[:, index] = 1.0 + (factor - 1.0) * progress
        if back_min is not None:
            out[minutes >= back_min, index] = 1.0
        return out

    return factors


def first_alerts(events: Events, series: int, direction: float, t_from: float, t_to: float,
                 replicates: int) -> list[float | None]:
    """Per replicate, the first alert time on `series` in `direction` within [t_from, t_to]."""
    out: list[float | None] = []
    for rep in range(replicates):
        mine = ((events.fire_series == rep * len(NAMES) + series)
                & (events.fire_direction == direction)
                & (events.fire_t >= t_from) & (events.fire_t <= t_to))
        out.append(float(events.fire_t[mine][0]) if mine.any() else None)
    return out


def caught(times: Sequence[float | None], start_s: float) -> dict[str, Any]:
    delays = [(t - start_s) / 60.0 for t in times if t is not None]
    return {"runs": len(times), "caught": len(delays), "rate": len(delays) / len(times),
            "delay_min_median": float(np.median(delays)) if delays else None,
            "delay_min_max": float(np.max(delays)) if delays else None}


def mirrors_after(events: Events, region: str, t_from: float, replicates: int) -> int:
    """Up alerts on regions other than `region` (and not its country) after t_from."""
    index = NAMES.index(region)
    other = (events.fire_series % len(NAMES)) != index
    return int((other & (events.fire_direction > 0) & (events.fire_t >= t_from)).sum())


def abrupt(params: ShiftParams, lead_min: float, replicates: int, world: World,
           seed: int) -> dict[str, Any]:
    share = LEAVES["KZ"] / 100.0
    factor = factor_for_drop(share, 0.10)
    events = run_case(params, path("KZ", lead_min, 0.0, factor), minutes=int(lead_min + 180),
                      replicates=replicates, world=world, seed=seed)
    start = lead_min * 60.0
    times = first_alerts(events, NAMES.index("KZ"), -1.0, start, start + 600.0, replicates)
    result = caught(times, start)
    result["false_before"] = int((events.fire_t < start).sum())
    result["mirror_up_alerts"] = mirrors_after(events, "KZ", start, replicates)
    return result


def ramp(params: ShiftParams, lead_min: float, ramp_min: float, grace_min: float,
         replicates: int, world: World, seed: int) -> dict[str, Any]:
    share = LEAVES["KZ"] / 100.0
    factor = factor_for_drop(share, 0.10)
    events = run_case(params, path("KZ", lead_min, ramp_min, factor),
                      minutes=int(lead_min + ramp_min + grace_min + 10), replicates=replicates,
                      world=world, seed=seed)
    start = lead_min * 60.0
    end = (lead_min + ramp_min + grace_min) * 60.0
    result = caught(first_alerts(events, NAMES.index("KZ"), -1.0, start, end, replicates), start)
    result["false_before"] = int((events.fire_t < start).sum())
    result["mirror_up_alerts"] = mirrors_after(events, "KZ", start, replicates)
    return result


def curtailment(params: ShiftParams, replicates: int, world: World, seed: int) -> dict[str, Any]:
    lead, hold = DAY_MIN, 4 * 60.0
    back = lead + 15.0 + hold
    events = run_case(params, path("US-TX", lead, 15.0, 0.7, back_min=back),
                      minutes=int(back + 180), replicates=replicates, world=world, seed=seed)
    tx = NAMES.index("US-TX")
    start, back_s = lead * 60.0, back * 60.0
    down = first_alerts(events, tx, -1.0, start, start + 1800.0, replicates)
    result = caught(down, start)
    up = first_alerts(events, tx, 1.0, back_s, back_s + 3600.0, replicates)
    recovered = []
    for rep, up_t in enumerate(up):
        mine = ((events.resolve_series == rep * len(NAMES) + tx) & events.resolve_recovered
                & (events.resolve_t >= back_s) & (events.resolve_t <= back_s + 3600.0))
        recovered.append(up_t is not None or bool(mine.any()))
    result["recovery_signalled_within_60_min"] = sum(recovered) / replicates
    result["false_before"] = int((events.fire_t < start).sum())
    return result


def quiet_week(params: ShiftParams, replicates: int, world: World, seed: int) -> dict[str, Any]:
    events = run_case(params, path("KZ", 0.0, 0.0, 1.0), minutes=WEEK_MIN,
                      replicates=replicates, world=world, seed=seed)
    per_series = np.bincount(events.fire_series % len(NAMES), minlength=len(NAMES))
    return {"map_weeks": replicates, "series": NAMES, "false_alarms": int(events.fire_t.size),
            "per_week": events.fire_t.size / replicates,
            "by_series": dict(zip(NAMES, per_series.tolist(), strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--world", choices=sorted(WORLDS), default="scenario")
    parser.add_argument("--cases", default="abrupt,cold,ramp12,ramp3d,curtail,quiet")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a ShiftParams field (tuning)")
    args = parser.parse_args()
    overrides = {k: float(v) for k, v in (item.split("=", 1) for item in args.param)}
    params = ShiftParams(**overrides)  # type: ignore[arg-type]
    world, n, seed = WORLDS[args.world], args.replicates, args.seed
    wanted = set(args.cases.split(","))
    started = time.perf_counter()
    runs = {
        "abrupt": lambda: abrupt(params, DAY_MIN, n, world, seed),
        "cold": lambda: {"2_min": abrupt(params, 6.0, n, world, seed + 1),
                         "30_min": abrupt(params, 34.0, n, world, seed + 2)},
        "ramp12": lambda: ramp(params, DAY_MIN, 720.0, 120.0, n, world, seed + 3),
        "ramp3d": lambda: ramp(params, 3 * DAY_MIN, 3 * DAY_MIN, 0.0, n, world, seed + 4),
        "curtail": lambda: curtailment(params, n, world, seed + 5),
        "quiet": lambda: quiet_week(params, n, world, seed + 6),
    }
    output: dict[str, Any] = {"params": asdict(params), "world": asdict(world),
                              "args": vars(args) | {"out": None}}
    for name, run in runs.items():
        if name in wanted:
            output[name] = run()
            print(name, json.dumps(output[name]), f"{time.perf_counter() - started:.0f} s",
                  flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"shift_cases_{args.world}_seed{args.seed}.json"
    target.write_text(json.dumps(output, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
