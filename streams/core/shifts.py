"""Sudden regional shifts: a two-sided CUSUM on each region's share against its own slow baseline.

METHOD.md §7. Every update (one a minute) a region's share is compared with an EWMA baseline
(half-life 6 h). The residual is standardised by σ² = max(SE² + floor², V): SE is the share's own
sampling error; the floor is the real noise a share shows anyway (farms switching on and off,
hashers moving between pools), floor = noise_scale · √(b(1 − b)) — the binomial noise of
~1/noise_scale² ≈ 2000 independent units of hashrate — with b = max(baseline, min_share); V is the
residuals' own variance measured over the last day (EWMA, half-life 24 h, frozen while an alert
fires). V makes the false-alarm rate hold when the real noise is larger than the floor assumes
(detection then slows instead of alarms multiplying). A two-sided CUSUM accumulates residuals
beyond a drift k and fires at a threshold h. Baseline and V start as running means, so a cold start
neither anchors the baseline on one noisy value nor trusts the prior noise for a day.

Calibration (bench/shift_detection.py, numbers in bench/results/shift_detection.json): inputs are
shares over a 300 s sliding window published every 60 s, so successive residuals overlap, and real
noise wanders for tens of minutes; textbook ARL tables for independent residuals do not apply.
k = 3.5, h = 8 were chosen on a simulated (k, h) grid of a 12-region map (Jan 2022 shares, real
noise = floor with 30 min correlation, 200 simulated weeks each): no false alarm at all (0.09 per
map-week with a 100x richer sample, 0.12 and 0.17 when the real noise is 1.5x and 2x the floor),
while a 10-point step drop in a region holding >= 10 % is flagged in 4–8 min (the window alone
takes 5 min to show all of it). k = 2.5–3 at the same delay gave 0.1–6 alarms per week; h >= 12
pushed the slowest detections past 10 min. Residuals are capped at ±z_cap = 7, so one absurd window
adds at most z_cap − k = 3.5: it takes three of them in a row to fire. Shifts spread over more than
~3 h stay within the baseline's reach and are mostly not flagged: this detects sudden shifts, not
trends (China's 2021 exodus, province by province over days, goes unflagged; see the bench).

An alert's baseline is frozen while it fires. It resolves (same id, state "resolved") when either
- "recovered": the share stays within ±band·σ of the frozen baseline for dwell_s, or
- "new_level": the alert has fired for persist_s and the share has stayed within ±band·σ of its
  own fast EWMA (half-life level_half_life_s) for dwell_s; that level becomes the new baseline
  (if the settled level lies within ±band·σ of the old baseline, this counts as "recovered").
Either way the CUSUM restarts from zero, so a later move of the same region is a new episode.

The rule runs vectorised over arrays of independent series (`ShiftEngine`, used by simulations
with thousands of series); `ShiftDetector` maps region codes onto it and writes the alerts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

STATE_VERSION = 1
ALERT_TYPE = "regional_shift"


@dataclass(frozen=True)
class ShiftParams:
    """Tuning of the detector; defaults calibrated for 300 s windows updated every 60 s.

    k, h, z_cap are in units of σ. Times in seconds, shares as fractions.
    """

    half_life_s: float = 6 * 3600.0
    k: float = 3.5
    h: float = 8.0
    z_cap: float = 7.0
    noise_scale: float = 0.022
    min_share: float = 0.01
    band: float = 2.0
    dwell_s: float = 1800.0
    persist_s: float = 3600.0
    level_half_life_s: float = 600.0
    noise_half_life_s: float = 24 * 3600.0
    min_interval_s: float = 50.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{field.name} must be finite and >= 0, got {value}")
        if min(self.half_life_s, self.level_half_life_s, self.noise_half_life_s) <= 0.0:
            raise ValueError("half-lives must be > 0")
        if self.z_cap <= self.k:
            raise ValueError(f"z_cap ({self.z_cap}) must exceed k ({self.k}) or nothing can fire")


@dataclass(frozen=True)
class StepEvents:
    """What one engine step did: which series fired (and which way) and which resolved."""

    accepted: bool
    fired: IntArray
    resolved: IntArray
    recovered: BoolArray  # per resolved series: True = back to baseline, False = new level


_ARRAY_FIELDS = (
    "baseline",
    "s_pos",
    "s_neg",
    "reset_pos_t",
    "reset_neg_t",
    "direction",
    "detected_t",
    "started_t",
    "score",
    "level",
    "steady_since",
    "near_since",
    "resid_var",
    "n_obs",
)


class ShiftEngine:
    """The detection rule over n independent series updated together (vectorised with numpy).

    `direction` holds 0 (quiet), +1 (an up alert fires) or −1 (a down alert fires); NaN baseline
    means the series has not been seen yet; NaN near_since means "not near the baseline now".
    """

    def __init__(self, n: int, params: ShiftParams | None = None) -> None:
        self.params = params or ShiftParams()
        self.last_t: float | None = None
        nan = np.full(n, np.nan)
        self.baseline = nan.copy()
        self.s_pos = np.zeros(n)
        self.s_neg = np.zeros(n)
        self.reset_pos_t = nan.copy()
        self.reset_neg_t = nan.copy()
        self.direction = np.zeros(n)
        self.detected_t = nan.copy()
        self.started_t = nan.copy()
        self.score = np.zeros(n)
        self.level = nan.copy()
        self.steady_since = nan.copy()
        self.near_since = nan.copy()
        self.resid_var = nan.copy()
        self.n_obs = np.zeros(n)

    @property
    def size(self) -> int:
        return int(self.baseline.size)

    def add_series(self, count: int) -> None:
        """Append `count` unseen series (a region met for the first time)."""
        for name in _ARRAY_FIELDS:
            fill = 0.0 if name in ("s_pos", "s_neg", "direction", "score", "n_obs") else np.nan
            setattr(self, name, np.concatenate([getattr(self, name), np.full(count, fill)]))

    def prior_var(self, se: FloatArray) -> FloatArray:
        """Residual variance expected a priori: the share's own SE² plus the real-noise floor²."""
        b = np.maximum(np.nan_to_num(self.baseline, nan=0.0), self.params.min_share)
        floor_var = self.params.noise_scale**2 * b * (1.0 - np.minimum(b, 1.0))
        return np.square(se) + floor_var

    def accepts(self, t: float) -> bool:
        """False for an update closer than min_interval_s to the previous one (or older):
        k and h assume the calibrated cadence, faster updates would fire on noise."""
        return self.last_t is None or t - self.last_t >= max(self.params.min_interval_s, 1e-9)

    def step(self, t: float, share: FloatArray, se: FloatArray) -> StepEvents:
        """Feed every series its share and SE at time t (ignored unless `accepts(t)`)."""
        p = self.params
        if not self.accepts(t):
            empty = np.zeros(0, dtype=np.int64)
            return StepEvents(False, empty, empty, np.zeros(0, dtype=bool))
        dt = 0.0 if self.last_t is None else t - self.last_t
        self.last_t = t

        unseen = np.isnan(self.baseline)
        self.baseline[unseen] = share[unseen]
        self.reset_pos_t[unseen] = t
        self.reset_neg_t[unseen] = t
        prior = self.prior_var(se)
        self.resid_var[unseen] = prior[unseen]

        sigma = np.sqrt(np.maximum(prior, self.resid_var))
        deviation = share - self.baseline
        z = np.clip(deviation / sigma, -p.z_cap, p.z_cap)
        quiet = self.direction == 0
        self.s_pos = np.where(quiet, np.maximum(0.0, self.s_pos + z - p.k), self.s_pos)
        self.s_neg = np.where(quiet, np.maximum(0.0, self.s_neg - z - p.k), self.s_neg)
        self.reset_pos_t = np.where(quiet & (self.s_pos == 0.0), t, self.reset_pos_t)
        self.reset_neg_t = np.where(quiet & (self.s_neg == 0.0), t, self.reset_neg_t)
        eligible = np.maximum(self.baseline, share) >= p.min_share
        fire_up = quiet & eligible & (self.s_pos > p.h) & (self.s_pos >= self.s_neg)
        fire_down = quiet & eligible & (self.s_neg > p.h) & ~fire_up
        fired = fire_up | fire_down

        # Running means while young (weight 1/n), EWMAs after: a cold start must not leave the
        # baseline at one noisy first value, nor the noise estimate at its prior for a day.
        self.n_obs += 1.0
        young = 1.0 / self.n_obs
        alpha = np.maximum(1.0 - 2.0 ** (-dt / p.half_life_s), young)
        adapt = quiet & ~fired
        self.baseline[adapt] += (alpha * deviation)[adapt]
        alpha_noise = np.maximum(1.0 - 2.0 ** (-dt / p.noise_half_life_s), young)
        # Residuals beyond k count as k: a shift building up must not hide itself by raising V.
        noise_sq = np.square(np.clip(z, -p.k, p.k) * sigma)
        self.resid_var[adapt] += (alpha_noise * (noise_sq - self.resid_var))[adapt]

        firing = ~quiet
        alpha_level = 1.0 - 2.0 ** (-dt / p.level_half_life_s)
        self.level[firing] += alpha_level * (share - self.level)[firing]
        half_band = p.band * sigma
        unsteady = firing & (np.abs(share - self.level) > half_band)
        self.steady_since[unsteady] = t
        near = np.abs(deviation) <= half_band
        self.near_since[firing & ~near] = np.nan
        self.near_since[firing & near & np.isnan(self.near_since)] = t
        settled = (
            firing & (t - self.detected_t >= p.persist_s) & (t - self.steady_since >= p.dwell_s)
        )
        # A level that settled back within the band of the baseline is a recovery too.
        level_near = np.abs(self.level - self.baseline) <= half_band
        recovered = firing & ((near & (t - self.near_since >= p.dwell_s)) | (settled & level_near))
        new_level = settled & ~recovered
        self.baseline[new_level] = self.level[new_level]
        resolved = recovered | new_level
        self.direction[resolved] = 0.0
        self.s_pos[resolved] = 0.0
        self.s_neg[resolved] = 0.0
        self.reset_pos_t[resolved] = t
        self.reset_neg_t[resolved] = t

        self.direction[fire_up] = 1.0
        self.direction[fire_down] = -1.0
        self.detected_t[fired] = t
        self.started_t[fire_up] = self.reset_pos_t[fire_up]
        self.started_t[fire_down] = self.reset_neg_t[fire_down]
        self.score[fire_up] = self.s_pos[fire_up]
        self.score[fire_down] = self.s_neg[fire_down]
        self.level[fired] = share[fired]
        self.steady_since[fired] = t
        self.near_since[fired] = np.nan

        resolved_idx = np.flatnonzero(resolved)
        return StepEvents(True, np.flatnonzero(fired), resolved_idx, recovered[resolved_idx])

    def to_state(self) -> dict[str, Any]:
        """JSON-able arrays (NaN as None)."""
        state: dict[str, Any] = {"last_t": self.last_t}
        for name in _ARRAY_FIELDS:
            values = getattr(self, name)
            state[name] = [None if math.isnan(v) else float(v) for v in values.tolist()]
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], params: ShiftParams) -> ShiftEngine:
        engine = cls(len(state["baseline"]), params)
        engine.last_t = None if state["last_t"] is None else float(state["last_t"])
        for name in _ARRAY_FIELDS:
            values = [np.nan if v is None else float(v) for v in state[name]]
            setattr(engine, name, np.array(values, dtype=np.float64))
        return engine


def _check_share(region: str, value: tuple[float, float]) -> tuple[float, float]:
    share, se = (float(value[0]), float(value[1]))
    if not (math.isfinite(share) and -1e-9 <= share <= 1.0 + 1e-9):
        raise ValueError(f"share of {region!r} must be within [0, 1], got {share}")
    if not (math.isfinite(se) and se >= 0.0):
        raise ValueError(f"SE of {region!r} must be finite and >= 0, got {se}")
    return min(max(share, 0.0), 1.0), se


class ShiftDetector:
    """Regional shift alerts (CONTRACTS.md `alerts`) from a stream of per-region shares.

    Feed `update(t, {region: (share, se)})` once a minute. A region tracked before but missing
    from a non-empty update counts as share 0 (its hashers vanished from the sample); an empty
    update is no information and changes nothing.
    """

    def __init__(self, params: ShiftParams | None = None) -> None:
        self.params = params or ShiftParams()
        self._engine = ShiftEngine(0, self.params)
        self._regions: list[str] = []
        self._index: dict[str, int] = {}
        self._alerts: dict[str, dict[str, Any]] = {}
        self._latest: dict[str, float] = {}

    def update(self, t: float, shares: Mapping[str, tuple[float, float]]) -> list[dict[str, Any]]:
        """Feed the shares at time t; returns the alerts that fired or resolved at t."""
        checked = {region: _check_share(region, value) for region, value in shares.items()}
        if not checked or not self._engine.accepts(float(t)):
            return []
        new_regions = [region for region in checked if region not in self._index]
        if new_regions:
            for region in new_regions:
                self._index[region] = len(self._regions)
                self._regions.append(region)
            self._engine.add_series(len(new_regions))
        share = np.zeros(len(self._regions))
        se = np.zeros(len(self._regions))
        for region, (value, error) in checked.items():
            share[self._index[region]] = value
            se[self._index[region]] = error
        events = self._engine.step(float(t), share, se)
        self._latest = {region: float(share[i]) for i, region in enumerate(self._regions)}
        emitted: list[dict[str, Any]] = []
        for i, recovered in zip(events.resolved.tolist(), events.recovered.tolist(), strict=True):
            region = self._regions[i]
            alert = self._alerts.pop(region)
            resolved = _with_share_after(alert, float(share[i]))
            resolved.update(
                state="resolved",
                resolved_at=float(t),
                resolution="recovered" if recovered else "new_level",
            )
            emitted.append(resolved)
        engine = self._engine
        for i in events.fired.tolist():
            region = self._regions[i]
            direction = "up" if engine.direction[i] > 0 else "down"
            detected_at = float(engine.detected_t[i])
            alert = {
                "type": ALERT_TYPE,
                "id": f"{ALERT_TYPE}:{region}:{direction}:{detected_at:.0f}",
                "region": region,
                "direction": direction,
                "detected_at": detected_at,
                "started_at": float(engine.started_t[i]),
                "share_before": float(engine.baseline[i]),
                "share_after": float(share[i]),
                "magnitude_pp": 0.0,
                "relative_change": None,
                "score": float(engine.score[i]),
                "state": "firing",
            }
            alert = _with_share_after(alert, float(share[i]))
            self._alerts[region] = alert
            emitted.append(dict(alert))
        return emitted

    def active(self) -> list[dict[str, Any]]:
        """Alerts firing now, with share_after and the size updated to the latest share."""
        return [
            _with_share_after(alert, self._latest.get(region, alert["share_after"]))
            for region, alert in sorted(self._alerts.items())
        ]

    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume after a restart, as plain JSON types."""
        return {
            "version": STATE_VERSION,
            "params": asdict(self.params),
            "regions": list(self._regions),
            "engine": self._engine.to_state(),
            "alerts": {region: dict(alert) for region, alert in self._alerts.items()},
            "latest": dict(self._latest),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ShiftDetector:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported shift detector state version {state.get('version')!r}")
        detector = cls(ShiftParams(**state["params"]))
        detector._regions = [str(r) for r in state["regions"]]
        detector._index = {region: i for i, region in enumerate(detector._regions)}
        detector._engine = ShiftEngine.from_state(state["engine"], detector.params)
        if detector._engine.size != len(detector._regions):
            raise ValueError("shift detector state: engine and region list differ in length")
        detector._alerts = {str(r): dict(a) for r, a in state["alerts"].items()}
        detector._latest = {str(r): float(v) for r, v in state["latest"].items()}
        return detector


def _with_share_after(alert: Mapping[str, Any], share_after: float) -> dict[str, Any]:
    before = float(alert["share_before"])
    result = dict(alert)
    result["share_after"] = share_after
    result["magnitude_pp"] = (share_after - before) * 100.0
    result["relative_change"] = (share_after - before) / before if before > 0.0 else None
    return result
