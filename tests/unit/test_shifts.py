"""Regional shift detection: contract shape, lifecycle, and quality on simulated shocks.

The simulated world (Poisson share counts over a 300 s sliding window at a 1-minute cadence, with
real noise that wanders for ~30 min) is bench/shift_detection.py's, so the benchmark and these
tests measure the same thing. Run with `-s` to see the measured figures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from bench.shift_detection import (
    JAN_2022,
    WEEK_MIN,
    ShockResult,
    World,
    drop_scenario,
    false_alarms,
    kazakhstan_2022,
    ramp_shock,
    simulate_shares,
)
from streams.core.shifts import ShiftDetector, ShiftParams

CONTRACT_FIELDS = {
    "type", "id", "region", "direction", "detected_at", "started_at", "share_before",
    "share_after", "magnitude_pp", "relative_change", "score", "state", "test", "mirrors",
}  # fmt: skip
SHOCK_MIN = 6 * 60  # the shock comes after six quiet hours


def _report(result: ShockResult) -> None:
    print(
        f"\n{result.scenario} [{result.region}]: {result.replicates} replicates, "
        f"missed {result.missed}, delay median {result.delay_min_median} / p95 "
        f"{result.delay_min_p95} / max {result.delay_min_max} min, false alarms before the "
        f"shock {result.false_alarms_before_shock}, resolved {result.resolved} "
        f"({result.resolved_new_level} by a new level)"
    )


def minute_shares(
    shares: dict[str, float], region: str, factor: float, *, minutes: int, seed: int
) -> Iterator[tuple[float, dict[str, tuple[float, float]]]]:
    """One simulated world: `region`'s hashrate × factor from SHOCK_MIN on, as detector input."""
    names = list(shares)
    chunks = simulate_shares(
        np.array(list(shares.values())),
        ramp_shock(len(names), names.index(region), SHOCK_MIN, 0.0, factor),
        minutes=minutes,
        replicates=1,
        world=World(),
        rng=np.random.default_rng(seed),
    )
    for t_chunk, share, se in chunks:
        for i, t in enumerate(t_chunk.tolist()):
            yield t, {r: (float(share[i, 0, j]), float(se[i, 0, j])) for j, r in enumerate(names)}


def steady(shares: dict[str, float]) -> dict[str, tuple[float, float]]:
    return {region: (value, 0.002) for region, value in shares.items()}


QUIET = {"US": 0.5, "CN": 0.3, "KZ": 0.2}


def warmed_up(detector: ShiftDetector, minutes: int = 120) -> float:
    """Feed QUIET for `minutes` minutes; returns the next update time."""
    for minute in range(minutes):
        assert detector.update(minute * 60.0, steady(QUIET)) == []
    return minutes * 60.0


# ---- the alert contract and lifecycle --------------------------------------------------------


def test_alert_has_the_contract_shape_and_resolves_with_the_same_id() -> None:
    kz = JAN_2022["KZ"] / 100.0
    factor = (kz - 0.10) * (1.0 - kz) / (kz * (1.0 - (kz - 0.10)))  # KZ's share −10 points
    detector = ShiftDetector()
    emitted = []
    for t, shares in minute_shares(JAN_2022, "KZ", factor, minutes=SHOCK_MIN + 240, seed=4):
        emitted.extend(detector.update(t, shares))
    shock_t = SHOCK_MIN * 60.0
    assert [a["state"] for a in emitted] == ["firing", "resolved"]
    firing, resolved = emitted
    assert set(firing) == CONTRACT_FIELDS
    assert firing["type"] == "regional_shift"
    assert firing["region"] == "KZ" and firing["direction"] == "down"
    assert shock_t < firing["detected_at"] <= shock_t + 600.0
    assert shock_t - 300.0 <= firing["started_at"] < firing["detected_at"]
    assert firing["share_before"] == pytest.approx(kz, abs=0.01)
    assert firing["share_after"] < firing["share_before"] - 0.03
    assert firing["magnitude_pp"] == pytest.approx(
        100.0 * (firing["share_after"] - firing["share_before"])
    )
    assert firing["relative_change"] == pytest.approx(
        firing["share_after"] / firing["share_before"] - 1.0
    )
    assert firing["score"] > ShiftParams().h
    json.dumps(emitted, allow_nan=False)

    assert set(resolved) == CONTRACT_FIELDS | {"resolved_at", "resolution"}
    assert resolved["id"] == firing["id"]
    assert resolved["resolution"] == "new_level"
    assert resolved["share_before"] == firing["share_before"]
    assert resolved["share_after"] == pytest.approx(kz - 0.10, abs=0.015)
    assert resolved["magnitude_pp"] == pytest.approx(-10.0, abs=1.5)
    assert detector.active() == []


def test_active_alert_follows_the_latest_share() -> None:
    detector = ShiftDetector()
    t = warmed_up(detector)
    fired = []
    for minute in range(6):
        fired += detector.update(t + minute * 60.0, steady({**QUIET, "KZ": 0.05}))
    assert [a["direction"] for a in fired] == ["down"]
    detector.update(t + 360.0, steady({**QUIET, "KZ": 0.02}))
    (active,) = detector.active()
    assert active["id"] == fired[0]["id"] and active["state"] == "firing"
    before = fired[0]["share_before"]  # the baseline, frozen when the alert fired
    assert before == pytest.approx(0.2, abs=0.005)
    assert active["share_before"] == before
    assert active["share_after"] == pytest.approx(0.02)
    assert active["magnitude_pp"] == pytest.approx(100.0 * (0.02 - before))
    assert active["relative_change"] == pytest.approx(0.02 / before - 1.0)


def test_short_outage_resolves_as_recovered() -> None:
    detector = ShiftDetector()
    t = warmed_up(detector)
    emitted = []
    for minute in range(90):
        kz = 0.08 if minute < 15 else 0.2
        emitted += detector.update(t + minute * 60.0, steady({**QUIET, "KZ": kz}))
    assert [a["state"] for a in emitted] == ["firing", "resolved"]
    assert emitted[1]["resolution"] == "recovered"
    assert emitted[1]["id"] == emitted[0]["id"]
    back_at = t + 15 * 60.0
    assert emitted[1]["resolved_at"] - back_at == pytest.approx(ShiftParams().dwell_s)


def test_rise_fires_an_up_alert() -> None:
    detector = ShiftDetector()
    t = warmed_up(detector)
    emitted = []
    for minute in range(10):
        emitted += detector.update(t + minute * 60.0, steady({"US": 0.4, "CN": 0.3, "KZ": 0.3}))
    directions = {a["region"]: a["direction"] for a in emitted}
    assert directions == {"US": "down", "KZ": "up"}


def test_region_missing_from_an_update_counts_as_zero() -> None:
    detector = ShiftDetector()
    t = warmed_up(detector)
    emitted = []
    for minute in range(5):
        emitted += detector.update(t + minute * 60.0, steady({"US": 0.6, "CN": 0.4}))
    kz = [a for a in emitted if a["region"] == "KZ"]
    assert len(kz) == 1 and kz[0]["direction"] == "down" and kz[0]["share_after"] == 0.0
    assert detector.update(t + 600.0, {}) == []  # an empty update is no information


def test_single_glitchy_windows_do_not_fire_but_a_sustained_drop_does() -> None:
    # Capped residuals: one or two absurd windows add at most 2 × (z_cap − k) = 7 < h = 8.
    for glitches, fires in ((1, False), (2, False), (3, True)):
        detector = ShiftDetector()
        t = warmed_up(detector)
        emitted = []
        for minute in range(30):
            kz = 0.0 if minute < glitches else 0.2
            emitted += detector.update(t + minute * 60.0, steady({**QUIET, "KZ": kz}))
        assert any(a["state"] == "firing" for a in emitted) == fires, glitches


def test_tiny_regions_do_not_alert_until_they_matter() -> None:
    params = ShiftParams(min_share=0.05)
    detector = ShiftDetector(params)
    base = {"US": 0.58, "CN": 0.4, "NO": 0.02}
    for minute in range(120):
        detector.update(minute * 60.0, steady(base))
    t = 120 * 60.0
    quiet = []
    for minute in range(60):  # +2 points = +100 %: z ≈ 4, but 4 % < min_share
        quiet += detector.update(t + minute * 60.0, steady({**base, "NO": 0.04}))
    assert [a for a in quiet if a["region"] == "NO"] == []
    loud = []
    for minute in range(60, 70):  # 8 % is above min_share: the rise is news now
        loud += detector.update(t + minute * 60.0, steady({**base, "NO": 0.08}))
    assert [(a["region"], a["direction"]) for a in loud] == [("NO", "up")]


def test_updates_faster_than_the_calibrated_cadence_are_ignored() -> None:
    detector = ShiftDetector()
    t = warmed_up(detector, minutes=10)
    before = detector.to_state()
    assert detector.update(t - 30.0, steady({**QUIET, "KZ": 0.0})) == []
    assert detector.update(t - 50.0, steady({**QUIET, "KZ": 0.0, "RU": 0.1})) == []
    assert detector.to_state() == before


def test_state_round_trip_continues_identically() -> None:
    kz = JAN_2022["KZ"] / 100.0
    stream = list(minute_shares(JAN_2022, "KZ", 0.2, minutes=SHOCK_MIN + 120, seed=9))
    cut = SHOCK_MIN + 20  # mid-episode: the alert is firing
    original = ShiftDetector()
    for t, shares in stream[:cut]:
        original.update(t, shares)
    assert [a["region"] for a in original.active()] == ["KZ"]
    assert original.active()[0]["share_before"] == pytest.approx(kz, abs=0.01)
    restored = ShiftDetector.from_state(json.loads(json.dumps(original.to_state())))
    assert restored.active() == original.active()
    for t, shares in stream[cut:]:
        assert restored.update(t, shares) == original.update(t, shares)
    assert restored.to_state() == original.to_state()


def test_bad_inputs_are_named() -> None:
    detector = ShiftDetector()
    with pytest.raises(ValueError, match="share of 'US'"):
        detector.update(0.0, {"US": (1.5, 0.01)})
    with pytest.raises(ValueError, match="SE of 'US'"):
        detector.update(0.0, {"US": (0.5, -0.01)})
    with pytest.raises(ValueError, match="z_cap"):
        ShiftParams(k=4.0, z_cap=3.0)
    with pytest.raises(ValueError, match="half_life_s"):
        ShiftParams(half_life_s=float("nan"))
    with pytest.raises(ValueError, match="version"):
        ShiftDetector.from_state({"version": 99})


# ---- quality on simulated shocks -------------------------------------------------------------


def test_false_alarms_per_simulated_week() -> None:
    """No shock: every alert is false. Requirement < 1 per map-week; 100 map-weeks of the
    12-region Jan 2022 map (1.2 million region-minutes) must give fewer than 20 (0.2/week),
    which keeps the requirement even at the upper end of the Poisson uncertainty."""
    weeks = 100
    result = false_alarms(ShiftParams(), weeks=weeks, world=World(), seed=7)
    print(
        f"\nfalse alarms: {result['false_alarms']:.0f} in {weeks} map-weeks "
        f"({weeks * WEEK_MIN} updates of {len(JAN_2022)} regions) = "
        f"{result['false_alarms_per_week']:.3f} per week"
    )
    assert result["false_alarms"] < 0.2 * weeks


TEN_PERCENT_MAP = {**JAN_2022, "US": 34.32, "CA": 10.0}  # a region holding exactly 10 %


@pytest.mark.parametrize(
    ("shares", "region"),
    [(JAN_2022, "US"), (JAN_2022, "CN"), (JAN_2022, "KZ"), (TEN_PERCENT_MAP, "CA")],
)
def test_ten_point_drop_is_detected_within_ten_minutes(
    shares: dict[str, float], region: str
) -> None:
    assert sum(shares.values()) == pytest.approx(100.0)
    share = shares[region] / 100.0
    result, _ = drop_scenario(
        ShiftParams(),
        scenario="10-point step drop",
        region=region,
        new_share=share - 0.10,
        ramp_min=0.0,
        horizon_min=120.0,
        replicates=100,
        world=World(),
        seed=sum(map(ord, region)),
        shares=shares,
    )
    _report(result)
    assert result.missed == 0
    assert result.delay_min_max is not None and result.delay_min_max <= 10.0
    assert result.started_error_min_median is not None
    assert abs(result.started_error_min_median) <= 5.0
    assert result.resolved == result.replicates  # every episode resolves (to the new level)
    assert result.false_alarms_before_shock is not None
    assert result.false_alarms_before_shock <= 2  # 100 × 12 h quiet ≈ 7 map-weeks


def test_kazakhstan_shutdown_2022_is_detected_and_resolves() -> None:
    result = kazakhstan_2022(ShiftParams(), replicates=100, world=World(), seed=11)
    _report(result)
    assert result.missed == 0
    assert result.delay_min_max is not None and result.delay_min_max <= 60.0  # within the hour
    assert result.resolved == result.replicates
