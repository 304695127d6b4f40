"""Regional shift detection on simulated shocks: detection delay, misses, false alarms per week.

Simulated world (one minute per step, like the live pipeline):
- Region hashrates start from a published CCAF map (Jan 2022, or Apr 2021 for China's ban). Each
  region's hashrate wanders with real noise: a factor 1 + x (clipped at 0), x an Ornstein–Uhlenbeck
  process (correlation time `noise_tau_min`) of relative sd c/√s₀ for a region of initial share
  s₀ — a region made of many independent units of hashrate, so that its share's sd is
  c·√(s(1−s)) (c = `noise_scale`, by default equal to the detector's noise floor: the floor is the
  detector's statement of how much of this noise to expect).
- A shock multiplies chosen regions' hashrate by a known path (step, ramp, staircase).
- The share sample sees Poisson share counts per minute in proportion to hashrate
  (`rate_per_s` shares per second over the whole sample at the start), summed over a 300 s
  sliding window; each region's share = its count / total, SE by the delta method for independent
  Poisson counts (what streams.core.regions.region_shares computes for one pool at one difficulty).
- The detector (`ShiftEngine`, the same code ShiftDetector runs) sees share and SE every minute.

Metrics: false alarms per simulated map-week (all regions of a map together, no shock), detection
delay from the shock's start to the first alert on the shocked region in the right direction,
misses (none within the horizon), and whether and how the episode resolved.

Run: `.venv/bin/python -m bench.shift_detection [--weeks N] [--replicates N] [--seed S] [--grid]`
(writes bench/results/shift_detection.json). The unit tests import the simulator from this file so
that the benchmark and the tests measure the same thing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from streams.core.shifts import ShiftEngine, ShiftParams

FloatArray = npt.NDArray[np.float64]

MINUTE_S = 60.0
DAY_MIN = 1440
WEEK_MIN = 7 * DAY_MIN

# CCAF Bitcoin Mining Map, Jan 2022 (% of network); "other ≈ 16.7" split over several regions.
JAN_2022 = {
    "US": 37.84, "CN": 21.11, "KZ": 13.22, "CA": 6.48, "RU": 4.66,
    "MY": 3.0, "IR": 3.0, "DE": 3.0, "IE": 2.0, "NO": 1.5, "SE": 1.5, "ZZ": 2.69,
}  # fmt: skip
# CCAF Apr 2021 (% of network); "other" (17.6) split over several regions.
APR_2021 = {
    "CN": 46.0, "US": 16.8, "KZ": 8.2, "RU": 6.8, "IR": 4.6,
    "MY": 4.3, "CA": 3.0, "DE": 2.5, "IE": 2.0, "NO": 1.2, "SE": 1.0, "GE": 1.0, "ZZ": 2.6,
}  # fmt: skip


@dataclass(frozen=True)
class World:
    """How the simulated sample behaves: share rate, real noise, window."""

    rate_per_s: float = 20.0
    noise_scale: float = ShiftParams().noise_scale
    noise_tau_min: float = 30.0
    window_min: int = 5


Shock = Callable[[FloatArray], FloatArray]  # minutes (T,) → hashrate factors (T, R)


def no_shock(n_regions: int) -> Shock:
    return lambda minutes: np.ones((minutes.size, n_regions))


def ramp_shock(
    n_regions: int, region: int, start_min: float, duration_min: float, factor: float
) -> Shock:
    """Region's hashrate moves linearly from ×1 to ×factor over [start, start + duration]."""

    def path(minutes: FloatArray) -> FloatArray:
        out = np.ones((minutes.size, n_regions))
        if duration_min <= 0.0:
            progress = (minutes >= start_min).astype(np.float64)
        else:
            progress = np.clip((minutes - start_min) / duration_min, 0.0, 1.0)
        out[:, region] = 1.0 + (factor - 1.0) * progress
        return out

    return path


def staircase_shock(
    n_regions: int, region: int, steps: Sequence[tuple[float, float, float]]
) -> Shock:
    """Region loses fractions of its initial hashrate in ramps (start_min, duration_min, loss)."""

    def path(minutes: FloatArray) -> FloatArray:
        out = np.ones((minutes.size, n_regions))
        lost = np.zeros(minutes.size)
        for start, duration, loss in steps:
            lost += loss * np.clip((minutes - start) / max(duration, 1e-9), 0.0, 1.0)
        out[:, region] = np.maximum(1.0 - lost, 0.0)
        return out

    return path


def factor_for_drop(share: float, drop: float) -> float:
    """Hashrate factor f that takes a region from `share` to `share − drop` (others unchanged)."""
    target = share - drop
    # target = s·f / (1 − s + s·f)  ⇒  f = target·(1 − s) / (s·(1 − target))
    return target * (1.0 - share) / (share * (1.0 - target))


def simulate_shares(
    shares0: FloatArray,
    shock: Shock,
    *,
    minutes: int,
    replicates: int,
    world: World,
    rng: np.random.Generator,
    chunk_min: int = DAY_MIN,
    aggregates: Sequence[Sequence[int]] = (),
) -> Iterator[tuple[FloatArray, FloatArray, FloatArray]]:
    """Yield (t_s (T,), share (T, B, R + A), se (T, B, R + A)) chunk by chunk over `minutes`
    minutes; the A extra series sum the regions each aggregate lists (a country made of
    subdivisions).

    The first window_min − 1 minutes only fill the window and are not yielded.
    """
    shares0 = np.asarray(shares0, dtype=np.float64) / float(np.sum(shares0))
    n_regions = shares0.size
    rho = float(np.exp(-1.0 / world.noise_tau_min))
    noise_sd = world.noise_scale / np.sqrt(shares0)
    state = rng.normal(size=(replicates, n_regions)) * noise_sd
    carry = np.zeros((0, replicates, n_regions))
    for chunk_start in range(0, minutes, chunk_min):
        n = min(chunk_min, minutes - chunk_start)
        minute_idx = np.arange(chunk_start, chunk_start + n, dtype=np.float64)
        innovations = rng.normal(size=(n, replicates, n_regions)) * noise_sd
        innovations *= np.sqrt(1.0 - rho * rho)
        noise = np.empty((n, replicates, n_regions))
        for i in range(n):
            state = rho * state + innovations[i]
            noise[i] = state
        hashrate = shares0 * shock(minute_idx)[:, None, :] * np.maximum(1.0 + noise, 0.0)
        counts = rng.poisson(world.rate_per_s * MINUTE_S * hashrate).astype(np.float64)
        series = np.concatenate([carry, counts])
        cumulative = np.concatenate([np.zeros((1, *series.shape[1:])), np.cumsum(series, 0)])
        window = world.window_min
        in_window = cumulative[window:] - cumulative[:-window]
        carry = series[-(window - 1) :] if window > 1 else series[:0]
        first_minute = chunk_start + n - in_window.shape[0]
        t = (np.arange(in_window.shape[0]) + first_minute) * MINUTE_S
        total = in_window.sum(axis=2, keepdims=True)
        if aggregates:
            summed = [in_window[:, :, list(members)].sum(axis=2) for members in aggregates]
            in_window = np.concatenate([in_window, np.stack(summed, axis=2)], axis=2)
        share = in_window / total
        var = (np.square(1.0 - share) * in_window + np.square(share) * (total - in_window)) / (
            total * total
        )
        yield t, share, np.sqrt(var)


@dataclass(frozen=True)
class Events:
    """Alerts the engine raised: per event the time, series index, direction (±1) and start."""

    fire_t: FloatArray
    fire_series: npt.NDArray[np.int64]
    fire_direction: FloatArray
    fire_started: FloatArray
    resolve_t: FloatArray
    resolve_series: npt.NDArray[np.int64]
    resolve_recovered: npt.NDArray[np.bool_]
    active_at_end: npt.NDArray[np.bool_]


def run_engine(
    params: ShiftParams,
    chunks: Iterable[tuple[FloatArray, FloatArray, FloatArray]],
    parent: Sequence[int] | None = None,
) -> Events:
    """Run the detection rule over every (replicate, region) series of the simulated chunks.

    With `parent` (per region of one map: the index of the country a subdivision lies in, or
    −1), each replicate is one map whose regions mirror each other (shares sum to one);
    without, every series stands alone.
    """
    engine: ShiftEngine | None = None
    fires: list[tuple[float, int, float, float]] = []
    resolves: list[tuple[float, int, bool]] = []
    for t_chunk, share, se in chunks:
        flat_share = share.reshape(share.shape[0], -1)
        flat_se = se.reshape(se.shape[0], -1)
        if engine is None:
            engine = ShiftEngine(flat_share.shape[1], params)
            if parent is not None:
                engine.set_structure(*map_structure(parent, share.shape[1]))
        for i, t in enumerate(t_chunk.tolist()):
            events = engine.step(t, flat_share[i], flat_se[i])
            for j in events.fired.tolist():
                fires.append((t, j, float(engine.direction[j]), float(engine.started_t[j])))
            for j, recovered in zip(
                events.resolved.tolist(), events.recovered.tolist(), strict=True
            ):
                resolves.append((t, j, bool(recovered)))
    if engine is None:
        raise ValueError("no simulated data")
    fire_arr = np.array(fires, dtype=np.float64).reshape(-1, 4)
    resolve_arr = np.array(resolves, dtype=np.float64).reshape(-1, 3)
    return Events(
        fire_t=fire_arr[:, 0],
        fire_series=fire_arr[:, 1].astype(np.int64),
        fire_direction=fire_arr[:, 2],
        fire_started=fire_arr[:, 3],
        resolve_t=resolve_arr[:, 0],
        resolve_series=resolve_arr[:, 1].astype(np.int64),
        resolve_recovered=resolve_arr[:, 2].astype(bool),
        active_at_end=engine.direction != 0.0,
    )


def map_structure(
    parent: Sequence[int], replicates: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Group, parent and subdivision flag of every flattened (replicate, region) series."""
    regions = len(parent)
    local = np.asarray(parent, dtype=np.int64)
    offsets = np.repeat(np.arange(replicates) * regions, regions)
    tiled = np.tile(local, replicates)
    return (np.repeat(np.arange(replicates), regions), np.where(tiled >= 0, tiled + offsets, -1),
            tiled >= 0)


# ---- scenarios -------------------------------------------------------------------------------


def false_alarms(
    params: ShiftParams,
    *,
    weeks: int,
    world: World,
    seed: int,
    shares: dict[str, float] = JAN_2022,
    chunks: list[tuple[FloatArray, FloatArray, FloatArray]] | None = None,
) -> dict[str, float]:
    """Alerts per simulated map-week with no shock at all (every alert is false)."""
    shares0 = np.array(list(shares.values()))
    if chunks is None:
        chunks = list(
            simulate_shares(
                shares0,
                no_shock(shares0.size),
                minutes=WEEK_MIN,
                replicates=weeks,
                world=world,
                rng=np.random.default_rng(seed),
            )
        )
    events = run_engine(params, chunks)
    count = int(events.fire_t.size)
    per_region = np.bincount(events.fire_series % shares0.size, minlength=shares0.size)
    return {
        "map_weeks": float(weeks),
        "regions": float(shares0.size),
        "false_alarms": float(count),
        "false_alarms_per_week": count / weeks,
        **{f"false_alarms_{r}": float(c) for r, c in zip(shares, per_region.tolist(), strict=True)},
    }


@dataclass(frozen=True)
class ShockResult:
    """Detection of one shock over many replicates (delays in minutes from the shock's start).

    `false_alarms_*`: alerts before the shock began (all false). `secondary_alerts_per_replicate`:
    alerts on other regions after the shock (their shares really moved, since shares sum to 1).
    `started_error_min_median`: the alert's started_at minus the true start.
    """

    scenario: str
    region: str
    replicates: int
    detected: int
    missed: int
    delay_min_median: float | None
    delay_min_p95: float | None
    delay_min_max: float | None
    started_error_min_median: float | None
    false_alarms_before_shock: int | None
    false_alarms_per_week_before_shock: float | None
    secondary_alerts_per_replicate: float | None
    resolved: int
    resolved_new_level: int
    resolve_min_median: float | None


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def evaluate_episode(
    events: Events,
    *,
    scenario: str,
    region: str,
    region_index: int,
    n_regions: int,
    replicates: int,
    start_min: float,
    horizon_min: float,
    direction: float = -1.0,
) -> ShockResult:
    """First alert on the region in `direction` within [start, start + horizon], per replicate,
    and the resolution of that episode."""
    start_t = start_min * MINUTE_S
    end_t = (start_min + horizon_min) * MINUTE_S
    delays: list[float] = []
    started_errors: list[float] = []
    resolve_delays: list[float] = []
    resolved = new_level = 0
    for rep in range(replicates):
        series = rep * n_regions + region_index
        mine = (
            (events.fire_series == series)
            & (events.fire_direction == direction)
            & (events.fire_t >= start_t)
            & (events.fire_t <= end_t)
        )
        if not mine.any():
            continue
        first = int(np.flatnonzero(mine)[0])
        detected_t = float(events.fire_t[first])
        delays.append((detected_t - start_t) / MINUTE_S)
        started_errors.append((float(events.fire_started[first]) - start_t) / MINUTE_S)
        later = (events.resolve_series == series) & (events.resolve_t > detected_t)
        if later.any():
            k = int(np.flatnonzero(later)[0])
            resolved += 1
            new_level += int(not events.resolve_recovered[k])
            resolve_delays.append((float(events.resolve_t[k]) - detected_t) / MINUTE_S)
    before = int((events.fire_t < start_t).sum())
    after_elsewhere = (events.fire_t >= start_t) & (events.fire_series % n_regions != region_index)
    return ShockResult(
        scenario=scenario,
        region=region,
        replicates=replicates,
        detected=len(delays),
        missed=replicates - len(delays),
        delay_min_median=_quantile(delays, 0.5),
        delay_min_p95=_quantile(delays, 0.95),
        delay_min_max=max(delays) if delays else None,
        started_error_min_median=_quantile(started_errors, 0.5),
        false_alarms_before_shock=before,
        false_alarms_per_week_before_shock=before / (replicates * start_min / WEEK_MIN),
        secondary_alerts_per_replicate=float(after_elsewhere.sum()) / replicates,
        resolved=resolved,
        resolved_new_level=new_level,
        resolve_min_median=_quantile(resolve_delays, 0.5),
    )


def drop_scenario(
    params: ShiftParams,
    *,
    scenario: str,
    region: str,
    new_share: float,
    ramp_min: float,
    replicates: int,
    world: World,
    seed: int,
    shares: dict[str, float] = JAN_2022,
    lead_min: float = 12 * 60.0,
    horizon_min: float = 180.0,
    recover_after_min: float | None = None,
) -> tuple[ShockResult, Events]:
    """A region's share falls from its map value to `new_share` over `ramp_min` minutes (0 = a
    step) after `lead_min` quiet minutes; optionally its hashrate comes back later (a step)."""
    names = list(shares)
    shares0 = np.array([shares[r] for r in names])
    index = names.index(region)
    factor = factor_for_drop(shares[region] / 100.0, shares[region] / 100.0 - new_share)
    drop = ramp_shock(shares0.size, index, lead_min, ramp_min, factor)
    shock = drop
    if recover_after_min is not None:
        back_at = lead_min + recover_after_min

        def shock(minutes: FloatArray) -> FloatArray:
            out = drop(minutes)
            out[minutes >= back_at, index] = 1.0
            return out

    total_min = int(lead_min + ramp_min + horizon_min + 4 * 60)
    chunks = simulate_shares(
        shares0,
        shock,
        minutes=total_min,
        replicates=replicates,
        world=world,
        rng=np.random.default_rng(seed),
    )
    events = run_engine(params, chunks)
    result = evaluate_episode(
        events,
        scenario=scenario,
        region=region,
        region_index=index,
        n_regions=shares0.size,
        replicates=replicates,
        start_min=lead_min,
        horizon_min=ramp_min + horizon_min,
    )
    return result, events


def ten_point_drop(
    params: ShiftParams, region: str, *, replicates: int, world: World, seed: int
) -> ShockResult:
    """A region of the Jan 2022 map instantly loses 10 points of share (its hashers cut off)."""
    share = JAN_2022[region] / 100.0
    result, _ = drop_scenario(
        params,
        scenario="10-point step drop",
        region=region,
        new_share=share - 0.10,
        ramp_min=0.0,
        horizon_min=120.0,
        replicates=replicates,
        world=world,
        seed=seed,
    )
    return result


def kazakhstan_2022(
    params: ShiftParams, *, replicates: int, world: World, seed: int
) -> ShockResult:
    """5 Jan 2022: Kazakhstan's internet shut down, its share ≈ 13 % → ≈ 1.5 % within an hour."""
    result, _ = drop_scenario(
        params,
        scenario="KZ shutdown Jan 2022: 13.2% -> 1.5% in 60 min",
        region="KZ",
        new_share=0.015,
        ramp_min=60.0,
        replicates=replicates,
        world=world,
        seed=seed,
    )
    return result


def ramp_sweep(
    params: ShiftParams,
    ramps_min: Sequence[float],
    *,
    replicates: int,
    world: World,
    seed: int,
) -> list[ShockResult]:
    """The US losing 10 points of share over ramps of growing length: what "sudden" means here."""
    share = JAN_2022["US"] / 100.0
    return [
        drop_scenario(
            params,
            scenario=f"US -10 pp over {ramp:.0f} min",
            region="US",
            new_share=share - 0.10,
            ramp_min=ramp,
            horizon_min=720.0,
            replicates=replicates,
            world=world,
            seed=seed + i,
        )[0]
        for i, ramp in enumerate(ramps_min)
    ]


# China's ban, May–July 2021, as province-level losses of CN's Apr 2021 hashrate. Timing and sizes
# are a stylised reading of the public reporting (Inner Mongolia first, then Xinjiang, Sichuan and
# Yunnan in June, the rest dwindling), not measured data: (start day, duration h, fraction lost).
CHINA_2021_STEPS = (
    ("Inner Mongolia", 3.0, 24.0, 0.17),
    ("Xinjiang", 14.0, 36.0, 0.35),
    ("Sichuan", 24.0, 48.0, 0.20),
    ("Yunnan", 26.5, 24.0, 0.12),
    ("the rest", 28.0, 14 * 24.0, 0.16),
)


def china_2021(
    params: ShiftParams,
    *,
    replicates: int,
    world: World,
    seed: int,
    steps: Sequence[tuple[str, float, float, float]] = CHINA_2021_STEPS,
) -> list[ShockResult]:
    """CN 46 % → 0 over six weeks in province-sized ramps; detection per ramp (alerts up to
    12 h after a ramp ends count for it)."""
    ramps = [(day * DAY_MIN, hours * 60.0, loss) for _, day, hours, loss in steps]
    names = list(APR_2021)
    index = names.index("CN")
    shares0 = np.array(list(APR_2021.values()))
    chunks = simulate_shares(
        shares0,
        staircase_shock(shares0.size, index, ramps),
        minutes=int(max(s + d for s, d, _ in ramps) + DAY_MIN),
        replicates=replicates,
        world=world,
        rng=np.random.default_rng(seed),
    )
    events = run_engine(params, chunks)
    # Alerts before a later ramp or on other regions are not false here (CN keeps falling and
    # everyone else's share keeps rising), so those two columns do not apply.
    return [
        replace(
            evaluate_episode(
                events,
                scenario=f"China 2021: {label} ({loss:.0%} of CN over {hours:.0f} h)",
                region="CN",
                region_index=index,
                n_regions=shares0.size,
                replicates=replicates,
                start_min=start,
                horizon_min=duration + 12 * 60.0,
            ),
            false_alarms_before_shock=None,
            false_alarms_per_week_before_shock=None,
            secondary_alerts_per_replicate=None,
        )
        for (label, _, hours, loss), (start, duration, _) in zip(steps, ramps, strict=True)
    ]


# ---- the script ------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def calibration_grid(
    base: ShiftParams, *, weeks: int, world: World, seed: int
) -> list[dict[str, float | None]]:
    """False alarms per map-week (no shock) and the US 10-point step's delay over a (k, h) grid."""
    shares0 = np.array(list(JAN_2022.values()))
    chunks = list(
        simulate_shares(
            shares0,
            no_shock(shares0.size),
            minutes=WEEK_MIN,
            replicates=weeks,
            world=world,
            rng=np.random.default_rng(seed),
        )
    )
    rows: list[dict[str, float | None]] = []
    for k in (2.5, 3.0, 3.5, 4.0):
        for h in (6.0, 8.0, 10.0, 12.0, 15.0, 20.0):
            params = replace(base, k=k, h=h)
            fa = false_alarms(params, weeks=weeks, world=world, seed=seed, chunks=chunks)
            drop = ten_point_drop(params, "US", replicates=100, world=world, seed=seed + 1)
            rows.append(
                {
                    "k": k,
                    "h": h,
                    "false_alarms_per_week": fa["false_alarms_per_week"],
                    "us_step_delay_min_median": drop.delay_min_median,
                    "us_step_delay_min_max": drop.delay_min_max,
                    "us_step_missed": float(drop.missed),
                }
            )
            print(
                f"  k={k:.1f} h={h:4.0f}  FA/week={fa['false_alarms_per_week']:.3f}  "
                f"US -10pp step: delay median {_fmt(drop.delay_min_median)} "
                f"max {_fmt(drop.delay_min_max)} min, missed {drop.missed}"
            )
    return rows


def _print_shocks(results: Sequence[ShockResult]) -> None:
    print(
        f"  {'scenario':52s} {'reg':3s} {'n':>4s} {'miss':>4s} {'med':>6s} {'p95':>6s} "
        f"{'max':>6s} {'start':>6s} {'FA/wk':>6s} {'2nd':>5s} {'resolv':>6s} {'newlvl':>6s} "
        f"{'res med':>7s}"
    )
    for r in results:
        print(
            f"  {r.scenario[:52]:52s} {r.region:3s} {r.replicates:4d} {r.missed:4d} "
            f"{_fmt(r.delay_min_median):>6s} {_fmt(r.delay_min_p95):>6s} "
            f"{_fmt(r.delay_min_max):>6s} {_fmt(r.started_error_min_median):>6s} "
            f"{_fmt(r.false_alarms_per_week_before_shock, 2):>6s} "
            f"{_fmt(r.secondary_alerts_per_replicate, 2):>5s} {r.resolved:6d} "
            f"{r.resolved_new_level:6d} {_fmt(r.resolve_min_median):>7s}"
        )


def _false_alarm_table(params: ShiftParams, worlds: dict[str, World], weeks: int, seed: int
                       ) -> dict[str, dict[str, float]]:
    """False alarms per map-week with no shock, per simulated world."""
    print(
        f"False alarms with no shock: Jan 2022 map ({len(JAN_2022)} regions), "
        f"{weeks} simulated weeks at one update a minute"
    )
    fa_rows = {}
    for i, (name, world) in enumerate(worlds.items()):
        fa = false_alarms(params, weeks=weeks, world=world, seed=seed + i)
        fa_rows[name] = fa
        print(
            f"  {name:48s} {fa['false_alarms']:4.0f} alarms = "
            f"{fa['false_alarms_per_week']:.3f} per map-week"
        )
    return fa_rows



def _shock_tables(params: ShiftParams, worlds: dict[str, World], n: int, seed0: int
                  ) -> list[dict[str, object]]:
    """Every shock case: detection delays, then the ramp sweep and China's 2021 ban."""
    base = next(iter(worlds.values()))
    seed = seed0 + 100
    shocks = [ten_point_drop(params, r, replicates=n, world=base, seed=seed + i)
              for i, r in enumerate(("US", "CN", "KZ"))]  # fmt: skip
    variants = {
        "10-point step drop, rich sample": worlds[list(worlds)[1]],
        "10-point step drop, real noise 1.5x floor": worlds[list(worlds)[2]],
        "10-point step drop, real noise 2x floor": worlds[list(worlds)[3]],
    }
    for i, (label, world) in enumerate(variants.items()):
        result = ten_point_drop(params, "US", replicates=n, world=world, seed=seed + 10 + i)
        shocks.append(replace(result, scenario=label))
    shocks.append(kazakhstan_2022(params, replicates=n, world=base, seed=seed + 20))
    back, _ = drop_scenario(
        params,
        scenario="KZ -10 pp for 20 min, then back",
        region="KZ",
        new_share=JAN_2022["KZ"] / 100.0 - 0.10,
        ramp_min=0.0,
        horizon_min=20.0,
        recover_after_min=20.0,
        replicates=n,
        world=base,
        seed=seed + 21,
    )
    shocks.append(back)
    print("\nShocks (thin sample, real noise = floor unless named; minutes from the shock's start)")
    print("  med/p95/max: detection delay; start: started_at − true start; FA/wk: false alarms")
    print("  before the shock; 2nd: alerts on other regions per replicate; resolv/newlvl: episodes")
    print("  resolved / of them by a new level; res med: detection → resolution")
    _print_shocks(shocks)

    print("\nWhat 'sudden' means: the US losing 10 points of share over ramps of growing length")
    sweep = ramp_sweep(
        params, (0.0, 30.0, 60.0, 180.0, 360.0, 720.0), replicates=max(n // 4, 10), world=base,
        seed=seed + 30,
    )  # fmt: skip
    _print_shocks(sweep)

    print("\nChina's ban 2021, Apr 2021 map, stylised province ramps (CHINA_2021_STEPS)")
    china = china_2021(params, replicates=max(n // 10, 5), world=base, seed=seed + 40)
    _print_shocks(china)
    print("  ... the same losses if each province had gone dark within 3 h")
    fast = [(label, day, 3.0, loss) for label, day, _, loss in CHINA_2021_STEPS[:-1]]
    china_fast = china_2021(
        params, replicates=max(n // 10, 5), world=base, seed=seed + 41, steps=fast
    )
    _print_shocks(china_fast)
    china.extend(china_fast)
    return [asdict(r) for r in (*shocks, *sweep, *china)]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weeks", type=int, default=200, help="simulated map-weeks, no shock")
    parser.add_argument("--replicates", type=int, default=200, help="replicates per shock")
    parser.add_argument("--seed", type=int, default=20220105)
    parser.add_argument("--grid", action="store_true", help="also run the (k, h) calibration grid")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    params = ShiftParams()
    started = time.perf_counter()
    output: dict[str, object] = {"params": asdict(params), "args": vars(args) | {"out": None}}

    base = World()
    worlds = {
        "thin sample (20 shares/s), real noise = floor": base,
        "rich sample (2000 shares/s), real noise = floor": World(rate_per_s=2000.0),
        "thin sample, real noise 1.5x floor": World(noise_scale=1.5 * params.noise_scale),
        "thin sample, real noise 2x floor": World(noise_scale=2.0 * params.noise_scale),
        "thin sample, real noise correlated 2 h": World(noise_tau_min=120.0),
    }
    output["worlds"] = {name: asdict(w) for name, w in worlds.items()}
    output["false_alarms"] = _false_alarm_table(params, worlds, args.weeks, args.seed)
    output["shocks"] = _shock_tables(params, worlds, args.replicates, args.seed)

    if args.grid:
        print("\nCalibration grid (thin sample, real noise = floor)")
        output["grid"] = calibration_grid(params, weeks=args.weeks, world=base, seed=args.seed)
    output["elapsed_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "shift_detection.json"
    path.write_text(json.dumps(output, indent=2, allow_nan=False) + "\n")
    print(f"\nwrote {path} in {output['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
