"""Per-pool view: hashrate from blocks, luck and validation, attribution quality, hashprice.

Pure: block rows and share rates in, numbers out (no I/O).

* Hashrate from blocks: a pool's share of the last n blocks' work times the network hashrate.
  The share's interval is Clopper–Pearson (exact binomial) on the pool's block count, scaled to
  the work share (within a difficulty period every block has the same work, and then the two are
  the same). The network's interval is combined with it on log scale (errors in quadrature).
* Luck: blocks found ÷ blocks expected, where expected = Σ over the blocks of the span of
  (pool's share-measured hashes in that block interval) / (work of a block at its difficulty),
  the pool convention "shares ÷ difficulty". Found is Poisson around the truth, so the interval is
  Garwood's, divided by the expected count. With the span set by n network blocks the found count
  is binomial given n and the span is a Gamma(n) sum; together they have exactly the Poisson
  variance of the pool's own count, which is why the Poisson interval is the right one here.
* Validation: luck is the ratio of block-implied to share-measured hashrate over the same span.
  A pool whose exact Poisson p-value (found given expected) falls below `fire_p` on any window is
  flagged; it clears when every window's p-value is back above `resolve_p` (hysteresis). Why it
  matters: a proxy seeing part of a pool (luck ≫ 1), a mis-reported share difficulty, or blocks
  attributed to the wrong pool all show up here and nowhere else.
* Hashprice: revenue per unit of hashrate per day at a block's difficulty,
  reward · 86400 · 10¹² / (D · 2³²) sat per TH/s per day (H cancels: the blocks a hashrate H
  finds per day are H · 86400 / (D · 2³²)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Protocol

from streams.core.blocks import block_subsidy_sat, pool_slug
from streams.core.intervals import poisson_interval, regularized_gamma_pq
from streams.core.units import HASHES_PER_DIFFICULTY, SECONDS_PER_DAY
from streams.models.chain import ChainSummary

SAT_PER_BTC = 1e8
TH = 1e12
Z95 = 1.959963984540054
WINDOWS = (144, 1008, 2016)
STATE_VERSION = 1
ALERT_TYPE = "pool_divergence"
_STANDARD_NORMAL = NormalDist()

#: Prior confidence that a block's pool is right, by the evidence found. A payout address is
#: hard to fake (the coins go there), a tag is free text anyone may copy, agreement of both is
#: the strongest; a conflict means a copied tag or a proxy paying out elsewhere; a feed's word is
#: unchecked. These are stated priors, not measured rates.
ATTRIBUTION_CONFIDENCE: dict[str, float] = {
    "both": 0.99, "address": 0.95, "tag": 0.85, "feed": 0.7, "conflict": 0.6, "unknown": 0.0,
}


# ---- exact binomial interval -------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
                          -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 3e-16:
            return h
    raise ArithmeticError(f"incomplete beta fraction did not converge (a={a}, b={b}, x={x})")


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the CDF of Beta(a, b) at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def beta_quantile(p: float, a: float, b: float) -> float:
    """x with I_x(a, b) = p: Newton's method inside a shrinking bracket (bisection when a step
    leaves it), started at the normal approximation; a handful of steps reach 1e-13."""
    lo, hi = 0.0, 1.0
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    x = min(max(mean + _STANDARD_NORMAL.inv_cdf(p) * sd, 1e-12), 1.0 - 1e-12)
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    for _ in range(200):
        f = regularized_beta(x, a, b) - p
        if f < 0.0:
            lo = x
        else:
            hi = x
        density = math.exp(log_norm + (a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x))
        candidate = x - f / density if density > 0.0 else math.nan
        if not lo < candidate < hi:
            candidate = 0.5 * (lo + hi)
        if abs(candidate - x) <= 1e-13 * max(x, 1e-300) or hi - lo <= 1e-15:
            return candidate
        x = candidate
    return x


@lru_cache(maxsize=16384)
def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson exact interval for a binomial proportion k of n (conservative)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    alpha = 1.0 - confidence
    lower = 0.0 if k == 0 else beta_quantile(alpha / 2.0, k, n - k + 1)
    upper = 1.0 if k == n else beta_quantile(1.0 - alpha / 2.0, k + 1, n - k)
    return lower, upper


def combine_log_intervals(
    value: float, first: tuple[float, float], first_value: float,
    second: tuple[float, float], second_value: float,
) -> tuple[float, float]:
    """Interval of value = first · second from each factor's interval, in quadrature on log scale.

    A factor whose value is 0 (no block found) keeps its upper bound as an absolute bound: the
    result's upper bound is then first_upper · second_upper, which is conservative."""
    def widths(interval: tuple[float, float], centre: float) -> tuple[float, float]:
        lo, hi = interval
        down = math.inf if lo <= 0.0 or centre <= 0.0 else math.log(centre / lo)
        up = math.log(hi / centre) if centre > 0.0 and hi > 0.0 else math.inf
        return down, up
    if first_value <= 0.0 or second_value <= 0.0:
        return 0.0, first[1] * second[1]
    a_down, a_up = widths(first, first_value)
    b_down, b_up = widths(second, second_value)
    lower = 0.0 if math.isinf(a_down) or math.isinf(b_down) else value * math.exp(
        -math.hypot(a_down, b_down))
    upper = value * math.exp(math.hypot(a_up, b_up))
    return lower, upper


# ---- hashrate from blocks ----------------------------------------------------------------------


@dataclass(frozen=True)
class PoolBlockHashrate:
    """One pool over the last `window_blocks` blocks: its blocks, work share and hashrate."""

    blocks: int
    window_blocks: int
    work_share: float
    work_share_ci95: tuple[float, float]
    hashrate_hs: float | None
    hashrate_ci95_hs: tuple[float, float] | None


def pool_hashrates_from_blocks(
    pools: Sequence[str], works: Sequence[float], n: int,
    network_hs: float | None, network_ci95_hs: tuple[float, float] | None,
) -> dict[str, PoolBlockHashrate]:
    """Every pool of the last `n` blocks (oldest first in the inputs): share × network hashrate."""
    if len(pools) != len(works):
        raise ValueError("pools and works must have the same length")
    recent_pools = list(pools[-n:]) if n else []
    recent_works = list(works[-n:]) if n else []
    total = float(sum(recent_works))
    if not recent_pools or total <= 0.0:
        return {}
    count: dict[str, int] = {}
    work: dict[str, float] = {}
    for pool, w in zip(recent_pools, recent_works, strict=True):
        count[pool] = count.get(pool, 0) + 1
        work[pool] = work.get(pool, 0.0) + float(w)
    blocks = len(recent_pools)
    out = {}
    for pool, k in count.items():
        share = work[pool] / total
        lo, hi = binomial_interval(k, blocks)
        scale = share / (k / blocks)
        out[pool] = PoolBlockHashrate(k, blocks, share, (lo * scale, min(1.0, hi * scale)),
                                      None, None)
    return with_network(out, network_hs, network_ci95_hs)


def with_network(
    rows: Mapping[str, PoolBlockHashrate], network_hs: float | None,
    network_ci95_hs: tuple[float, float] | None,
) -> dict[str, PoolBlockHashrate]:
    """The block shares turned into hashrates with the network estimate (cheap: no counting)."""
    if network_hs is None or network_hs <= 0.0 or network_ci95_hs is None:
        return dict(rows)
    out = {}
    for pool, row in rows.items():
        hashrate = row.work_share * network_hs
        ci = combine_log_intervals(hashrate, row.work_share_ci95, row.work_share,
                                   network_ci95_hs, network_hs)
        out[pool] = replace(row, hashrate_hs=hashrate, hashrate_ci95_hs=ci)
    return out


# ---- luck --------------------------------------------------------------------------------------


def poisson_p_value(found: int, expected: float) -> float:
    """Two-sided exact Poisson p-value of `found` given mean `expected` (doubled smaller tail)."""
    if expected <= 0.0:
        return 1.0 if found == 0 else 0.0
    at_most = regularized_gamma_pq(found + 1.0, expected)[1]  # P(X <= found)
    at_least = 1.0 if found == 0 else regularized_gamma_pq(float(found), expected)[0]
    return min(1.0, 2.0 * min(at_most, at_least))


@dataclass(frozen=True)
class Luck:
    """Blocks found ÷ expected over the covered blocks of a window, with a Garwood interval."""

    window_blocks: int
    covered_blocks: int
    blocks_found: int
    expected_blocks: float
    luck: float | None
    luck_ci95: tuple[float, float] | None
    p_value: float


def pool_luck(
    found: int, expected: float, window_blocks: int, covered_blocks: int,
    expected_rel_se: float = 0.0,
) -> Luck:
    """Luck and its 95 % interval: Garwood on the found count, over the expected count.

    `expected_rel_se` (the share sample's own relative error) widens the interval in quadrature
    on log scale; it is tiny for a sampled pool (thousands of shares per block) and 0 by default.
    """
    if expected <= 0.0:
        return Luck(window_blocks, covered_blocks, found, expected, None, None,
                    poisson_p_value(found, expected))
    lo, hi = poisson_interval(float(found))
    luck = found / expected
    spread = Z95 * expected_rel_se
    if found == 0:
        lower, upper = 0.0, hi / expected * math.exp(spread)
    else:
        lower = luck * math.exp(-math.hypot(math.log(found / lo), spread))
        upper = luck * math.exp(math.hypot(math.log(hi / found), spread))
    return Luck(window_blocks, covered_blocks, found, expected, luck, (lower, upper),
                poisson_p_value(found, expected))


class LuckLedger:
    """Blocks each sampled pool was expected to find, per block height (the leader's memory).

    When a block arrives, each sampled pool's current share-measured hashrate over the block's
    interval (its time minus its parent's) gives hashes/(D·2³²) expected blocks. Intervals are
    not clamped at 0 (header times are not monotonic), so over a span they telescope to
    last − first time. Blocks whose time is older than the rates' window are not recorded (the
    rates do not describe them): after a restart, luck covers only the blocks since.
    """

    def __init__(self, capacity: int = max(WINDOWS)) -> None:
        self.capacity = capacity
        self.last_height: int | None = None
        self.expected: dict[int, dict[str, float]] = {}
        self.version = 0  # bumped whenever expected changes (for caches; not persisted)

    def record(
        self, heights: Sequence[int], times: Sequence[float], difficulties: Sequence[float],
        rates_hs: Mapping[str, float], rates_at: float, rates_max_age_s: float,
    ) -> list[int]:
        """Record the blocks above the last one seen; returns the heights recorded."""
        if not heights:
            return []
        tip = int(heights[-1])
        if self.last_height is None or tip < self.last_height:
            self.last_height = tip
            return []
        recorded = []
        for i in range(1, len(heights)):
            height = int(heights[i])
            if height <= self.last_height or int(heights[i - 1]) != height - 1:
                continue
            if times[i] < rates_at - rates_max_age_s or difficulties[i] <= 0.0:
                continue
            dt = float(times[i]) - float(times[i - 1])
            block_hashes = float(difficulties[i]) * HASHES_PER_DIFFICULTY
            self.expected[height] = {pool: rate * dt / block_hashes
                                     for pool, rate in rates_hs.items()}
            recorded.append(height)
        self.last_height = tip
        for stale in sorted(self.expected)[: max(0, len(self.expected) - self.capacity)]:
            del self.expected[stale]
        if recorded:
            self.version += 1
        return recorded

    def luck(self, heights: Sequence[int], pools: Sequence[str], n: int) -> dict[str, Luck]:
        """Luck of every pool the ledger covers, over the last `n` of the blocks given."""
        found: dict[str, int] = {}
        expected: dict[str, float] = {}
        covered: dict[str, int] = {}
        for height, finder in zip(heights[-n:], pools[-n:], strict=True):
            row = self.expected.get(int(height))
            if row is None:
                continue
            for pool, value in row.items():
                expected[pool] = expected.get(pool, 0.0) + value
                covered[pool] = covered.get(pool, 0) + 1
                if pool == finder:
                    found[pool] = found.get(pool, 0) + 1
        return {pool: pool_luck(found.get(pool, 0), expected[pool], n, covered[pool])
                for pool in expected}

    def to_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "last_height": self.last_height,
                "expected": {str(h): row for h, row in self.expected.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LuckLedger:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported luck ledger state version {state.get('version')!r}")
        ledger = cls()
        last = state.get("last_height")
        ledger.last_height = None if last is None else int(last)
        ledger.expected = {int(h): {str(p): float(v) for p, v in row.items()}
                           for h, row in state["expected"].items()}
        return ledger


# ---- validation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DivergenceParams:
    """When a sampled pool's shares and blocks disagree. Calibrated in bench/pool_luck.py.

    fire_p is per window and evaluation; windows overlap heavily and a check runs at every
    block (144 a day), so it is far below the per-day false-flag target of 1 %. On simulated
    honest pools (30/15/8/3 % of the network, 4000 pool-days per setting): fire_p 1e-4 with
    resolve_p 0.01 kept one 12-day false episode on an 8 % pool (2.4 % of its days: the
    1008/2016-block windows hold an excursion for days); 1e-4 with resolve_p 1e-3 gave 2 flagged
    days in 4000; 1e-5 gave none, at ~20 % slower detection of a half-seen pool (median 155
    blocks for a 30 % pool, 280 for 15 %, 430 for 8 %)."""

    fire_p: float = 1e-5
    resolve_p: float = 1e-3
    min_covered_blocks: int = 36

    def __post_init__(self) -> None:
        for item in fields(self):
            if not getattr(self, item.name) >= 0:
                raise ValueError(f"{item.name} must be >= 0")
        if self.fire_p >= self.resolve_p:
            raise ValueError("fire_p must be below resolve_p (hysteresis)")


def likely_causes(luck: float | None) -> list[str]:
    """What a divergence in this direction usually means, most likely first."""
    if luck is None or luck > 1.0:
        return ["partial_proxy_view: the sample sees only part of the pool's hashrate",
                "misattributed_blocks: blocks of other miners carry this pool's address or tag",
                "difficulty_under_reported: shares credited below their assigned difficulty"]
    return ["difficulty_over_reported: shares credited above their assigned difficulty",
            "misattributed_blocks: this pool's blocks are attributed to another pool",
            "withheld_blocks: the pool submits shares but not all of its blocks"]


class DivergenceDetector:
    """`pool_divergence` alerts (firing/resolved) from each sampled pool's luck per window."""

    def __init__(self, params: DivergenceParams | None = None) -> None:
        self.params = params or DivergenceParams()
        self.active: dict[str, dict[str, Any]] = {}

    def update(self, t: float, lucks: Mapping[str, Mapping[int, Luck]],
               share_hashrates_hs: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        """Judge every pool's windows at time t; returns alerts that fired or resolved."""
        params = self.params
        emitted = []
        for pool, windows in sorted(lucks.items()):
            usable = [luck for luck in windows.values()
                      if luck.covered_blocks >= params.min_covered_blocks]
            if not usable:
                continue
            worst = min(usable, key=lambda luck: luck.p_value)
            alert = self.active.get(pool)
            if alert is None and worst.p_value < params.fire_p:
                alert = divergence_alert(pool, worst, t, (share_hashrates_hs or {}).get(pool))
                self.active[pool] = alert
                emitted.append(dict(alert))
            elif alert is not None and all(luck.p_value > params.resolve_p for luck in usable):
                resolved = {**self.active.pop(pool), **_evidence(worst)}
                resolved.update(state="resolved", resolved_at=float(t))
                emitted.append(resolved)
        return emitted

    def to_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "params": asdict(self.params),
                "active": {p: dict(a) for p, a in self.active.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DivergenceDetector:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported divergence state version {state.get('version')!r}")
        detector = cls(DivergenceParams(**state["params"]))
        detector.active = {str(p): dict(a) for p, a in state["active"].items()}
        return detector


def _evidence(luck: Luck) -> dict[str, Any]:
    return {
        "window_blocks": luck.window_blocks,
        "covered_blocks": luck.covered_blocks,
        "blocks_found": luck.blocks_found,
        "expected_blocks": luck.expected_blocks,
        "luck": luck.luck,
        "luck_ci95": list(luck.luck_ci95) if luck.luck_ci95 else None,
        "p_value": luck.p_value,
    }


def divergence_alert(pool: str, luck: Luck, t: float,
                     share_hashrate_hs: float | None) -> dict[str, Any]:
    """A firing `pool_divergence` alert with its evidence (block-implied vs share-measured)."""
    direction = "blocks_above_shares" if (luck.luck or 0.0) > 1.0 or luck.expected_blocks <= 0 \
        else "blocks_below_shares"
    return {
        "type": ALERT_TYPE,
        "id": f"{ALERT_TYPE}:{pool}:{direction}:{t:.0f}",
        "pool": pool,
        "direction": direction,
        "detected_at": float(t),
        **_evidence(luck),
        "share_hashrate_hs": share_hashrate_hs,
        "block_implied_hashrate_hs": (share_hashrate_hs * luck.luck
                                      if share_hashrate_hs is not None and luck.luck is not None
                                      else None),
        "likely_causes": likely_causes(luck.luck),
        "state": "firing",
    }


# ---- attribution quality -----------------------------------------------------------------------


def attribution_quality(
    details: Sequence[str], works: Sequence[float], pools: Sequence[str],
    conflicts: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """How the blocks were attributed: counts and work shares per method, Unknown's work share,
    the work-weighted mean confidence and the conflicting (pool, tag's pool) pairs."""
    total = float(sum(works))
    counts: dict[str, int] = {}
    work: dict[str, float] = {}
    conflict_pairs: dict[str, int] = {}
    confidence = 0.0
    for i, (detail, w, pool) in enumerate(zip(details, works, pools, strict=True)):
        counts[detail] = counts.get(detail, 0) + 1
        work[detail] = work.get(detail, 0.0) + float(w)
        confidence += ATTRIBUTION_CONFIDENCE.get(detail, 0.0) * float(w)
        if detail == "conflict":
            other = conflicts[i] if conflicts is not None else None
            key = f"{pool}<-{other or '?'}"
            conflict_pairs[key] = conflict_pairs.get(key, 0) + 1
    unknown = sum(float(w) for w, pool in zip(works, pools, strict=True) if pool == "unknown")
    return {
        "blocks": len(details),
        "methods": {d: {"blocks": c, "work_share": work[d] / total if total else None,
                        "confidence": ATTRIBUTION_CONFIDENCE.get(d, 0.0)}
                    for d, c in sorted(counts.items())},
        "unknown_work_share": unknown / total if total else None,
        "mean_confidence": confidence / total if total else None,
        "conflicts": conflict_pairs,
    }


def pool_groups(entries: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Pools that mine for another (slug → parent slug), from an optional ``parent`` field.

    mempool's pools-v2.json has only id, name, addresses, tags and link: it names no parent, so
    the shipped list gives no groups; a list that adds ``"parent": "<name or slug>"`` does."""
    groups = {}
    for entry in entries:
        parent = entry.get("parent")
        if isinstance(parent, str) and parent.strip() and isinstance(entry.get("name"), str):
            groups[pool_slug(entry["name"])] = pool_slug(parent)
    return groups


# ---- hashprice ---------------------------------------------------------------------------------


def hashprice_sats_th_day(reward_sat: float, difficulty: float) -> float:
    """Revenue in sat per TH/s per day if every block paid `reward_sat` at this difficulty."""
    if not difficulty > 0.0:
        raise ValueError("difficulty must be > 0")
    return reward_sat * SECONDS_PER_DAY * TH / (difficulty * HASHES_PER_DIFFICULTY)


def usd_ph_day(sats_th_day: float, btc_usd: float) -> float:
    """sat/TH/day → USD/PH/day (1 PH = 1000 TH)."""
    return sats_th_day * 1000.0 / SAT_PER_BTC * btc_usd


def hashprice_summary(
    subsidies_sat: Sequence[float], fees_sat: Sequence[float | None], subsidy_next_sat: float,
    difficulty: float, btc_usd: float | None,
) -> dict[str, Any]:
    """Hashprice over the blocks given (use the last 144) at the tip's difficulty.

    Blocks whose fees are unknown are left out. `fpps_sats_th_day` is what a full-pay-per-share
    pool pays before its own fee: the next block's subsidy plus the window's mean fees;
    `pps_sats_th_day` the subsidy alone. Hashvalue is hashprice in bitcoin (BTC per PH/s per
    day), which does not move with the BTC price."""
    known = [(float(s), float(f)) for s, f in zip(subsidies_sat, fees_sat, strict=True)
             if f is not None]
    if not known or not difficulty > 0.0:
        return {"blocks": 0}
    mean_fees = sum(f for _, f in known) / len(known)
    mean_reward = sum(s + f for s, f in known) / len(known)
    sats = hashprice_sats_th_day(mean_reward, difficulty)
    fpps = hashprice_sats_th_day(subsidy_next_sat + mean_fees, difficulty)
    return {
        "blocks": len(known),
        "mean_reward_sat": mean_reward,
        "mean_fees_sat": mean_fees,
        "difficulty": difficulty,
        "hashprice_sats_th_day": sats,
        "hashprice_usd_ph_day": usd_ph_day(sats, btc_usd) if btc_usd is not None else None,
        "hashvalue_btc_ph_day": sats * 1000.0 / SAT_PER_BTC,
        "fpps_sats_th_day": fpps,
        "fpps_usd_ph_day": usd_ph_day(fpps, btc_usd) if btc_usd is not None else None,
        "pps_sats_th_day": hashprice_sats_th_day(subsidy_next_sat, difficulty),
    }


# ---- the snapshot's pools section --------------------------------------------------------------

#: Share windows tried for a pool's current rate, best first: the one nearest a block interval.
RATE_WINDOWS_S = (900.0, 600.0, 3600.0, 300.0)
#: A block is credited with the current rates when its header time is this recent (header times
#: may lag the real arrival by minutes; consensus allows two hours).
RATE_MAX_AGE_S = 7200.0


class _Totals(Protocol):
    @property
    def hashrate_hs(self) -> float: ...


@dataclass
class PoolMemory:
    """What the leader carries between snapshots for the pools: the ledger, the detector and the
    alerts not yet published."""

    ledger: LuckLedger = field(default_factory=LuckLedger)
    detector: DivergenceDetector = field(default_factory=DivergenceDetector)
    pending_alerts: list[dict[str, Any]] = field(default_factory=list)
    #: What depends only on the chain and the ledger, computed once per new block: counting
    #: 2016 blocks three times per snapshot would cost ~20 ms at a 0.5 s cadence.
    cache_key: tuple[Any, ...] | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def drain_alerts(self) -> list[dict[str, Any]]:
        alerts, self.pending_alerts = self.pending_alerts, []
        return alerts

    def to_state(self) -> dict[str, Any]:
        return {"ledger": self.ledger.to_state(), "detector": self.detector.to_state()}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> PoolMemory:
        return cls(LuckLedger.from_state(state["ledger"]),
                   DivergenceDetector.from_state(state["detector"]))


def sampled_pool_rates(
    windows: Mapping[float, Mapping[tuple[str, str], _Totals]],
) -> tuple[dict[str, float], float | None]:
    """Each sampled pool's share-measured hashrate (summed over regions) and the window used."""
    for window in (*RATE_WINDOWS_S, *sorted(windows)):
        totals = windows.get(window)
        if totals:
            rates: dict[str, float] = {}
            for (pool, _), t in totals.items():
                rates[pool] = rates.get(pool, 0.0) + t.hashrate_hs
            return rates, window
    return {}, None


def _pair(values: tuple[float, float] | None) -> list[float] | None:
    return None if values is None else [values[0], values[1]]


def _refresh_cache(memory: PoolMemory, chain: ChainSummary, pools: list[str],
                   works: list[float], heights: list[int]) -> None:
    """Recompute lucks, block-implied shares and attribution quality when the chain moved."""
    key = (hash(tuple(pools)), hash(tuple(works)), heights[0], heights[-1],
           memory.ledger.version)
    if key == memory.cache_key:
        return
    details = list(chain.coverage_details or ["unknown"] * len(pools))
    conflicts = list(chain.coverage_conflicts or [None] * len(pools))
    memory.cache = {
        "lucks": {n: memory.ledger.luck(heights, pools, n) for n in WINDOWS},
        "shares": {n: pool_hashrates_from_blocks(pools, works, n, None, None) for n in WINDOWS},
        "attribution": attribution_quality(details, works, pools, conflicts),
    }
    memory.cache_key = key


def _judge_divergence(memory: PoolMemory, as_of: float,
                      lucks: Mapping[int, Mapping[str, Luck]], rates: Mapping[str, float]) -> None:
    """Run the divergence detector on every pool's luck per window (after new blocks)."""
    by_pool: dict[str, dict[int, Luck]] = {}
    for n, rows in lucks.items():
        for pool, luck in rows.items():
            by_pool.setdefault(pool, {})[n] = luck
    memory.pending_alerts.extend(memory.detector.update(as_of, by_pool, rates))


def _pool_entries(memory: PoolMemory, chain: ChainSummary, rates: Mapping[str, float],
                  hashrates: Mapping[int, Mapping[str, PoolBlockHashrate]],
                  groups: Mapping[str, str]) -> tuple[list[dict[str, Any]], list[Any]]:
    """One entry per pool seen in blocks or shares, largest first; and the active alerts."""
    lucks: dict[int, dict[str, Luck]] = memory.cache["lucks"]
    names = chain.pool_names
    longest = hashrates[max(WINDOWS)]
    slugs = sorted(set(longest) | set(rates),
                   key=lambda p: (-(longest[p].work_share if p in longest else 0.0), p))
    min_covered = memory.detector.params.min_covered_blocks
    entries, diverging = [], []
    for slug in slugs:
        active = memory.detector.active.get(slug)
        entries.append({
            "pool": slug,
            "name": names.get(slug, slug),
            "group": groups.get(slug),
            "sampled": slug in rates,
            "sample_hashrate_hs": rates.get(slug),
            "hashrate": {str(n): _block_hashrate_json(hashrates[n].get(slug), n) for n in WINDOWS},
            "luck": ({str(n): _luck_json(lucks[n].get(slug)) for n in WINDOWS}
                     if slug in rates or any(slug in lucks[n] for n in WINDOWS) else None),
            "validation": _validation(slug, rates, lucks, active, min_covered),
        })
        if active is not None:
            diverging.append(active)
    return entries, diverging


def pools_section(
    as_of: float,
    windows: Mapping[float, Mapping[tuple[str, str], _Totals]],
    chain: ChainSummary,
    network_hs: float | None,
    network_ci95_hs: tuple[float, float] | None,
    btc_usd: float | None,
    memory: PoolMemory,
    groups: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The snapshot's ``pools`` section; records new blocks in the ledger and judges divergence.

    ``chain`` is the chain summary (``ChainPartition.summary``): per block of the coverage
    window its pool, work, height, time, difficulty, attribution and reward."""
    groups = dict(groups or {})
    rates, rate_window = sampled_pool_rates(windows)
    pools = list(chain.coverage_pools)
    works = [float(w) for w in chain.coverage_works]
    heights = [int(h) for h in chain.coverage_heights]
    section: dict[str, Any] = {
        "windows": list(WINDOWS), "tip_height": chain.tip_height,
        "rate_window_s": rate_window, "pools": [], "diverging": [], "attribution": None,
        "hashprice": {"blocks": 0}, "groups": groups,
    }
    if not pools or len(heights) != len(pools):
        return section
    difficulties = [float(d) for d in chain.coverage_difficulties]
    times = [float(t) for t in chain.coverage_times]
    recorded = memory.ledger.record(heights, times, difficulties, rates, as_of, RATE_MAX_AGE_S)
    _refresh_cache(memory, chain, pools, works, heights)
    if recorded:
        _judge_divergence(memory, as_of, memory.cache["lucks"], rates)
    hashrates = {n: with_network(memory.cache["shares"][n], network_hs, network_ci95_hs)
                 for n in WINDOWS}
    section["pools"], section["diverging"] = _pool_entries(memory, chain, rates, hashrates, groups)
    section["attribution"] = memory.cache["attribution"]
    subsidies = list(chain.coverage_subsidies)[-144:]
    fees = list(chain.coverage_fees)[-144:]
    if subsidies and len(subsidies) == len(fees):
        section["hashprice"] = hashprice_summary(
            subsidies, fees, block_subsidy_sat(heights[-1] + 1), difficulties[-1], btc_usd)
    if groups:
        grouped: dict[str, float] = {}
        for slug, row in hashrates[max(WINDOWS)].items():
            parent = groups.get(slug, slug)
            grouped[parent] = grouped.get(parent, 0.0) + row.work_share
        section["group_work_share"] = grouped
    return section


def _block_hashrate_json(row: PoolBlockHashrate | None, n: int) -> dict[str, Any]:
    if row is None:
        return {"blocks": 0, "window_blocks": n, "work_share": 0.0, "work_share_ci95": None,
                "hashrate_hs": None, "hashrate_ci95_hs": None}
    return {"blocks": row.blocks, "window_blocks": row.window_blocks,
            "work_share": row.work_share, "work_share_ci95": _pair(row.work_share_ci95),
            "hashrate_hs": row.hashrate_hs, "hashrate_ci95_hs": _pair(row.hashrate_ci95_hs)}


def _luck_json(luck: Luck | None) -> dict[str, Any] | None:
    return None if luck is None else {
        "covered_blocks": luck.covered_blocks, "blocks_found": luck.blocks_found,
        "expected_blocks": luck.expected_blocks, "luck": luck.luck,
        "luck_ci95": _pair(luck.luck_ci95), "p_value": luck.p_value}


def _validation(slug: str, rates: Mapping[str, float], lucks: Mapping[int, Mapping[str, Luck]],
                active: Mapping[str, Any] | None, min_covered: int) -> dict[str, Any]:
    if active is not None:
        return {"status": "diverging", "evidence": dict(active)}
    if slug not in rates:
        return {"status": "not_sampled", "evidence": None}
    covered = max((lucks[n][slug].covered_blocks for n in WINDOWS if slug in lucks[n]),
                  default=0)
    if covered < min_covered:
        return {"status": "insufficient_blocks", "evidence": {"covered_blocks": covered}}
    return {"status": "consistent", "evidence": None}


# ---- bounded series: history and metrics -------------------------------------------------------

#: Pools named in metrics and history; the rest are summed as `other` (bounded label sets).
TOP_POOLS = 10
OTHER_POOLS = "other"


def top_pools(section: Mapping[str, Any], n: int = TOP_POOLS) -> list[str]:
    """The n largest pools by their share of the longest window, then sampled pools (up to n)."""
    entries = [e for e in section.get("pools") or [] if e.get("pool") != "unknown"]
    largest = [str(e["pool"]) for e in entries[:n]]
    sampled = [str(e["pool"]) for e in entries if e.get("sampled") and e["pool"] not in largest]
    return largest + sampled[:n]


def pool_history_points(section: Mapping[str, Any], t: float) -> dict[str, dict[str, Any]]:
    """One history point per named pool (series ``pool:<slug>``) at time t."""
    named = set(top_pools(section))
    points = {}
    for entry in section.get("pools") or []:
        if entry["pool"] not in named:
            continue
        day = entry["hashrate"]["144"]
        fortnight = entry["hashrate"]["2016"]
        luck = entry.get("luck") or {}
        points[f"pool:{entry['pool']}"] = {
            "t": t,
            "hashrate_hs": day["hashrate_hs"],
            "hashrate_lower_hs": (day["hashrate_ci95_hs"] or [None, None])[0],
            "hashrate_upper_hs": (day["hashrate_ci95_hs"] or [None, None])[1],
            "work_share": day["work_share"],
            "hashrate_2016_hs": fortnight["hashrate_hs"],
            "sample_hashrate_hs": entry.get("sample_hashrate_hs"),
            "luck_144": (luck.get("144") or {}).get("luck"),
            "luck_2016": (luck.get("2016") or {}).get("luck"),
            "status": entry["validation"]["status"],
        }
    return points
