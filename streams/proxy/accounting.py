"""What the proxy reports: accepted work per (pool, region, interval), and nothing that identifies
a miner.

A share the pool accepted at assigned difficulty d stands for d·2³² hashes (METHOD.md §1), so a
batch carries count, Σd and Σd² — enough for the pipeline's estimate and its compound-Poisson
interval, and exactly what the single shares would have given. Batches are cut on interval
boundaries aligned to the Unix epoch, so proxies with the same interval cut at the same instants;
the first batch starts when the proxy started, and the last one (at shutdown) ends when it
stopped, so no batch claims time the proxy did not observe.

A region whose miners are connected and authorized but had no share accepted in an interval gets
a batch with count 0: silence from connected miners (a regional outage) is an observation, not a
gap.

Privacy: the miner's address is reduced to a region code at connection time and worker names
only ever appear as keyed hashes (HMAC-SHA256 with a secret of this proxy), used here to count
distinct workers; neither addresses nor names are in any batch.

Clustering: a region's hashrate is a finite number of operators, and how lumpy it is widens the
regional intervals (``streams.core.network_shares``). Each batch also carries ``accounts`` (the
distinct mining accounts, the login before its first '.', also keyed hashes here) and
``account_difficulty_sq_sum``, Σ over accounts of the square of the account's Σd: a sum that
says how concentrated the work is without saying whose it is.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

UNKNOWN_REGION: Final = "ZZ"
MAX_ZERO_BACKFILL_INTERVALS: Final = 12
"""Zero batches are only written for this many most recent intervals of one flush, so a proxy
whose clock jumps forward does not emit a flood of empty batches."""

_COUNTRY = re.compile(r"^[A-Z]{2}$")

CountryLookup = Callable[[str], str | None]


def worker_hash(secret: bytes, worker: str) -> str:
    """HMAC-SHA256 of the worker name under this proxy's secret, as hex.

    Keyed, so that nobody without the secret can test guesses of a name against the hash.
    """
    return hmac.new(secret, worker.encode("utf-8"), hashlib.sha256).hexdigest()


def region_of_ip(address: str, country_lookup: CountryLookup) -> str:
    """ISO 3166-1 alpha-2 country of a public address, ``ZZ`` for private, reserved or unknown.

    IPv4 addresses seen through an IPv6 socket (``::ffff:a.b.c.d``) are looked up as IPv4.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return UNKNOWN_REGION
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global:
        return UNKNOWN_REGION
    code = country_lookup(str(ip))
    if code is None:
        return UNKNOWN_REGION
    code = code.strip().upper()
    return code if _COUNTRY.match(code) else UNKNOWN_REGION


@dataclass
class _Totals:
    count: int = 0
    difficulty_sum: float = 0.0
    difficulty_sq_sum: float = 0.0
    rejected: int = 0
    workers: set[str] = field(default_factory=set)
    accounts: dict[str, float] = field(default_factory=dict)


def account_of(worker: str) -> str:
    """The mining account of a stratum login: what precedes its first '.' (``acct.rig7``)."""
    return worker.split(".", 1)[0]


class ShareAccountant:
    """Accumulates accepted shares per (region, interval) and cuts ``share_batch`` events."""

    def __init__(self, pool: str, interval_s: float, started_at: float) -> None:
        if not interval_s > 0.0 or not math.isfinite(interval_s):
            raise ValueError("interval_s must be a positive number of seconds")
        self.pool = pool
        self.interval_s = interval_s
        self.started_at = started_at
        self._totals: dict[tuple[int, str], _Totals] = {}
        self._next_interval = self._interval_of(started_at)

    def _interval_of(self, ts: float) -> int:
        return math.floor(ts / self.interval_s)

    def _slot(self, region: str, ts: float) -> _Totals:
        # A share stamped before the last cut (a clock step back) joins the open interval.
        interval = max(self._interval_of(ts), self._next_interval)
        key = (interval, region)
        totals = self._totals.get(key)
        if totals is None:
            totals = self._totals[key] = _Totals()
        return totals

    def credit(self, region: str, difficulty: float, worker: str, ts: float,
               account: str | None = None) -> None:
        """One share the pool accepted at assigned ``difficulty``; ``worker`` is its hash,
        ``account`` its account's (default: the worker is its own account)."""
        if not difficulty > 0.0 or not math.isfinite(difficulty):
            raise ValueError(f"difficulty must be finite and positive, got {difficulty}")
        totals = self._slot(region, ts)
        totals.count += 1
        totals.difficulty_sum += difficulty
        totals.difficulty_sq_sum += difficulty * difficulty
        totals.workers.add(worker)
        key = worker if account is None else account
        totals.accounts[key] = totals.accounts.get(key, 0.0) + difficulty

    def reject(self, region: str, ts: float, count: int = 1) -> None:
        """Shares the pool refused: reported, never credited."""
        self._slot(region, ts).rejected += count

    def flush(self, now: float, active_regions: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Batches of every interval that has ended by ``now``, oldest first."""
        return self._cut(self._interval_of(now), now, set(active_regions), final=False)

    def flush_all(self, now: float, active_regions: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Everything, the open interval included (ending at ``now``): for shutdown."""
        return self._cut(self._interval_of(now) + 1, now, set(active_regions), final=True)

    def _cut(
        self, until_interval: int, now: float, active: set[str], final: bool
    ) -> list[dict[str, Any]]:
        """Batches of intervals before ``until_interval``."""
        if until_interval <= self._next_interval:
            return []
        keys = {key for key in self._totals if key[0] < until_interval}
        zero_from = max(self._next_interval, until_interval - MAX_ZERO_BACKFILL_INTERVALS)
        for interval in range(zero_from, until_interval):
            keys.update((interval, region) for region in active)
        batches = []
        for interval, region in sorted(keys):
            totals = self._totals.pop((interval, region), None) or _Totals()
            start = max(interval * self.interval_s, self.started_at)
            end = (interval + 1) * self.interval_s
            if final and interval == until_interval - 1:
                end = max(min(end, now), start)
            batches.append(self._batch(region, start, end, totals))
        self._next_interval = until_interval
        return batches

    def _batch(self, region: str, start: float, end: float, totals: _Totals) -> dict[str, Any]:
        return {
            "type": "share_batch",
            "start": start,
            "end": end,
            "pool": self.pool,
            "region": region,
            "count": totals.count,
            "difficulty_sum": totals.difficulty_sum,
            "difficulty_sq_sum": totals.difficulty_sq_sum,
            "rejected": totals.rejected,
            "workers": len(totals.workers),
            "accounts": len(totals.accounts),
            "account_difficulty_sq_sum": math.fsum(v * v for v in totals.accounts.values()),
        }
