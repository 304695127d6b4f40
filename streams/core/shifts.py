"""Regional shifts: a step test (two-sided CUSUM) and a trend test per region and subdivision.

METHOD.md §7, extended by issue #14. Every update (one a minute) each tracked series — every
country, and every subdivision once it holds ``min_subdivision_share`` — is tested twice:

* Step test: the share's residual against its own slow baseline (EWMA, half-life 6 h) is
  standardised by σ² = max(SE² + floor², V) and fed to a two-sided CUSUM (drift k, threshold h).
  SE is the share's sampling error; floor = noise_scale · √(b(1 − b)) is the real noise a share
  shows anyway (~1/noise_scale² ≈ 7000 independent units of hashrate), b = max(baseline,
  min_share). The floor is a prior that holds from the first update: a cold start needs no
  history to catch a drop in its first hour. The baseline moves by at most k·σ per update, and
  only by 1/n while young, so neither a drop nor a ramp can drag it along before the CUSUM fires.
* V, the measured noise, comes from differences at a lag (½ (s_t − s_{t−noise_lag_s})², each
  capped at k² times the prior, EWMA with half-life 24 h; the prior counts as
  noise_prior_updates updates, so a cold start leans on it for hours): a trend adds only
  (slope · lag)² to it, where the residuals around a lagging baseline grew with the trend itself
  and masked it (the old V: a 10-point decline over 12 h was caught in 17 of 200 runs, over 3
  days in 1 of 200). V is fed only while no evidence builds up (both CUSUMs at 0), never while an
  alert fires or while the lag reaches back into one.
* Trend test (slow migrations): the mean of the last ``trend_recent_buckets`` hourly means
  against a reference built only from hours older than ``trend_buckets`` hours (EWMA, half-life
  3.5 days: "the last week"), standardised by max(floor², V); it fires past ``trend_z`` once the
  reference holds ``trend_min_reference_s``. The reference excludes the tested span, so the move
  cannot inflate its own yardstick.

Shares sum to one: when one region loses hashrate every other region's share rises although
nothing happened there. Each test therefore measures a series' move against the rest of its
map once other regions fire (or are about to, this update): expected_j = b_j · ρ, ρ the ratio
now/before of the map's countries other than the firing ones and j's own country (a country
and its subdivisions overlap). A region that moved only through another's shift moves with the
rest and does not fire; a region whose unadjusted share crossed the threshold anyway is listed
on the source alert (``mirrors``). Two regions trading hashrate both fire (the rest stays put).
When an alert resolves at a new level, the other baselines are rescaled by
(1 − Σ new) / (1 − Σ old), and when a trend fires the part of its move the other baselines
already took in is taken out.

Calibration (bench/shift_detection.py, numbers in BENCHMARKS.md): inputs are shares over a
300 s sliding window published every 60 s, so successive residuals overlap, and real noise
wanders for tens of minutes; textbook ARL tables do not apply. k = 3.5, h = 8 were chosen on a
simulated grid (12-region map, real noise = floor with 30 min correlation): a 10-point step drop
of a region holding >= 10 % is flagged in 4–8 min. Residuals are capped at ±z_cap = 7, so one
absurd window adds at most z_cap − k = 3.5: it takes three of them in a row to fire.

An alert's baseline is frozen while it fires. It resolves (same id, state "resolved") when either
- "recovered": the share stays within ±band·σ of the frozen baseline for dwell_s, or
- "new_level": the alert has fired for persist_s and the share has stayed within ±band·σ of its
  own fast EWMA (half-life level_half_life_s) for dwell_s; that level becomes the new baseline
  (if the settled level lies within ±band·σ of the old baseline, this counts as "recovered").
Either way both tests restart (CUSUM at zero, trend buckets emptied, reference at the baseline),
so a later move of the same region is a new episode.

The rule runs vectorised over arrays of series (`ShiftEngine`, used by simulations with
thousands of series; ``group`` says which series share a map, ``parent`` which country a
subdivision lies in); `ShiftDetector` maps region codes onto it and writes the alerts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

STATE_VERSION = 2
ALERT_TYPE = "regional_shift"
TESTS = ("step", "trend")
#: Lagged shares kept for V: one every noise_lag_s / LAG_SLOTS seconds.
LAG_SLOTS = 12


@dataclass(frozen=True)
class ShiftParams:
    """Tuning of the detector; defaults calibrated for 300 s windows updated every 60 s.

    k, h, z_cap, trend_z are in units of σ. Times in seconds, shares as fractions.
    """

    half_life_s: float = 6 * 3600.0
    k: float = 3.5
    h: float = 8.0
    z_cap: float = 7.0
    noise_scale: float = 0.012
    min_share: float = 0.01
    min_subdivision_share: float = 0.02
    band: float = 2.0
    dwell_s: float = 1800.0
    persist_s: float = 3600.0
    level_half_life_s: float = 600.0
    noise_half_life_s: float = 24 * 3600.0
    noise_lag_s: float = 3600.0
    noise_prior_updates: float = 360.0
    min_interval_s: float = 50.0
    trend_bucket_s: float = 3600.0
    trend_recent_buckets: int = 6
    trend_buckets: int = 24
    trend_reference_half_life_s: float = 3.5 * 86400.0
    trend_min_reference_s: float = 12 * 3600.0
    trend_z: float = 5.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{field.name} must be finite and >= 0, got {value}")
        positive = (self.half_life_s, self.level_half_life_s, self.noise_half_life_s,
                    self.noise_lag_s, self.trend_bucket_s, self.trend_reference_half_life_s)
        if min(positive) <= 0.0:
            raise ValueError("half-lives, noise_lag_s and trend_bucket_s must be > 0")
        if self.z_cap <= self.k:
            raise ValueError(f"z_cap ({self.z_cap}) must exceed k ({self.k}) or nothing can fire")
        if not 1 <= self.trend_recent_buckets <= self.trend_buckets:
            raise ValueError("trend_recent_buckets must be within [1, trend_buckets]")


@dataclass(frozen=True)
class StepEvents:
    """What one engine step did: which series fired (which way, by which test), which resolved,
    and which newly moved only as the mirror of another series' shift (with that source)."""

    accepted: bool
    fired: IntArray
    resolved: IntArray
    recovered: BoolArray  # per resolved series: True = back to baseline, False = new level
    mirrored: IntArray
    mirror_source: IntArray


_NAN_FIELDS = (
    "baseline", "reset_pos_t", "reset_neg_t", "detected_t", "started_t", "level",
    "steady_since", "near_since", "resid_var", "calm_since", "mirror_of", "reference",
)  # fmt: skip
_ZERO_FIELDS = (
    "s_pos", "s_neg", "raw_pos", "raw_neg", "direction", "test", "score", "n_obs", "n_lag",
    "bucket_sum", "bucket_n", "reference_n", "subdivision",
)  # fmt: skip
_MATRIX_FIELDS = ("lag_share", "trend_ring")  # [slot, series]


class ShiftEngine:
    """The detection rule over n series updated together (vectorised with numpy).

    `direction` holds 0 (quiet), +1 (an up alert fires) or −1 (a down alert fires); `test` says
    which test fired it (0 step, 1 trend). NaN baseline means the series has not been seen yet;
    NaN near_since means "not near the baseline now". Series in different `group`s never mirror
    each other (by default every series is its own group); `parent` is the index of the series a
    subdivision lies in (−1: none).
    """

    def __init__(self, n: int, params: ShiftParams | None = None) -> None:
        self.params = params or ShiftParams()
        self.last_t: float | None = None
        self.bucket_start: float | None = None
        self.ring_pos = 0
        self.lag_t = np.full(LAG_SLOTS + 1, np.nan)
        for name in _NAN_FIELDS:
            setattr(self, name, np.full(n, np.nan))
        for name in _ZERO_FIELDS:
            setattr(self, name, np.zeros(n))
        self.lag_share = np.full((LAG_SLOTS + 1, n), np.nan)
        self.trend_ring = np.full((self.params.trend_buckets, n), np.nan)
        self.group = np.arange(n, dtype=np.int64)
        self.parent = np.full(n, -1, dtype=np.int64)

    baseline: FloatArray
    reset_pos_t: FloatArray
    reset_neg_t: FloatArray
    detected_t: FloatArray
    started_t: FloatArray
    level: FloatArray
    steady_since: FloatArray
    near_since: FloatArray
    resid_var: FloatArray
    calm_since: FloatArray
    mirror_of: FloatArray
    reference: FloatArray
    s_pos: FloatArray
    s_neg: FloatArray
    raw_pos: FloatArray
    raw_neg: FloatArray
    direction: FloatArray
    test: FloatArray
    score: FloatArray
    n_obs: FloatArray
    n_lag: FloatArray
    bucket_sum: FloatArray
    bucket_n: FloatArray
    reference_n: FloatArray
    subdivision: FloatArray

    @property
    def size(self) -> int:
        return int(self.baseline.size)

    def add_series(self, count: int) -> None:
        """Append `count` unseen series (a region met for the first time), each its own group."""
        for name in _NAN_FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), np.full(count, np.nan)]))
        for name in _ZERO_FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(count)]))
        for name in _MATRIX_FIELDS:
            matrix = getattr(self, name)
            setattr(self, name, np.hstack([matrix, np.full((matrix.shape[0], count), np.nan)]))
        start = int(self.group.max()) + 1 if self.group.size else 0
        self.group = np.concatenate([self.group, np.arange(start, start + count)])
        self.parent = np.concatenate([self.parent, np.full(count, -1, dtype=np.int64)])

    def set_structure(self, group: Sequence[int], parent: Sequence[int],
                      subdivision: Sequence[bool]) -> None:
        """Which series share a map (mirror each other), which country holds a subdivision,
        and which series are subdivisions (they alert only above min_subdivision_share)."""
        self.group = np.asarray(group, dtype=np.int64).copy()
        self.parent = np.asarray(parent, dtype=np.int64).copy()
        self.subdivision = np.asarray(subdivision, dtype=np.float64).copy()
        if not self.group.size == self.parent.size == self.subdivision.size == self.size:
            raise ValueError("group, parent and subdivision must have one entry per series")

    def prior_var(self, se: FloatArray) -> FloatArray:
        """Residual variance expected a priori: the share's own SE² plus the real-noise floor²."""
        return np.square(se) + self.floor_var(self.baseline)

    def floor_var(self, share: FloatArray) -> FloatArray:
        b = np.maximum(np.nan_to_num(share, nan=0.0), self.params.min_share)
        return self.params.noise_scale**2 * b * (1.0 - np.minimum(b, 1.0))

    def accepts(self, t: float) -> bool:
        """False for an update closer than min_interval_s to the previous one (or older):
        k and h assume the calibrated cadence, faster updates would fire on noise."""
        return self.last_t is None or t - self.last_t >= max(self.params.min_interval_s, 1e-9)

    def _source_sums(self, mask: BoolArray, now: FloatArray, before: FloatArray
                     ) -> tuple[FloatArray, FloatArray, BoolArray]:
        """Per series j: Σ now_X and Σ before_X over the X in `mask` of j's group that do not
        overlap j (a country and its subdivisions overlap; a subdivision of a country in
        `mask` moves with it), and whether there is any such X."""
        n = self.size
        has_parent = self.parent >= 0
        parent = np.where(has_parent, self.parent, 0)
        sources = np.flatnonzero(mask & ~(has_parent & mask[parent]))
        if sources.size == 0:
            return np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
        order = np.argsort(self.group, kind="stable")
        grouped = self.group[order]
        lows = np.searchsorted(grouped, self.group[sources], side="left")
        highs = np.searchsorted(grouped, self.group[sources], side="right")
        pair_x = np.repeat(sources, highs - lows)
        pair_j = np.concatenate([order[lo:hi] for lo, hi in zip(lows, highs, strict=True)])
        valid = ((pair_x != pair_j) & (self.parent[pair_j] != pair_x)
                 & (self.parent[pair_x] != pair_j))
        pair_x, pair_j = pair_x[valid], pair_j[valid]
        sum_now = np.bincount(pair_j, weights=now[pair_x], minlength=n).astype(np.float64)
        sum_before = np.bincount(pair_j, weights=before[pair_x], minlength=n).astype(np.float64)
        return sum_now, sum_before, np.bincount(pair_j, minlength=n) > 0

    def renormalisation(self, mask: BoolArray, now: FloatArray, before: FloatArray
                        ) -> FloatArray:
        """Per series j, the factor (1 − Σ now_X) / (1 − Σ before_X) that the moves of the
        series X in `mask` alone put on j's share (shares sum to one)."""
        sum_now, sum_before, _ = self._source_sums(mask, now, before)
        denominator = 1.0 - sum_before
        safe = np.where(denominator > 1e-9, denominator, 1.0)
        return np.where(denominator > 1e-9, np.maximum(1.0 - sum_now, 0.0) / safe, 1.0)

    def mirror_adjusted(self, mask: BoolArray, now: FloatArray, before: FloatArray
                        ) -> FloatArray:
        """Each series' move (now − before) measured against the rest of its map instead of
        the whole: before · ρ, ρ = the rest's own ratio now/before, the rest being the map's
        countries without the series in `mask` and without j's country. A region that moved
        only because another's share moved (shares sum to one) moves with the rest: ≈ 0.
        Scaled by
        (1 − before of j's country) so that a small move reads as the unadjusted one; series
        with no other series in `mask` keep their plain move."""
        sum_now, sum_before, has = self._source_sums(mask, now, before)
        countries = self.parent < 0
        top = np.where(countries, np.arange(self.size), self.parent)
        totals = [np.bincount(self.group, weights=np.where(countries, v, 0.0),
                              minlength=self.size)[self.group] for v in (now, before)]
        rest_now = totals[0] - sum_now - now[top]
        rest_before = totals[1] - sum_before - before[top]
        usable = has & (rest_before > 1e-6)
        ratio = np.where(usable, rest_now / np.where(usable, rest_before, 1.0), 1.0)
        scale = np.where(usable & (self.parent < 0), 1.0 - before, 1.0)
        return (now - before * ratio) * scale

    def step(self, t: float, share: FloatArray, se: FloatArray) -> StepEvents:
        """Feed every series its share and SE at time t (ignored unless `accepts(t)`)."""
        p = self.params
        if not self.accepts(t):
            empty = np.zeros(0, dtype=np.int64)
            return StepEvents(False, empty, empty, np.zeros(0, dtype=bool), empty, empty)
        dt = 0.0 if self.last_t is None else t - self.last_t
        self.last_t = t
        unseen = np.isnan(self.baseline)
        self.baseline[unseen] = share[unseen]
        self.reset_pos_t[unseen] = t
        self.reset_neg_t[unseen] = t
        self.calm_since[unseen] = t
        prior = self.prior_var(se)
        self.resid_var[unseen] = prior[unseen]
        sigma = np.sqrt(np.maximum(prior, self.resid_var))
        quiet = self.direction == 0
        minimum = np.where(self.subdivision > 0, p.min_subdivision_share, p.min_share)
        eligible = np.maximum(self.baseline, share) >= minimum

        fire_up, fire_down, move = self._step_test(t, share, sigma, quiet, eligible)
        self._fill_buckets(t, share, quiet)
        trend_up, trend_down, trend_score = self._trend_test(
            share, quiet & eligible & ~(fire_up | fire_down))
        up, down = fire_up | trend_up, fire_down | trend_down
        direction_now = np.where(up, 1.0, np.where(down, -1.0, self.direction))
        mirrored, sources = self._mirrors(share, sigma, quiet & eligible & ~(up | down),
                                          direction_now)

        # Running means while young (weight 1/n), EWMAs after; each move capped at k·σ, so a
        # drop right after a cold start (or a ramp) cannot drag the baseline along with it.
        self.n_obs += 1.0
        alpha = np.maximum(1.0 - 2.0 ** (-dt / p.half_life_s), 1.0 / self.n_obs)
        adapt = quiet & ~(up | down)
        capped = np.clip(move, -p.k * sigma, p.k * sigma)
        self.baseline[adapt] += (alpha * capped)[adapt]
        self._update_noise(t, dt, share, prior, adapt)
        resolved, recovered = self._resolve(t, dt, share, sigma)
        self._start_alerts(t, share, (fire_up, fire_down), (trend_up, trend_down), trend_score)
        resolved_idx = np.flatnonzero(resolved)
        return StepEvents(True, np.flatnonzero(up | down), resolved_idx,
                          recovered[resolved_idx], mirrored, sources)

    def _step_test(self, t: float, share: FloatArray, sigma: FloatArray, quiet: BoolArray,
                   eligible: BoolArray) -> tuple[BoolArray, BoolArray, FloatArray]:
        """The CUSUM on residuals against the mirror-adjusted baseline: first with the alerts
        firing, then also with this update's candidates (a mirror rises with its source)."""
        p = self.params
        candidates = np.zeros(self.size, dtype=bool)
        for _ in range(2):
            move = self.mirror_adjusted(~quiet | candidates, share, self.baseline)
            z = np.clip(move / sigma, -p.z_cap, p.z_cap)
            s_pos = np.where(quiet, np.maximum(0.0, self.s_pos + z - p.k), self.s_pos)
            s_neg = np.where(quiet, np.maximum(0.0, self.s_neg - z - p.k), self.s_neg)
            found = quiet & eligible & ((s_pos > p.h) | (s_neg > p.h))
            if not found.any() or (found == candidates).all():
                break
            candidates = found
        self.s_pos, self.s_neg = s_pos, s_neg
        self.reset_pos_t = np.where(quiet & (s_pos == 0.0), t, self.reset_pos_t)
        self.reset_neg_t = np.where(quiet & (s_neg == 0.0), t, self.reset_neg_t)
        fire_up = quiet & eligible & (s_pos > p.h) & (s_pos >= s_neg)
        fire_down = quiet & eligible & (s_neg > p.h) & ~fire_up
        return fire_up, fire_down, move

    def _mirrors(self, share: FloatArray, sigma: FloatArray, open_: BoolArray,
                 direction_now: FloatArray) -> tuple[IntArray, IntArray]:
        """Quiet series whose unadjusted CUSUM passed h while the adjusted one did not, and
        whose move the shifts explain (the move against the rest of the map is at most half
        the plain one; more is a move of its own under way): each is the mirror of the
        opposite shift (same map, no overlap) that moved the most."""
        p = self.params
        z = np.clip((share - self.baseline) / sigma, -p.z_cap, p.z_cap)
        quiet = self.direction == 0
        self.raw_pos = np.where(quiet, np.minimum(np.maximum(0.0, self.raw_pos + z - p.k),
                                                  2 * p.h), 0.0)
        self.raw_neg = np.where(quiet, np.minimum(np.maximum(0.0, self.raw_neg - z - p.k),
                                                  2 * p.h), 0.0)
        plain = share - self.baseline
        explained = (np.abs(self.mirror_adjusted(direction_now != 0, share, self.baseline))
                     <= 0.5 * np.abs(plain))
        moved = open_ & ((self.raw_pos > p.h) | (self.raw_neg > p.h)) & explained
        self.mirror_of[~moved] = np.nan
        mirrored: list[int] = []
        sources: list[int] = []
        size = np.abs(plain)
        for j in np.flatnonzero(moved & np.isnan(self.mirror_of)).tolist():
            opposite = -1.0 if self.raw_pos[j] >= self.raw_neg[j] else 1.0
            candidates = ((direction_now == opposite) & (self.group == self.group[j])
                          & (self.parent != j))
            candidates[j] = False
            if self.parent[j] >= 0:
                candidates[self.parent[j]] = False
            if candidates.any():
                source = int(np.flatnonzero(candidates)[np.argmax(size[candidates])])
                self.mirror_of[j] = source
                mirrored.append(j)
                sources.append(source)
        return np.array(mirrored, dtype=np.int64), np.array(sources, dtype=np.int64)

    def _fill_buckets(self, t: float, share: FloatArray, quiet: BoolArray) -> None:
        """Hourly means into the trend ring; the hour leaving the ring joins the reference."""
        p = self.params
        if self.bucket_start is None:
            self.bucket_start = t
        if t >= self.bucket_start + p.trend_bucket_s:
            done = self.bucket_n > 0
            mean = np.where(done, self.bucket_sum / np.maximum(self.bucket_n, 1.0), np.nan)
            leaving = self.trend_ring[self.ring_pos].copy()
            absorb = quiet & np.isfinite(leaving)
            self.reference_n[absorb] += 1.0
            alpha = np.maximum(1.0 - 2.0 ** (-p.trend_bucket_s / p.trend_reference_half_life_s),
                               1.0 / np.maximum(self.reference_n, 1.0))
            known = np.nan_to_num(self.reference, nan=0.0)
            updated = known + alpha * (np.nan_to_num(leaving, nan=0.0) - known)
            self.reference = np.where(absorb, updated, self.reference)
            self.trend_ring[self.ring_pos] = mean
            self.ring_pos = (self.ring_pos + 1) % p.trend_buckets
            elapsed = math.floor((t - self.bucket_start) / p.trend_bucket_s)
            self.bucket_start += elapsed * p.trend_bucket_s
            self.bucket_sum[:] = 0.0
            self.bucket_n[:] = 0.0
        self.bucket_sum += share
        self.bucket_n += 1.0

    def _trend_test(self, share: FloatArray, open_: BoolArray
                    ) -> tuple[BoolArray, BoolArray, FloatArray]:
        """The recent hours' mean against the reference of older hours (mirror-adjusted)."""
        p = self.params
        none = np.zeros(self.size, dtype=bool)
        rows = (self.ring_pos - 1 - np.arange(p.trend_recent_buckets)) % p.trend_buckets
        recent_rows = self.trend_ring[rows]
        complete = np.isfinite(recent_rows).all(axis=0)
        ready = (open_ & complete & np.isfinite(self.reference)
                 & (self.reference_n * p.trend_bucket_s >= p.trend_min_reference_s))
        if not ready.any():
            return none, none, np.zeros(self.size)
        recent = np.where(ready, np.nan_to_num(recent_rows).mean(axis=0), 0.0)
        reference = np.nan_to_num(self.reference, nan=0.0)
        sigma = np.sqrt(np.maximum(self.floor_var(reference), self.resid_var))
        z = np.where(ready, (recent - reference) / sigma, 0.0)
        candidates = ready & (np.abs(z) > p.trend_z)
        if not candidates.any():
            return none, none, np.zeros(self.size)
        firing = (self.direction != 0) | candidates
        now = np.where(ready, recent, share)
        before = np.where(ready, reference, self.baseline)
        z = np.where(ready, self.mirror_adjusted(firing, now, before) / sigma, 0.0)
        return candidates & (z > p.trend_z), candidates & (z < -p.trend_z), np.abs(z)

    def _update_noise(self, t: float, dt: float, share: FloatArray, prior: FloatArray,
                      adapt: BoolArray) -> None:
        """V from ½ (s_t − s_{t−lag})², each capped at k² times the prior, fed only while no
        evidence of a shift builds up (both CUSUMs at 0) and no episode lies within the lag;
        the prior counts as noise_prior_updates updates, so a cold start trusts it for hours."""
        p = self.params
        old = np.flatnonzero(self.lag_t <= t - p.noise_lag_s)
        if old.size:
            slot = int(old[np.argmax(self.lag_t[old])])
            lagged = self.lag_share[slot]
            use = (adapt & np.isfinite(lagged) & (self.calm_since <= self.lag_t[slot])
                   & (self.s_pos == 0.0) & (self.s_neg == 0.0))
            half_sq = 0.5 * np.minimum(np.square(share - np.nan_to_num(lagged)),
                                       2.0 * p.k**2 * prior)
            self.n_lag[use] += 1.0
            alpha = np.maximum(1.0 - 2.0 ** (-dt / p.noise_half_life_s),
                               1.0 / (self.n_lag + p.noise_prior_updates))
            self.resid_var[use] += (alpha * (half_sq - self.resid_var))[use]
        known = np.isfinite(self.lag_t)
        if not known.any() or t - float(np.max(self.lag_t[known])) >= p.noise_lag_s / LAG_SLOTS:
            slot = int(np.flatnonzero(~known)[0]) if (~known).any() else int(
                np.argmin(self.lag_t))
            self.lag_t[slot] = t
            self.lag_share[slot] = share

    def _resolve(self, t: float, dt: float, share: FloatArray, sigma: FloatArray
                 ) -> tuple[BoolArray, BoolArray]:
        """Firing series back at their baseline ("recovered") or settled at a new level."""
        p = self.params
        firing = self.direction != 0
        alpha_level = 1.0 - 2.0 ** (-dt / p.level_half_life_s)
        self.level[firing] += alpha_level * (share - self.level)[firing]
        half_band = p.band * sigma
        self.steady_since[firing & (np.abs(share - self.level) > half_band)] = t
        near = np.abs(share - self.baseline) <= half_band
        self.near_since[firing & ~near] = np.nan
        self.near_since[firing & near & np.isnan(self.near_since)] = t
        settled = (
            firing & (t - self.detected_t >= p.persist_s) & (t - self.steady_since >= p.dwell_s)
        )
        # A level that settled back within the band of the baseline is a recovery too.
        level_near = np.abs(self.level - self.baseline) <= half_band
        recovered = firing & ((near & (t - self.near_since >= p.dwell_s)) | (settled & level_near))
        new_level = settled & ~recovered
        if new_level.any():  # the others' shares moved with it: rescale their yardsticks
            self._rescale_others(new_level, self.renormalisation(new_level, self.level,
                                                                 self.baseline))
            self.baseline[new_level] = self.level[new_level]
        resolved = recovered | new_level
        self._restart(resolved, t)
        return resolved, recovered

    def _rescale_others(self, mask: BoolArray, scale: FloatArray) -> None:
        others = ~mask
        self.baseline[others] *= scale[others]
        self.reference[others] *= scale[others]
        self.trend_ring[:, others] *= scale[others]
        self.bucket_sum[others] *= scale[others]

    def _restart(self, mask: BoolArray, t: float) -> None:
        """Both tests start afresh for the series in `mask` (an episode ended)."""
        for name in ("direction", "test", "s_pos", "s_neg", "raw_pos", "raw_neg",
                     "bucket_sum", "bucket_n"):
            getattr(self, name)[mask] = 0.0
        self.reset_pos_t[mask] = t
        self.reset_neg_t[mask] = t
        self.calm_since[mask] = t
        self.trend_ring[:, mask] = np.nan
        self.reference[mask & np.isfinite(self.reference)] = self.baseline[
            mask & np.isfinite(self.reference)]

    def _start_alerts(self, t: float, share: FloatArray, step: tuple[BoolArray, BoolArray],
                      trend: tuple[BoolArray, BoolArray], trend_score: FloatArray) -> None:
        p = self.params
        by_trend = trend[0] | trend[1]
        if by_trend.any():  # the others' baselines took in part of this move: take it out
            scale = self.renormalisation(by_trend, self.baseline,
                                         np.nan_to_num(self.reference))
            others = ~by_trend
            self.baseline[others] /= np.where(scale > 0, scale, 1.0)[others]
            self.baseline[by_trend] = self.reference[by_trend]
        up, down = step[0] | trend[0], step[1] | trend[1]
        fired = up | down
        self.direction[up] = 1.0
        self.direction[down] = -1.0
        self.test[fired] = np.where(by_trend, 1.0, 0.0)[fired]
        self.detected_t[fired] = t
        self.started_t[step[0]] = self.reset_pos_t[step[0]]
        self.started_t[step[1]] = self.reset_neg_t[step[1]]
        assert self.bucket_start is not None
        self.started_t[by_trend] = self.bucket_start - p.trend_buckets * p.trend_bucket_s
        self.score[step[0]] = self.s_pos[step[0]]
        self.score[step[1]] = self.s_neg[step[1]]
        self.score[by_trend] = trend_score[by_trend]
        self.level[fired] = share[fired]
        self.steady_since[fired] = t
        self.near_since[fired] = np.nan
        self.mirror_of[fired] = np.nan

    def to_state(self) -> dict[str, Any]:
        """JSON-able arrays (NaN as None)."""
        state: dict[str, Any] = {
            "last_t": self.last_t, "bucket_start": self.bucket_start, "ring_pos": self.ring_pos,
            "lag_t": _floats(self.lag_t), "group": self.group.tolist(),
            "parent": self.parent.tolist(),
        }
        for name in (*_NAN_FIELDS, *_ZERO_FIELDS):
            state[name] = _floats(getattr(self, name))
        for name in _MATRIX_FIELDS:
            state[name] = [_floats(row) for row in getattr(self, name)]
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any], params: ShiftParams) -> ShiftEngine:
        engine = cls(len(state["baseline"]), params)
        engine.last_t = None if state["last_t"] is None else float(state["last_t"])
        start = state["bucket_start"]
        engine.bucket_start = None if start is None else float(start)
        engine.ring_pos = int(state["ring_pos"])
        engine.lag_t = _array(state["lag_t"])
        engine.group = np.array(state["group"], dtype=np.int64)
        engine.parent = np.array(state["parent"], dtype=np.int64)
        for name in (*_NAN_FIELDS, *_ZERO_FIELDS):
            setattr(engine, name, _array(state[name]))
        for name in _MATRIX_FIELDS:
            rows = [_array(row) for row in state[name]]
            setattr(engine, name, np.array(rows, dtype=np.float64).reshape(len(rows), -1))
        return engine


def _floats(values: FloatArray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def _array(values: Sequence[float | None]) -> FloatArray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def shift_params(min_subdivision_share: float) -> ShiftParams:
    """The detector's parameters with the deployment's subdivision threshold (a setting)."""
    return ShiftParams(min_subdivision_share=min_subdivision_share)


def _check_share(region: str, value: tuple[float, float]) -> tuple[float, float]:
    share, se = (float(value[0]), float(value[1]))
    if not (math.isfinite(share) and -1e-9 <= share <= 1.0 + 1e-9):
        raise ValueError(f"share of {region!r} must be within [0, 1], got {share}")
    if not (math.isfinite(se) and se >= 0.0):
        raise ValueError(f"SE of {region!r} must be finite and >= 0, got {se}")
    return min(max(share, 0.0), 1.0), se


def region_structure(regions: Sequence[str]) -> tuple[list[int], list[int], list[bool]]:
    """One map (group 0); a subdivision ('US-TX') lies in its country ('US') when tracked."""
    index = {region: i for i, region in enumerate(regions)}
    parent = [index.get(region.split("-", 1)[0], -1) if "-" in region else -1
              for region in regions]
    return [0] * len(regions), parent, ["-" in region for region in regions]


class ShiftDetector:
    """Regional shift alerts (CONTRACTS.md `alerts`) from a stream of per-region shares.

    Feed `update(t, {region: (share, se)})` once a minute, countries and subdivisions together
    (a subdivision alerts once it holds min_subdivision_share). A region tracked before but
    missing from a non-empty update counts as share 0 (its hashers vanished from the sample);
    an empty update is no information and changes nothing.
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
            self._engine.set_structure(*region_structure(self._regions))
        share = np.zeros(len(self._regions))
        se = np.zeros(len(self._regions))
        for region, (value, error) in checked.items():
            share[self._index[region]] = value
            se[self._index[region]] = error
        events = self._engine.step(float(t), share, se)
        self._latest = {region: float(share[i]) for i, region in enumerate(self._regions)}
        emitted: list[dict[str, Any]] = []
        for i, recovered in zip(events.resolved.tolist(), events.recovered.tolist(), strict=True):
            alert = self._alerts.pop(self._regions[i])
            resolved = _with_share_after(alert, float(share[i]))
            resolved.update(state="resolved", resolved_at=float(t),
                            resolution="recovered" if recovered else "new_level")
            emitted.append(resolved)
        for i in events.fired.tolist():
            alert = self._new_alert(i, float(share[i]))
            self._alerts[self._regions[i]] = alert
            emitted.append(dict(alert))
        for j, source in zip(events.mirrored.tolist(), events.mirror_source.tolist(),
                             strict=True):
            source_alert = self._alerts.get(self._regions[source])
            if source_alert is not None and self._regions[j] not in source_alert["mirrors"]:
                source_alert["mirrors"] = sorted([*source_alert["mirrors"], self._regions[j]])
        return emitted

    def _new_alert(self, i: int, share: float) -> dict[str, Any]:
        engine = self._engine
        region = self._regions[i]
        direction = "up" if engine.direction[i] > 0 else "down"
        detected_at = float(engine.detected_t[i])
        alert = {
            "type": ALERT_TYPE,
            "id": f"{ALERT_TYPE}:{region}:{direction}:{detected_at:.0f}",
            "region": region,
            "direction": direction,
            "test": TESTS[int(engine.test[i])],
            "detected_at": detected_at,
            "started_at": float(engine.started_t[i]),
            "share_before": float(engine.baseline[i]),
            "share_after": share,
            "magnitude_pp": 0.0,
            "relative_change": None,
            "score": float(engine.score[i]),
            "mirrors": [],
            "state": "firing",
        }
        return _with_share_after(alert, share)

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
