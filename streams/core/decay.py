"""ckpool's decaying-average hashrate (METHOD.md §1), kept as the reference to beat.

ckpool (`src/libckpool.c`, `decay_time`) keeps per client a value f in difficulty-1 shares per
second and, on each update that brings `fadd` diff-shares after `fsecs` seconds, does
    fprop = 1 − exp(−min(fsecs/interval, 36));  f += fadd/fsecs · fprop;  f /= 1 + fprop
and reports f·2³² H/s. It updates at every share with the time since the previous update, and
shows the value as it stands after the latest update. Written here from that description for the
benchmark and tests; the project's own estimator is `streams.core.shares`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from streams.core.units import HASHES_PER_DIFFICULTY

MAX_DECAY_EXPONENT = 36.0
MIN_UPDATE_SECONDS = 1e-3
"""Two shares in the same instant would divide by zero; ckpool bounds its time differences
below by a millisecond, and so does this reference."""

FloatArray = npt.NDArray[np.float64]


def decay_time(f: float, fadd: float, fsecs: float, interval: float) -> float:
    """One ckpool update of the decaying rate `f` (diff-shares/s); unchanged when fsecs ≤ 0."""
    if fsecs <= 0.0:
        return f
    fprop = 1.0 - math.exp(-min(fsecs / interval, MAX_DECAY_EXPONENT))
    return (f + fadd / fsecs * fprop) / (1.0 + fprop)


class DecayingAverage:
    """ckpool's per-client average over one `interval_s` (e.g. 300 for its 5-minute figure).

    `start_ts` is when the client connected: ckpool's first update measures its time from there.
    """

    def __init__(self, interval_s: float, start_ts: float) -> None:
        if not interval_s > 0.0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval_s = float(interval_s)
        self.rate = 0.0
        self.last_update = float(start_ts)

    def add(self, ts: float, difficulty: float) -> None:
        """Credit one share of `difficulty` at `ts` (updates are at least a millisecond apart)."""
        elapsed = max(ts - self.last_update, MIN_UPDATE_SECONDS)
        self.rate = decay_time(self.rate, difficulty, elapsed, self.interval_s)
        self.last_update = ts

    @property
    def hashrate_hs(self) -> float:
        """What ckpool shows: the rate as of the latest update, in H/s."""
        return self.rate * HASHES_PER_DIFFICULTY

    def decayed_hashrate_hs(self, now: float) -> float:
        """The rate after an update with no shares at `now` (ckpool's idle-client decay), H/s."""
        rate = decay_time(self.rate, 0.0, now - self.last_update, self.interval_s)
        return rate * HASHES_PER_DIFFICULTY


def decaying_average_series(
    ts: npt.ArrayLike, difficulty: npt.ArrayLike, interval_s: float, start_ts: float
) -> FloatArray:
    """The rate (diff-shares/s) right after each share, as `DecayingAverage` gives it, for a whole
    time-sorted stream at once (for benchmarks over long streams).

    Each update is linear in f: f' = c·f + b with c = 1/(1 + fprop), b = fadd/fsecs·fprop·c, so
    f_n = C_n·(f_0 + Σ_{k≤n} b_k / C_k) with C_n = Π_{k≤n} c_k, taken in chunks over which C
    falls by at most e⁻⁵⁰⁰ so that nothing overflows however long the stream.
    """
    times = np.asarray(ts, dtype=np.float64)
    diffs = np.asarray(difficulty, dtype=np.float64)
    if times.shape != diffs.shape or times.ndim != 1:
        raise ValueError("ts and difficulty must be 1-d arrays of the same length")
    elapsed = np.maximum(np.diff(times, prepend=start_ts), MIN_UPDATE_SECONDS)
    fprop = -np.expm1(-np.minimum(elapsed / interval_s, MAX_DECAY_EXPONENT))
    log_c = -np.log1p(fprop)
    b = diffs / elapsed * fprop / (1.0 + fprop)
    log_cum = np.concatenate(([0.0], np.cumsum(log_c)))
    rates = np.empty(times.size, dtype=np.float64)
    rate = 0.0
    begin = 0
    while begin < times.size:
        # −log_cum rises by at most ln 2 per share, so every chunk holds at least one share.
        end = int(np.searchsorted(-log_cum[1:], 500.0 - log_cum[begin], side="right"))
        end = max(end, begin + 1)
        log_rel = log_cum[begin + 1 : end + 1] - log_cum[begin]
        rates[begin:end] = np.exp(log_rel) * (rate + np.cumsum(b[begin:end] * np.exp(-log_rel)))
        rate = float(rates[end - 1])
        begin = end
    return rates
